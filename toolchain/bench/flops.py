"""Analytic FLOPs of the layers a program runs (embeddings excluded): what bench divides by a latency to
get GFLOP/s, held against the GEMM peak of bench/gemm.py."""


def layer_flops(tokens: int, hidden: int, ffn: int) -> int:
    """Multiply-adds ×2 of one BERT layer: Q, K, V, output, FFN in/out, and the attention products."""
    return 2 * tokens * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * tokens * tokens * hidden


def head_flops(meta, tokens: int, hidden: int) -> int:
    if meta.type == "tagging":
        return 2 * tokens * hidden * meta.n_out
    return 2 * hidden * hidden + 2 * hidden * meta.n_out  # tanh pooler on [CLS], then the output layer


def model_flops(metas: dict, tokens: int, hidden: int, ffn: int) -> int:
    """FLOPs of one request through a model whose trunk runs to the deepest attach point (embeddings
    excluded). A single-task model is the same formula with one branch."""
    depth = max(m.attach for m in metas.values())
    layers = depth + sum(m.layers for m in metas.values())
    return layers * layer_flops(tokens, hidden, ffn) + sum(head_flops(m, tokens, hidden) for m in metas.values())


def flops_table(metas: dict, single_metas: dict, lengths, hidden: int, ffn: int) -> dict:
    """Per length (as a str key): FLOPs of the merged model, of each single-task model, their sum, and
    merged ÷ Σ single."""
    out = {"merged": {}, "single": {t: {} for t in metas}, "single_sum": {}, "ratio": {}}
    for n in lengths:
        k = str(n)
        out["merged"][k] = model_flops(metas, n, hidden, ffn)
        for t in metas:
            out["single"][t][k] = model_flops({t: single_metas[t]}, n, hidden, ffn)
        out["single_sum"][k] = sum(out["single"][t][k] for t in metas)
        out["ratio"][k] = out["merged"][k] / out["single_sum"][k]
    return out
