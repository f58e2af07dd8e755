import json

import pytest
from conftest import ROOT, SHARED, TINY_TASK, needs_shared, write_recipe

from toolchain import UserError, backbone
from toolchain.config import load_recipe
from toolchain.data import IGNORE, load_task, read_examples


@pytest.fixture(scope="module")
def tok():
    return backbone.load_tokenizer(backbone.resolve("minilm"))


@needs_shared
@pytest.mark.parametrize("task, n_train, n_dev", [("sst2", 67349, 872), ("cola", 8551, 1043), ("mrpc", 3668, 408),
                                                  ("stsb", 5749, 1500), ("rte", 2490, 277)])
def test_glue_readers_keep_every_row(task, n_train, n_dev):
    """GLUE TSVs are read with quoting off: with default quoting MRPC and STS-B lose rows."""
    recipe = load_recipe(ROOT / "models" / "glue.toml")
    t = recipe.task(task)
    train, dev = read_examples(recipe, t, "train"), read_examples(recipe, t, "dev")
    assert (len(train), len(dev)) == (n_train, n_dev)


@needs_shared
def test_glue_pair_and_headerless_columns():
    recipe = load_recipe(ROOT / "models" / "glue.toml")
    mrpc = read_examples(recipe, recipe.task("mrpc"), "dev")
    assert mrpc[0].text_pair and mrpc[0].label in ("0", "1")
    assert any('"' in ex.text for ex in read_examples(recipe, recipe.task("mrpc"), "train"))
    cola = read_examples(recipe, recipe.task("cola"), "dev")
    assert cola[0].text == "The sailors rode the breeze clear of the rocks."
    assert {ex.label for ex in cola} == {"0", "1"}
    stsb = read_examples(recipe, recipe.task("stsb"), "dev")
    assert all(0.0 <= float(ex.label) <= 5.0 for ex in stsb)


def test_seqio_intents_and_slots(tok):
    recipe = load_recipe(ROOT / "models" / "assistant.toml")
    intent = read_examples(recipe, recipe.task("snips_intent"), "train")
    assert len(intent) == 13084 and intent[0].text == "listen to westbam alumb allergic on google music"
    assert intent[0].label == "PlayMusic"
    slots = read_examples(recipe, recipe.task("snips_slots"), "train")
    assert slots[0].tags[2] == "B-artist" and len(slots[0].tokens) == len(slots[0].tags)


def test_clinc_domains_and_oos():
    recipe = load_recipe(ROOT / "models" / "assistant.toml")
    dom = read_examples(recipe, recipe.task("clinc_domain"), "dev")
    intents = read_examples(recipe, recipe.task("clinc_intent"), "dev")
    assert len(dom) == len(intents) == 3100  # 3,000 in-scope + 100 out-of-scope
    assert len({ex.label for ex in dom}) == 11 and len({ex.label for ex in intents}) == 151
    domains = json.loads((ROOT / "models/data/clinc150/domains.json").read_text())
    for d, i in zip(dom, intents):
        assert d.label == "oos" if i.label == "oos" else i.label in domains[d.label]


def test_tagging_labels_align_to_first_word_piece(tok):
    recipe = load_recipe(ROOT / "models" / "assistant.toml")
    t = recipe.task("snips_slots")
    t.max_train_examples, t.max_dev_examples, t.unseen_labels = 200, 50, "drop"
    data = load_task(recipe, t, tok)
    for ids, labels, words, ex in zip(data.dev.input_ids, data.dev.labels, data.dev.word_ids, data.dev_examples):
        assert len(ids) == len(labels) == len(words)
        firsts = [j for j, w in enumerate(words) if w is not None and (j == 0 or words[j - 1] != w)]
        assert [j for j, lab in enumerate(labels) if lab != IGNORE] == firsts
        assert [data.labels[labels[j]] for j in firsts] == ex.tags[: len(firsts)]
    # a word split into several pieces: only its first piece carries the tag
    assert any(len(firsts) < sum(w is not None for w in words) for words in data.dev.word_ids
               for firsts in [[j for j, w in enumerate(words) if w is not None and (j == 0 or words[j - 1] != w)]])


