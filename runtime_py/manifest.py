"""The bundle manifest as typed objects, read through `manifest.schema.json` (CONTRACT.md).

`parse(obj, where)` validates a manifest dict against the JSON Schema and then the rules a schema
cannot say (names that refer to each other, label counts against output shapes), and returns a
`Manifest`. Every failure is one `BundleError` naming the field. The exporter builds its manifest
with the same classes and writes `Manifest.to_json()`, so both sides spell each key once.
"""

import json
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

from runtime_py.targets import TARGETS

SCHEMA_VERSION = 2
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")
TASK_TYPES = ("classification", "regression", "tagging")
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SUFFIXES = {t.name: t.suffixes for t in TARGETS.values()}  # the program files each target may name


class BundleError(ValueError):
    """The bundle is missing, malformed, or its files do not match its manifest."""


@dataclass(frozen=True)
class Dim:
    """A fixed size, or a named range min..max."""

    size: int | None = None
    name: str | None = None
    min: int | None = None
    max: int | None = None

    @staticmethod
    def range(name: str, lo: int, hi: int) -> "Dim":
        return Dim(name=name, min=lo, max=hi)

    def accepts(self, n: int) -> bool:
        return n == self.size if self.size is not None else self.min <= n <= self.max

    def to_json(self) -> dict:
        return {"size": self.size} if self.size is not None else {"name": self.name, "min": self.min, "max": self.max}

    def __str__(self) -> str:
        return str(self.size) if self.size is not None else f"{self.name}[{self.min}..{self.max}]"


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    dims: tuple
    index: int | None = None  # outputs: position in the program's results
    task: str | None = None  # outputs: the task it feeds (None: a split trunk's hidden state)
    depth: int | None = None  # trunk outputs: the attach depth of the hidden state

    def to_json(self) -> dict:
        out = {"name": self.name, "dtype": self.dtype, "dims": [d.to_json() for d in self.dims]}
        if self.index is not None:
            out = {"index": self.index, **out, "task": self.task}
            if self.depth is not None:
                out["depth"] = self.depth
        return out

    def shape_str(self) -> str:
        return "[" + ", ".join(str(d) for d in self.dims) + "]"


