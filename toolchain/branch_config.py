"""A branch folder: branch.safetensors (the weights) and branch.json (its typed config, in the style of
peft's adapter config), saved together by `save_branch` and loaded together by `load_branch`. The config's
keys are written here and nowhere else; a file with an unknown or missing key, or a value of the wrong
type, is refused in one line.

`format_version` says which keys a file must have. Format 1 (files without the key, written before
it existed) and format 2 both need every key but `distilled_from`, `weights_sha256` among them: the sha256
of branch.safetensors, checked on every load. A file without it is refused with the command that rewrites
it (`python -m toolchain.branch_config FOLDER`). A file of a newer format is refused with `NewerFormat`,
whose advice is to upgrade ctb-mobile, never to retrain.
"""

import dataclasses
import hashlib
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

from runtime_py.manifest import TASK_TYPES
from toolchain import UserError
from toolchain.fsutil import check_name, read_json, write_bytes_atomic, write_json_atomic

FILE = "branch.json"
WEIGHTS = "branch.safetensors"
FORMAT_VERSION = 2  # 2: format_version and weights_sha256 are required
REWRITE = "python -m toolchain.branch_config"


class NewerFormat(UserError):
    """A branch.json written by a newer ctb-mobile: upgrade, do not retrain or overwrite it."""


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


@dataclass(frozen=True, kw_only=True)
class BranchConfig:
    """What every branch records; only `distilled_from` is absent from a branch that was not distilled.
    The declaration order is the order of the keys in branch.json."""

    task: str
    type: str  # classification | regression | tagging
    labels: list  # output index -> label name (empty for regression)
    attach: int  # trunk depth the branch reads
    layers: int  # its own encoder layers
    metric: str
    backbone_fingerprint: str
    dev_metric: float
    seed: int
    max_seq_len: int
    pair: bool  # whether the task reads a text pair
    hidden_size: int
    backbone: str
    toolchain_version: str
    weights_sha256: str  # of branch.safetensors, checked on load
    distilled_from: DistilledFrom | None = None
    format_version: int = FORMAT_VERSION

    @property
    def n_out(self) -> int:
        return 1 if self.type == "regression" else len(self.labels)

    def replace(self, **changes) -> "BranchConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data, where: str) -> "BranchConfig":
        fix = "it was not written by ctb-mobile; retrain the branch"
        if not isinstance(data, dict):
            raise UserError(f"{where}: {FILE} is not a JSON object; {fix}")
        version = data.get("format_version", 1)  # files written before the key existed are format 1
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise UserError(f"{where}: {FILE} format_version = {version!r} is not a format; {fix}")
        if version > FORMAT_VERSION:
            raise NewerFormat(f"{where}: {FILE} is format {version}, written by a newer ctb-mobile (this one reads "
                              f"up to {FORMAT_VERSION}); upgrade ctb-mobile (pip install -U ctb-mobile)")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise UserError(f"{where}: {FILE} has unknown key {unknown[0]!r}; {fix}")
        if not data.get("weights_sha256"):
            raise UserError(f"{where}: {FILE} (format {version}) lacks 'weights_sha256', so its weights cannot be "
                            f"checked; if you trust {WEIGHTS}, record its sha256 with `{REWRITE} {_folder(where)}`, "
                            "else retrain the branch")
        missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in data]
        if missing:
            raise UserError(f"{where}: {FILE} lacks {missing[0]!r}; {fix}")
        for k, v in data.items():
            kind, optional = _json_type(fields[k].type), type(None) in typing.get_args(fields[k].type)
            if (v is None and not optional) or \
                    (v is not None and (not isinstance(v, kind) or (kind is int and isinstance(v, bool)))):
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
        sha = data["weights_sha256"]
        if len(sha) != 64 or sha.strip("0123456789abcdef"):
            raise UserError(f"{where}: {FILE} weights_sha256 {sha[:80]!r} is not a sha256 (64 hex digits); {fix}")
        return cls(**{**data, "distilled_from": teacher, "format_version": version})

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


def save_branch(folder, data: bytes, config: BranchConfig) -> None:
    """Write a branch folder as one (peft's save_pretrained): `data`, the weights serialised by safetensors,
    into branch.safetensors, then `config`, which records their sha256, into branch.json at this format."""
    sha = hashlib.sha256(data).hexdigest()
    if config.weights_sha256 != sha:
        raise ValueError(f"{folder}: the config records weights {config.weights_sha256[:12]}, not these ({sha[:12]})")
    write_bytes_atomic(Path(folder) / WEIGHTS, data)
    write_json_atomic(Path(folder) / FILE, config.replace(format_version=FORMAT_VERSION).to_json())


def weights_bytes(module) -> bytes:
    """A module's weights as safetensors bytes (on the CPU, contiguous), as save_branch writes them."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})


def load_branch(cfg, folder, meta: BranchConfig | None = None):
    """The Branch of a folder (peft's from_pretrained): its config, then its weights read once with safetensors,
    checked against the config's sha256 and loaded strictly. Every mismatch is a one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from toolchain.model import Branch

    where = f"branch {folder}"
    meta = meta or BranchConfig.load(folder)
    try:
        data = (Path(folder) / WEIGHTS).read_bytes()  # read once: parsed and hashed
        weights = load(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{where}: {WEIGHTS} is unreadable ({str(e)[:80]}); copy it again or retrain the branch") \
            from None
    check_finite(weights, where)
    if hashlib.sha256(data).hexdigest() != meta.weights_sha256:
        raise UserError(f"{where}: {WEIGHTS} does not match the sha256 in its {FILE} (a damaged or swapped file); "
                        "copy the branch again or retrain it")
    branch = Branch(cfg, meta.attach, meta.layers, meta.type, meta.n_out)
    try:
        branch.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"{where}: weights do not fit its {FILE} ({first[:100]}); the folder mixes files from "
                        "different runs") from None
    return branch.eval()


def check_finite(weights: dict, where: str) -> None:
    """Refuse weights holding NaN or infinity (a training that diverged): nothing is merged or exported
    from them."""
    import torch

    for name, t in weights.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{where}: weight {name} holds NaN or infinity (the training diverged); retrain the "
                            "branch with a lower learning rate")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _folder(where: str) -> str:
    return where.removeprefix("branch ")


def rewrite(folder) -> BranchConfig:
    """Rewrite a branch folder's branch.json at the current format, recording the sha256 of the weights
    file as it is now (for files written before weights_sha256 was required)."""
    folder = Path(folder)
    for name in (FILE, WEIGHTS):
        if not (folder / name).is_file():
            raise UserError(f"{folder}: {name} missing; give a run folder or a store's branch folder")
    data = read_json(folder / FILE, "retrain the branch or restore the file")
    if isinstance(data, dict) and not data.get("weights_sha256"):
        data = {**data, "weights_sha256": _sha256(folder / WEIGHTS)}
    cfg = BranchConfig.from_json(data, f"branch {folder}").replace(format_version=FORMAT_VERSION)
    write_json_atomic(folder / FILE, cfg.to_json())  # the weights stay as they are
    return cfg


def main(argv=None) -> int:
    """`python -m toolchain.branch_config FOLDER...`: rewrite older branch.json files at this format."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(f"usage: {REWRITE} FOLDER... (run folders or a store's branches/<task> folders)", file=sys.stderr)
        return 2
    for folder in args:
        try:
            cfg = rewrite(folder)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{folder}: {FILE} rewritten at format {cfg.format_version} (weights {cfg.weights_sha256[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
