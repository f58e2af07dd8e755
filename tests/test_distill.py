import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT

from toolchain import UserError, backbone
from toolchain.config import load_recipe
from toolchain.data import IGNORE, load_task
from toolchain.branch_config import FILE, WEIGHTS, load_branch
from toolchain.distill import distill_one, kd_loss, student_from_teacher, student_run, teacher_dir_for
from toolchain.runs import Setup, make_accelerator
from toolchain.train import run_sweep
from toolchain.workspace import Workspace


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
    run_sweep(recipe, Workspace(out), tasks=["snips_intent", "snips_slots"], layers=[3])
    return out, recipe, backbone.load("tiny-random")


def distil(root, recipe, bb, task, teacher_dir, layers):
    """Distil the teacher run in `teacher_dir` into a `layers`-layer student of `task` in the workspace `root`:
    (result, student folder)."""
    data = load_task(recipe, recipe.task(task), bb.tokenizer())
    setup = Setup(recipe, bb, Workspace(root), make_accelerator("no"))
    run = student_run(setup, recipe.task(task), data, layers, 0, teacher_layers=3)
    return distill_one(setup, run, teacher_dir), run.folder


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
def test_distill_writes_a_student_branch_and_reuses_the_trunk_cache(teacher, task):
    out, _, bb = teacher
    recipe = load_recipe(ROOT / "models/tiny.toml").override(epochs=3)
    res, run = distil(out, recipe, bb, task, out / f"runs/{task}/L3-s0", 1)
    assert res["cache_hit"] is True  # same attach depth and data as the teacher's run
    meta = json.loads((run / FILE).read_text())
    assert (meta["attach"], meta["layers"], meta["distilled_from"]["layers"]) == (1, 1, 3)
    per_epoch = len(res["losses"]) // 3
    first, last = res["losses"][:per_epoch], res["losses"][-per_epoch:]
    assert sum(last) < sum(first)  # the student moves towards its teacher


def test_bad_distill_requests(teacher, tmp_path):
    out, recipe, bb = teacher
    with pytest.raises(UserError, match="l = 4 must be within 1..3"):
        distil(tmp_path, recipe, bb, "snips_intent", out / "runs/snips_intent/L3-s0", 4)
    with pytest.raises(UserError, match="is for task 'snips_slots'"):
        distil(tmp_path, recipe, bb, "snips_intent", out / "runs/snips_slots/L3-s0", 1)
    with pytest.raises(UserError, match="no finished teacher run for task 'snips_intent' with L = 2"):
        teacher_dir_for(Workspace(out), "snips_intent", 2)
    assert teacher_dir_for(Workspace(out), "snips_intent", 3) == out / "runs/snips_intent/L3-s0"
    assert list(tmp_path.iterdir()) == []  # refused before anything is written


# ---------------------------------------------------------------------------------------------
# Layer-to-layer distillation and students that attach below their teacher


def test_layer_map_matches_the_last_layer_to_the_last_and_spreads_the_rest():
    from toolchain.distill import layer_map

    assert layer_map(1, 3) == [2] and layer_map(2, 4) == [1, 3] and layer_map(3, 3) == [0, 1, 2]
    assert layer_map(2, 3) == [0, 2]


def test_explicit_attention_gives_the_fused_kernels_output_and_real_distributions():
    from toolchain.model import EncoderConfig, Layer, additive_mask

    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=10, hidden_size=16, num_layers=1, num_heads=4, intermediate_size=32,
                        max_position=8, type_vocab_size=2)
    layer = Layer(cfg).eval()
    x, att = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    mask = additive_mask(att, x.dtype)
    y, probs = layer(x, mask, with_probs=True)
    torch.testing.assert_close(y, layer(x, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 5))
    assert probs[1, :, :, 3:].abs().max() == 0  # padded keys get no attention


def test_layer_losses_are_zero_for_a_copy_and_positive_otherwise():
    from types import SimpleNamespace

    from toolchain.distill import attention_loss, hidden_loss, layer_losses

    torch.manual_seed(0)
    h, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    p = torch.softmax(torch.randn(2, 2, 5, 5) + (1 - mask[:, None, None, :]) * -1e9, -1)
    assert hidden_loss(h, h, mask) == 0 and attention_loss(p, p, mask).abs() < 1e-6
    h2 = h.clone()
    h2[1, 4] += 100  # a padded position: not scored
    assert hidden_loss(h2, h, mask) == 0
    h2[1, 0] += 1.0
    torch.testing.assert_close(hidden_loss(h2, h, mask), torch.tensor(8 / 8 / 8))  # one of 8 real tokens off by 1
    kd = SimpleNamespace(hidden_weight=2.0, attention_weight=0.5)
    q = torch.softmax(torch.randn(2, 2, 5, 5), -1)
    want = 2.0 * hidden_loss(h2, h, mask) + 0.5 * attention_loss(q, p, mask)
    torch.testing.assert_close(layer_losses([h2], [q], [h, h], [p, p], mask, kd), want)
    assert layer_losses([h], [p], [h2, h], [q, p], mask, kd) == 0  # a student of 1 layer is matched to the last