@dataclass(frozen=True)
class Program:
    name: str
    file: str
    files: tuple
    precision: str
    inputs: tuple
    outputs: tuple

    def output(self, name: str) -> Tensor:
        return next(o for o in self.outputs if o.name == name)

    def to_json(self) -> dict:
        return {"name": self.name, "file": self.file, "files": list(self.files), "precision": self.precision,
                "inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}


@dataclass(frozen=True)
class Task:
    name: str
    type: str
    program: str
    output: str
    labels: tuple
    attach: int
    layers: int
    pair: bool
    precision: str
    metric: str | None = None
    dev_metric: float | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["labels"] = list(self.labels)
        return d


@dataclass(frozen=True)
class TokenizerSpec:
    file: str
    vocab: str
    tables: str
    fingerprint: str
    max_seq_len: int
    truncation: str = "longest_first"
    pair_template: str = "[CLS] A [SEP] B [SEP]"


@dataclass
class Manifest:
    target: str
    layout: str
    precision: str
    toolchain_version: str
    backbone: str
    trunk_fingerprint: str
    max_seq_len: int
    tokenizer: TokenizerSpec
    programs: tuple
    tasks: tuple
    files: dict = field(default_factory=dict)
    quantization: dict | None = None
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def program(self, name: str) -> Program:
        return next(p for p in self.programs if p.name == name)

    def task(self, name: str) -> Task:
        return next(t for t in self.tasks if t.name == name)

    def needed_files(self) -> list:
        out = [f for p in self.programs for f in p.files] + [self.tokenizer.file, self.tokenizer.vocab,
                                                             self.tokenizer.tables]
        return list(dict.fromkeys(out))

    def to_json(self) -> dict:
        return {"schema_version": self.schema_version, "target": self.target, "layout": self.layout,
                "precision": self.precision, "toolchain_version": self.toolchain_version, "created": self.created,
                "backbone": self.backbone, "trunk_fingerprint": self.trunk_fingerprint,
                "max_seq_len": self.max_seq_len, "tokenizer": asdict(self.tokenizer),
                "programs": [p.to_json() for p in self.programs], "tasks": [t.to_json() for t in self.tasks],
                "quantization": self.quantization, "files": self.files}



def labels_sha256(labels: dict) -> str:
    """sha256 of the task -> labels map a program serves, as JSON with sorted keys (CONTRACT.md): the
    exporter embeds it in each program, a runtime recomputes it from the manifest's labels."""
    import hashlib

    return hashlib.sha256(json.dumps({t: list(v) for t, v in labels.items()}, sort_keys=True).encode()).hexdigest()


def tokenizer_fingerprint(sha256s: dict) -> str:
    """sha256 over the sha256 hex digests of tokenizer.json, vocab.txt and tokenizer_tables.json
    (keys "file", "vocab", "tables"), joined by newlines (CONTRACT.md)."""
    import hashlib

    return hashlib.sha256("\n".join(sha256s[k] for k in ("file", "vocab", "tables")).encode()).hexdigest()


@cache
def _validator():
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _path(error) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(top level)"


def validate(obj, where: str = "manifest.json") -> None:
    """Raise BundleError naming the first field that breaks the schema (schema version first)."""
    if not isinstance(obj, dict):
        raise BundleError(f"{where}: not a JSON object; export the bundle again")
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{where}: schema_version {version!r}, this runtime reads {SCHEMA_VERSION}; export the "
                          "bundle with a matching toolchain")
    errors = sorted(_validator().iter_errors(obj), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        e = errors[0]
        raise BundleError(f"{where}: field {_path(e)}: {_short(e)}; export the bundle again")


def _short(error) -> str:
    msg = error.message
    return msg if len(msg) <= 160 else msg[:157] + "..."


def _dims(items) -> tuple:
    return tuple(Dim(size=d["size"]) if "size" in d else Dim(name=d["name"], min=d["min"], max=d["max"]) for d in items)


def _tensor(d) -> Tensor:
    return Tensor(d["name"], d["dtype"], _dims(d["dims"]), d.get("index"), d.get("task"), d.get("depth"))


def parse(obj, where: str = "manifest.json") -> Manifest:
    """A validated Manifest from a manifest dict (see module docstring)."""
    validate(obj, where)
    programs = tuple(Program(p["name"], p["file"], tuple(p["files"]), p["precision"],
                             tuple(_tensor(t) for t in p["inputs"]), tuple(_tensor(t) for t in p["outputs"]))
                     for p in obj["programs"])
    tasks = tuple(Task(t["name"], t["type"], t["program"], t["output"], tuple(t["labels"]), t["attach"],
                       t["layers"], t["pair"], t["precision"], t.get("metric"), t.get("dev_metric"))
                  for t in obj["tasks"])
    m = Manifest(target=obj["target"], layout=obj["layout"], precision=obj["precision"],
                 toolchain_version=obj["toolchain_version"], backbone=obj["backbone"],
                 trunk_fingerprint=obj["trunk_fingerprint"], max_seq_len=obj["max_seq_len"],
                 tokenizer=TokenizerSpec(**obj["tokenizer"]), programs=programs, tasks=tasks, files=obj["files"],
                 quantization=obj.get("quantization"), created=obj.get("created", ""))
    check_consistency(m, where)
    return m


def check_consistency(m: Manifest, where: str) -> None:
    """What the schema cannot say: unique names, references, output order and shapes, label counts."""
    def fail(field_, why):
        raise BundleError(f"{where}: field {field_}: {why}; export the bundle again")

    _check_names(m, fail)
    _check_programs(m, fail)
    _check_tasks(m, fail)
    unlisted = [f for f in m.needed_files() if f not in m.files]
    if unlisted:
        fail("files", f"{unlisted[0]} is used but has no checksum")


def _check_names(m: Manifest, fail) -> None:
    """Unique program, task and output names; outputs indexed in order; the layout's programs."""
    names = [p.name for p in m.programs]
    if len(set(names)) != len(names):
        fail("programs", "two programs share a name")
    task_names = [t.name for t in m.tasks]
    if len(set(task_names)) != len(task_names):
        fail("tasks", "two tasks share a name")
    for i, p in enumerate(m.programs):
        if p.file not in p.files:
            fail(f"programs/{i}/file", f"{p.file!r} is not among the program's files")
        if [o.index for o in p.outputs] != list(range(len(p.outputs))):
            fail(f"programs/{i}/outputs", "indices must be 0, 1, 2, ... in order")
        if len({o.name for o in p.outputs}) != len(p.outputs):
            fail(f"programs/{i}/outputs", "two outputs share a name")
    if m.layout == "fused" and names != ["model"]:
        fail("programs", "a fused bundle has exactly one program, 'model'")
    if m.layout == "split" and "trunk" not in names:
        fail("programs", "a split bundle needs a 'trunk' program")
    if m.tokenizer.max_seq_len != m.max_seq_len:
        fail("tokenizer/max_seq_len", f"{m.tokenizer.max_seq_len} differs from max_seq_len {m.max_seq_len}")


def _check_programs(m: Manifest, fail) -> None:
    """Each program's file kind, its files apart from the tokenizer's, its dims and its token inputs."""
    tok_files = {m.tokenizer.file, m.tokenizer.vocab, m.tokenizer.tables}
    for i, p in enumerate(m.programs):
        if not p.file.endswith(SUFFIXES[m.target]):
            fail(f"programs/{i}/file", f"{p.file!r} is not a {m.target} program (a {m.target} program is a "
                 f"{' or '.join(SUFFIXES[m.target])} file)")
        shared = sorted(tok_files & set(p.files))
        if shared:
            fail(f"programs/{i}/files", f"{shared[0]!r} is a tokenizer file, not part of a program")
        for kind, tensors in (("inputs", p.inputs), ("outputs", p.outputs)):
            for j, t in enumerate(tensors):
                for k, d in enumerate(t.dims):
                    if d.size is None and d.min > d.max:
                        fail(f"programs/{i}/{kind}/{j}/dims/{k}", f"min {d.min} is above max {d.max}")
        for j, t in enumerate(p.inputs):
            if t.name in TOKEN_INPUTS:
                if t.dtype not in ("int64", "int32"):
                    fail(f"programs/{i}/inputs/{j}/dtype", f"{t.name} is {t.dtype}; token inputs are int64 "
                         "(int32 for CoreML)")
                seq = t.dims[1] if len(t.dims) > 1 else None
                limit = seq.size if seq is not None and seq.size is not None else getattr(seq, "max", None)
                if limit is not None and m.max_seq_len > limit:
                    fail("max_seq_len", f"{m.max_seq_len} is above the {limit} positions program {p.name!r} "
                         f"takes (programs/{i}/inputs/{j}/dims/1)")


def _check_tasks(m: Manifest, fail) -> None:
    """Each task's program, attach depth, output, output rank and label count."""
    names = [p.name for p in m.programs]
    depths = {o.depth for p in m.programs if p.name == "trunk" for o in p.outputs if o.depth is not None}
    for i, t in enumerate(m.tasks):
        if t.program not in names:
            fail(f"tasks/{i}/program", f"{t.program!r} is not a program of the bundle")
        p = m.program(t.program)
        if m.layout == "split" and t.attach not in depths:
            fail(f"tasks/{i}/attach", f"{t.attach} is not a depth the trunk program returns "
                 f"({', '.join(map(str, sorted(depths))) or 'none'})")
        outs = [o for o in p.outputs if o.name == t.output]
        if not outs:
            fail(f"tasks/{i}/output", f"{t.output!r} is not an output of program {p.name!r}")
        o = outs[0]
        if o.task != t.name:
            fail(f"programs/{names.index(p.name)}/outputs/{o.index}/task", f"{o.task!r}, expected {t.name!r}")
        rank = {"classification": 2, "regression": 1, "tagging": 3}[t.type]
        if len(o.dims) != rank:
            fail(f"programs/{names.index(p.name)}/outputs/{o.index}/dims",
                 f"a {t.type} output has rank {rank}, not {len(o.dims)}")
        if t.type == "regression":
            continue
        if not t.labels:
            fail(f"tasks/{i}/labels", "empty")
        if o.dims[-1].size != len(t.labels):
            fail(f"tasks/{i}/labels", f"{len(t.labels)} labels but output {o.name!r} has {o.dims[-1]} values per row")
