"""Runs scored on text no choice was made on, for `ctb-mobile plan`.

Two splits of a task:
  test    its test split (the recipe's `test` key), never trained or chosen on: `plan` reports the
          teacher and the chosen branch on it beside their dev figures (`report`);
  choice  the training rows [plan] choose_on = "train-split" holds out of every run
          (toolchain.data.choice_split): the planner scores its candidates on them.

Rows whose label the run never learned (absent from its branch.json labels) are not scored, and
counted. A run's figures are cached in its folder (scores.json), each under a key made of the sha256
of its weights, the scored token ids and gold labels, the backbone and the metric; the file also
records the sha256 of its entries, and a file that does not match them is ignored: a figure is
computed again, never trusted, when anything it depends on changes.
"""

import hashlib
import json
from functools import cached_property
from pathlib import Path

from toolchain import UserError
from toolchain.branch_config import WEIGHTS, BranchConfig, load_branch
from toolchain.fsutil import read_json, write_json_atomic
from toolchain.workspace import Workspace

SCORES = "scores.json"
BAR = {"per_task": 0.99, "average": 0.995}  # issue 26's first tier on the test split: of the teacher's metric


def read_scores(run_dir) -> dict:
    """split -> entry from the run's scores.json; {} when missing or when its checksum does not match."""
    path = Path(run_dir) / SCORES
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        entries = saved["scores"]
        ok = saved["sha256"] == _digest(entries)
    except (OSError, ValueError, TypeError, KeyError):
        return {}
    return entries if ok and isinstance(entries, dict) else {}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _write_scores(run_dir, entries: dict) -> None:
    write_json_atomic(Path(run_dir) / SCORES, {"scores": entries, "sha256": _digest(entries)})


class Scorer:
    """Scores run folders of one recipe's tasks on a split; loads the backbone, the data and each
    trunk depth once."""

    def __init__(self, recipe, ws: Workspace):
        self.recipe, self.ws = recipe, ws
        self._examples, self._trunks = {}, {}

    @cached_property
    def bb(self):
        from toolchain import backbone

        return backbone.load(self.recipe.backbone_spec)

    @cached_property
    def tok(self):
        return self.bb.tokenizer()

    def _rows(self, task, split: str) -> list:
        from toolchain.data import choice_examples, read_examples

        if (task.name, split) not in self._examples:
            self._examples[task.name, split] = (choice_examples(self.recipe, task) if split == "choice"
                                                else read_examples(self.recipe, task, "test", cap=False))
        return self._examples[task.name, split]

    def encoded(self, task, meta, split: str) -> tuple:
        """(Encoded rows the run can be scored on, rows left out: labels the run never learned)."""
        from toolchain.data import encode, unseen

        rows = self._rows(task, split)
        known = set(meta.labels)
        kept = [ex for ex in rows if unseen(task, ex, known) is None]
        max_len = meta.max_seq_len or self.recipe.seq_len(task)
        enc = encode(kept, self.tok, task, meta.labels, max_len, f"task {task.name!r} {split}") \
            if kept else None
        return enc, len(rows) - len(kept)

    def score(self, run, split: str) -> dict:
        """{"value", "metric", "rows", "dropped", "key"}: the run's metric on `split` ("test" or "choice"),
        read from its scores.json when the key matches, else computed and cached there. `run`: a run
        folder, relative to the workspace or absolute."""
        run_dir = self.ws.root / run
        meta = BranchConfig.load(run_dir)
        task = self.recipe.task(meta.task)
        if meta.backbone_fingerprint != self.bb.fingerprint:
            raise UserError(f"run {run_dir} was trained on another backbone than {self.recipe.backbone}; "
                            "plan with the recipe it was trained from")
        enc, dropped = self.encoded(task, meta, split)
        key = _digest([_file_sha(run_dir), enc.fingerprint() if enc else None, enc.labels if enc else None,
                       list(meta.labels), self.bb.fingerprint, task.metric, task.positive_label])
        saved = read_scores(run_dir)
        if saved.get(split, {}).get("key") == key:
            return saved[split]
        entry = {"key": key, "metric": task.metric, "rows": len(enc) if enc else 0, "dropped": dropped,
                 "value": self._metric(run_dir, meta, task, enc) if enc else None}
        _write_scores(run_dir, {**read_scores(run_dir), split: entry})
        return entry

    def _metric(self, run_dir, meta, task, enc) -> float:
        from toolchain import feature_cache
        from toolchain.features import TrunkFeatures, predict
        from toolchain.metrics import score
        from toolchain.model import build_trunk

        if meta.attach not in self._trunks:
            self._trunks[meta.attach] = build_trunk(self.bb.cfg, self.bb.state, meta.attach).eval()
        trunk = self._trunks[meta.attach]
        rows, _ = feature_cache.load_or_compute(trunk, enc, self.bb.fingerprint, self.ws.cache)
        branch = load_branch(self.bb.cfg, run_dir, meta)
        return score(task, meta.labels, enc, predict(branch, TrunkFeatures(enc, trunk, rows), len(enc), task.type))