def test_the_teacher_seen_from_a_lower_depth_computes_what_the_teacher_does(teacher):
    from toolchain.distill import teacher_stack
    from toolchain.model import build_trunk

    out, _, bb = teacher
    t = load_branch(bb.cfg, out / "runs/snips_intent/L3-s0").eval()
    trunk = build_trunk(bb.cfg, bb.state, bb.depth)
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]])
    tt, att = torch.zeros_like(ids), (ids > 0).long()
    low, high = trunk(input_ids=ids, attention_mask=att, token_type_ids=tt, depths=[0, t.attach])
    stack = teacher_stack(bb.cfg, bb.state, t, 0)
    assert (stack.attach, len(stack.layers)) == (0, t.attach + 3)
    torch.testing.assert_close(stack(low, att), t(high, att), atol=1e-5, rtol=1e-4)
    assert not any(p.requires_grad for p in stack.parameters())
    same = teacher_stack(bb.cfg, bb.state, t, t.attach)
    assert torch.equal(same(high, att), t(high, att))
    student = student_from_teacher(bb.cfg, stack, 1, 0.1)  # starts as the backbone's layer 0, the stack's bottom
    assert student.attach == 0
    assert all(torch.equal(v, bb.state[f"layers.0.{k}"]) for k, v in student.layers[0].state_dict().items())


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_distilling_by_layer_below_the_teacher_leaves_teacher_and_trunk_untouched(teacher, tmp_path):
    import dataclasses

    from safetensors.torch import load_file

    from toolchain.branch_config import BranchConfig
    from toolchain.distill import run_distill

    out, recipe, bb = teacher
    recipe = load_recipe(ROOT / "models/tiny.toml").override(epochs=2)
    recipe = dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, hidden_weight=1.0,
                                                                     attention_weight=1.0))
    teacher_run = out / "runs/snips_intent/L3-s0"
    before_teacher, before_trunk = _files(teacher_run), {k: v.clone() for k, v in bb.state.items()}
    (out / "selected.json").write_text(json.dumps({"snips_intent": {"run": "runs/snips_intent/L3-s0"}}))
    summary = run_distill(recipe, Workspace(out), tasks=["snips_intent"], layers=[1, 2], attach=[0])
    assert _files(teacher_run) == before_teacher
    assert all(torch.equal(v, before_trunk[k]) for k, v in bb.state.items())  # the frozen trunk is bit-identical
    students = summary["snips_intent"]["students"]
    assert set(students) == {"0,1", "0,2"} and students["0,1"]["run"] == "distill/snips_intent/a0-l1-from-L3-s0"
    run = out / students["0,1"]["run"]
    meta = BranchConfig.load(run)
    assert (meta.attach, meta.layers) == (0, 1)
    assert (meta.distilled_from.attach, meta.distilled_from.hidden_weight, meta.distilled_from.attention_weight) \
        == (1, 1.0, 1.0)
    res = json.loads((run / "result.json").read_text())
    assert res["teacher_attach"] == 1 and res["attach"] == 0
    per_epoch = len(res["losses"]) // 2
    assert sum(res["losses"][-per_epoch:]) < sum(res["losses"][:per_epoch])
    assert set(load_file(run / WEIGHTS)) >= {"layers.0.query.weight", "head.out.weight"}
    with pytest.raises(UserError, match="--attach 2 must be within 0..1"):
        run_distill(recipe, Workspace(out), tasks=["snips_intent"], layers=[1], attach=[2])


