"""Export a merged model store as a self-describing bundle for one target.

    bundle/
      model.<ext>            fused layout (or trunk.<ext> + branch_<task>.<ext> for the split layout)
      tokenizer.json, vocab.txt
      manifest.json          schema, inputs, programs, per task: name, type, output, labels, attach
                             depth, precision; max_seq_len; trunk fingerprint; sha256 of every file
      README.md              the model card

Targets are one module each, registered here: android (ExecuTorch + XNNPACK), ios (CoreML), onnx
(ONNX + ORT format). After an int8 export the quantization guard compares every task's dev metric
with PyTorch fp32; a task that drops more than the limit, or whose predictions agree with fp32 on
fewer than `min_agreement` of dev examples, has its branch kept in fp32 and the bundle is exported
again. If the agreement is still short, the disagreement comes from the shared int8 trunk: its word
embeddings and each trunk layer are measured alone in fp32, and they are then kept in fp32, most
helpful first, until the agreement holds; the branches kept for their agreement alone are then tried
in int8 again. If the drop is still over the limit, or the agreement short with the whole trunk in
fp32 (the limit `verify` applies: the same `check.limits`), the export fails with the per-task
report. Nothing is written unless the whole bundle succeeds (the previous bundle stays).
"""

import dataclasses
import importlib
import json
import shutil
import time
from pathlib import Path

from runtime_py.bundle import file_bytes as size
from runtime_py.bundle import file_sha256 as sha256
from runtime_py.manifest import parse
from toolchain import UserError, __version__
from toolchain.fsutil import atomic_dir

TARGETS = {"android": "toolchain.export.executorch", "ios": "toolchain.export.coreml", "onnx": "toolchain.export.onnx"}
EXTRAS = {"android": ("executorch", "executorch"), "ios": ("coremltools", "coreml"), "onnx": ("onnxruntime", "onnx")}
DEFAULT_PRECISION = {"android": "int8", "ios": "fp16", "onnx": "int8"}
LAYOUTS = ("fused", "split")
# keep_fp32 entries: a task's name (its branch), one trunk layer, or the trunk's (word) embeddings
TRUNK_LAYER = "trunk.layers."
EMBEDDINGS = "trunk.embeddings"


def backend(target: str):
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; use one of: {', '.join(TARGETS)}, all")
    package, extra = EXTRAS[target]
    if importlib.util.find_spec(package) is None:
        raise UserError(f"target {target} needs {package}; run: pip install 'ctb-mobile[{extra}]'")
    return importlib.import_module(TARGETS[target])


def check_request(target: str, precision: str | None, layout: str):
    mod = backend(target)
    precision = precision or DEFAULT_PRECISION[target]
    if precision not in mod.PRECISIONS:
        raise UserError(f"precision {precision!r} is not supported for {target}; use one of: {', '.join(mod.PRECISIONS)}")
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; use one of: {', '.join(LAYOUTS)}")
    return mod, precision


def dev_sets(recipe, tok, metas, limit: int):
    """task name -> (TaskConfig, labels, Encoded dev, examples) for every store task in the recipe.

    The branch's own label list is authoritative; dev rows whose label it lacks are left out."""
    from toolchain.data import encode, read_examples, unseen

    out = {}
    for name, meta in metas.items():
        try:
            task = recipe.task(name)
        except UserError:
            continue
        if limit:
            task.max_dev_examples = min(task.max_dev_examples or limit, limit)
        labels = meta.labels
        known = set(labels)
        examples = [ex for ex in read_examples(recipe, task, "dev") if unseen(task, ex, known) is None]
        if examples:
            out[name] = (task, labels, encode(examples, tok, task, labels, recipe.seq_len(task)), examples)
    return out


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


def manifest_for(target, precision, layout, metas, store_meta, max_seq_len, programs, task_precision,
                 tokenizer: dict):
    from runtime_py.manifest import Manifest, Task, TokenizerSpec

    tasks = tuple(Task(n, m.type, "model" if layout == "fused" else f"branch_{n}", n, tuple(m.labels),
                       m.attach, m.layers, m.pair, task_precision.get(n, precision),
                       m.metric, m.dev_metric) for n, m in metas.items())
    return Manifest(target=target, layout=layout, precision=precision, toolchain_version=__version__,
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), backbone=store_meta["backbone"],
                    trunk_fingerprint=store_meta["backbone_fingerprint"], max_seq_len=max_seq_len,
                    tokenizer=TokenizerSpec(max_seq_len=max_seq_len, **tokenizer), programs=tuple(programs),
                    tasks=tasks)


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
    lines += ["", "| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {f} | {v['bytes']:,} | `{v['sha256'][:16]}` |" for f, v in files.items()]
    lines += ["", ("Inputs: WordPiece ids from `tokenizer.json` (`[CLS] text [SEP]`, pairs `[CLS] a [SEP] b [SEP]`), "
              "attention mask 1/0, token type ids 0/1. Read labels, outputs and attach depths from `manifest.json`.")]
    return "\n".join(lines) + "\n"