def _file_sha(run_dir: Path) -> str:
    from runtime_py.bundle import file_sha256

    return file_sha256(run_dir / WEIGHTS)


# ---------------------------------------------------------------------------------------------
# The dev / test report


def report(recipe, ws: Workspace, plan: dict, scorer: Scorer | None = None) -> dict:
    """Per task: the teacher's and the chosen branch's dev metric (from their runs) and test metric
    (computed, cached in the runs), the chosen/teacher ratio of each, their averages over tasks, and
    whether issue 26's bar holds on the test split (every task >= 99 % of its teacher, average >= 99.5 %)."""
    teachers = read_json(ws.selected, "rerun `ctb-mobile train`") if ws.selected.is_file() else {}
    scorer = scorer or Scorer(recipe, ws)
    tasks = {}
    for name, chosen in plan["tasks"].items():
        task = recipe.task(name)
        meta = BranchConfig.load(ws.root / chosen["run"])
        teacher_run = teachers[name]["run"] if name in teachers else \
            (meta.distilled_from.run if meta.distilled_from else chosen["run"])
        row = {"metric": task.metric, "teacher": teacher_run, "chosen": chosen["run"],
               "dev": _pair(BranchConfig.load(ws.root / teacher_run).dev_metric, meta.dev_metric), "test": None}
        if task.test:
            t, c = scorer.score(teacher_run, "test"), scorer.score(chosen["run"], "test")
            row["test"] = {**_pair(t["value"], c["value"]), "rows": c["rows"], "dropped": c["dropped"]}
        tasks[name] = row
    return {"tasks": tasks, "bar": BAR, **verdict(tasks)}


def verdict(tasks: dict) -> dict:
    """The chosen/teacher ratio averaged over tasks on dev and on test (None unless every task has one), and
    whether the bar holds on test (None: a task has no test figure)."""
    out = {}
    for split in ("dev", "test"):
        ratios = [r[split]["ratio"] if r[split] else None for r in tasks.values()]
        out[f"{split}_average"] = None if None in ratios else sum(ratios) / len(ratios)
    test = [r["test"]["ratio"] if r["test"] else None for r in tasks.values()]
    out["holds"] = None if None in test else min(test) >= BAR["per_task"] and out["test_average"] >= BAR["average"]
    return out


def _pair(teacher, chosen) -> dict:
    ratio = chosen / teacher if teacher is not None and chosen is not None and teacher > 0 else None
    return {"teacher": teacher, "chosen": chosen, "ratio": ratio}


def markdown(rep: dict) -> str:
    def num(x):
        return "–" if x is None else f"{x:.2f}"

    def pct(x):
        return "–" if x is None else f"{x:.2%}"

    lines = ["| task | metric | teacher dev | chosen dev | of teacher | teacher test | chosen test | of teacher |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, r in rep["tasks"].items():
        d, t = r["dev"], r["test"]
        test = (f"{num(t['teacher'])} | {num(t['chosen'])} | {pct(t['ratio'])}" if t
                else "no test split in the recipe | – | –")
        dev = f"{num(d['teacher'])} | {num(d['chosen'])} | {pct(d['ratio'])}"
        lines.append(f"| {name} | {r['metric']} | {dev} | {test} |")
        if t and t["dropped"]:
            notes.append(f"- {name}: {t['dropped']} of {t['rows'] + t['dropped']} test rows are not scored: their "
                         "labels are ones the runs never learned")
    lines.append(f"| average | | | | {pct(rep['dev_average'])} | | | {pct(rep['test_average'])} |")
    said = {True: "holds", False: "does not hold", None: "cannot be judged: a task has no test figure"}
    lines += ["", f"Test split, the first tier (every task >= {BAR['per_task']:.0%} of its teacher, the average >= "
              f"{BAR['average']:.1%}): {said[rep['holds']]}. Teacher: the sweep's selected run; chosen: the plan's."]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
