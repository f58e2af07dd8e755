"""The quantization guard's policy, as data: what a quantized export keeps at a higher precision next.

An `Attempt` says which parts of the model stay in fp32 (task branches, trunk layers, the word
embeddings) and where the guard stands; `next_attempt` reads the per-task report of the bundle that
attempt exported and returns the next `Attempt`, or a `Verdict`: pass (with the attempt to ship and
its report) or fail (with the one-line reason). It is pure: `export_bundle` only loops
export -> judge -> next_attempt, and the policy is tested without exporting anything.

The order (README, "Quantization guard"):
1. everything int8;
2. the branches of the tasks that lose more than `max_drop` points or agree with fp32 on fewer than
   `min_agreement` of the judged predictions ("failing" and "short") in fp32;
3. still short: the shared trunk. Measure the word embeddings and each trunk layer alone in fp32
   (judging only the short tasks), then keep those parts in fp32, most helpful first, until every
   task agrees;
4. then try the branches kept for their agreement alone in int8 again, one at a time; a branch
   whose trial fails goes back to fp32, and the bundle that passed before it is the one shipped.
A drop over the limit, or an agreement short with the whole trunk in fp32, fails the export.

An int4 export (`Attempt.weights == "int4"`) starts with every Linear at 4 bits in groups of 64 weights
and the word embeddings' rows at 4 bits; short, it tries groups of 32; still short, it runs the order
above with int8 as the kept parts' precision (`kept_at`), so a part goes to int8 before fp32. If that
cannot pass, the export starts again as int8 (every part) with the order above to fp32.

Where the target can run its quantized module before lowering (android: `quantized`), the int4 attempts are
searched there first, judged on the same rows, and only the attempt that search passes (`settled`) is
exported and judged as a program; if the program misses, the order goes on from that attempt. Every
bundle shipped is judged as the program it is.
"""

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

# Dev rows per task that the guard judges, and that `verify` judges by default: the same seeded subset
# (export.dev_sets), so a bundle that export passes passes verify as CI runs it.
JUDGED_ROWS = 500

# keep_fp32 entries, as the backends read them: a task's name (its branch), one trunk layer, or the
# trunk's (word) embeddings
TRUNK_LAYER = "trunk.layers."
EMBEDDINGS = "trunk.embeddings"

# Steps of the guard, in order
INT8, BRANCHES, MEASURE, TRUNK, RETRY = "int8", "branches", "measure", "trunk", "retry"
INT4_GROUPS = (64, 32)  # int4 weights per quantization group, in the order the guard tries them


@dataclass(frozen=True)
class Attempt:
    """One export to make: what it keeps at a higher precision, and what the guard has learned so far."""

    branches: tuple = ()  # tasks whose branch is kept (failing first, then short, in report order)
    trunk_layers: tuple = ()  # trunk layer indices kept, ascending
    embeddings: bool = False  # the word embeddings kept
    weights: str = "int8"  # the precision of every part not kept: "int8", or "int4" (int4 exports first)
    kept_at: str = "fp32"  # the precision of the kept parts: "int8" while an int4 export falls back
    group: int = 0  # int4: weights per quantization group
    step: str = INT8
    why: str = ""  # one line for the log: why this attempt is made
    judged: tuple | None = None  # the tasks to judge (None: every task); measuring judges the short ones
    agreeing_only: tuple = ()  # branches kept for their agreement alone, to try in int8 again at the end
    parts: tuple = ()  # measure: every trunk part in canonical order; trunk: the same, most helpful first
    gains: tuple = ()  # measure: the lowest agreement of the short tasks, per part measured so far
    to_retry: tuple = ()  # retry: the branches still to try in int8 after this attempt
    passed: "Attempt | None" = None  # retry: the last attempt that passed ...
    passed_report: Mapping | None = field(default=None, compare=False)  # ... and its report

    @property
    def trunk(self) -> list:
        """The trunk parts kept in fp32, as keep_fp32 entries: embeddings first, then layers in order."""
        return ([EMBEDDINGS] if self.embeddings else []) + [f"{TRUNK_LAYER}{i}" for i in self.trunk_layers]

    @property
    def kept(self) -> list:
        """The kept parts as keep names (tasks, then trunk parts)."""
        return [*self.branches, *self.trunk]

    @property
    def keep_fp32(self) -> list:
        return self.kept if self.kept_at == "fp32" else []

    @property
    def keep_int8(self) -> list:
        """int4 exports: the parts kept at int8."""
        return self.kept if self.kept_at == "int8" else []

    @property
    def exported(self) -> tuple:
        """What the exported programs depend on: two attempts with the same `exported` give the same bundle."""
        return self.branches, self.trunk_layers, self.embeddings, self.weights, self.kept_at, self.group

    def keeping(self, branches=None, trunk=None, **state) -> "Attempt":
        """This attempt with other branches and/or trunk parts (keep_fp32 names) in fp32."""
        trunk = self.trunk if trunk is None else list(trunk)
        layers = tuple(sorted(int(k.removeprefix(TRUNK_LAYER)) for k in trunk if k.startswith(TRUNK_LAYER)))
        return replace(self, branches=tuple(self.branches if branches is None else branches), trunk_layers=layers,
                       embeddings=EMBEDDINGS in trunk, **state)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    attempt: Attempt  # pass: the attempt whose bundle ships (fail: the last one tried)
    report: Mapping  # that attempt's per-task figures
    message: str = ""  # fail: the one-line reason for the user


