"""What the CLI used to decide by hand and the library now owns (issue 24, "the CLI only wires"): which
runs `merge --from plan|selected` takes, where `export --out-dir` puts each bundle, `build --quick`'s
folder and `plan`'s command-line overrides. Called directly, without the CLI; nothing trains."""

import json

import pytest
from conftest import TINY_TASK, write_recipe

from toolchain import UserError
from toolchain.build import Build
from toolchain.config import PlanConfig, load_recipe
from toolchain.workspace import Workspace


def test_the_chosen_runs_come_from_the_plan_or_the_teachers_and_a_bad_file_is_named(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(UserError, match="--from 'best' is not valid; use plan or selected"):
        ws.chosen_runs("best")
    with pytest.raises(UserError, match=r"plan.json not found; run `ctb-mobile plan` first"):
        ws.chosen_runs("plan")
    ws.selected.write_text("{")
    with pytest.raises(UserError, match=r"selected.json is not valid JSON .*; rerun `ctb-mobile train`"):
        ws.chosen_runs("selected")
    ws.plan.write_text(json.dumps({"tasks": {"intent": "runs/intent/L2-s0"}}))  # a path, not {"run": ...}
    with pytest.raises(UserError, match=r"plan.json does not map each task to its run .*; rerun `ctb-mobile plan`"):
        ws.chosen_runs("plan")
    ws.plan.write_text(json.dumps({"tasks": {"intent": {"run": "distill/intent/l1-from-L2-s0"},
                                             "slots": {"run": "runs/slots/L3-s0"}}}))
    ws.selected.write_text(json.dumps({"intent": {"run": "runs/intent/L2-s0"}}))
    assert ws.chosen_runs("plan") == [tmp_path / "distill/intent/l1-from-L2-s0", tmp_path / "runs/slots/L3-s0"]
    assert ws.chosen_runs("selected") == [tmp_path / "runs/intent/L2-s0"]


def test_export_out_dir_is_the_bundle_for_one_target_and_holds_one_per_target_for_several(tmp_path):
    ws = Workspace(tmp_path / "w")
    assert ws.bundle("onnx", "fused", "int8") == tmp_path / "w/bundles/onnx-fused-int8"
    assert ws.bundle("onnx", "fused", "int8", tmp_path / "o") == tmp_path / "o"
    assert ws.bundle("onnx", "split", "fp32", tmp_path / "o", several=True) == tmp_path / "o/onnx-split-fp32"


def test_a_quick_build_trains_less_into_its_own_folder_unless_out_names_one(tmp_path):
    path = write_recipe(tmp_path, TINY_TASK)
    full = Build.of(load_recipe(path), ["onnx"])
    assert full.ws.root == tmp_path / "t" and not full.quick and full.recipe.train.epochs == 2
    quick = Build.of(load_recipe(path), ["onnx"], quick=True)
    assert quick.ws.root == tmp_path / "t-quick" and quick.quick  # a full build beside it is not mistaken for done
    assert quick.recipe.train.epochs == 1 and quick.recipe.tasks[0].unseen_labels == "drop"
    assert Build.of(load_recipe(path), ["onnx"], out=tmp_path / "mine", quick=True).ws.root == tmp_path / "mine"


def test_plan_overrides_make_a_checked_copy_and_leave_the_recipe_alone():
    recipe_plan = PlanConfig()
    cfg = recipe_plan.override(criterion="best", budget=3)
    assert (cfg.criterion, cfg.budget, cfg.threshold) == ("best", 3, recipe_plan.threshold)
    assert (recipe_plan.criterion, recipe_plan.budget) == ("mixed", 0)
    with pytest.raises(UserError, match=r"plan \(--criterion/--threshold/--budget/--max-cost or \[plan\]\): "
                                        "budget = -1 must be >= 0"):
        recipe_plan.override(budget=-1)
