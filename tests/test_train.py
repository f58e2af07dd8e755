import json

import pytest
import torch
from conftest import TINY_TASK, write_recipe
from safetensors.torch import load_file

import toolchain.model
import toolchain.train
from toolchain import UserError, backbone
from toolchain.config import SelectConfig, load_recipe
from toolchain.data import load_task
from toolchain.train import make_accelerator, run_sweep, select_layers, train_one


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    recipe = load_recipe(write_recipe(tmp, TINY_TASK))
    bb = backbone.load(recipe.backbone)
    data = load_task(recipe, recipe.tasks[0], bb.tokenizer())
    return recipe, bb, data, make_accelerator("no")


def test_frozen_parameters_are_bit_identical_after_training(setup, tmp_path, monkeypatch):
    recipe, bb, data, acc = setup
    before = {k: v.clone() for k, v in bb.state.items()}
    built = []
    real_build = toolchain.model.build_trunk
    monkeypatch.setattr(toolchain.model, "build_trunk", lambda *a: built.append(real_build(*a)) or built[-1])
    result = train_one(recipe, bb, recipe.tasks[0], data, 2, 0, tmp_path / "run", acc, use_cache=False)
    trunk = built[0]
    fresh = real_build(bb.cfg, bb.state, 2)
    assert trunk.depth == 2 and not any(p.requires_grad for p in trunk.parameters())
    for k, v in fresh.state_dict().items():
        assert torch.equal(trunk.state_dict()[k], v), k
    for k, v in before.items():
        assert torch.equal(bb.state[k], v), k
    trained = load_file(str(tmp_path / "run" / "branch.safetensors"))
    assert not torch.equal(trained["layers.0.query.weight"], bb.state["layers.2.query.weight"])
    assert result["losses"][-1] < result["losses"][0]


