"""The folder a recipe's stages share (`--out`, by default models/<recipe name>/): every stage path
is named here, and task names become folder names only through `child`, which refuses a name that
is not a plain one.

    runs/<task>/L<L>-s<seed>/              partial fine-tuning runs (teachers)
    distill/<task>/l<l>-from-L<L>-s<seed>/ distilled students
    cache/                                 frozen-trunk features
    sweep.json, sweep.md, selected.json    the sweep and the chosen L per task
    distill.json, plan.json, plan.md       students per task, the planner's choice
    table2.json, table2.md                 the paper's Table 2 analog
    store/                                 the merged store
    bundles/<target>-<layout>-<precision>/ exported bundles (and <bundle>.verify/ reports)
    bench/                                 the benchmark report
"""

from dataclasses import dataclass
from pathlib import Path

from toolchain import UserError
from toolchain.fsutil import child, kind_of, read_json

# `merge --from`: the file that names each task's chosen run, and the command that writes it.
CHOSEN_BY = {"plan": "plan", "selected": "train"}


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __post_init__(self):
        """Stages write inside the root: it must not be a store, a bundle or another output of its own."""
        kind = kind_of(self.root)
        if kind is not None:
            raise UserError(f"{self.root} is a {kind} folder, not a training folder (the --out of train, distill and "
                            "merge, which holds runs/); choose another --out (default: models/<recipe name>/)")

    @classmethod
    def of_recipe(cls, recipe, out: Path | None = None, suffix: str = "") -> "Workspace":
        """`out` (the commands' --out), else models/<recipe name><suffix>/ beside the recipe."""
        return cls(Path(out) if out is not None else recipe.root / (recipe.name + suffix))

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def selected(self) -> Path:
        return self.root / "selected.json"

    @property
    def sweep(self) -> Path:
        return self.root / "sweep.json"

    @property
    def sweep_table(self) -> Path:
        return self.root / "sweep.md"

    @property
    def distilled(self) -> Path:
        return self.root / "distill.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def plan_table(self) -> Path:
        return self.root / "plan.md"

    @property
    def table2(self) -> Path:
        return self.root / "table2.json"

    @property
    def table2_table(self) -> Path:
        return self.root / "table2.md"

    @property
    def bench(self) -> Path:
        return self.root / "bench"

    def runs_of(self, task: str) -> Path:
        return child(self.root / "runs", task, "task")

    def students_of(self, task: str) -> Path:
        return child(self.root / "distill", task, "task")

    def all_runs(self) -> list:
        """Every task's run folders (teachers), finished or not, by task then name."""
        return sorted((self.root / "runs").glob("*/*"))

    def all_students(self) -> list:
        """Every task's student folders, finished or not, by task then name."""
        return sorted((self.root / "distill").glob("*/*"))

    def run(self, task: str, layers: int, seed: int) -> Path:
        return self.runs_of(task) / f"L{layers}-s{seed}"

    def seeds_of(self, task: str, layers: int) -> list:
        """The run folders of a task trained at L = `layers`, one per seed."""
        return sorted(self.runs_of(task).glob(f"L{layers}-s*"))

    def student(self, task: str, layers: int, teacher_layers: int, seed: int, attach: int | None = None) -> Path:
        """A student run; `attach` is given only when it is lower than its teacher's."""
        lower = "" if attach is None else f"a{attach}-"
        return self.students_of(task) / f"{lower}l{layers}-from-L{teacher_layers}-s{seed}"

    def bundle(self, target: str, layout: str, precision: str, out_dir: Path | None = None,
               several: bool = False) -> Path:
        """bundles/<target>-<layout>-<precision>/; with `out_dir` (export --out-dir): that folder for one
        target, and one such folder per target inside it when `several` targets are exported."""
        name = f"{target}-{layout}-{precision}"
        if out_dir is None:
            return self.bundles / name
        return Path(out_dir) / name if several else Path(out_dir)

    def chosen(self, source: str) -> dict:
        """task -> {"run": <path in the workspace>, ...}: the planner's choice (`source` "plan", plan.json)
        or the sweep's teachers ("selected", selected.json), checked, with one-line errors."""
        if source not in CHOSEN_BY:
            raise UserError(f"--from {source!r} is not valid; use plan or selected")
        path, command = (self.plan if source == "plan" else self.selected), CHOSEN_BY[source]
        if not path.is_file():
            raise UserError(f"{path} not found; run `ctb-mobile {command}` first")
        chosen = read_json(path, f"rerun `ctb-mobile {command}`")
        chosen = chosen.get("tasks") if source == "plan" and isinstance(chosen, dict) else chosen
        if not isinstance(chosen, dict) or not all(isinstance(c, dict) and isinstance(c.get("run"), str)
                                                   for c in chosen.values()):
            raise UserError(f"{path} does not map each task to its run ({{\"task\": {{\"run\": ...}}}}); "
                            f"rerun `ctb-mobile {command}`")
        return chosen

    def chosen_runs(self, source: str) -> list:
        """The run folders `chosen(source)` names, in its task order."""
        return [self.root / c["run"] for c in self.chosen(source).values()]

    def relative(self, path) -> str:
        """A path inside the workspace as its JSON files record it (selected.json, distill.json, plan.json)."""
        return Path(path).relative_to(self.root).as_posix()


def report_of(bundle) -> Path:
    """A bundle's verify report folder, beside it: <bundle>.verify/ (verify writes it, embed reads it)."""
    bundle = Path(bundle)
    return bundle.with_name(bundle.name + ".verify")