def export_bundle(recipe, store_dir, target, precision=None, layout="fused", out_dir=None, max_drop=None,
                  guard_examples=500, log=print, min_agreement=None) -> dict:
    """Export the store for one target; returns the manifest. See the module docstring."""
    from toolchain.export import cache, check
    from toolchain.export.graph import calibration_for, example_inputs, graphs
    from toolchain.store import check_recipe, load_merged, read_store

    mod, precision = check_request(target, precision, layout)
    guard_cfg = dataclasses.replace(recipe.export, **{k: v for k, v in (("max_metric_drop", max_drop),
                                                                         ("min_agreement", min_agreement)) if v is not None})
    guard_cfg.check("export (--max-drop or [export])")  # before any work
    lim = check.limits(target, precision, guard_cfg)
    max_drop, min_agree = guard_cfg.max_metric_drop, lim.get("agreement", 0.0)
    store_meta = read_store(store_dir)
    check_recipe(store_dir, store_meta, recipe)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a folder; choose another --out-dir")
    model, tok, metas = load_merged(store_dir)
    max_seq_len = max(recipe.seq_len(t) for t in recipe.tasks)
    devs = dev_sets(recipe, tok, metas, guard_examples)
    texts = [ex.text or " ".join(ex.tokens) for _, _, _, exs in devs.values() for ex in exs[:4]] or ["hello world"]
    example = example_inputs(tok, texts[:4], max_seq_len)
    calibration = []  # static quantization only: activation ranges from real dev text
    if precision == "int8-static":
        calib_texts = [ex.text or " ".join(ex.tokens) for _, _, _, exs in devs.values() for ex in exs[:64]]
        calibration = [example_inputs(tok, calib_texts[i: i + 16], max_seq_len) for i in range(0, len(calib_texts), 16)]
    quantized = precision.startswith("int8")
    scheme = guard_cfg.onnx_int8 if (target, precision) == ("onnx", "int8") else None  # per-token activations
    options = {"symmetric": True} if scheme == "symmetric" else {}

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        probe = out_dir.parent / f".{out_dir.name}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output folder {out_dir.parent} is not writable ({e.strerror}); choose another --out-dir") from None

    from toolchain.export import tokenizer as tokfiles

    hidden_size = store_meta["encoder"]["hidden_size"]
    keep_tasks, keep_trunk, guard = [], [], None  # the guard's fallbacks: branches, then trunk parts in fp32
    ref_rows = {name: check.outputs_on(dev, check.torch_runner(model)) for name, (_, _, dev, _) in devs.items()} \
        if quantized and mod.runner is not None else {}
    with atomic_dir(out_dir) as tmp:
        tok_spec = tokfiles.write(tok, Path(store_dir) / "tokenizer", tmp, max_seq_len)
        tok_names = {tok_spec[k] for k in ("file", "vocab", "tables")}

        def export_all():
            for f in tmp.iterdir():
                if f.name not in tok_names:
                    shutil.rmtree(f) if f.is_dir() else f.unlink()
            programs = []
            for g in graphs(model, metas, layout, example):
                task = g.name.removeprefix("branch_")
                keep, p = {"model": (keep_tasks + keep_trunk, precision), "trunk": (keep_trunk, precision)}.get(
                    g.name, ((), "fp32" if task in keep_tasks else precision))  # split: a kept branch is all fp32
                log(f"exporting {g.name} ({target}, {p}{f' {scheme}' if scheme and p == precision else ''}"
                    f"{', fp32: ' + ', '.join(keep) if keep else ''})")
                embedded = {"target": target, "program": g.name, "trunk_fingerprint": store_meta["backbone_fingerprint"],
                            "tokenizer_fingerprint": tok_spec["fingerprint"], "outputs": list(g.outputs),
                            "tasks": [t for t in g.outputs if t in metas]}
                files = cache.export(mod, target, g, tmp, p, max_seq_len, embedded,
                                     calibration_for(g, model, calibration), keep, options if p == precision else {})
                programs.append(program_spec(target, g, files, p, metas, hidden_size, max_seq_len))
            return manifest_for(target, precision, layout, metas, store_meta, max_seq_len, programs,
                                {t: "fp32" for t in keep_tasks}, tok_spec)

        def write_manifest(manifest):
            manifest.files = {f.name: {"sha256": sha256(f), "bytes": size(f)} for f in sorted(tmp.iterdir())
                              if f.name not in ("manifest.json", "README.md")}
            out = manifest.to_json()
            parse(out, f"exported manifest for {out_dir}")  # every bundle written conforms to the schema
            (tmp / "manifest.json").write_text(json.dumps(out, indent=2) + "\n")
            return out

        def run_guard(manifest, names=tuple(devs)):
            """Judge the staged bundle as verify will: through runtime_py's Predictor, from the text."""
            from runtime_py import Predictor

            write_manifest(manifest)
            predictor = Predictor(tmp, check_files=False)  # write_manifest has just hashed every file
            guard = {}
            for name in names:
                task, labels, dev, examples = devs[name]
                got, valid = check.runtime_outputs(predictor, name, task, examples, dev)
                guard[name] = check.compare(task, labels, dev, ref_rows[name], got, valid=valid)
            log("guard: " + ", ".join(f"{n} {g['metric']} {g['reference']:.2f} -> {g['exported']:.2f} "
                                      f"(agreement {g['agreement']:.1%})" for n, g in guard.items()))
            failing = [n for n, g in guard.items() if g["drop"] > max_drop]
            shaky = [n for n, g in guard.items() if g["agreement"] < min_agree and n not in failing]
            return guard, failing, shaky

        manifest = export_all()
        if ref_rows:
            guard, failing, shaky = run_guard(manifest)
            agreeing_only = list(shaky)  # kept for their agreement alone: released if a trunk part explains it
            if failing or shaky:  # first fallback: those tasks' branches in fp32
                keep_tasks = failing + shaky
                log(f"guard: {', '.join(keep_tasks)} lost more than {max_drop} points or agree on under "
                    f"{min_agree:.1%} of predictions; keeping their branches in fp32")
                manifest = export_all()
                guard, failing, shaky = run_guard(manifest)
            if shaky and not failing:  # then the shared trunk: the fewest int8 parts kept in fp32, most sensitive first
                log(f"guard: {', '.join(shaky)} still agree on under {min_agree:.1%}; measuring the embeddings and "
                    "each trunk layer in fp32")
                parts = [EMBEDDINGS] + [f"{TRUNK_LAYER}{i}" for i in range(model.trunk.depth)]
                gain = {}
                for part in parts:
                    keep_trunk = [part]
                    g, _, _ = run_guard(export_all(), shaky)  # only the tasks still short
                    gain[part] = min(g[n]["agreement"] for n in shaky)
                keep_trunk = []
                for part in sorted(parts, key=lambda k: (-gain[k], parts.index(k))):
                    keep_trunk = [k for k in parts if k in (*keep_trunk, part)]
                    log(f"guard: {', '.join(keep_trunk)} in fp32")
                    manifest = export_all()
                    guard, failing, shaky = run_guard(manifest)
                    if not shaky or failing:
                        break
                if keep_trunk and not shaky and not failing and agreeing_only:  # were those branches needed?
                    before, passed = keep_tasks, guard
                    keep_tasks = [n for n in keep_tasks if n not in agreeing_only]
                    log(f"guard: {', '.join(keep_trunk)} in fp32; trying {', '.join(agreeing_only)} in int8 again")
                    manifest = export_all()
                    guard, failing, shaky = run_guard(manifest)
                    if failing or shaky:  # they were: back to the bundle that passed (files from the export cache)
                        keep_tasks, guard, failing, shaky = before, passed, [], []
                        manifest = export_all()
            if failing:
                report = "; ".join(f"{n}: {guard[n]['metric']} {guard[n]['reference']:.2f} -> "
                                   f"{guard[n]['exported']:.2f} (drop {guard[n]['drop']:.2f})" for n in failing)
                raise UserError(f"int8 export loses more than {max_drop} points even with those branches in fp32: "
                                f"{report}; export fp32 or raise [export] max_metric_drop")
            if shaky:  # verify reads the same limit (check.limits): fail here, not after shipping
                report = "; ".join(f"{n} {guard[n]['agreement']:.2%}" for n in shaky)
                raise UserError(f"int8 predictions agree with fp32 on under {min_agree:.2%} of dev examples even with "
                                f"those branches and the whole trunk in fp32 ({report}), so verify would fail the "
                                "bundle; export fp32, or lower [export] min_agreement")

        if quantized:
            skipped = None if mod.runner is not None else f"{target} programs cannot run on this machine (CoreML " \
                "prediction needs macOS); compare its outputs with the PyTorch original on a Mac before shipping"
            if skipped:
                log(f"guard: not run: {skipped}")
            manifest.quantization = {"onnx_int8": scheme, "guard": guard, "guard_skipped": skipped,
                                     "max_metric_drop": max_drop, "min_agreement": min_agree, "fp32_branches": keep_tasks,
                                     "fp32_trunk_layers": [int(k.removeprefix(TRUNK_LAYER)) for k in keep_trunk
                                                           if k.startswith(TRUNK_LAYER)],
                                     "fp32_embeddings": EMBEDDINGS in keep_trunk}
        out = write_manifest(manifest)
        (tmp / "README.md").write_text(model_card(out, manifest.files, guard))
    return out
