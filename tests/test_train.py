import json
import shutil

import pytest
import torch
from conftest import TINY_TASK, write_recipe
from safetensors.torch import load_file, save_file

import toolchain.model
from toolchain import UserError, backbone
from toolchain.branch_config import FILE, FORMAT_VERSION, WEIGHTS
from toolchain.config import SelectConfig, load_recipe
from toolchain.data import load_task
from toolchain.runs import Setup, make_accelerator
from toolchain.train import run_sweep, select_layers, teacher_run, train_one
from toolchain.workspace import Workspace


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    recipe = load_recipe(write_recipe(tmp, TINY_TASK))
    bb = backbone.load(recipe.backbone)
    data = load_task(recipe, recipe.tasks[0], bb.tokenizer())
    return recipe, bb, data, make_accelerator("no")


def train(setup, root, layers, use_cache=True, progress=None):
    """Train the tiny task's top `layers` layers (seed 0) in the workspace `root`: (result, run folder)."""
    recipe, bb, data, acc = setup
    s = Setup(recipe, bb, Workspace(root), acc, use_cache, progress)
    run = teacher_run(s, recipe.tasks[0], data, layers, 0)
    return train_one(s, run), run.folder


def test_frozen_parameters_are_bit_identical_after_training(setup, tmp_path, monkeypatch):
    recipe, bb, data, acc = setup
    before = {k: v.clone() for k, v in bb.state.items()}
    built = []
    real_build = toolchain.model.build_trunk
    monkeypatch.setattr(toolchain.model, "build_trunk", lambda *a: built.append(real_build(*a)) or built[-1])
    result, run = train(setup, tmp_path, 2, use_cache=False)
    trunk = built[0]
    fresh = real_build(bb.cfg, bb.state, 2)
    assert trunk.depth == 2 and not any(p.requires_grad for p in trunk.parameters())
    for k, v in fresh.state_dict().items():
        assert torch.equal(trunk.state_dict()[k], v), k
    for k, v in before.items():
        assert torch.equal(bb.state[k], v), k
    trained = load_file(str(run / WEIGHTS))
    assert not torch.equal(trained["layers.0.query.weight"], bb.state["layers.2.query.weight"])
    assert result["losses"][-1] < result["losses"][0]


def test_training_with_and_without_the_cache_agrees(setup, tmp_path):
    cached, a = train(setup, tmp_path / "a", 2, use_cache=True)
    plain, b = train(setup, tmp_path / "b", 2, use_cache=False)
    assert len(cached["losses"]) == len(plain["losses"]) == 2 * 6
    torch.testing.assert_close(torch.tensor(cached["losses"]), torch.tensor(plain["losses"]), rtol=1e-4, atol=1e-5)
    wa, wb = load_file(str(a / WEIGHTS)), load_file(str(b / WEIGHTS))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4)
    assert cached["cache_hit"] is False and not list((tmp_path / "b").glob("cache/*"))
    again, _ = train(setup, tmp_path / "a", 2, use_cache=True)
    assert again["cache_hit"] is True and again["losses"] == cached["losses"]


class Interrupt:
    """A progress display that counts the training steps shown and stops the run (KeyboardInterrupt, as a
    user's Ctrl-C) at step `stop`."""

    def __init__(self, stop=None):
        self.stop, self.steps = stop, 0

    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass

    def update(self, bar, advance=0, **k):
        self.steps += advance
        if self.steps == self.stop:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_from_its_last_epoch_to_the_same_weights(setup, tmp_path):
    straight, s = train(setup, tmp_path / "straight", 1, use_cache=False)
    with pytest.raises(KeyboardInterrupt):  # in epoch two (six steps an epoch)
        train(setup, tmp_path / "r", 1, use_cache=False, progress=Interrupt(stop=9))
    run = tmp_path / "r/runs/intent/L1-s0"
    assert (run / "ckpt/epoch-1/trainer.json").is_file() and not (run / "result.json").exists()
    shown = Interrupt()
    resumed, r = train(setup, tmp_path / "r", 1, use_cache=False, progress=shown)
    assert shown.steps == 6  # epoch two only
    assert resumed["losses"] == straight["losses"] and resumed["history"] == straight["history"]
    assert (r / WEIGHTS).read_bytes() == (s / WEIGHTS).read_bytes()
    assert not (r / "ckpt").exists()


def files(folder) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_a_finished_run_is_reused_untouched_and_a_damaged_or_stale_one_is_trained_again(tmp_path, capsys):
    recipe = load_recipe(write_recipe(tmp_path, TINY_TASK))
    ws = Workspace(tmp_path / "out")
    first = run_sweep(recipe, ws, layers=[1], force=True)  # --force on a fresh workspace: nothing to replace
    run = ws.run("intent", 1, 0)
    before = files(run)
    assert set(before) == {FILE, WEIGHTS, "result.json"}
    again = run_sweep(recipe, ws, layers=[1])
    assert files(run) == before, "a finished run must be reused as it is, not trained again"
    assert again["selected"] == first["selected"] and again["runs"] == first["runs"]

    damaged = bytearray(before[WEIGHTS][0])
    damaged[-3] ^= 0x40
    (run / WEIGHTS).write_bytes(bytes(damaged))
    capsys.readouterr()
    run_sweep(recipe, ws, layers=[1])
    assert f"replacing {run} (its {WEIGHTS} does not match the sha256 in its {FILE}" in capsys.readouterr().out
    assert (run / WEIGHTS).read_bytes() == before[WEIGHTS][0]  # trained again: the same weights, bit for bit
    assert (run / FILE).read_bytes() == before[FILE][0]

    other = tmp_path / "other-bert"  # the same tokenizer, so the same token ids: only the backbone differs
    shutil.copytree(backbone.resolve("tiny-random"), other)
    w = load_file(str(other / "model.safetensors"))
    w["encoder.layer.0.attention.self.query.bias"] += 0.01
    save_file(w, str(other / "model.safetensors"))
    capsys.readouterr()
    run_sweep(load_recipe(write_recipe(tmp_path, TINY_TASK.replace('"tiny-random"', f'"{other}"'), "o.toml")), ws,
              layers=[1])
    assert f"replacing {run} (it was trained on another backbone" in capsys.readouterr().out

    meta = json.loads((run / FILE).read_text())
    (run / FILE).write_text(json.dumps({**meta, "format_version": FORMAT_VERSION + 1}))
    newer = files(run)
    with pytest.raises(UserError, match="written by a newer ctb-mobile.*upgrade ctb-mobile") as e:
        run_sweep(recipe, ws, layers=[1])
    assert "retrain" not in str(e.value) and files(run) == newer  # a newer toolchain's run is left alone