@dataclass(frozen=True)
class Limits:
    max_drop: float  # points of dev metric a task may lose
    min_agreement: float  # share of predictions that must agree with fp32
    depth: int  # trunk layers of the exported trunk (the parts the guard may keep in fp32)


def trunk_parts(depth: int) -> tuple:
    return (EMBEDDINGS, *(f"{TRUNK_LAYER}{i}" for i in range(depth)))


def triage(report: Mapping, limits: Limits) -> tuple:
    """(failing, short): tasks that lose more than max_drop points; tasks that agree on under
    min_agreement of predictions (and do not fail on the drop), each in report order."""
    failing = [n for n, g in report.items() if g["drop"] > limits.max_drop]
    short = [n for n, g in report.items() if g["agreement"] < limits.min_agreement and n not in failing]
    return failing, short


def first_attempt(precision: str, guarded: bool = True) -> Attempt:
    """int4 exports start with 4-bit weights in the largest group, falling back to int8 per part; with no
    guard to judge them (CoreML on Linux), in the smallest group, the closest to fp32."""
    if precision == "int4":
        return Attempt(weights="int4", kept_at="int8", group=INT4_GROUPS[0] if guarded else INT4_GROUPS[-1])
    return Attempt()


def settled(attempt: Attempt) -> Attempt:
    """The attempt a search on the simulated program passed, to export and judge for real. Should the
    program miss, the order goes on from its parts: the next step after them, with nothing left to retry."""
    step = TRUNK if attempt.trunk else BRANCHES if attempt.branches else INT8
    return replace(attempt, step=step, judged=None, agreeing_only=(), to_retry=(), passed=None, passed_report=None,
                   gains=(), why=f"guard: exporting what the simulated search passed ({describe(attempt)})")


def describe(attempt: Attempt) -> str:
    """The attempt's precisions in words, e.g. "int4 in groups of 32, int8: trunk.layers.1, snips_slots"."""
    base = f"{attempt.weights}{f' in groups of {attempt.group}' if attempt.weights == 'int4' else ''}"
    return base + (f", {attempt.kept_at}: {', '.join(attempt.kept)}" if attempt.kept else "")


def next_attempt(report: Mapping, attempt: Attempt, limits: Limits) -> "Attempt | Verdict":
    """The guard's next move after `attempt` was exported and judged (`report`: task -> the figures of
    check.compare, at least "drop" and "agreement", for the tasks in attempt.judged)."""
    failing, short = triage(report, limits)
    if attempt.weights == "int4":
        return _int4(report, attempt, limits, failing or short)
    return _next(report, attempt, limits, failing, short)


def _int4(report, attempt, limits, missed) -> "Attempt | Verdict":
    """int4: a smaller group first, then the int8 guard's order with int8 as the kept precision; if that
    fails, the whole export as int8."""
    smaller = [g for g in INT4_GROUPS if g < attempt.group]
    if attempt.step == INT8 and missed and smaller:
        return replace(attempt, group=smaller[0], why=f"guard: int4 in groups of {attempt.group} misses; "
                                                       f"trying groups of {smaller[0]}")
    verdict = _next(report, attempt, limits, *triage(report, limits))
    if isinstance(verdict, Verdict) and not verdict.ok:
        return Attempt(why="guard: int4 misses the limits even with those parts in int8; every part in int8 now, "
                           "then fp32 per part")
    return verdict


def _next(report, attempt, limits, failing, short) -> "Attempt | Verdict":
    if attempt.step == MEASURE:
        return _after_measure(report, attempt)
    if attempt.step == RETRY:  # a branch that fails its trial goes back to fp32: the bundle that passed stays
        last, last_report = (attempt.passed, attempt.passed_report) if failing or short else (attempt, report)
        return _retry(last, last_report, attempt.to_retry) if attempt.to_retry else Verdict(True, last, last_report)
    if attempt.step == INT8 and (failing or short):
        return _branches(attempt, failing, short, limits)
    if failing:
        return Verdict(False, attempt, report, _drop_message(report, failing, limits))
    if not short:
        if attempt.step == TRUNK and attempt.agreeing_only:  # were those branches needed?
            return _retry(attempt, report, attempt.agreeing_only)
        return Verdict(True, attempt, report)
    if attempt.step == BRANCHES:  # still short: the shared trunk; measure each part alone, short tasks only
        parts = trunk_parts(limits.depth)
        return attempt.keeping(trunk=[parts[0]], step=MEASURE, parts=parts, gains=(), judged=tuple(short),
                               why=f"guard: {', '.join(short)} still agree on under {limits.min_agreement:.1%}; "
                                   f"measuring the embeddings and each trunk layer in {attempt.kept_at}")
    if len(attempt.trunk) < len(attempt.parts):  # TRUNK, still short: one more part in fp32
        return _trunk(attempt, attempt.parts, len(attempt.trunk) + 1)
    return Verdict(False, attempt, report, _agreement_message(report, short, limits))


