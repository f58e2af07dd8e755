import pytest
from conftest import ROOT, TINY_TASK, write_recipe

from toolchain import UserError
from toolchain.config import load_recipe


@pytest.mark.parametrize("path", sorted((ROOT / "models").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe.tasks and all(t.metric for t in recipe.tasks)


def test_assistant_recipe_is_the_documented_default():
    r = load_recipe(ROOT / "models" / "assistant.toml")
    assert r.backbone == "minilm"
    assert [t.name for t in r.tasks] == ["snips_intent", "snips_slots", "clinc_domain", "clinc_intent"]
    # issue 13's first tier without flags: one-layer students at depths 2-4 on the recipe's texts, planned by cost
    assert (r.distill.layers, r.distill.attach, r.distill.transfer) == ([1], [2, 3, 4], "recipe")
    assert (r.plan.criterion, r.plan.max_cost) == ("cost", 0.35)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace('max_seq_len = 32', 'max_seq_len = 32\nbackbon = "x"'), "unknown key 'backbon'"),
    (lambda s: s.replace("epochs = 2", "epoch = 2"), "unknown key 'epoch'"),
    (lambda s: s.replace('type = "classification"', 'type = "classify"'), "type = 'classify' is not valid"),
    (lambda s: s.replace('format = "seqio"', 'format = "xml"'), "format = 'xml' is not valid"),
    (lambda s: s.replace("epochs = 2", "epochs = 0"), "epochs = 0 must be a positive number"),
    (lambda s: s.replace("epochs = 2", 'epochs = "two"'), "epochs = 'two' must be of type int"),
    (lambda s: s.replace("lr = 1e-3", "lr = 1e-3\nwarmup_ratio = 1.5"), "warmup_ratio = 1.5"),
    (lambda s: s + '\n[[tasks]]\nname = "intent"\ntype = "regression"\nformat = "tsv"\ntrain = "a"\ndev = "b"\n'
     'columns = { text = "s", label = "y" }\n', "duplicate task name 'intent'"),
    (lambda s: s.split("[[tasks]]")[0], "no [[tasks]]"),
    (lambda s: s.replace('format = "seqio"', 'format = "tsv"'), "needs columns.text"),
    (lambda s: s.replace('max_seq_len = 32', 'max_seq_len = 32\n[select]\nrule = "best"'), "rule = 'best'"),
    (lambda s: s + 'metric = "bleu"\n', "metric = 'bleu' is not valid"),
    (lambda s: s + "training = { lrr = 1.0 }\n", "unknown key 'lrr'"),
    (lambda s: s.replace("[train]", "[train"), "not valid TOML"),
    (lambda s: s.replace('max_seq_len = 32', 'max_seq_len = 32\n[export]\nmin_agreement = 99'),
     "min_agreement = 99.0 must be between 0 and 1"),
    (lambda s: s.replace('max_seq_len = 32', 'max_seq_len = 32\n[export]\nmin_agreement = "high"'),
     "min_agreement = 'high' must be of type float"),
    (lambda s: s.replace('max_seq_len = 32', 'max_seq_len = 32\n[export]\nonnx_int8 = "sym"'),
     "onnx_int8 = 'sym' is not valid; use one of: asymmetric, symmetric"),
    (lambda s: s.replace('max_seq_len = 32', 'max_seq_len = 32\n[distill]\nattach = [3, -1]'),
     "attach = [3, -1] must be a list of integers >= 0, e.g. attach = [2, 3, 4]"),
    (lambda s: s.replace('max_seq_len = 32', 'max_seq_len = 32\n[distill]\nlayers = []'),
     "layers = [] must be a list of integers >= 1"),
    (lambda s: s.replace('max_seq_len = 32', 'max_seq_len = 32\n[distill]\nlayers = ["1"]'),
     "layers = ['1'] must be a list of integers >= 1"),
    (lambda s: s.replace('max_seq_len = 32', 'max_seq_len = 32\n[distill]\nattach = 3'),
     "attach = 3 must be of type list"),
    (lambda s: s.replace('max_seq_len = 32', 'max_seq_len = 32\n[plan]\ncriterion = "cheap"'),
     "criterion = 'cheap' is not valid; use one of: mixed, best, cost"),
])
def test_bad_recipes_give_one_line_errors(tmp_path, edit, message):
    path = write_recipe(tmp_path, edit(TINY_TASK))
    with pytest.raises(UserError) as e:
        load_recipe(path)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_export_guard_settings(tmp_path):
    body = TINY_TASK.replace("max_seq_len = 32", "max_seq_len = 32\n[export]\nmin_agreement = 0.98\nmax_metric_drop = 2")
    recipe = load_recipe(write_recipe(tmp_path, body))
    assert recipe.export.min_agreement == 0.98 and recipe.export.max_metric_drop == 2.0
    assert load_recipe(write_recipe(tmp_path, TINY_TASK, "d.toml")).export.min_agreement is None


def test_per_task_training_overrides(tmp_path):
    r = load_recipe(write_recipe(tmp_path, TINY_TASK + "training = { lr = 0.5, epochs = 7 }\n"))
    cfg = r.train_for(r.tasks[0])
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (0.5, 7, 16)


def test_students_train_for_the_distill_epochs_and_epochs_overrides_both(tmp_path):
    body = TINY_TASK.replace("max_seq_len = 32", "max_seq_len = 32\n[distill]\nepochs = 10")
    r = load_recipe(write_recipe(tmp_path, body))
    task = r.tasks[0]
    assert (r.train_for(task).epochs, r.distill_for(task).epochs) == (r.train.epochs, 10)
    assert r.distill_for(task).lr == r.train_for(task).lr
    from toolchain.distill import settings

    assert settings(r, task)["epochs"] == 10  # a student's result is keyed by the epochs it trained for
    r.override(epochs=2)
    assert (r.train_for(task).epochs, r.distill_for(task).epochs) == (2, 2)
    assert settings(r, task)["epochs"] == 2
    plain = load_recipe(write_recipe(tmp_path, TINY_TASK, "p.toml"))
    assert plain.distill_for(plain.tasks[0]) == plain.train_for(plain.tasks[0])
    with pytest.raises(UserError, match="epochs = -1 must be >= 0"):
        load_recipe(write_recipe(tmp_path, body.replace("epochs = 10", "epochs = -1"), "n.toml"))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_recipe(tmp_path / "nope.toml")
