"""Recipes: one TOML file per multi-task model, parsed into dataclasses that validate themselves.

Every problem is a one-line `UserError` naming the file, the key and the fix. Unknown keys are
errors (a typo must never silently fall back to a default).
"""

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from runtime_py.manifest import TASK_TYPES  # one list, the runtime's: a bundle's tasks are of these types
from toolchain import UserError
from toolchain.fsutil import check_name

FORMATS = ("tsv", "csv", "jsonl", "seqio", "clinc150", "hf", "conll")
METRICS = ("accuracy", "f1", "macro_f1", "matthews", "pearson", "spearman", "entity_f1")
DEFAULT_METRIC = {"classification": "accuracy", "regression": "pearson", "tagging": "entity_f1"}
COLUMN_ROLES = ("text", "text_pair", "label", "tokens", "tags")
SELECT_RULES = ("best-in-range", "smallest-within")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
SEED_LIMIT = 2**32  # numpy's (and so accelerate's set_seed's) seeds are 0 .. 2**32 - 1


def check_seed(seed, what: str) -> int:
    """`what`: how the user wrote it, e.g. "recipe r.toml [train]: seed =" or "--seeds"."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{what} {seed!r} must be an integer from 0 to {SEED_LIMIT - 1}, e.g. 0")
    return seed


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    dropout: float = 0.1
    seed: int = 0
    mixed_precision: str = "auto"  # "auto": bf16/fp16 on a GPU, fp32 on the CPU

    def check(self, where: str) -> None:
        _positive(self.epochs, "epochs", where)
        _positive(self.batch_size, "batch_size", where)
        _positive(self.lr, "lr", where)
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"{where}: warmup_ratio = {self.warmup_ratio} must be in [0, 1)")
        if not 0 <= self.dropout < 1:
            raise UserError(f"{where}: dropout = {self.dropout} must be in [0, 1)")
        _one_of(self.mixed_precision, MIXED_PRECISION, "mixed_precision", where)
        check_seed(self.seed, f"{where}: seed =")


@dataclass
class SelectConfig:
    """How the number of fine-tuned layers L is picked from a sweep (paper, section 3.1).

    best-in-range: the L with the best dev metric among n_min <= L <= n_max (the paper's practice).
    smallest-within: the smallest L whose dev metric is within `tolerance` (relative) of the best
    (the paper's Table 1 shading, 1%).
    """

    rule: str = "best-in-range"
    n_min: int = 1
    n_max: int = 64
    tolerance: float = 0.01

    def check(self, where: str) -> None:
        _one_of(self.rule, SELECT_RULES, "rule", where)
        _positive(self.n_min, "n_min", where)
        if self.n_max < self.n_min:
            raise UserError(f"{where}: n_max = {self.n_max} is below n_min = {self.n_min}")
        if not 0 <= self.tolerance < 1:
            raise UserError(f"{where}: tolerance = {self.tolerance} must be a fraction in [0, 1)")


TRANSFER_SETS = ("own", "recipe")
PLAN_CRITERIA = ("mixed", "best", "cost")
CHOICE_SPLITS = ("dev", "train-split")  # [plan] choose_on


@dataclass
class DistillConfig:
    """Knowledge distillation (Hinton et al.): loss = alpha * T^2 * KL(teacher_T || student_T)
    + (1 - alpha) * hard-label loss; regression distils on the teacher's outputs (MSE). Layer to
    layer, as TinyBERT does: + hidden_weight * MSE of hidden states + attention_weight * KL of
    attention distributions, student layer j matched to teacher layer (j+1)*T/l - 1 (0: off).
    `epochs`: the students' epochs (0: the task's [train] epochs; --epochs overrides both).
    `layers` and `attach`: the students `ctb-mobile distill` makes without --layers / --attach: sizes l,
    at each depth in `attach` that is at most the task's teacher's (empty: the teacher's own depth)."""

    epochs: int = 0
    layers: list = field(default_factory=lambda: [1, 2, 3])
    attach: list = field(default_factory=list)
    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    # "recipe": also distil on every other task's training text (unlabelled, soft loss only): the trunk
    # is shared, so the recipe's texts are free in-domain transfer data. transfer_max > 0 caps those rows.
    transfer: str = "own"
    transfer_max: int = 0

    def check(self, where: str) -> None:
        _positive(self.temperature, "temperature", where)
        if self.epochs < 0:
            raise UserError(f"{where}: epochs = {self.epochs} must be >= 0 (0: the [train] epochs)")
        if self.transfer not in TRANSFER_SETS:
            raise UserError(f"{where}: transfer = {self.transfer!r} must be one of {', '.join(TRANSFER_SETS)}")
        if self.transfer_max < 0:
            raise UserError(f"{where}: transfer_max = {self.transfer_max} must be >= 0 (0: every row)")
        if not 0 <= self.alpha <= 1:
            raise UserError(f"{where}: alpha = {self.alpha} must be in [0, 1]")
        for name in ("hidden_weight", "attention_weight"):
            if not 0 <= getattr(self, name) < math.inf:
                raise UserError(f"{where}: {name} = {getattr(self, name)} must be >= 0 (0 turns it off)")
        for name, least, example in (("layers", 1, "[1, 2]"), ("attach", 0, "[2, 3, 4]")):
            bad = [v for v in getattr(self, name) if not isinstance(v, int) or isinstance(v, bool) or v < least]
            if bad or (name == "layers" and not self.layers):
                raise UserError(f"{where}: {name} = {getattr(self, name)!r} must be a list of integers >= {least}, "
                                f"e.g. {name} = {example}")


@dataclass
class PlanConfig:
    """The planner's choice of (attach depth, branch layers) per task (paper, section 4.2, "mixed").

    A task gets one more branch layer only when that layer raises its expected dev metric by at
    least `threshold` points (the paper used 1.2); `budget` > 0 caps the total branch layers.
    `max_cost` is the cost criterion's bound on the overhead, a fraction of separate full models.
    `criterion`: what `ctb-mobile plan` uses without --criterion (toolchain.plan.make_plan).
    `choose_on`: what every candidate is scored on for the choice. "dev": the dev set (its dev metric).
    "train-split": a seeded `split_fraction` of each task's training rows, held out of every run's
    training (teachers and students; toolchain.data.choice_split), so the dev set is only reported."""

    criterion: str = "mixed"
    threshold: float = 1.2
    budget: int = 0
    max_cost: float = 0.35
    choose_on: str = "dev"
    split_fraction: float = 0.1

    def check(self, where: str) -> None:
        _one_of(self.criterion, PLAN_CRITERIA, "criterion", where)
        if not 0 <= self.threshold < math.inf:
            raise UserError(f"{where}: threshold = {self.threshold} must be >= 0")
        if self.budget < 0:
            raise UserError(f"{where}: budget = {self.budget} must be >= 0 (0: no budget)")
        if not 0 < self.max_cost <= 1:
            raise UserError(f"{where}: max_cost = {self.max_cost} must be in (0, 1], a fraction of separate full models")
        _one_of(self.choose_on, CHOICE_SPLITS, "choose_on", where)
        if not 0 < self.split_fraction <= 0.5:
            raise UserError(f"{where}: split_fraction = {self.split_fraction} must be in (0, 0.5], the share of each "
                            "task's training rows held out to choose on, e.g. split_fraction = 0.1")

    def override(self, criterion: str | None = None, threshold: float | None = None, budget: int | None = None,
                 max_cost: float | None = None) -> "PlanConfig":
        """A checked copy with the command line's values (`plan --criterion ...`) in place of the recipe's."""
        given = {"criterion": criterion, "threshold": threshold, "budget": budget, "max_cost": max_cost}
        cfg = dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})
        cfg.check("plan (--criterion/--threshold/--budget/--max-cost or [plan])")
        return cfg


