"""The multi-task benchmark: the merged model against the same tasks as N single-task models and the
optimum-onnx peer, on one machine in one run. A thin wrapper over `ctb-mobile bench` (toolchain/bench/).

    python benchmarks/multitask_bench.py models/assistant.toml --threads 1

Prints the markdown report (ratios merged ÷ Σ single-task per target, precision and length; speed-up
over PyTorch eager fp32; fraction of the GEMM peak measured in the same run; bytes, memory, dev metric)
and writes bench.json / bench.md / latency.png under <out>/bench.
"""

import sys

from toolchain.cli import main

if __name__ == "__main__":
    sys.argv = ["ctb-mobile", "bench", *sys.argv[1:]]
    main()
