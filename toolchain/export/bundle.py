"""What a bundle folder holds and how it is staged: the programs of one guard attempt, the manifest
(`program_spec`, `manifest_for`, `write_manifest`) and the model card (`model_card`)."""

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from runtime_py.bundle import file_bytes as size
from runtime_py.bundle import file_sha256 as sha256
from runtime_py.manifest import labels_sha256, parse
from toolchain import __version__


def _dims(target, max_seq_len, *rest) -> tuple:
    from runtime_py.manifest import Dim

    batch = Dim.range("batch", 1, 1 if target == "ios" else 64)
    seq = Dim.range("seq", 1, max_seq_len)
    return tuple({"batch": batch, "seq": seq}.get(d, d) if isinstance(d, str) else Dim(size=d) for d in rest)


def program_spec(target, graph, files, precision, metas, hidden_size, max_seq_len):
    """The manifest entry of one exported program: inputs in positional order, outputs by index with
    the task each one feeds and its shape (CONTRACT.md)."""
    from runtime_py.manifest import Program, Tensor

    ints = "int32" if target == "ios" else "int64"
    inputs = tuple(Tensor(n, "float32" if n == "hidden" else ints,
                          _dims(target, max_seq_len, "batch", "seq", *((hidden_size,) if n == "hidden" else ())))
                   for n in graph.inputs)
    outputs = []
    for i, name in enumerate(graph.outputs):
        if name in metas:
            m = metas[name]
            rest = {"classification": (len(m.labels),), "regression": (), "tagging": ("seq", len(m.labels))}
            outputs.append(Tensor(name, "float32", _dims(target, max_seq_len, "batch", *rest[m.type]), i, name))
        else:  # a split trunk's hidden state at one attach depth
            outputs.append(Tensor(name, "float32", _dims(target, max_seq_len, "batch", "seq", hidden_size), i, None,
                                  int(name.rsplit("_", 1)[1])))
    return Program(graph.name, files[0], tuple(files), precision, inputs, tuple(outputs))


def manifest_for(target, precision, layout, metas, store_meta, tokenizer, *, programs=(), task_precision=None):
    """The Manifest (files not yet hashed); `tokenizer`: a TokenizerSpec, whose max_seq_len is the bundle's;
    `task_precision`: task -> the precision of its branch where it is not `precision`."""
    from runtime_py.manifest import Manifest, Task

    task_precision, max_seq_len = task_precision or {}, tokenizer.max_seq_len
    tasks = tuple(Task(n, m.type, "model" if layout == "fused" else f"branch_{n}", n, tuple(m.labels),
                       m.attach, m.layers, m.pair, task_precision.get(n, precision),
                       m.metric, m.dev_metric) for n, m in metas.items())
    return Manifest(target=target, layout=layout, precision=precision, toolchain_version=__version__,
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), backbone=store_meta["backbone"],
                    trunk_fingerprint=store_meta["backbone_fingerprint"], max_seq_len=max_seq_len,
                    tokenizer=tokenizer, programs=tuple(programs),
                    tasks=tasks)


