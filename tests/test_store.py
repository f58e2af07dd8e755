"""Merging and the branch lifecycle: the guarantees of issue 3, on real SNIPS / CLINC text."""

import hashlib
import json
import re
import shutil

import pytest
import torch
from conftest import ROOT, write_recipe
from safetensors.torch import load_file, save_file

from toolchain import UserError, backbone, infer, store
from toolchain.branch_config import FILE, WEIGHTS, BranchConfig
from toolchain.config import load_recipe
from toolchain.distill import run_distill
from toolchain.model import TaskModel, build_trunk
from toolchain.train import run_sweep
from toolchain.workspace import Workspace

TEXTS = [line.strip() for line in (ROOT / "models/data/snips/test/seq.in").read_text().splitlines()[:24]]
TEXTS += ["what is my checking account balance", "how do i say thank you in french",
          "wake me up at 6 am tomorrow", "", "a" * 500]


def digest(path):
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Teachers (L = 1 and 3) and 1-layer students for the three tasks of the tiny recipe."""
    out = tmp_path_factory.mktemp("runs")
    recipe = load_recipe(ROOT / "models" / "tiny.toml").override(epochs=1)
    run_sweep(recipe, Workspace(out), layers=[1, 3])
    sel = json.loads((out / "selected.json").read_text())
    for t in sel:  # distil from the 3-layer teachers whatever the sweep picked
        sel[t]["run"] = f"runs/{t}/L3-s0"
    (out / "selected.json").write_text(json.dumps(sel))
    run_distill(recipe, Workspace(out), layers=[1])
    return out, recipe, backbone.load("tiny-random")


def outputs(store_dir, names=None):
    model, tok, _ = store.load_merged(store_dir, names)
    _, b = infer.encode(tok, TEXTS, max_len=32)
    with torch.no_grad():
        return model(**b._asdict())


def make_store(tmp_path, out, bb, runs_):
    store.create(tmp_path / "store", bb, "tiny-random", [out / r for r in runs_])
    return tmp_path / "store"


def test_merged_output_equals_each_single_task_model(runs, tmp_path):
    out, _, bb = runs
    chosen = ["distill/snips_intent/l1-from-L3-s0", "runs/snips_slots/L1-s0", "runs/clinc_domain/L3-s0"]
    sd = make_store(tmp_path, out, bb, chosen)
    merged = outputs(sd)
    tok = bb.tokenizer()
    _, b = infer.encode(tok, TEXTS, max_len=32)
    for run in chosen:
        meta = BranchConfig.load(out / run)
        single = TaskModel(build_trunk(bb.cfg, bb.state, meta.attach), store.load_branch(bb.cfg, out / run)).eval()
        with torch.no_grad():
            ref = single(**b._asdict())
        diff = (ref - merged[meta.task]).abs().max().item()
        assert diff <= 1e-5, (run, diff)
    assert {m.task: (m.attach, m.layers) for m in store.list_branches(sd)} == {
        "snips_intent": (1, 1), "snips_slots": (3, 1), "clinc_domain": (1, 3)}


def test_add_update_remove_leave_other_tasks_untouched(runs, tmp_path):
    out, _, bb = runs
    sd = make_store(tmp_path, out, bb, ["runs/snips_intent/L3-s0", "runs/clinc_domain/L1-s0"])

    def change(task, op, *args):
        """Apply one change to `task`; every other task's outputs and files must stay exactly as they were."""
        others = [n for n in store.branch_names(sd) if n != task]
        before_out, before_files = outputs(sd, others), digest(sd)
        op(sd, *args)
        now_out, now_files = outputs(sd, others), digest(sd)
        for name in others:
            assert torch.equal(now_out[name], before_out[name]), name
        for f, h in before_files.items():
            if not f.startswith(f"branches/{task}/"):
                assert now_files.get(f) == h, f

    change("snips_slots", store.add, out / "runs/snips_slots/L3-s0")  # attaches deeper: the trunk runs further
    change("snips_slots", store.update, out / "runs/snips_slots/L1-s0")
    change("snips_intent", store.update, out / "distill/snips_intent/l1-from-L3-s0")
    assert BranchConfig.load(sd / "branches/snips_intent").layers == 1
    change("snips_slots", store.remove, "snips_slots")
    assert store.branch_names(sd) == ["clinc_domain", "snips_intent"]
    assert not any(p.name.startswith(".") for p in (sd / "branches").iterdir())