ONNX_INT8 = ("asymmetric", "symmetric")


@dataclass
class ExportConfig:
    """The quantization guard: an int8 bundle may lose at most `max_metric_drop` dev-metric points per
    task (hard limit); a task whose predictions agree with fp32 on fewer than `min_agreement` of dev
    examples also gets its branch kept in fp32 (default: the target's row in check.TOLERANCES).
    `onnx_int8`: how ONNX int8 quantizes activations per token before each MatMul (toolchain.export.onnx):
    "asymmetric" (uint8 from the token's min and max, MatMulInteger and a six-node rescale) or
    "symmetric" (zero point 128, MatMulIntegerToFloat and one Mul: fewer nodes, a little coarser)."""

    max_metric_drop: float = 1.0
    min_agreement: float | None = None
    onnx_int8: str = "asymmetric"

    def check(self, where: str) -> None:
        if not 0 <= self.max_metric_drop < math.inf:
            raise UserError(f"{where}: max_metric_drop = {self.max_metric_drop} must be a number >= 0, e.g. 1.0")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise UserError(f"{where}: min_agreement = {self.min_agreement} must be between 0 and 1, e.g. 0.99")
        _one_of(self.onnx_int8, ONNX_INT8, "onnx_int8", where)


@dataclass
class TaskConfig:
    name: str
    type: str
    format: str
    train: str
    dev: str
    columns: dict = field(default_factory=dict)
    metric: str = ""
    max_seq_len: int = 0  # 0: the recipe's max_seq_len
    layers: int = 0  # default L when --layers is not given; 0: half the backbone's depth
    header: bool = True  # tsv / csv: first row names the columns
    test: str = ""  # the held-out test split `plan` reports beside dev ("": none); never trained or chosen on
    train_split: str = ""  # clinc150 / hf: split names
    dev_split: str = ""
    test_split: str = ""
    max_train_examples: int = 0  # 0: all; otherwise a seeded random subset
    max_dev_examples: int = 0
    unseen_labels: str = "error"  # dev labels absent from train: "error" or "drop" those rows
    positive_label: str = ""  # metric f1: the label whose F1 is reported (e.g. "1" for GLUE's MRPC)
    train_overrides: dict = field(default_factory=dict)

    def check(self, where: str) -> None:
        check_name(self.name, f"{where}: task name")
        _one_of(self.type, TASK_TYPES, "type", where)
        _one_of(self.format, FORMATS, "format", where)
        _one_of(self.metric, METRICS, "metric", where)
        _one_of(self.unseen_labels, ("error", "drop"), "unseen_labels", where)
        if self.metric == "f1" and not self.positive_label:
            raise UserError(f"{where}: metric f1 scores one positive label; name it, e.g. positive_label = \"1\" "
                            "(or use macro_f1)")
        if self.positive_label and self.metric != "f1":
            raise UserError(f"{where}: positive_label is read by metric f1 only; remove it or set metric = \"f1\"")
        for role, col in self.columns.items():
            _one_of(role, COLUMN_ROLES, "columns key", where)
            if not isinstance(col, (str, int)) or isinstance(col, bool):
                raise UserError(f"{where}: columns.{role} = {col!r} must be a column name or index")
        need = {"tagging": ("tokens", "tags")}.get(self.type, ("text", "label"))
        if self.format not in ("seqio", "clinc150", "conll"):
            for role in need:
                if role not in self.columns:
                    raise UserError(f"{where}: a {self.type} task needs columns.{role}; add it")
        if self.type == "tagging" and self.format not in ("jsonl", "seqio", "hf", "conll"):
            raise UserError(f"{where}: tagging tasks read format jsonl, seqio, hf or conll, not {self.format!r}")
        if self.format == "conll":
            if self.type != "tagging":
                raise UserError(f"{where}: format conll holds tagging data; set type = \"tagging\"")
            for role, col in self.columns.items():
                if role not in ("tokens", "tags") or not isinstance(col, int):
                    raise UserError(f"{where}: conll columns are 0-based field indexes (tokens = 0, tags = -1 by "
                                    f"default), not columns.{role} = {col!r}")
        for key in ("max_seq_len", "layers", "max_train_examples", "max_dev_examples"):
            if getattr(self, key) < 0:
                raise UserError(f"{where}: {key} = {getattr(self, key)} must be >= 0")


