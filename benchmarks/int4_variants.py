"""int4 schemes of one store side by side, judged as the guard judges them, without lowering a program.

    python benchmarks/int4_variants.py models/assistant.toml --store DIR [--rows 500]
        [--variants 64:affine:int4 32:affine:int4 32:hqq_scale_only:int4 32:affine:int8 32:affine:int4:trunk.layers.1]

Each variant is GROUP:ALGORITHM:EMBEDDINGS[:PARTS]: torchao's 8da4w on every Linear of the store's fused
module (android's int4, `toolchain.export.executorch.quantized`, the module the guard's search runs) in groups
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
    from toolchain.export import check, dev_sets
    from toolchain.export.graph import Fused, for_xnnpack
    from toolchain.export.executorch import linear_precision
    from toolchain.store import load_merged

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--variants", nargs="+", default=["64:affine:int4", "32:affine:int4", "32:hqq_scale_only:int4"])
    args = ap.parse_args(argv)
    specs = [_spec(v) for v in args.variants]
    model, tok, metas = load_merged(args.store)
    devs = dev_sets(load_recipe(args.recipe), tok, metas, args.rows)
    refs = {n: check.outputs_on(dev, check.torch_runner(model)) for n, (_, _, dev, _) in devs.items()}
    tasks = list(metas)
    for text, (group, algorithm, embeddings, keep_int8) in zip(args.variants, specs):
        t0 = time.perf_counter()
        module = for_xnnpack(Fused(model.eval(), tasks).eval(), int8_embeddings=embeddings == "int8",
                             int4_embeddings=group if embeddings == "int4" else 0)
        _quantize(module, group, algorithm, lambda fqn: linear_precision(fqn, "model", (), keep_int8))
        report = check.judge_module(module, tasks, devs, refs, tuple(devs))
        cells = "  ".join(f"{n} {100 * g['agreement']:.1f} % {-g['drop']:+.2f}" for n, g in report.items())
        print(f"{text:40s} {cells}  [{time.perf_counter() - t0:.0f} s]", flush=True)


def _spec(text: str) -> tuple:
    fields = text.split(":")
    if (len(fields) not in (3, 4) or not fields[0].isdigit() or fields[1] not in ("affine", "hqq_scale_only")
            or fields[2] not in ("int4", "int8", "fp32")):
        raise SystemExit(f"error: variant {text!r} is not GROUP:ALGORITHM:EMBEDDINGS[:PARTS], e.g. 32:affine:int4")
    return int(fields[0]), fields[1], fields[2], tuple(p for p in (fields[3] if len(fields) == 4 else "").split(",") if p)


def _quantize(module, group: int, algorithm: str, precision_of) -> None:
    import torch
    from torchao.quantization import quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig as Config

    def at(level):
        return lambda m, fqn: isinstance(m, torch.nn.Linear) and precision_of(fqn) == level

    quantize_(module, Config(weight_dtype=torch.int4, weight_granularity=PerGroup(group),
                             intx_choose_qparams_algorithm=algorithm), filter_fn=at("int4"))
    quantize_(module, Config(weight_dtype=torch.int8, weight_granularity=PerAxis(0)), filter_fn=at("int8"))


if __name__ == "__main__":
    main()
