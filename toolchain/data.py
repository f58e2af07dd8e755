"""Task data: readers for the supported file formats, label maps, and tokenization.

Formats (recipe key `format`):
  tsv       tab-separated, read with quoting OFF (GLUE's files contain bare '"'), UTF-8 with or
            without BOM; `header = false` for files such as CoLA's, then columns are 0-based indices
  csv       comma-separated with standard quoting
  jsonl     one JSON object per line; tagging tasks give `tokens` and `tags` as lists
  seqio     the SNIPS / ATIS folder layout: seq.in (words), seq.out (BIO tags), label (intent)
  clinc150  the oos-eval JSON (`train`, `val`, `test` and `oos_*` lists of [text, intent]);
            `columns.label = "domain"` maps intents to domains through the sibling domains.json
  hf        a Hugging Face `datasets` dataset: a folder saved with save_to_disk, or a name for
            load_dataset (needs `pip install datasets`)
"""

import csv
import hashlib
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from toolchain import UserError

IGNORE = -100  # label id of word pieces that carry no tag (continuations, [CLS], [SEP])
csv.field_size_limit(sys.maxsize)


@dataclass
class Example:
    text: str | None = None
    text_pair: str | None = None
    tokens: list | None = None
    label: str | float | None = None
    tags: list | None = None


@dataclass
class Encoded:
    """Token ids ready for the model, one list per example, plus label ids."""

    input_ids: list
    type_ids: list
    labels: list  # int (classification), float (regression) or list of int (tagging, per piece)
    word_ids: list = field(default_factory=list)  # tagging: word index of each piece, None if none

    def __len__(self):
        return len(self.input_ids)

    def fingerprint(self) -> str:
        """Identifies the model inputs exactly: used as the data part of cache keys."""
        h = hashlib.sha256()
        for ids, tt in zip(self.input_ids, self.type_ids):
            h.update(json.dumps([ids, tt]).encode())
        return h.hexdigest()


@dataclass
class TaskData:
    train: Encoded
    dev: Encoded
    labels: list  # label names (classification) or tag names (tagging); [] for regression
    dev_examples: list
    dropped_dev: int = 0
    notes: list = field(default_factory=list)  # one line per silent loss (truncated entities, labels lost to a cap)


# --------------------------------------------------------------------------------------------
# Readers


def read_examples(recipe, task, split: str, cap: bool = True) -> list:
    """Read the train, dev or test split of a task as Examples, checking files and columns; `cap`: keep
    the task's max_train_examples / max_dev_examples (a seeded random subset; the test split is never cut)."""
    spec = {"train": task.train, "dev": task.dev, "test": task.test}[split]
    if not spec:
        raise UserError(f"task {task.name!r} has no {split} split; add `{split} = ...` to the task in the recipe")
    path = recipe.resolve(spec)
    if task.format == "hf" and not path.exists():
        path = spec  # a dataset name for load_dataset
    where = f"task {task.name!r} {split} data {spec}"
    if task.format != "hf":
        _check_exists(Path(path), task, where)
    reader = {"tsv": _read_delimited, "csv": _read_delimited, "jsonl": _read_jsonl, "seqio": _read_seqio,
              "clinc150": _read_clinc, "hf": _read_hf, "conll": _read_conll}[task.format]
    try:
        examples = reader(path, task, split, where)
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 text (bad byte at offset {e.start}); save the data as UTF-8") from None
    except csv.Error as e:
        raise UserError(f"{where}: not readable as {task.format} ({e}); check the file and format") from None
    if not examples:
        raise UserError(f"{where}: no examples found; check the file and the recipe's format")
    limit = {"train": task.max_train_examples, "dev": task.max_dev_examples}.get(split, 0)
    return _cap(examples, limit) if cap else examples


def _cap(examples: list, limit: int) -> list:
    if limit and limit < len(examples):
        keep = sorted(random.Random(0).sample(range(len(examples)), limit))
        examples = [examples[i] for i in keep]
    return examples