def test_branch_trained_on_another_trunk_is_refused(runs, tmp_path):
    out, _, bb = runs
    other = tmp_path / "other-bert"
    shutil.copytree(backbone.resolve("tiny-random"), other)
    w = load_file(str(other / "model.safetensors"))
    w["encoder.layer.0.attention.self.query.bias"] += 0.01
    save_file(w, str(other / "model.safetensors"))
    recipe = load_recipe(write_recipe(tmp_path, (ROOT / "models/tiny.toml").read_text()
                                      .replace('"tiny-random"', f'"{other}"').replace('"data/', '"@DATA@/')))
    run_sweep(recipe, Workspace(tmp_path / "o2"), tasks=["snips_intent"], layers=[2])
    sd = make_store(tmp_path, out, bb, ["runs/clinc_domain/L1-s0"])
    before = digest(sd)
    with pytest.raises(UserError, match="trained on another trunk"):
        store.add(sd, tmp_path / "o2/runs/snips_intent/L2-s0")
    assert digest(sd) == before


def test_attach_depth_beyond_the_trunk_is_refused(runs, tmp_path):
    out, _, bb = runs
    sd = make_store(tmp_path, out, bb, ["runs/clinc_domain/L1-s0"])
    bad = tmp_path / "deep"
    shutil.copytree(out / "runs/snips_intent/L1-s0", bad)
    meta = json.loads((bad / FILE).read_text())
    meta["attach"] = 9
    (bad / FILE).write_text(json.dumps(meta))
    before = digest(sd)
    with pytest.raises(UserError, match="attaches at depth 9 with 1 layers, beyond the 4-layer trunk"):
        store.add(sd, bad)
    assert digest(sd) == before


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(heads=2), "unknown key 'heads'"),
    (lambda m: m.pop("attach"), "lacks 'attach'"),
    (lambda m: m.update(layers="1"), "layers = '1' is not of type int"),
    (lambda m: m.update(attach=True), "attach = True is not of type int"),
    (lambda m: m.update(type="ranking"), "type 'ranking' is not one of"),
    (lambda m: m.update(task="../x"), "task"),
    (lambda m: m.update(distilled_from={"run": "r"}), "distilled_from has keys ['run']"),
    (lambda m: m.pop("seed"), "lacks 'seed'"),  # every key a branch always has is required ...
    (lambda m: m.update(dev_metric=None), "dev_metric = None is not of type"),  # ... and not null
])
def test_branch_json_is_a_typed_config_that_refuses_unknown_missing_or_mistyped_keys(runs, tmp_path, edit, message):
    out, _, _ = runs
    good = BranchConfig.load(out / "runs/snips_intent/L1-s0")
    assert BranchConfig.from_json(good.to_json(), "x") == good  # save and load round-trip
    assert good.weights_sha256 and good.n_out == len(good.labels)
    bad = tmp_path / "bad"
    shutil.copytree(out / "runs/snips_intent/L1-s0", bad)
    meta = json.loads((bad / FILE).read_text())
    edit(meta)
    (bad / FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match=re.escape(message)):
        BranchConfig.load(bad)


def one_line(code, err, needle):
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


@pytest.mark.parametrize("case", ["missing branch", "task already in store", "unknown task", "corrupted weights",
                                  "mismatched weights", "duplicate task in merge"])