def test_sweep_writes_the_table_selects_L_and_reuses_finished_runs(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, TINY_TASK))
    ws = Workspace(tmp_path / "out")
    summary = run_sweep(recipe, ws, layers=[1, 2, 4], seeds=[0, 1])
    cells = summary["table"]["intent"]["cells"]
    assert set(cells) == {"1", "2", "4"} and all(len(c["seeds"]) == 2 for c in cells.values())
    chosen = summary["selected"]["intent"]
    assert chosen["layers"] == select_layers({int(L): c["max"] for L, c in cells.items()}, recipe.select)
    run = ws.root / chosen["run"]
    assert run == ws.run("intent", chosen["layers"], chosen["seed"])
    meta = json.loads((run / FILE).read_text())
    assert meta["attach"] == 4 - chosen["layers"] and meta["labels"][0] == "AddToPlaylist"
    assert meta["backbone_fingerprint"] == backbone.load("tiny-random").fingerprint
    assert "| L | intent (accuracy) |" in ws.sweep_table.read_text()
    mtime = (run / WEIGHTS).stat().st_mtime_ns
    summary_fp = json.loads((ws.run("intent", 1, 0) / "result.json").read_text())["data_fingerprint"]
    again = run_sweep(recipe, ws, layers=[1, 2, 4], seeds=[0, 1])
    assert again["selected"] == summary["selected"]
    assert (run / WEIGHTS).stat().st_mtime_ns == mtime
    recipe.tasks[0].max_seq_len = 16  # other token ids: the finished runs no longer count
    run_sweep(recipe, ws, layers=[1], seeds=[0])
    assert json.loads((ws.run("intent", 1, 0) / "result.json").read_text())["data_fingerprint"] != \
        summary_fp, "a run on other data must be retrained"
    mtime = (ws.run("intent", 1, 0) / "result.json").stat().st_mtime_ns
    recipe.train.lr = 5e-4  # other settings: retrained too
    run_sweep(recipe, ws, layers=[1], seeds=[0])
    res = json.loads((ws.run("intent", 1, 0) / "result.json").read_text())
    assert res["settings"]["lr"] == 5e-4 and (ws.run("intent", 1, 0) / "result.json").stat().st_mtime_ns != mtime


def test_layer_count_beyond_the_backbone_is_refused_before_anything_is_written(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, TINY_TASK))
    with pytest.raises(UserError, match="L = 5 is outside 1..4"):
        run_sweep(recipe, Workspace(tmp_path / "out"), layers=[1, 5])
    assert not (tmp_path / "out").exists()


def test_selection_rules():
    scores = {1: 80.0, 2: 85.0, 3: 89.5, 4: 90.0, 5: 89.0, 6: 90.2}
    assert select_layers(scores, SelectConfig("best-in-range", 2, 5)) == 4
    assert select_layers(scores, SelectConfig("best-in-range", 1, 6)) == 6
    assert select_layers(scores, SelectConfig("smallest-within", tolerance=0.01)) == 3  # 89.5 >= 0.99 * 90.2
    assert select_layers(scores, SelectConfig("smallest-within", tolerance=0.0)) == 6
    with pytest.raises(UserError, match="no swept L lies in"):
        select_layers({1: 1.0}, SelectConfig("best-in-range", 2, 5))


def test_the_workspace_names_every_stage_path_and_refuses_task_names_that_leave_it(tmp_path):
    ws = Workspace(tmp_path)
    run = ws.run("intent", 2, 1)
    assert run == tmp_path / "runs/intent/L2-s1" and ws.relative(run) == "runs/intent/L2-s1"
    assert ws.student("intent", 1, 2, 0) == tmp_path / "distill/intent/l1-from-L2-s0"
    assert ws.student("intent", 1, 2, 0, attach=1) == tmp_path / "distill/intent/a1-l1-from-L2-s0"
    assert ws.bundle("onnx", "fused", "int8") == tmp_path / "bundles/onnx-fused-int8"
    for seed in (1, 0):
        ws.run("intent", 2, seed).mkdir(parents=True)
    ws.run("intent", 3, 0).mkdir()
    assert ws.seeds_of("intent", 2) == [ws.run("intent", 2, 0), ws.run("intent", 2, 1)]
    for bad in ("../x", "a/b", "", "."):
        with pytest.raises(UserError):
            ws.run(bad, 1, 0)