def choice_split(examples: list, fraction: float, seed: int) -> tuple:
    """(rest, held): a seeded `fraction` of the rows held out, both in file order. It depends only on the
    number of rows, so tasks that read one file (SNIPS intent and slots) hold out the same rows."""
    held = set(random.Random(seed).sample(range(len(examples)), max(1, round(fraction * len(examples)))))
    return ([ex for i, ex in enumerate(examples) if i not in held],
            [ex for i, ex in enumerate(examples) if i in held])


def choice_examples(recipe, task) -> list:
    """The training rows [plan] choose_on = "train-split" holds out of every run and chooses on."""
    full = read_examples(recipe, task, "train", cap=False)
    return choice_split(full, recipe.plan.split_fraction, recipe.train.seed)[1]


def _check_exists(path: Path, task, where: str) -> None:
    if task.format == "seqio":
        for name in _seqio_files(task):
            if not (path / name).is_file():
                raise UserError(f"{where}: {path / name} not found; a seqio folder holds "
                                f"{', '.join(_seqio_files(task))} for a {task.type} task")
        if (path / "seq.in").stat().st_size == 0:
            raise UserError(f"{where}: {path / 'seq.in'} is empty; point the recipe at a non-empty split")
        return
    if not path.is_file():
        raise UserError(f"{where}: file {path} not found; fix the path in the recipe (relative to the recipe's folder)")
    if path.stat().st_size == 0:
        raise UserError(f"{where}: file {path} is empty; point the recipe at a non-empty data file")


def _example(task, get, where) -> Example:
    """Build an Example through `get(role)`, which raises KeyError for a missing column."""
    cols = task.columns
    if task.type == "tagging":
        tokens, tags = get(cols["tokens"]), get(cols["tags"])
        if isinstance(tokens, str):
            tokens, tags = tokens.split(), tags.split()
        if len(tokens) != len(tags):
            raise UserError(f"{where}: {len(tokens)} tokens but {len(tags)} tags in {' '.join(tokens)[:60]!r}")
        return check_labels(task, Example(tokens=list(tokens), tags=list(tags)), where)
    ex = Example(text=str(get(cols["text"])), label=get(cols["label"]))
    if "text_pair" in cols:
        ex.text_pair = str(get(cols["text_pair"]))
    return check_labels(task, ex, where)


def check_labels(task, ex: Example, where: str) -> Example:
    """`ex` if its labels can be learned: a regression label is a finite number; a class or tag is a
    non-empty name without NUL (an empty field or a stray NUL would otherwise become a class of its own)."""
    if task.type == "regression":
        try:
            value = float(ex.label)
        except (TypeError, ValueError):
            raise UserError(f"{where}: regression label {ex.label!r} is not a number; check columns.label") from None
        if not math.isfinite(value):
            raise UserError(f"{where}: regression label {ex.label!r} is not a finite number; fix or remove the row")
        return ex
    for label in ex.tags if task.type == "tagging" else [ex.label]:
        what = "tag" if task.type == "tagging" else "label"
        if label is None or isinstance(label, (dict, list)) or (isinstance(label, float) and not math.isfinite(label)):
            raise UserError(f"{where}: {what} {label!r} is not a {what} name; fix the row")
        if "\x00" in str(label):
            raise UserError(f"{where}: {what} {str(label)[:40]!r} holds a NUL character; fix the row")
        if not str(label).strip():
            raise UserError(f"{where}: empty {what}; give every row its {what}, or remove the row")
    return ex