def _after_measure(report, attempt) -> Attempt:
    """Record the short tasks' lowest agreement with this part in fp32; measure the next part, or start
    keeping parts in fp32, most helpful first (ties: canonical order)."""
    gains = (*attempt.gains, min(report[n]["agreement"] for n in attempt.judged))
    if len(gains) < len(attempt.parts):
        return attempt.keeping(trunk=[attempt.parts[len(gains)]], gains=gains, why="")
    order = tuple(p for _, _, p in sorted((-g, i, p) for i, (p, g) in enumerate(zip(attempt.parts, gains))))
    return _trunk(attempt, order, 1)


def _branches(attempt, failing, short, limits) -> Attempt:
    keep = (*failing, *short)
    return attempt.keeping(branches=keep, step=BRANCHES, agreeing_only=tuple(short), judged=None,
                           why=f"guard: {', '.join(keep)} lost more than {limits.max_drop} points or agree on under "
                               f"{limits.min_agreement:.1%} of predictions; keeping their branches in {attempt.kept_at}")


def _trunk(attempt, order, n) -> Attempt:
    """The n most helpful trunk parts in fp32 (in canonical order), every task judged."""
    canonical = trunk_parts(len(order) - 1)
    keep = [k for k in canonical if k in order[:n]]
    return attempt.keeping(trunk=keep, step=TRUNK, parts=order, gains=(), judged=None,
                           why=f"guard: {', '.join(keep)} in {attempt.kept_at}")


def _retry(passed, report, branches) -> Attempt:
    """Try the first of `branches` in int8 again, keeping the rest of `passed` (which passed) as it is."""
    first, rest = branches[0], tuple(branches[1:])
    passed = replace(passed, passed=None, passed_report=None, to_retry=())
    return passed.keeping(branches=[b for b in passed.branches if b != first], step=RETRY, to_retry=rest,
                          passed=passed, passed_report=report, judged=None,
                          why=f"guard: {', '.join(passed.trunk)} in {passed.kept_at}; trying {first} in "
                              f"{passed.weights} again")


def _drop_message(report, failing, limits) -> str:
    figures = "; ".join(f"{n}: {report[n]['metric']} {report[n]['reference']:.2f} -> {report[n]['exported']:.2f} "
                        f"(drop {report[n]['drop']:.2f})" for n in failing)
    return (f"int8 export loses more than {limits.max_drop} points even with those branches in fp32: {figures}; "
            "export fp32 or raise [export] max_metric_drop")


def _agreement_message(report, short, limits) -> str:
    figures = "; ".join(f"{n} {report[n]['agreement']:.2%}" for n in short)
    return (f"int8 predictions agree with fp32 on under {limits.min_agreement:.2%} of dev examples even with "
            f"those branches and the whole trunk in fp32 ({figures}), so verify would fail the bundle; export "
            "fp32, or lower [export] min_agreement")


def summary(report: Mapping, simulated: bool = False) -> str:
    """The log line of one judged attempt (`simulated`: judged on the module before lowering)."""
    return f"guard{' (simulated)' if simulated else ''}: " + ", ".join(f"{n} {g['metric']} {g['reference']:.2f} -> {g['exported']:.2f} "
                                 f"(agreement {g['agreement']:.1%})" for n, g in report.items())


def near_limit(report: Mapping, min_agreement: float, margin: int = 2) -> list:
    """One line per task whose agreement passes the limit by fewer than `margin` disagreements: another
    sample of dev rows (verify with other rows, another seed) may fail it."""
    lines = []
    for name, g in report.items():
        n = g.get("predictions", g["rows"])
        spare = round((g["agreement"] - min_agreement) * n, 6)  # disagreements to spare
        if 0 <= spare < margin:
            k = math.floor(spare)
            lines.append(f"guard: {name} agrees on {100 * g['agreement']:.2f} % of {n} {g.get('unit', 'rows')}, "
                         f"{k} disagreement{'' if k == 1 else 's'} above the {100 * min_agreement:g} % limit: "
                         "verify on other rows may fail")
    return lines