def test_bad_branch_input_leaves_the_store_unchanged(runs, tmp_path, cli, case):
    out, _, bb = runs
    sd = make_store(tmp_path, out, bb, ["runs/clinc_domain/L1-s0", "runs/snips_intent/L1-s0"])
    before = digest(sd)
    broken = tmp_path / "broken"
    shutil.copytree(out / "runs/snips_slots/L1-s0", broken)
    if case == "missing branch":
        code, _, err = cli("branch", "add", sd, tmp_path / "nowhere")
        one_line(code, err, "not found")
    elif case == "task already in store":
        code, _, err = cli("branch", "add", sd, out / "runs/snips_intent/L3-s0")
        one_line(code, err, "already in the store")
    elif case == "duplicate task in merge":
        with pytest.raises(UserError, match="duplicate task name 'snips_intent'"):
            store.create(tmp_path / "s2", bb, "tiny-random",
                         [out / "runs/snips_intent/L1-s0", out / "runs/snips_intent/L3-s0"])
        assert not (tmp_path / "s2").exists()
    elif case == "unknown task":
        code, _, err = cli("branch", "remove", sd, "weather")
        one_line(code, err, "'weather' is not in the store; it has: clinc_domain, snips_intent")
    elif case == "corrupted weights":
        data = (broken / WEIGHTS).read_bytes()
        (broken / WEIGHTS).write_bytes(data[: len(data) // 2])
        code, _, err = cli("branch", "add", sd, broken)
        one_line(code, err, "branch.safetensors is unreadable")
    else:
        meta = json.loads((broken / FILE).read_text())
        meta["labels"] = meta["labels"][:-1]
        (broken / FILE).write_text(json.dumps(meta))
        code, _, err = cli("branch", "update", sd, broken)
        one_line(code, err, "weights do not fit its branch.json")
    assert digest(sd) == before


def test_a_store_from_a_newer_toolchain_says_upgrade_and_an_older_one_says_rebuild(runs, tmp_path, cli):
    out, _, bb = runs
    sd = make_store(tmp_path, out, bb, ["runs/clinc_domain/L1-s0"])
    meta = json.loads((sd / "store.json").read_text())
    for schema, advice in ((store.STORE_FORMAT + 1, "written by a newer ctb-mobile (this one reads 1); upgrade ctb-mobile"),
                           (0, "schema 0, this toolchain reads 1; rebuild the store with `ctb-mobile merge --force`")):
        (sd / "store.json").write_text(json.dumps({**meta, "schema": schema}))
        code, _, err = cli("predict", sd, "play some jazz")
        one_line(code, err, advice)
        assert ("rebuild" in err) == (schema == 0)


def test_tampered_trunk_is_detected(runs, tmp_path):
    out, _, bb = runs
    sd = make_store(tmp_path, out, bb, ["runs/clinc_domain/L1-s0"])
    w = load_file(str(sd / "trunk.safetensors"))
    w["layers.0.query.weight"][0, 0] += 1e-3
    save_file(w, str(sd / "trunk.safetensors"))
    with pytest.raises(UserError, match="does not match the store's fingerprint"):
        store.load_merged(sd)


def test_cli_merge_plan_report_and_predict(runs, tmp_path, cli):
    out, _, _ = runs
    recipe = write_recipe(tmp_path, (ROOT / "models/tiny.toml").read_text().replace('"data/', '"@DATA@/'))
    code, text, err = cli("plan", recipe, "--out", out, "--threshold", "0.5")
    assert code == 0, err
    plan = json.loads((out / "plan.json").read_text())
    assert set(plan["tasks"]) == {"snips_intent", "snips_slots", "clinc_domain"}
    assert f"= {plan['overhead']['total_layers']} transformer layers" in text and plan["criterion"] == "mixed"
    by_cost = write_recipe(tmp_path, (ROOT / "models/tiny.toml").read_text().replace('"data/', '"@DATA@/').replace(
        "[select]", '[plan]\ncriterion = "cost"\nmax_cost = 0.5\n\n[select]'), "cost.toml")
    code, text, err = cli("plan", by_cost, "--out", out)  # the recipe's criterion, no flag
    assert code == 0, err
    assert (json.loads((out / "plan.json").read_text())["criterion"], "max cost 50%" in text) == ("cost", True)
    code, text, err = cli("plan", recipe, "--out", out, "--threshold", "0.5")
    assert code == 0, err
    code, text, err = cli("report", recipe, "--out", out)
    assert code == 0 and "| KD-1 |" in text and "| Teacher (w/o KD) |" in text, err
    code, text, err = cli("merge", recipe, "--out", out, "--store", tmp_path / "st")
    assert code == 0, err
    code, _, err = cli("merge", recipe, "--out", out, "--store", tmp_path / "st")
    one_line(code, err, "already exists")
    code, text, err = cli("predict", tmp_path / "st", "play the new album by adele", "")
    assert code == 0, err
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == 2 and set(rows[0]) == {"text", "snips_intent", "snips_slots", "clinc_domain"}
    assert rows[0]["snips_intent"]["label"] in json.loads(
        (out / "runs/snips_intent/L1-s0" / FILE).read_text())["labels"]