def test_the_recipes_students_are_made_at_each_depth_up_to_the_teachers_and_kept(teacher, tmp_path):
    import dataclasses
    import shutil

    from toolchain.distill import run_distill

    out, _, _ = teacher
    shutil.copytree(out / "runs/snips_intent/L3-s0", tmp_path / "runs/snips_intent/L3-s0")
    (tmp_path / "selected.json").write_text(json.dumps({"snips_intent": {"run": "runs/snips_intent/L3-s0"}}))
    recipe = load_recipe(ROOT / "models/tiny.toml").override(epochs=1)
    recipe = dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, layers=[1], attach=[0, 1, 3]))
    students = run_distill(recipe, Workspace(tmp_path), tasks=["snips_intent"])["snips_intent"]["students"]
    assert set(students) == {"0,1", "1,1"}  # depth 3 is above this teacher (attached at 1): not for this task
    results = {k: tmp_path / s["run"] / "result.json" for k, s in students.items()}
    stamps = {k: p.stat().st_mtime_ns for k, p in results.items()}
    # which students to make is not a setting of a student: asking for more keeps the finished ones
    more = dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, layers=[1, 2], attach=[1]))
    assert set(run_distill(more, Workspace(tmp_path), tasks=["snips_intent"])["snips_intent"]["students"]) == \
        {"0,1", "1,1", "1,2"}
    assert {k: p.stat().st_mtime_ns for k, p in results.items()} == stamps
    with pytest.raises(UserError, match="--attach 3 must be within 0..1"):
        run_distill(recipe, Workspace(tmp_path), tasks=["snips_intent"], layers=[1], attach=[3, 4])


def test_the_transfer_set_adds_other_tasks_rows_unlabelled_once():
    from types import SimpleNamespace

    from toolchain.data import Encoded, TaskData
    from toolchain.distill import with_transfer_set

    own = TaskData(Encoded([[101, 5, 102], [101, 6, 102]], [[0] * 3] * 2, [0, 1]), Encoded([], [], []), ["a", "b"], [])
    other = TaskData(Encoded([[101, 5, 102], [101, 7, 8, 102], [101, 9, 102], [101, 1, 2, 3, 4, 102],
                              [101, 7, 102, 4, 102]],
                             [[0] * 3, [0] * 4, [0] * 3, [0] * 6, [0, 0, 0, 1, 1]], [3, 4, 5, 6, 7]),
                     Encoded([], [], []), [], [])
    again = TaskData(Encoded([[101, 9, 102]], [[0] * 3], [0]), Encoded([], [], []), [], [])
    task = SimpleNamespace(type="classification")
    got = with_transfer_set(task, own, [other, again], max_len=5).train
    # kept: [101 7 8 102] and [101 9 102] once; left out: a duplicate of own, a row over max_len, a text pair
    assert got.input_ids == [[101, 5, 102], [101, 6, 102], [101, 7, 8, 102], [101, 9, 102]]
    assert got.labels == [0, 1, IGNORE, IGNORE] and own.train.labels == [0, 1]
    assert len(with_transfer_set(task, own, [other], max_len=5, limit=1).train) == 3
    tagging = with_transfer_set(SimpleNamespace(type="tagging"), own, [again], max_len=5).train
    assert tagging.labels[-1] == [IGNORE] * 3
    assert with_transfer_set(SimpleNamespace(type="regression"), own, [other], max_len=5) is own


def test_a_batch_of_transfer_rows_has_only_the_soft_loss():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    y = torch.full((3,), IGNORE)
    got = kd_loss("classification", s, t, y, 2.0, 0.5)
    kl = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="batchmean")
    torch.testing.assert_close(got, 0.5 * 4 * kl)
    mixed = torch.tensor([1, IGNORE, 2])  # the hard loss averages over the labelled rows only
    torch.testing.assert_close(kd_loss("classification", s, t, mixed, 2.0, 0.0), F.cross_entropy(s[[0, 2]], mixed[[0, 2]]))


def test_distilling_on_the_recipes_texts(teacher):
    import dataclasses

    from toolchain.distill import run_distill

    out, _, bb = teacher
    recipe = load_recipe(ROOT / "models/tiny.toml").override(epochs=1)
    recipe = dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, transfer="recipe"))
    (out / "selected.json").write_text(json.dumps({"snips_intent": {"run": "runs/snips_intent/L3-s0"}}))
    students = run_distill(recipe, Workspace(out), tasks=["snips_intent"], layers=[1])["snips_intent"]["students"]
    run = out / students["1,1"]["run"]
    res = json.loads((run / "result.json").read_text())
    own = len(load_task(recipe, recipe.task("snips_intent"), bb.tokenizer()).train)
    assert res["labelled_examples"] == own < res["train_examples"]  # clinc_domain's texts were added
    assert res["settings"]["transfer"] == "recipe" and all(math.isfinite(x) for x in res["losses"])