def _read_delimited(path, task, split, where):
    delim = "\t" if task.format == "tsv" else ","
    quoting = csv.QUOTE_NONE if task.format == "tsv" else csv.QUOTE_MINIMAL
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter=delim, quoting=quoting))
    header = rows.pop(0) if task.header and rows else None
    index = {}
    for role, col in task.columns.items():
        if isinstance(col, int):
            index[col] = col
        elif header is None:
            raise UserError(f"{where}: columns.{role} = {col!r} is a name but header = false; use a 0-based index")
        elif col not in header:
            raise UserError(f"{where}: column {col!r} (columns.{role}) not in the header; columns are: "
                            f"{', '.join(header)}")
        else:
            index[col] = header.index(col)
    out = []
    for n, row in enumerate(rows, start=2 if header else 1):
        if not row:
            continue
        try:
            out.append(_example(task, lambda c, row=row: row[index[c]], f"{where} line {n}"))
        except IndexError:
            raise UserError(f"{where} line {n}: {len(row)} fields, fewer than the columns the recipe names") from None
    return out


def _read_jsonl(path, task, split, where):
    out = []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where} line {n}: not valid JSON ({e.msg})") from None
            try:
                out.append(_example(task, lambda c, obj=obj: obj[c], f"{where} line {n}"))
            except KeyError as e:
                raise UserError(f"{where} line {n}: key {e.args[0]!r} missing; keys are: {', '.join(obj)}") from None
    return out


def _seqio_files(task) -> tuple:
    return ("seq.in", "seq.out") if task.type == "tagging" else ("seq.in", "label")


def _read_seqio(path, task, split, where):
    """SNIPS/ATIS folders: seq.in (words), seq.out (one tag per word) and label (one intent per line);
    a tagging task needs no label file, a classification task no seq.out."""
    path = Path(path)
    lines = {n: (path / n).read_text(encoding="utf-8").splitlines() for n in _seqio_files(task)}
    if len({len(v) for v in lines.values()}) > 1:
        raise UserError(f"{where}: {' and '.join(lines)} have {' and '.join(str(len(v)) for v in lines.values())} "
                        "lines; they must match")
    words = [line.split() for line in lines["seq.in"]]
    tags = [line.split() for line in lines.get("seq.out", [])]
    intents = lines.get("label", [])
    if task.type == "tagging":
        for n, (w, t) in enumerate(zip(words, tags), start=1):
            if len(w) != len(t):
                raise UserError(f"{where} line {n}: {len(w)} words but {len(t)} tags")
        return [check_labels(task, Example(tokens=w, tags=t), f"{where} line {n}")
                for n, (w, t) in enumerate(zip(words, tags), start=1) if w]
    return [check_labels(task, Example(text=" ".join(w), label=i.strip()), f"{where} line {n}")
            for n, (w, i) in enumerate(zip(words, intents), start=1) if w]


def _read_conll(path, task, split, where):
    """CoNLL columns: one token per line (token ... tag), a blank line between sentences, -DOCSTART-
    lines skipped. columns.tokens / columns.tags are field indexes (default 0 and -1, the last)."""
    tok_col, tag_col = task.columns.get("tokens", 0), task.columns.get("tags", -1)
    out, tokens, tags, start = [], [], [], 1
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if tokens:
                    out.append(check_labels(task, Example(tokens=tokens, tags=tags), f"{where} lines {start}-{n - 1}"))
                tokens, tags, start = [], [], n + 1
                continue
            try:
                tokens.append(fields[tok_col])
                tags.append(fields[tag_col])
            except IndexError:
                raise UserError(f"{where} line {n}: {len(fields)} fields, fewer than columns.tokens = {tok_col} / "
                                f"columns.tags = {tag_col} need") from None
    if tokens:
        out.append(check_labels(task, Example(tokens=tokens, tags=tags), f"{where} lines {start}-{n}"))
    return out