@dataclass
class Recipe:
    name: str
    backbone: str
    tasks: list
    max_seq_len: int = 128
    train: TrainConfig = field(default_factory=TrainConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    path: Path = Path(".")  # the recipe file; data paths are relative to its folder

    @property
    def root(self) -> Path:
        return self.path.parent

    def task(self, name: str) -> TaskConfig:
        for t in self.tasks:
            if t.name == name:
                return t
        raise UserError(f"unknown task {name!r}; the recipe has: {', '.join(t.name for t in self.tasks)}")

    @property
    def backbone_spec(self) -> str:
        """The backbone, with a relative folder ("./x", "../x") taken from the recipe's folder."""
        return str(self.resolve(self.backbone)) if self.backbone.startswith(("./", "../")) else self.backbone

    def train_for(self, task: TaskConfig) -> TrainConfig:
        return dataclasses.replace(self.train, **task.train_overrides)

    def distill_for(self, task: TaskConfig) -> TrainConfig:
        """A student's training settings: the task's, with [distill] epochs when set."""
        cfg = self.train_for(task)
        return dataclasses.replace(cfg, epochs=self.distill.epochs) if self.distill.epochs else cfg

    def seq_len(self, task: TaskConfig) -> int:
        return task.max_seq_len or self.max_seq_len

    def override(self, max_train: int | None = None, max_dev: int | None = None, epochs: int | None = None):
        """Command-line overrides (quick runs on a CPU): cap every task's data, set the epochs."""
        for flag, value in (("--max-train", max_train), ("--max-dev", max_dev)):
            if value is not None and value < 1:
                raise UserError(f"{flag} {value} must be at least 1; e.g. {flag} 2000")
        for t in self.tasks:
            if max_train:
                t.max_train_examples = min(t.max_train_examples or max_train, max_train)
            if max_dev:
                t.max_dev_examples = min(t.max_dev_examples or max_dev, max_dev)
        if epochs is not None:
            _positive(epochs, "--epochs", "command line")
            self.train.epochs = epochs
            self.distill.epochs = 0  # the students too
            for t in self.tasks:
                t.train_overrides.pop("epochs", None)
        return self

    def check_positions(self, cfg) -> None:
        """Every task's max_seq_len fits the backbone's position table (`cfg`: an EncoderConfig)."""
        limit = cfg.max_position - cfg.position_offset
        longest = max(self.seq_len(t) for t in self.tasks)
        if longest > limit:
            raise UserError(f"recipe {self.path}: max_seq_len {longest} exceeds the backbone's {limit} positions; "
                            f"set max_seq_len <= {limit}")

    def resolve(self, p: str) -> Path:
        """A data path as written in the recipe, relative to the recipe's folder."""
        return (self.root / p).resolve() if not Path(p).is_absolute() else Path(p)


def _one_of(value, allowed, key, where):
    if value not in allowed:
        raise UserError(f"{where}: {key} = {value!r} is not valid; use one of: {', '.join(allowed)}")


def _positive(value, key, where):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
        raise UserError(f"{where}: {key} = {value!r} must be a positive number")


def _build(cls, raw: dict, where: str, **extra):
    """Instantiate a dataclass from a TOML table, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a table, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("path", "tasks", "train_overrides")}
    for key in raw:
        if key not in fields:
            raise UserError(f"{where}: unknown key {key!r}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for key, value in raw.items():
        f = fields[key]
        if f.default is None:  # an optional number such as [export] min_agreement: absent means "the default"
            want = float
        elif f.default is not dataclasses.MISSING:
            want = type(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            want = type(f.default_factory())
        else:
            want = f.type
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{where}: {key} = {value} must be a finite number")
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise UserError(f"{where}: {key} = {value!r} must be of type {want.__name__}")
        kwargs[key] = value
    missing = [f.name for f in fields.values()
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and f.name not in kwargs and f.name not in extra]
    if missing:
        raise UserError(f"{where}: missing required key {missing[0]!r}")
    return cls(**kwargs, **extra)


def load_recipe(path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path} not found; give the path of a .toml recipe such as models/assistant.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"recipe {path} is not valid TOML: {e}") from None
    except RecursionError:
        raise UserError(f"recipe {path} nests arrays or tables too deeply to be a recipe; write it flat") from None
    where = f"recipe {path}"
    raw = dict(raw)
    train = _build(TrainConfig, raw.pop("train", {}), f"{where} [train]")
    train.check(f"{where} [train]")
    sections = {}
    for key, cls in (("select", SelectConfig), ("distill", DistillConfig), ("plan", PlanConfig), ("export", ExportConfig)):
        sections[key] = _build(cls, raw.pop(key, {}), f"{where} [{key}]")
        sections[key].check(f"{where} [{key}]")
    raw_tasks = raw.pop("tasks", None)
    if not raw_tasks or not isinstance(raw_tasks, list):
        raise UserError(f"{where}: no [[tasks]]; add at least one task table")
    tasks = []
    for i, rt in enumerate(raw_tasks):
        if not isinstance(rt, dict):
            raise UserError(f"{where}: tasks[{i}] = {str(rt)[:40]} is not a table; write each task as a "
                            "[[tasks]] table with name, type, format, train and dev")
        rt = dict(rt)
        twhere = f"{where} task {rt.get('name', i)!r}"
        overrides = rt.pop("training", {})  # per-task overrides of [train], e.g. training = { lr = 2e-5 }
        probe = _build(TrainConfig, overrides, f"{twhere} training")  # validates keys and types
        overrides = {k: getattr(probe, k) for k in overrides}
        task = _build(TaskConfig, rt, twhere, train_overrides=overrides)
        task.metric = task.metric or DEFAULT_METRIC.get(task.type, "")
        task.check(twhere)
        tasks.append(task)
    names = [t.name for t in tasks]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UserError(f"{where}: duplicate task name {min(dup)!r}; task names must be unique")
    recipe = _build(Recipe, raw, where, tasks=tasks, train=train, path=path.resolve(), **sections)
    check_name(recipe.name, f"{where}: name")  # it names the output folder beside the recipe
    _positive(recipe.max_seq_len, "max_seq_len", where)
    for t in tasks:
        dataclasses.replace(train, **t.train_overrides).check(f"{where} task {t.name!r} [train]")
    return recipe
