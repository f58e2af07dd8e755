import pytest

from toolchain import UserError
from toolchain.plan import make_plan, overhead


def c(attach, layers, metric, run="", choice=None):
    """A candidate; `choice`: the figure it is chosen on when that is not its dev metric."""
    return {"attach": attach, "layers": layers, "dev_metric": metric, "metric": "accuracy", "run": run, "kind": "",
            "choice_metric": metric if choice is None else choice}


def test_overhead_matches_the_papers_mixed_model():
    # Table 2, "Ours (mixed)": (2,3) (7,5) (2,1) (4,3) (6,2) (7,3) (4,3) (4,1) on 12-layer BERT -> 7 + 21 = 28, 29.2%
    shapes = [(2, 3), (7, 5), (2, 1), (4, 3), (6, 2), (7, 3), (4, 3), (4, 1)]
    o = overhead({str(i): c(x, y, 0) for i, (x, y) in enumerate(shapes)}, 12)
    assert (o["trunk_layers"], o["branch_layers"], o["total_layers"]) == (7, 21, 28)
    assert o["fraction"] == pytest.approx(28 / 96)


CANDS = {
    "a": [c(5, 1, 80.0), c(4, 2, 82.0), c(4, 1, 80.5), c(3, 3, 82.5)],  # +1.5 then +0.5
    "b": [c(2, 1, 70.0), c(2, 2, 75.0), c(2, 3, 76.0)],                 # +5 then +1
}


def test_mixed_adds_a_layer_only_for_enough_gain():
    p = make_plan(CANDS, 6, "mixed", threshold=1.2)
    assert {t: (v["attach"], v["layers"]) for t, v in p["tasks"].items()} == {"a": (4, 2), "b": (2, 2)}
    assert p["overhead"]["total_layers"] == 4 + 4
    p = make_plan(CANDS, 6, "mixed", threshold=0.9)
    assert p["tasks"]["b"]["layers"] == 3 and p["tasks"]["a"]["layers"] == 2


def test_a_noisy_size_does_not_hide_a_deeper_branch_that_pays_off():
    cands = {"stsb": [c(5, 1, 31.8), c(4, 2, 19.3), c(1, 3, 74.1), c(2, 4, 70.2)]}
    p = make_plan(cands, 6, "mixed", threshold=1.2)
    assert (p["tasks"]["stsb"]["attach"], p["tasks"]["stsb"]["layers"]) == (1, 3)


def test_budget_gives_layers_to_the_largest_gain_first():
    p = make_plan(CANDS, 6, "mixed", threshold=0.0, budget=3)
    assert (p["tasks"]["a"]["layers"], p["tasks"]["b"]["layers"]) == (1, 2)
    assert p["tasks"]["a"]["attach"] == 4  # the best 1-layer candidate of a
    with pytest.raises(UserError, match="budget = 1 branch layers is below"):
        make_plan(CANDS, 6, "mixed", budget=1)


def test_best_and_bad_criteria():
    p = make_plan(CANDS, 6, "best")
    assert (p["tasks"]["a"]["layers"], p["tasks"]["b"]["layers"]) == (3, 3)
    with pytest.raises(UserError, match="criterion 'greedy' is not valid"):
        make_plan(CANDS, 6, "greedy")
    with pytest.raises(UserError, match="no finished runs"):
        make_plan({}, 6)


def test_cost_picks_attach_depths_and_layers_together_within_the_bound():
    from itertools import product

    cands = {
        "a": [c(4, 2, 90.0), c(4, 1, 88.0), c(3, 1, 87.5), c(5, 1, 85.0)],
        "b": [c(4, 2, 80.0), c(4, 1, 79.0), c(3, 1, 76.0), c(3, 2, 79.5)],
    }
    for max_cost in (1.0, 0.6, 0.5, 0.45, 0.42):
        p = make_plan(cands, 6, "cost", max_cost=max_cost)
        assert p["overhead"]["fraction"] <= max_cost + 1e-9
        got = sum(v["dev_metric"] for v in p["tasks"].values())
        # exhaustive search over every combination gives the same best total
        feasible = [sum(x["dev_metric"] for x in combo) for combo in product(*cands.values())
                    if overhead(dict(zip(cands, combo)), 6)["fraction"] <= max_cost + 1e-9]
        assert got == pytest.approx(max(feasible)), max_cost
    p = make_plan(cands, 6, "cost", max_cost=0.42)  # 5 of 12 layers: trunk 3 + two 1-layer students
    assert {t: (v["attach"], v["layers"]) for t, v in p["tasks"].items()} == {"a": (3, 1), "b": (3, 1)}
    with pytest.raises(UserError, match="max_cost = 0.2 allows 2 of 12 layers, below the cheapest plan \\(5\\)"):
        make_plan(cands, 6, "cost", max_cost=0.2)
    with pytest.raises(UserError, match="needs max_cost in"):
        make_plan(cands, 6, "cost", max_cost=0.0)


def test_every_criterion_chooses_on_the_choice_metric_not_dev():
    # dev prefers the 2-layer branch of "a"; the held-out training rows prefer the 1-layer one
    cands = {"a": [c(4, 1, 80.0, choice=90.0), c(4, 2, 85.0, choice=88.0)], "b": [c(4, 1, 70.0)]}
    for criterion, kw in (("best", {}), ("mixed", {"threshold": 0.0}), ("cost", {"max_cost": 1.0})):
        p = make_plan(cands, 6, criterion, **kw)
        assert p["tasks"]["a"]["layers"] == 1, criterion