def _read_clinc(path, task, split, where):
    name = {"train": task.train_split or "train", "dev": task.dev_split or "val",
            "test": task.test_split or "test"}[split]
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg})") from None
    if name not in data:
        raise UserError(f"{where}: split {name!r} not in the file; splits are: {', '.join(data)}")
    rows = data[name] + data.get(f"oos_{name}", [])
    target = task.columns.get("label", "intent")
    if target == "domain":
        domains_file = Path(path).parent / "domains.json"
        if not domains_file.is_file():
            raise UserError(f"{where}: columns.label = 'domain' needs {domains_file} beside the data file")
        domain = {i: d for d, intents in json.loads(domains_file.read_text()).items() for i in intents}
        domain["oos"] = "oos"
        return [check_labels(task, Example(text=t, label=domain[i]), f"{where} {name} row {n}")
                for n, (t, i) in enumerate(rows)]
    if target != "intent":
        raise UserError(f"{where}: columns.label = {target!r}; clinc150 offers 'intent' or 'domain'")
    return [check_labels(task, Example(text=t, label=i), f"{where} {name} row {n}") for n, (t, i) in enumerate(rows)]


def _read_hf(path, task, split, where):
    try:
        import datasets
    except ImportError:
        raise UserError(f"{where}: format 'hf' needs the datasets package; run: pip install datasets") from None
    name = {"train": task.train_split or "train", "dev": task.dev_split or "validation",
            "test": task.test_split or "test"}[split]
    try:
        ds = datasets.load_from_disk(str(path)) if Path(path).is_dir() else datasets.load_dataset(str(path))
        ds = ds[name]
    except KeyError:
        raise UserError(f"{where}: split {name!r} not in the dataset; set train_split / dev_split") from None
    except Exception as e:  # noqa: BLE001 - any loader failure is the user's dataset problem
        raise UserError(f"{where}: could not load the dataset ({type(e).__name__}: {str(e)[:120]})") from None
    names = ds.features.get("label")
    names = getattr(names, "names", None)
    out = []
    for n, row in enumerate(ds):
        try:
            ex = _example(task, lambda c, row=row: row[c], f"{where} row {n}")
        except KeyError as e:
            raise UserError(f"{where}: column {e.args[0]!r} not in the dataset; columns are: "
                            f"{', '.join(ds.column_names)}") from None
        if names and isinstance(ex.label, int) and task.type == "classification":
            ex.label = names[ex.label]
        out.append(ex)
    return out


# --------------------------------------------------------------------------------------------
# Labels and encoding


def label_names(task, train: list) -> list:
    if task.type == "regression":
        return []
    if task.type == "tagging":
        return sorted({t for ex in train for t in ex.tags})
    return sorted({str(ex.label) for ex in train})


def positive_id(task, labels) -> int | None:
    """The id of the task's positive_label (binary F1), checked against the labels the data has."""
    if task.metric != "f1":
        return None
    if task.positive_label not in labels:
        raise UserError(f"task {task.name!r}: positive_label {task.positive_label!r} is not one of its labels "
                        f"({', '.join(map(str, labels[:10]))}); fix positive_label in the recipe")
    return labels.index(task.positive_label)


def unseen(task, ex, known) -> str | None:
    """The first label of `ex` missing from `known`, or None."""
    if task.type == "tagging":
        bad = [t for t in ex.tags if t not in known]
        return bad[0] if bad else None
    if task.type == "classification" and str(ex.label) not in known:
        return str(ex.label)
    return None


