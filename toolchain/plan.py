"""Planner and the Table-2 report: choose (attach depth, branch layers) per task from finished runs.

Candidates are every finished run under <out>: partial fine-tuning teachers (runs/) and distilled
students (distill/), each an "(x, y)" model in the paper's notation (x frozen layers, y task layers)
with its dev metric.

Candidates are chosen on their dev metric, or, with [plan] choose_on = "train-split", on the training rows
held out of every run (`choice_metric`; toolchain.heldout scores them). `plan` also reports the teacher and
the chosen branch on the test split beside dev (toolchain.heldout.report).

Overhead is the paper's measure (section 4.1): transformer layers needed to run every task. A merged
model runs the trunk once up to the deepest attach point, then each branch: max(x) + sum(y),
against N x (number of tasks) for separate full models.
"""

from toolchain import UserError
from toolchain.branch_config import BranchConfig
from toolchain.config import PLAN_CRITERIA
from toolchain.fsutil import read_json, write_json_atomic, write_text_atomic
from toolchain.runs import RESULT
from toolchain.workspace import Workspace


def candidates(ws: Workspace, tasks=None, choose=None) -> dict:
    """task -> list of {attach, layers, dev_metric, choice_metric, metric, run, kind} from finished runs of
    `tasks` (None: all), the best seed kept. `choose(run)` gives the figure a run is chosen on (default:
    its dev metric)."""
    found = {}
    for kind, folders in (("teacher", ws.all_runs()), ("student", ws.all_students())):
        for folder in (f for f in folders if (f / RESULT).is_file()):
            meta = BranchConfig.load(folder)
            if tasks is not None and meta.task not in tasks:
                continue
            key, run = (meta.attach, meta.layers), ws.relative(folder)
            c = {"attach": meta.attach, "layers": meta.layers, "dev_metric": meta.dev_metric,
                 "choice_metric": choose(run) if choose else meta.dev_metric,
                 "metric": meta.metric, "run": run, "kind": kind}
            per_task = found.setdefault(meta.task, {})
            if key not in per_task or c["choice_metric"] > per_task[key]["choice_metric"]:
                per_task[key] = c
    return {t: sorted(v.values(), key=lambda c: (c["layers"], c["attach"])) for t, v in found.items()}


def _best_by_size(cands) -> dict:
    best = {}
    for c in cands:
        if c["layers"] not in best or c["choice_metric"] > best[c["layers"]]["choice_metric"]:
            best[c["layers"]] = c
    return best


def overhead(choice: dict, depth: int) -> dict:
    trunk = max(c["attach"] for c in choice.values())
    branch = sum(c["layers"] for c in choice.values())
    full = depth * len(choice)
    return {"trunk_layers": trunk, "branch_layers": branch, "total_layers": trunk + branch,
            "separate_full_models": full, "fraction": (trunk + branch) / full}


def best_within_cost(cands: dict, depth: int, max_cost: float) -> dict:
    """The (attach, layers) per task with the highest summed choice metric whose overhead, max(attach) +
    sum(layers) over depth x tasks, is at most max_cost; ties go to fewer layers. Exact: for each
    trunk depth, a multiple-choice knapsack over branch layers."""
    allowed = int(max_cost * depth * len(cands) + 1e-9)
    best = None  # (sum of metrics, -total layers, choice)
    for trunk in sorted({c["attach"] for cs in cands.values() for c in cs}):
        table = {0: (0.0, {})}  # branch layers used -> (summed metric, choice)
        for task, cs in cands.items():
            options = _best_by_size([c for c in cs if c["attach"] <= trunk]).values()
            nxt = {}
            for used, (total, choice) in table.items():
                for c in options:
                    n = used + c["layers"]
                    if trunk + n <= allowed and (n not in nxt or total + c["choice_metric"] > nxt[n][0]):
                        nxt[n] = (total + c["choice_metric"], {**choice, task: c})
            table = nxt
        for used, (total, choice) in table.items():
            key = (round(total, 9), -(trunk + used))
            if best is None or key > best[:2]:
                best = (*key, choice)
    if best is None:
        smallest = min(c["attach"] for cs in cands.values() for c in cs) + len(cands)
        raise UserError(f"max_cost = {max_cost} allows {allowed} of {depth * len(cands)} layers, below the cheapest "
                        f"plan ({smallest}); raise --max-cost or distil students that attach lower")
    return {t: best[2][t] for t in cands}