def test_jsonl_and_csv_with_column_mapping(tmp_path, tok):
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"q": "book a table for two", "intent": "restaurant", "toks": ["book", "paris"], "bio": ["O", "B-city"]},
        {"q": "play some jazz", "intent": "music", "toks": ["play", "jazz"], "bio": ["O", "B-genre"]}]))
    (tmp_path / "dev.csv").write_text('q,intent\n"play, loudly, some jazz",music\n')
    recipe = write_recipe(tmp_path, """
name = "m"
backbone = "tiny-random"
[[tasks]]
name = "a"
type = "classification"
format = "jsonl"
train = "train.jsonl"
dev = "train.jsonl"
columns = { text = "q", label = "intent" }
[[tasks]]
name = "b"
type = "classification"
format = "csv"
train = "dev.csv"
dev = "dev.csv"
columns = { text = "q", label = "intent" }
[[tasks]]
name = "c"
type = "tagging"
format = "jsonl"
train = "train.jsonl"
dev = "train.jsonl"
columns = { tokens = "toks", tags = "bio" }
""")
    r = load_recipe(recipe)
    assert read_examples(r, r.task("a"), "train")[1].label == "music"
    assert read_examples(r, r.task("b"), "dev")[0].text == "play, loudly, some jazz"
    d = load_task(r, r.task("c"), tok)
    assert d.labels == ["B-city", "B-genre", "O"]


def test_unseen_dev_label_is_an_error_or_dropped_on_request(tmp_path, tok):
    (tmp_path / "train.tsv").write_text("s\ty\na good film\tpos\na bad film\tneg\n")
    (tmp_path / "dev.tsv").write_text("s\ty\nfine\tpos\nodd\tneutral\n")
    body = """
name = "u"
backbone = "tiny-random"
[[tasks]]
name = "s"
type = "classification"
format = "tsv"
train = "train.tsv"
dev = "dev.tsv"
columns = { text = "s", label = "y" }
"""
    r = load_recipe(write_recipe(tmp_path, body))
    with pytest.raises(UserError, match="dev label 'neutral' never occurs in train.*unseen_labels"):
        load_task(r, r.tasks[0], tok)
    r = load_recipe(write_recipe(tmp_path, body + 'unseen_labels = "drop"\n'))
    d = load_task(r, r.tasks[0], tok)
    assert (len(d.dev), d.dropped_dev, d.labels) == (1, 1, ["neg", "pos"])


@pytest.mark.parametrize("problem, message", [
    ("missing", "not found"), ("empty", "is empty"), ("column", r"column 'sentense' \(columns.text\) not in the header"),
    ("short_row", "fewer than the columns"), ("regression", "regression label 'high' is not a number"),
])
def test_bad_data_files(tmp_path, tok, problem, message):
    good = "sentence\tlabel\nnice\t1\n"
    (tmp_path / "dev.tsv").write_text(good)
    train = {"missing": None, "empty": "", "column": good, "short_row": "sentence\tlabel\nnice\n",
             "regression": "sentence\tlabel\nnice\thigh\n"}[problem]
    if train is not None:
        (tmp_path / "train.tsv").write_text(train)
    col = "sentense" if problem == "column" else "sentence"
    kind = "regression" if problem == "regression" else "classification"
    r = load_recipe(write_recipe(tmp_path, f"""
name = "b"
backbone = "tiny-random"
[[tasks]]
name = "s"
type = "{kind}"
format = "tsv"
train = "train.tsv"
dev = "dev.tsv"
columns = {{ text = "{col}", label = "label" }}
"""))
    with pytest.raises(UserError, match=message) as e:
        load_task(r, r.tasks[0], tok)
    assert "\n" not in str(e.value)


def test_subsets_are_seeded_and_stable(tmp_path):
    r = load_recipe(write_recipe(tmp_path, TINY_TASK))
    a = [ex.text for ex in read_examples(r, r.tasks[0], "train")]
    b = [ex.text for ex in read_examples(r, r.tasks[0], "train")]
    assert a == b and len(a) == 96


def test_shipped_data_matches_its_checksums():
    import hashlib

    for line in (ROOT / "models/data/SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((ROOT / "models/data" / name).read_bytes()).hexdigest() == digest, name


@needs_shared
def test_shipped_data_are_exact_copies_of_shared():
    for name in ("snips/train/seq.in", "clinc150/data_full.json"):
        assert (ROOT / "models/data" / name).read_bytes() == (SHARED / name).read_bytes()