def load_task(recipe, task, tokenizer) -> TaskData:
    """Read, check and encode one task's train and dev splits; with [plan] choose_on = "train-split" the
    rows it chooses on are left out of train first (then the train cap applies)."""
    full = read_examples(recipe, task, "train", cap=False)
    if recipe.plan.choose_on == "train-split":
        full, held = choice_split(full, recipe.plan.split_fraction, recipe.train.seed)
        if not full:
            raise UserError(f"task {task.name!r}: its {len(held)} training row(s) are all held out to choose on "
                            "([plan] choose_on = \"train-split\"); add training rows or set choose_on = \"dev\"")
    train = _cap(full, task.max_train_examples)
    dev = read_examples(recipe, task, "dev")
    labels = label_names(task, train)
    positive_id(task, labels)  # metric f1: its positive label must be one of them
    known = set(labels)
    notes = []
    lost = sorted(set(label_names(task, full)) - known)
    if lost:
        notes.append(f"task {task.name!r}: the train cap of {task.max_train_examples} examples keeps "
                     f"{len(labels)} of {len(labels) + len(lost)} labels (lost: {', '.join(lost[:5])}"
                     f"{', ...' if len(lost) > 5 else ''}); raise --max-train or max_train_examples")
    kept, dropped = [], 0
    for ex in dev:
        bad = unseen(task, ex, known)
        if bad is None:
            kept.append(ex)
        elif task.unseen_labels == "drop":
            dropped += 1
        else:
            raise UserError(f"task {task.name!r}: dev label {bad!r} never occurs in train; fix the data or set "
                            "unseen_labels = \"drop\" in the task to skip such dev rows")
    if not kept:
        raise UserError(f"task {task.name!r}: every dev row has a label unseen in train; check the label column")
    if dropped:
        notes.append(f"task {task.name!r}: {dropped} of {len(dev)} dev rows have a label unseen in train and are "
                     "not scored (unseen_labels = \"drop\")")
    max_len = recipe.seq_len(task)
    dev_enc = encode(kept, tokenizer, task, labels, max_len, f"task {task.name!r} dev")
    if task.type == "tagging":
        cut, total = truncated_entities(kept, dev_enc)
        if cut:
            notes.append(f"task {task.name!r}: {cut} of {total} dev entities lie beyond max_seq_len {max_len} and "
                         "are not scored; raise the task's max_seq_len")
    return TaskData(train=encode(train, tokenizer, task, labels, max_len, f"task {task.name!r} train"),
                    dev=dev_enc, labels=labels, dev_examples=kept, dropped_dev=dropped, notes=notes)


def truncated_entities(examples, encoded) -> tuple:
    """(entities whose first word was cut by truncation, all entities) over tagged examples."""
    cut = total = 0
    for ex, word_ids in zip(examples, encoded.word_ids):
        kept = max((w for w in word_ids if w is not None), default=-1)
        starts = [i for i, t in enumerate(ex.tags)
                  if t.startswith("B-") or (t.startswith("I-") and (i == 0 or ex.tags[i - 1][2:] != t[2:]))]
        total += len(starts)
        cut += sum(i > kept for i in starts)
    return cut, total


def encode(examples, tokenizer, task, labels, max_len, where="") -> Encoded:
    tokenizer.enable_truncation(max_length=max_len)
    index = {name: i for i, name in enumerate(labels)}
    if task.type == "tagging":
        encs = tokenizer.encode_batch([ex.tokens for ex in examples], is_pretokenized=True)
        out = Encoded([e.ids for e in encs], [e.type_ids for e in encs], [], [])
        for ex, e in zip(examples, encs):
            word_ids = e.word_ids
            seen, piece_labels = set(), []
            for w in word_ids:  # tag the first piece of each word; continuations are ignored
                if w is None or w in seen:
                    piece_labels.append(IGNORE)
                else:
                    seen.add(w)
                    piece_labels.append(index.get(ex.tags[w], IGNORE))
            out.labels.append(piece_labels)
            out.word_ids.append(word_ids)
        return out
    if any(ex.text_pair is not None for ex in examples):
        encs = tokenizer.encode_batch([(ex.text, ex.text_pair or "") for ex in examples])
    else:
        encs = tokenizer.encode_batch([ex.text for ex in examples])
    if task.type == "regression":
        labels_out = []
        for ex in examples:
            try:
                labels_out.append(float(ex.label))
            except (TypeError, ValueError):
                raise UserError(f"{where}: regression label {ex.label!r} is not a number; check columns.label") from None
    else:
        labels_out = [index.get(str(ex.label), IGNORE) for ex in examples]
    return Encoded([e.ids for e in encs], [e.type_ids for e in encs], labels_out)
