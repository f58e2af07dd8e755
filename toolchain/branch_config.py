"""branch.json: the typed config of one trained branch (a run folder or a store's branch folder),
in the style of peft's adapter config. Its keys are written here and nowhere else; a file with an
unknown or missing key, or a value of the wrong type, is refused in one line.
"""

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

from toolchain import UserError
from toolchain.fsutil import check_name, read_json, write_json_atomic

FILE = "branch.json"
WEIGHTS = "branch.safetensors"
TASK_TYPES = ("classification", "regression", "tagging")


@dataclass(frozen=True)
class DistilledFrom:
    """The teacher a distilled branch was made from."""

    run: str
    layers: int
    dev_metric: float
    temperature: float
    alpha: float
    attach: int | None = None  # the teacher's attach depth (the student's may be lower)
    hidden_weight: float = 0.0
    attention_weight: float = 0.0


def _json_type(annotation):
    """The JSON value type of a field declared as `T` or `T | None` (a record is a JSON object)."""
    t = next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)
    return {float: (int, float), DistilledFrom: dict}.get(t, t)


@dataclass(frozen=True)
class BranchConfig:
    task: str
    type: str  # classification | regression | tagging
    labels: list  # output index -> label name (empty for regression)
    attach: int  # trunk depth the branch reads
    layers: int  # its own encoder layers
    metric: str
    backbone_fingerprint: str
    dev_metric: float | None = None
    seed: int | None = None
    max_seq_len: int | None = None
    pair: bool = False
    hidden_size: int | None = None
    backbone: str | None = None
    toolchain_version: str | None = None
    weights_sha256: str | None = None  # of branch.safetensors, checked on load
    distilled_from: DistilledFrom | None = None

    @property
    def n_out(self) -> int:
        return 1 if self.type == "regression" else len(self.labels)

    def replace(self, **changes) -> "BranchConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def save(self, folder) -> None:
        write_json_atomic(Path(folder) / FILE, self.to_json())

    @classmethod
    def from_json(cls, data, where: str) -> "BranchConfig":
        fix = "it was not written by ctb-mobile; retrain the branch"
        if not isinstance(data, dict):
            raise UserError(f"{where}: {FILE} is not a JSON object; {fix}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise UserError(f"{where}: {FILE} has unknown key {unknown[0]!r}; {fix}")
        missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in data]
        if missing:
            raise UserError(f"{where}: {FILE} lacks {missing[0]!r}; {fix}")
        for k, v in data.items():
            kind = _json_type(fields[k].type)
            if v is not None and (not isinstance(v, kind) or (kind is int and isinstance(v, bool))):
                raise UserError(f"{where}: {FILE} {k} = {v!r} is not of type {getattr(kind, '__name__', 'number')}; {fix}")
        if data["type"] not in TASK_TYPES:
            raise UserError(f"{where}: {FILE} type {data['type']!r} is not one of {', '.join(TASK_TYPES)}; {fix}")
        check_name(data["task"], f"{where}: {FILE} task")
        teacher = data.get("distilled_from")
        if teacher is not None:
            known = {f.name: f for f in dataclasses.fields(DistilledFrom)}
            need = {n for n, f in known.items() if f.default is dataclasses.MISSING}
            if not isinstance(teacher, dict) or not need <= set(teacher) <= set(known):
                keys = sorted(teacher) if isinstance(teacher, dict) else teacher
                raise UserError(f"{where}: {FILE} distilled_from has keys {keys}, not {sorted(known)}; {fix}")
            teacher = DistilledFrom(**teacher)
        return cls(**{**data, "distilled_from": teacher})

    @classmethod
    def load(cls, folder) -> "BranchConfig":
        """The config of a branch folder, which must also hold its weights."""
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"branch {folder} not found; give a run folder holding {FILE} and {WEIGHTS}")
        for name in (FILE, WEIGHTS):
            if not (folder / name).is_file():
                raise UserError(f"branch {folder}: {name} missing; is this a finished training or distillation run?")
        return cls.from_json(read_json(folder / FILE, "retrain the branch or restore the file"), f"branch {folder}")
