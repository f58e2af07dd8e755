"""iOS: a CoreML ML program (.mlpackage, iOS 17+; int4: iOS 18+), converted from torch.export.

Precisions: fp16 (default: fp16 compute and weights) | int8 (fp16 compute, int8 per-channel
linear-symmetric weights through coremltools.optimize) | int4 (fp16 compute, int4 linear-symmetric
weights per block of `group` input values, iOS 18's per-block scales; no guard on Linux, so in the
smaller group) | fp32. Sequence length is a range
(1..max_seq_len), not enumerated shapes: every length in between is valid, which matches dynamic
text; batch is 1 (CoreML apps run one request at a time). Outputs are float32 whatever the compute
precision, as the manifest says (an fp16 program casts its last values up). The manifest is stored in the model's
user-defined metadata. Prediction needs macOS; on Linux the package is checked structurally.
"""

import json
from pathlib import Path

from runtime_py.targets import get as _target

TARGET = _target("ios")  # precisions, suffix and metadata key: runtime_py/targets.py
SUFFIX = TARGET.suffix


def export(graph, out_dir: Path, precision: str, max_seq_len: int, metadata: dict, *, calibration=(),
           keep_fp32=(), keep_int8=(), group: int = 32) -> list:
    """`keep_fp32` and `keep_int8` are not applied: the guard cannot judge CoreML programs on Linux."""
    import coremltools as ct
    import numpy as np
    import torch

    example = tuple(t[:1] for t in graph.example)
    ep = torch.export.export(graph.module, example, dynamic_shapes=graph.dynamic_shapes(max_seq_len, batch=False))
    ml = ct.convert(ep.run_decompositions({}), outputs=[ct.TensorType(name=n, dtype=np.float32) for n in graph.outputs],
                    minimum_deployment_target=ct.target.iOS18 if precision == "int4" else ct.target.iOS17,
                    convert_to="mlprogram",
                    compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16)
    if precision in ("int8", "int4"):
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

        per = {"granularity": "per_channel"} if precision == "int8" else {"granularity": "per_block", "block_size": group}
        cfg = OpLinearQuantizerConfig(mode="linear_symmetric", dtype=precision, weight_threshold=2048, **per)
        ml = linear_quantize_weights(ml, config=OptimizationConfig(global_config=cfg))
    ml.user_defined_metadata[TARGET.metadata_key] = json.dumps(metadata, sort_keys=True)
    name = f"{graph.name}{SUFFIX}"
    ml.save(str(Path(out_dir) / name))
    return [name]


def describe(path: Path) -> dict:
    """What a package declares, read without running it (works on Linux)."""
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    ops = set()
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            ops.update(op.type for op in block.operations)
    inputs = {}
    for i in spec.description.input:
        ranges = [(r.lowerBound, r.upperBound) for r in i.type.multiArrayType.shapeRange.sizeRanges]
        dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(i.type.multiArrayType.dataType)
        inputs[i.name] = {"dtype": dtype, "ranges": ranges}
    return {"inputs": inputs, "outputs": [o.name for o in spec.description.output], "ops": sorted(ops),
            "metadata": dict(spec.description.metadata.userDefined),
            "spec_version": spec.specificationVersion}