def test_training_with_and_without_the_cache_agrees(setup, tmp_path):
    recipe, bb, data, acc = setup
    task = recipe.tasks[0]
    cached = train_one(recipe, bb, task, data, 2, 0, tmp_path / "a", acc, use_cache=True, cache_dir=tmp_path / "c")
    plain = train_one(recipe, bb, task, data, 2, 0, tmp_path / "b", acc, use_cache=False)
    assert len(cached["losses"]) == len(plain["losses"]) == 2 * 6
    torch.testing.assert_close(torch.tensor(cached["losses"]), torch.tensor(plain["losses"]), rtol=1e-4, atol=1e-5)
    wa, wb = load_file(str(tmp_path / "a/branch.safetensors")), load_file(str(tmp_path / "b/branch.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4)
    assert cached["cache_hit"] is False
    again = train_one(recipe, bb, task, data, 2, 0, tmp_path / "d", acc, use_cache=True, cache_dir=tmp_path / "c")
    assert again["cache_hit"] is True and again["losses"] == cached["losses"]


def test_an_interrupted_run_resumes_to_the_same_result(setup, tmp_path, monkeypatch):
    recipe, bb, data, acc = setup
    task = recipe.tasks[0]
    straight = train_one(recipe, bb, task, data, 1, 0, tmp_path / "straight", acc, cache_dir=tmp_path / "c")
    real_score, calls = toolchain.train.score, []

    def crash_in_epoch_two(*a):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_score(*a)

    monkeypatch.setattr(toolchain.train, "score", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_one(recipe, bb, task, data, 1, 0, tmp_path / "r", acc, cache_dir=tmp_path / "c")
    assert (tmp_path / "r/ckpt/epoch-1/trainer.json").is_file() and not (tmp_path / "r/result.json").exists()
    evaluated = []
    monkeypatch.setattr(toolchain.train, "score", lambda *a: evaluated.append(1) or real_score(*a))
    resumed = train_one(recipe, bb, task, data, 1, 0, tmp_path / "r", acc, cache_dir=tmp_path / "c")
    assert len(evaluated) == 1  # only epoch two ran again
    assert resumed["losses"] == straight["losses"]
    wa, wb = load_file(str(tmp_path / "straight/branch.safetensors")), load_file(str(tmp_path / "r/branch.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not (tmp_path / "r/ckpt").exists()


def test_sweep_writes_the_table_selects_L_and_reuses_finished_runs(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, TINY_TASK))
    summary = run_sweep(recipe, layers=[1, 2, 4], seeds=[0, 1], out=tmp_path / "out")
    cells = summary["table"]["intent"]["cells"]
    assert set(cells) == {"1", "2", "4"} and all(len(c["seeds"]) == 2 for c in cells.values())
    chosen = summary["selected"]["intent"]
    assert chosen["layers"] == select_layers({int(L): c["max"] for L, c in cells.items()}, recipe.select)
    run = tmp_path / "out" / chosen["run"]
    meta = json.loads((run / "branch.json").read_text())
    assert meta["attach"] == 4 - chosen["layers"] and meta["labels"][0] == "AddToPlaylist"
    assert meta["backbone_fingerprint"] == backbone.load("tiny-random").fingerprint
    assert "| L | intent (accuracy) |" in (tmp_path / "out/sweep.md").read_text()
    mtime = (run / "branch.safetensors").stat().st_mtime_ns
    summary_fp = json.loads((tmp_path / "out/runs/intent/L1-s0/result.json").read_text())["data_fingerprint"]
    again = run_sweep(recipe, layers=[1, 2, 4], seeds=[0, 1], out=tmp_path / "out")
    assert again["selected"] == summary["selected"]
    assert (run / "branch.safetensors").stat().st_mtime_ns == mtime
    recipe.tasks[0].max_seq_len = 16  # other token ids: the finished runs no longer count
    run_sweep(recipe, layers=[1], seeds=[0], out=tmp_path / "out")
    assert json.loads((tmp_path / "out/runs/intent/L1-s0/result.json").read_text())["data_fingerprint"] != \
        summary_fp, "a run on other data must be retrained"
    mtime = (tmp_path / "out/runs/intent/L1-s0/result.json").stat().st_mtime_ns
    recipe.train.lr = 5e-4  # other settings: retrained too
    run_sweep(recipe, layers=[1], seeds=[0], out=tmp_path / "out")
    res = json.loads((tmp_path / "out/runs/intent/L1-s0/result.json").read_text())
    assert res["settings"]["lr"] == 5e-4 and (tmp_path / "out/runs/intent/L1-s0/result.json").stat().st_mtime_ns != mtime


def test_layer_count_beyond_the_backbone_is_refused_before_anything_is_written(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, TINY_TASK))
    with pytest.raises(UserError, match="L = 5 is outside 1..4"):
        run_sweep(recipe, layers=[1, 5], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_selection_rules():
    scores = {1: 80.0, 2: 85.0, 3: 89.5, 4: 90.0, 5: 89.0, 6: 90.2}
    assert select_layers(scores, SelectConfig("best-in-range", 2, 5)) == 4
    assert select_layers(scores, SelectConfig("best-in-range", 1, 6)) == 6
    assert select_layers(scores, SelectConfig("smallest-within", tolerance=0.01)) == 3  # 89.5 >= 0.99 * 90.2
    assert select_layers(scores, SelectConfig("smallest-within", tolerance=0.0)) == 6
    with pytest.raises(UserError, match="no swept L lies in"):
        select_layers({1: 1.0}, SelectConfig("best-in-range", 2, 5))


def test_the_workspace_names_every_stage_path_and_refuses_task_names_that_leave_it(tmp_path, monkeypatch):
    from toolchain.workspace import Workspace

    monkeypatch.chdir(tmp_path)
    assert Workspace.of_run("runs/intent/L1-s0").cache == tmp_path / "cache"  # a relative run folder too

    ws = Workspace(tmp_path)
    run = ws.run("intent", 2, 1)
    assert run == tmp_path / "runs/intent/L2-s1" and Workspace.of_run(run) == ws
    assert ws.student("intent", 1, 2, 0) == tmp_path / "distill/intent/l1-from-L2-s0"
    assert Workspace.of_run(ws.student("intent", 1, 2, 0)).cache == tmp_path / "cache"
    assert ws.bundle("onnx", "fused", "int8") == tmp_path / "bundles/onnx-fused-int8"
    for bad in ("../x", "a/b", "", "."):
        with pytest.raises(UserError):
            ws.run(bad, 1, 0)