def make_plan(cands: dict, depth: int, criterion="mixed", threshold=1.2, budget=0, max_cost=0.0) -> dict:
    """mixed: every task starts at its smallest branch; a task gets more layers only while the added
    layers gain >= threshold points each (on average), largest gain first, within the budget (0: none).
    best: each task's best candidate, whatever its size.
    Every criterion reads a candidate's `choice_metric` (its dev metric unless [plan] choose_on says otherwise).
    cost: the best summed metric whose overhead (trunk and branches) is at most max_cost of
    separate full models, choosing attach depths and branch layers together."""
    if criterion not in PLAN_CRITERIA:
        raise UserError(f"criterion {criterion!r} is not valid; use one of: {', '.join(PLAN_CRITERIA)}")
    if not cands:
        raise UserError("no finished runs to plan from; run `ctb-mobile train` (and `ctb-mobile distill`) first")
    if criterion == "cost":
        if not 0 < max_cost <= 1:
            raise UserError(f"criterion cost needs max_cost in (0, 1], got {max_cost}; e.g. --max-cost 0.3")
        choice = best_within_cost(cands, depth, max_cost)
    elif criterion == "best":
        choice = {t: max(c, key=lambda x: (x["choice_metric"], -x["layers"])) for t, c in cands.items()}
    else:
        by_size = {t: _best_by_size(c) for t, c in cands.items()}
        choice = {t: b[min(b)] for t, b in by_size.items()}
        if budget and sum(c["layers"] for c in choice.values()) > budget:
            raise UserError(f"budget = {budget} branch layers is below the {len(choice)} tasks' smallest branches "
                            f"({sum(c['layers'] for c in choice.values())}); raise --budget")
        while True:
            used = sum(c["layers"] for c in choice.values())
            steps = []
            for t, b in by_size.items():
                cur = choice[t]
                for size in (s for s in b if s > cur["layers"]):
                    # gain per added layer; looking past the next size up lets one noisy size not
                    # hide a deeper branch that pays for every layer it adds
                    gain = (b[size]["choice_metric"] - cur["choice_metric"]) / (size - cur["layers"])
                    if gain >= threshold and gain > 0 and (not budget or used + size - cur["layers"] <= budget):
                        steps.append((gain, -size, t, b[size]))
            if not steps:
                break
            _, _, t, nxt = max(steps, key=lambda s: (s[0], s[1]))  # ties: the smaller step
            choice[t] = nxt
    return {"criterion": criterion, "threshold": threshold, "budget": budget, "max_cost": max_cost, "depth": depth,
            "tasks": choice, "overhead": overhead(choice, depth)}


def plan_recipe(recipe, ws: Workspace, cfg, depth: int, heldout: bool = False) -> dict:
    """The plan for the recipe's tasks from the finished runs in `ws`, by `cfg` (a checked PlanConfig),
    every candidate scored on cfg.choose_on; with `heldout`, plan["heldout"] is the dev / test report."""
    from toolchain import heldout as held

    scorer = held.Scorer(recipe, ws)
    choose = (lambda run: _choice_metric(scorer, run)) if cfg.choose_on == "train-split" else None
    cands = candidates(ws, {t.name for t in recipe.tasks}, choose)
    plan = make_plan(cands, depth, cfg.criterion, cfg.threshold, cfg.budget, cfg.max_cost)
    plan["choose_on"] = cfg.choose_on if cfg.choose_on == "dev" else f"{cfg.choose_on} {cfg.split_fraction:g}"
    if heldout:
        plan["heldout"] = held.report(recipe, ws, plan, scorer)
    return plan


def _choice_metric(scorer, run) -> float:
    got = scorer.score(run, "choice")
    if got["value"] is None:
        raise UserError(f"run {run}: none of the {got['dropped']} training rows held out to choose on has a label "
                        "it learned; raise [plan] split_fraction")
    return got["value"]