def write_manifest(manifest, folder: Path, where) -> dict:
    """Hash every file of the staged `folder` into the manifest, check it against the schema (every
    bundle written conforms) and write manifest.json; returns the manifest as written."""
    manifest.files = {f.name: {"sha256": sha256(f), "bytes": size(f)} for f in sorted(Path(folder).iterdir())
                      if f.name not in ("manifest.json", "README.md")}
    out = manifest.to_json()
    parse(out, f"exported manifest for {where}")
    (Path(folder) / "manifest.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def quantization(verdict, limits, *, scheme=None, skipped=None, parts=None) -> dict:
    """The manifest's `quantization` record: the guard's figures (`verdict`: guard.Verdict, `limits`:
    guard.Limits), what it kept in fp32, and the scheme of each part (`parts`: part_schemes)."""
    attempt, fp32 = verdict.attempt, verdict.attempt.keep_fp32
    return {"onnx_int8": scheme, "guard": verdict.report, "guard_skipped": skipped, "max_metric_drop": limits.max_drop,
            "min_agreement": limits.min_agreement, "parts": parts, "fp32_branches": [b for b in attempt.branches if b in fp32],
            "fp32_trunk_layers": [i for i in attempt.trunk_layers if f"trunk.layers.{i}" in fp32],
            "fp32_embeddings": attempt.embeddings and "trunk.embeddings" in fp32}


def part_schemes(attempt, metas, depth: int, precision: str) -> dict:
    """keep name (a task's branch, "trunk.layers.<i>", "trunk.embeddings") -> {"precision", "group"}: what
    each part of the exported programs holds; int4 parts name their group size."""
    from toolchain.export.guard import trunk_parts

    base = attempt.weights if precision == "int4" else precision
    out = {}
    for part in (*trunk_parts(depth), *metas):
        p = "fp32" if part in attempt.keep_fp32 else "int8" if part in attempt.keep_int8 else base
        out[part] = {"precision": p, **({"group": attempt.group} if p == "int4" else {})}
    return out


def inputs(devs, tok, max_seq_len, precision) -> tuple:
    """(example, calibration): the inputs traced from (four dev texts) and, for static int8 only, the
    batches its activation ranges are measured on (64 dev texts per task)."""
    from toolchain.export.graph import example_inputs

    texts = [ex.text or " ".join(ex.tokens) for _, _, _, exs in devs.values() for ex in exs[:4]] or ["hello world"]
    example = example_inputs(tok, texts[:4], max_seq_len)
    if precision != "int8-static":
        return example, []
    calib = [ex.text or " ".join(ex.tokens) for _, _, _, exs in devs.values() for ex in exs[:64]]
    return example, [example_inputs(tok, calib[i: i + 16], max_seq_len) for i in range(0, len(calib), 16)]


@dataclass(frozen=True)
class Staging:
    """A bundle being built in `folder` (the atomic output's temporary twin): the tokenizer files stay,
    and each guard attempt replaces the programs."""

    folder: Path
    mod: object  # the target's backend module
    target: str
    precision: str
    layout: str
    model: object
    metas: dict
    store_meta: dict
    tok_spec: dict  # tokenizer.write's answer: file names and fingerprint
    example: object
    calibration: list
    scheme: str | None  # onnx int8: "asymmetric" | "symmetric"
    max_seq_len: int
    where: Path  # the bundle folder being written, for messages
    log: object

    def export(self, attempt):
        """Export every program of the layout with `attempt`'s parts in fp32 and write the manifest, so
        that the staged folder is a bundle Predictor can run; returns the Manifest."""
        from runtime_py.manifest import TokenizerSpec
        from toolchain.export import cache
        from toolchain.export.graph import calibration_for, graphs

        keep_names = {self.tok_spec[k] for k in ("file", "vocab", "tables")}
        for f in self.folder.iterdir():
            if f.name not in keep_names:
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        hidden_size = self.store_meta["encoder"]["hidden_size"]
        programs = []
        for g in graphs(self.model, self.metas, self.layout, self.example):
            keep, int8, p = self._precision(g.name, attempt)
            self.log(f"exporting {g.name} ({self.target}, {p}{f' {self.scheme}' if self.scheme and p == self.precision else ''}"
                     f"{f' in groups of {attempt.group}' if p == 'int4' else ''}{', fp32: ' + ', '.join(keep) if keep else ''}"
                     f"{', int8: ' + ', '.join(int8) if int8 else ''})")
            embedded = {"target": self.target, "program": g.name,
                        "trunk_fingerprint": self.store_meta["backbone_fingerprint"],
                        "tokenizer_fingerprint": self.tok_spec["fingerprint"], "outputs": list(g.outputs),
                        "tasks": [t for t in g.outputs if t in self.metas],
                        "labels_sha256": labels_sha256({t: self.metas[t].labels for t in g.outputs if t in self.metas})}
            options = {"keep_int8": int8, "group": attempt.group} if p == "int4" else \
                {"symmetric": True} if self.scheme == "symmetric" and p == self.precision else {}
            files = cache.export(self.mod, self.target, g, self.folder, p, self.max_seq_len, embedded,
                                 calibration=calibration_for(g, self.model, self.calibration), keep_fp32=keep,
                                 options=options)
            programs.append(program_spec(self.target, g, files, p, self.metas, hidden_size, self.max_seq_len))
        schemes = part_schemes(attempt, self.metas, self.model.trunk.depth, self.precision)
        manifest = manifest_for(self.target, self.precision, self.layout, self.metas, self.store_meta,
                                TokenizerSpec(max_seq_len=self.max_seq_len, **self.tok_spec), programs=programs,
                                task_precision={t: schemes[t]["precision"] for t in self.metas})
        write_manifest(manifest, self.folder, self.where)
        return manifest

    def judge_simulated(self, attempt, devs, refs) -> dict:
        """The guard's figures for `attempt` on the fused module before lowering (the backend's `quantized`),
        in eager PyTorch: the guard's search (guard.settled)."""
        from toolchain.export.check import judge_module
        from toolchain.export.graph import graphs

        g = graphs(self.model, self.metas, "fused", self.example)[0]
        module = self.mod.quantized(g, attempt.weights, self.max_seq_len, attempt.keep_fp32, keep_int8=attempt.keep_int8,
                                    group=attempt.group)
        return judge_module(module, g.outputs, devs, refs, attempt.judged or tuple(devs))

    def finish(self, manifest, quantization: dict | None, report: dict | None) -> dict:
        """Write the final manifest (with the guard's record, `quantization`) and the model card (with
        the guard's figures, `report`); returns the manifest as written."""
        manifest.quantization = quantization
        out = write_manifest(manifest, self.folder, self.where)
        (self.folder / "README.md").write_text(model_card(out, manifest.files, report))
        return out

    def _precision(self, program, attempt) -> tuple:
        """(keep_fp32 entries, keep_int8 entries, precision) of one program: the fused model keeps branches
        and trunk parts; a split trunk its parts; a split branch kept is all at the kept precision. An int4
        export's programs are int8 once the guard gave int4 up (attempt.weights)."""
        base = attempt.weights if self.precision == "int4" else self.precision
        fp32, int8 = attempt.keep_fp32, attempt.keep_int8
        if program == "model":
            return fp32, int8, base
        if program == "trunk":
            return [k for k in fp32 if k in attempt.trunk], [k for k in int8 if k in attempt.trunk], base
        task = program.removeprefix("branch_")
        return [], [], "fp32" if task in fp32 else "int8" if task in int8 else base


def model_card(manifest: dict, files: dict, guard: dict | None) -> str:
    lines = [f"# ctb-mobile bundle: {manifest['target']}, {manifest['layout']}, {manifest['precision']}", "",
             (f"Backbone {manifest['backbone']} (trunk fingerprint `{manifest['trunk_fingerprint'][:16]}`), "
              f"max {manifest['max_seq_len']} tokens, toolchain {manifest['toolchain_version']}."), "",
             "| task | type | output | (attach, layers) | labels | precision | dev metric (training) |",
             "|---|---|---|---|---|---|---|"]
    for t in manifest["tasks"]:
        lines.append(f"| {t['name']} | {t['type']} | `{t['output']}` | ({t['attach']}, {t['layers']}) | "
                     f"{len(t['labels']) or '-'} | {t['precision']} | {t['metric']} {t['dev_metric']:.2f} |")
    if guard:
        lines += ["", "Quantization guard (dev sets, exported vs PyTorch fp32):", "",
                  "| task | metric | fp32 | exported | drop | agreement |", "|---|---|---|---|---|---|"]
        for name, g in guard.items():
            lines.append(f"| {name} | {g['metric']} | {g['reference']:.2f} | {g['exported']:.2f} | {g['drop']:.2f} | "
                         f"{g['agreement']:.2%} |")
    q = manifest.get("quantization")
    if q and not q.get("guard_skipped"):
        lines += ["", f"Kept in fp32 by the guard: {kept_in_fp32(q)}."]
    lines += ["", "| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {f} | {v['bytes']:,} | `{v['sha256'][:16]}` |" for f, v in files.items()]
    lines += ["", ("Inputs: WordPiece ids from `tokenizer.json` (`[CLS] text [SEP]`, pairs `[CLS] a [SEP] b [SEP]`), "
              "attention mask 1/0, token type ids 0/1. Read labels, outputs and attach depths from `manifest.json`.")]
    return "\n".join(lines) + "\n"


def kept_in_fp32(q: dict) -> str:
    """The manifest's fp32 choices in words: branches, trunk layers, word embeddings."""
    parts = []
    if q.get("fp32_branches"):
        branches = q["fp32_branches"]
        parts.append(f"branch{'es' if len(branches) > 1 else ''} {', '.join(branches)}")
    if q.get("fp32_trunk_layers"):
        layers = q["fp32_trunk_layers"]
        parts.append(f"trunk layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}")
    if q.get("fp32_embeddings"):
        parts.append("the word embeddings")
    return "; ".join(parts) if parts else "nothing, every part is quantized"

