import json

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT

from toolchain import UserError, backbone
from toolchain.config import load_recipe
from toolchain.data import IGNORE, load_task
from toolchain.distill import distill_one, kd_loss, student_from_teacher, teacher_dir_for
from toolchain.store import load_branch
from toolchain.train import make_accelerator, run_sweep


def test_kd_loss_is_t_squared_kl_plus_hard_loss():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    T, a = 3.0, 0.7
    kl = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")
    want = a * T * T * kl + (1 - a) * F.cross_entropy(s, y)
    torch.testing.assert_close(kd_loss("classification", s, t, y, T, a), want)
    assert kd_loss("classification", t, t, y, T, 1.0).abs() < 1e-6  # a perfect copy has no soft loss


def test_kd_loss_for_regression_and_tagging():
    s, t, y = torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0]), torch.tensor([0.0, 0.0])
    torch.testing.assert_close(kd_loss("regression", s, t, y, 2.0, 0.5),
                               0.5 * F.mse_loss(s, t) + 0.5 * F.mse_loss(s, y))
    student, teacher = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    teacher[1, 2] = 0  # padding row: ignored by the soft loss
    labels = torch.tensor([[IGNORE, 1, 2], [IGNORE, 3, IGNORE]])
    got = kd_loss("tagging", student, teacher, labels, 1.0, 1.0)
    kl = (F.softmax(teacher, -1) * (F.log_softmax(teacher, -1) - F.log_softmax(student, -1))).sum(-1)
    torch.testing.assert_close(got, kl[[0, 0, 0, 1, 1], [0, 1, 2, 0, 1]].mean())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("kd")
    recipe = load_recipe(ROOT / "models/tiny.toml").override(epochs=1)
    run_sweep(recipe, ["snips_intent", "snips_slots"], layers=[3], out=out)
    return out, recipe, backbone.load("tiny-random")


def test_student_starts_from_the_teachers_bottom_layers_and_head(teacher):
    out, _, bb = teacher
    t = load_branch(bb.cfg, out / "runs/snips_intent/L3-s0")
    s = student_from_teacher(bb.cfg, t, 2, 0.1)
    assert s.attach == t.attach == 1 and len(s.layers) == 2
    for i in range(2):
        for k, v in s.layers[i].state_dict().items():
            assert torch.equal(v, t.layers[i].state_dict()[k])
    assert all(torch.equal(v, t.head.state_dict()[k]) for k, v in s.head.state_dict().items())


@pytest.mark.parametrize("task", ["snips_intent", "snips_slots"])
def test_distill_writes_a_student_branch_and_reuses_the_trunk_cache(teacher, tmp_path, task):
    out, _, bb = teacher
    recipe = load_recipe(ROOT / "models/tiny.toml").override(epochs=3)
    data = load_task(recipe, recipe.task(task), bb.tokenizer())
    acc = make_accelerator("no")
    res = distill_one(recipe, bb, recipe.task(task), data, out / f"runs/{task}/L3-s0", 1, 0, tmp_path / "s", acc,
                      cache_dir=out / "cache")
    assert res["cache_hit"] is True  # same attach depth and data as the teacher's run
    meta = json.loads((tmp_path / "s/branch.json").read_text())
    assert (meta["attach"], meta["layers"], meta["distilled_from"]["layers"]) == (1, 1, 3)
    per_epoch = len(res["losses"]) // 3
    first, last = res["losses"][:per_epoch], res["losses"][-per_epoch:]
    assert sum(last) < sum(first)  # the student moves towards its teacher


def test_bad_distill_requests(teacher, tmp_path):
    out, recipe, bb = teacher
    task = recipe.task("snips_intent")
    data = load_task(recipe, task, bb.tokenizer())
    acc = make_accelerator("no")
    with pytest.raises(UserError, match="l = 4 must be within 1..3"):
        distill_one(recipe, bb, task, data, out / "runs/snips_intent/L3-s0", 4, 0, tmp_path / "a", acc)
    with pytest.raises(UserError, match="is for task 'snips_slots'"):
        distill_one(recipe, bb, task, data, out / "runs/snips_slots/L3-s0", 1, 0, tmp_path / "b", acc)
    with pytest.raises(UserError, match="no finished teacher run for task 'snips_intent' with L = 2"):
        teacher_dir_for(out, "snips_intent", 2)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