def plan_markdown(plan: dict) -> str:
    split = plan.get("choose_on", "dev") != "dev"  # chosen on held-out training rows: show that figure too
    lines = ["| task | (x, y) | expected dev |" + (" chosen on |" if split else "") + " metric | from |",
             "|---|---|---|---|---|" + ("---|" if split else "")]
    for t, c in plan["tasks"].items():
        on = f" {c['choice_metric']:.2f} |" if split else ""
        lines.append(f"| {t} | ({c['attach']},{c['layers']}) | {c['dev_metric']:.2f} |{on} {c['metric']} | "
                     f"{c['run']} |")
    o = plan["overhead"]
    lines += ["", f"Overhead: {o['trunk_layers']} + {o['branch_layers']} = {o['total_layers']} transformer layers "
              f"for {len(plan['tasks'])} tasks, {o['fraction']:.1%} of {o['separate_full_models']} "
              f"(separate {plan['depth']}-layer models). Criterion: {plan['criterion']}"
              + (f", threshold {plan['threshold']}" if plan["criterion"] == "mixed" else "")
              + (f", max cost {plan['max_cost']:.0%}" if plan["criterion"] == "cost" else "")
              + (f", budget {plan['budget']}" if plan["budget"] else "") + "."]
    if split:
        lines.append(f"Chosen on {plan['choose_on'].split()[1]} of each task's training rows, held out of every run "
                     "([plan] choose_on); the dev set is only reported.")
    if plan.get("heldout"):
        from toolchain.heldout import markdown

        lines += ["", "Dev and test (held out: never trained or chosen on), teacher and chosen branch:", "",
                  markdown(plan["heldout"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def write_plan(ws: Workspace, plan) -> None:
    write_json_atomic(ws.plan, plan)
    write_text_atomic(ws.plan_table, plan_markdown(plan))


# ---------------------------------------------------------------------------------------------
# Table 2 analog


def table2(ws: Workspace, depth: int, tasks: list) -> dict:
    """Rows: full fine-tune (L = N), teacher (selected L), KD-1/2/3 from that teacher, planned mixed."""
    cands = candidates(ws)
    selected = read_json(ws.selected) if ws.selected.is_file() else {}
    plan = read_json(ws.plan) if ws.plan.is_file() else None
    rows = {}

    def pick(task, attach, layers):
        return next((c for c in cands.get(task, []) if c["attach"] == attach and c["layers"] == layers), None)

    rows["Full fine-tune (L=N)"] = {t: pick(t, 0, depth) for t in tasks}
    teacher = {t: pick(t, depth - selected[t]["layers"], selected[t]["layers"]) if t in selected else None
               for t in tasks}
    rows["Teacher (w/o KD)"] = teacher
    for n in (1, 2, 3):
        rows[f"KD-{n}"] = {t: (pick(t, teacher[t]["attach"], min(n, teacher[t]["layers"])) if teacher[t] else None)
                           for t in tasks}
    if plan:
        rows[f"Mixed (threshold {plan['threshold']})"] = {t: plan["tasks"].get(t) for t in tasks}
    table = {}
    for name, cells in rows.items():
        complete = all(cells.values())
        avg = sum(c["dev_metric"] for c in cells.values()) / len(cells) if complete else None
        if name.startswith("Full"):
            cost = {"total_layers": depth * len(tasks), "fraction": 1.0} if complete else None
        else:
            cost = overhead(cells, depth) if complete else None
        table[name] = {"cells": cells, "average": avg, "overhead": cost}
    return {"tasks": tasks, "depth": depth, "rows": table}


def table2_markdown(t2: dict) -> str:
    tasks = t2["tasks"]
    lines = ["| model | " + " | ".join(tasks) + " | avg | overhead |", "|---|" + "---|" * (len(tasks) + 2)]
    for name, row in t2["rows"].items():
        cells = [f"{c['dev_metric']:.1f} ({c['attach']},{c['layers']})" if c else "–" for c in row["cells"].values()]
        avg = f"{row['average']:.1f}" if row["average"] is not None else "–"
        o = row["overhead"]
        if o is None:
            cost = "–"
        elif "trunk_layers" in o:
            cost = f"{o['trunk_layers']} + {o['branch_layers']} = {o['total_layers']} ({o['fraction']:.0%})"
        else:
            cost = f"{t2['depth']} × {len(tasks)} = {o['total_layers']} (100%)"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {avg} | {cost} |")
    lines += ["", ("(x, y): x frozen trunk layers, y task layers. Overhead: transformer layers to run all tasks "
              "(trunk once + every branch), share of separate full models. Full fine-tune here trains all "
              "transformer layers with the embeddings frozen.")]
    return "\n".join(lines) + "\n"


def write_table2(ws: Workspace, t2) -> None:
    write_json_atomic(ws.table2, t2)
    write_text_atomic(ws.table2_table, table2_markdown(t2))
