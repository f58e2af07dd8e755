"""int4 schemes of one store side by side, judged as the guard judges them, without lowering a program.

    python benchmarks/int4_variants.py models/assistant.toml --store DIR [--rows 500]
        [--variants 64:affine:int4 32:affine:int4 32:hqq_scale_only:int4 32:affine:int8 32:affine:int4:trunk.layers.1]

Each variant is GROUP:ALGORITHM:EMBEDDINGS[:PARTS]: torchao's 8da4w on every Linear of the store's fused
module (`toolchain.export.executorch.quantized`, the module android's int4 guard searches on) in groups
of GROUP, with torchao's `intx_choose_qparams_algorithm` ALGORITHM ("affine": a group's scale from its largest
weight, as export does; "hqq_scale_only": scales fitted by half-quadratic optimisation), the word embeddings'
rows at EMBEDDINGS ("int4" in groups of GROUP, "int8" or "fp32"), and the comma-separated PARTS (keep names:
"trunk.layers.<i>", a task's branch) at int8. Prints, per variant and task, the agreement with PyTorch fp32's
predictions and the metric's change in points, on the guard's dev rows (export.dev_sets).
"""

import argparse
import time
from pathlib import Path


def main(argv=None) -> None:
    from toolchain.config import load_recipe
    from toolchain.export import EMBEDDINGS, check, dev_sets
    from toolchain.export.executorch import quantized
    from toolchain.export.graph import example_inputs, graphs
    from toolchain.store import load_merged

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--variants", nargs="+", default=["64:affine:int4", "32:affine:int4", "32:hqq_scale_only:int4"])
    args = ap.parse_args(argv)
    specs = [_spec(v) for v in args.variants]
    recipe = load_recipe(args.recipe)
    model, tok, metas = load_merged(args.store)
    devs = dev_sets(recipe, tok, metas, args.rows)
    refs = {n: check.outputs_on(dev, check.torch_runner(model)) for n, (_, _, dev, _) in devs.items()}
    graph = graphs(model, metas, "fused", example_inputs(tok, ["hello world"], 16))[0]
    for text, (group, scales, embeddings, keep_int8) in zip(args.variants, specs):
        t0 = time.perf_counter()
        module = quantized(graph, "int4", 16, [EMBEDDINGS] if embeddings == "fp32" else [],
                           keep_int8=[*keep_int8, *([EMBEDDINGS] if embeddings == "int8" else [])], group=group,
                           scales=scales)
        report = check.judge_module(module, graph.outputs, devs, refs, tuple(devs))
        cells = "  ".join(f"{n} {100 * g['agreement']:.1f} % {-g['drop']:+.2f}" for n, g in report.items())
        print(f"{text:40s} {cells}  [{time.perf_counter() - t0:.0f} s]", flush=True)


def _spec(text: str) -> tuple:
    fields = text.split(":")
    if (len(fields) not in (3, 4) or not fields[0].isdigit() or fields[1] not in ("affine", "hqq_scale_only")
            or fields[2] not in ("int4", "int8", "fp32")):
        raise SystemExit(f"error: variant {text!r} is not GROUP:ALGORITHM:EMBEDDINGS[:PARTS], e.g. 32:affine:int4")
    return int(fields[0]), fields[1], fields[2], tuple(p for p in (fields[3] if len(fields) == 4 else "").split(",") if p)


if __name__ == "__main__":
    main()
