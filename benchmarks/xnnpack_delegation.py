"""Which operators of the Android program XNNPACK runs, and which it leaves to ExecuTorch's portable
kernels, for fp32 and int8.

    python benchmarks/xnnpack_delegation.py models/assistant.toml --store DIR

Lowers the store's fused graph as `ctb-mobile export --target android` does (dynamic sequence
length up to max_seq_len, so the same program serves every length) and prints ExecuTorch's
delegation summary: delegated subgraphs and nodes, and every operator type left outside XNNPACK.
"""

import argparse
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--store", type=Path, required=True)
    args = ap.parse_args()

    from executorch.devtools.backend_debug import get_delegation_info

    from toolchain.config import load_recipe
    from toolchain.export.executorch import lower
    from toolchain.export.graph import example_inputs, graphs
    from toolchain.store import load_merged

    recipe = load_recipe(args.recipe)
    model, tok, metas = load_merged(args.store)
    max_len = max(recipe.seq_len(t) for t in recipe.tasks)
    graph = graphs(model, metas, "fused", example_inputs(tok, ["play some jazz", "wake me up at seven"], max_len))[0]
    for precision in ("fp32", "int8"):
        lowered = lower(graph, precision, max_len)
        info = get_delegation_info(lowered.exported_program().graph_module)
        outside = {k: v.non_delegated for k, v in info.delegation_by_operator.items() if v.non_delegated}
        print(f"{precision}: {info.num_delegated_subgraphs} XNNPACK subgraphs, {info.num_delegated_nodes} nodes "
              f"delegated, {info.num_non_delegated_nodes} not")
        for op, n in sorted(outside.items(), key=lambda kv: -kv[1]):
            print(f"  not delegated: {op} x{n}")


if __name__ == "__main__":
    main()
