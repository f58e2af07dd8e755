"""Training under torchrun with 2 CPU processes (gloo) against the same recipe in one process."""

import json
import subprocess
import sys

import torch
from conftest import ROOT, write_recipe
from safetensors.torch import load_file

from toolchain.branch_config import WEIGHTS
from toolchain.config import load_recipe
from toolchain.train import run_sweep
from toolchain.workspace import Workspace

# No dropout, so the two runs differ only by how the work is split. 48 rows = 3 global batches of 16;
# 49 for slots makes the last process batch short on one side (the wrap-around pads it).
RECIPE = """
name = "d"
backbone = "tiny-random"
max_seq_len = 32
[train]
epochs = 2
batch_size = 16
lr = 1e-3
dropout = 0.0
[[tasks]]
name = "intent"
type = "classification"
format = "seqio"
train = "@DATA@/snips/train"
dev = "@DATA@/snips/valid"
max_train_examples = 48
max_dev_examples = 32
layers = 1
[[tasks]]
name = "slots"
type = "tagging"
format = "seqio"
train = "@DATA@/snips/train"
dev = "@DATA@/snips/valid"
max_train_examples = 49
max_dev_examples = 32
unseen_labels = "drop"
layers = 1
"""


def test_two_cpu_processes_split_each_batch_reduce_gradients_and_match_one_process(tmp_path):
    recipe = write_recipe(tmp_path, RECIPE)
    run_sweep(load_recipe(recipe), Workspace(tmp_path / "one"))
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "-m", "toolchain.cli", "train", str(recipe), "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, cwd=ROOT, timeout=900, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    # Only the main process prints: the table and the results line come once.
    assert two.stdout.count("results:") == 1 and two.stdout.count("selected L") == 1, two.stdout
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    for task, rows, steps in (("intent", 48, 3), ("slots", 49, 4)):
        r1 = json.loads((tmp_path / f"one/runs/{task}/L1-s0/result.json").read_text())
        r2 = json.loads((tmp_path / f"two/runs/{task}/L1-s0/result.json").read_text())
        assert r1["processes"] == 1 and r2["processes"] == 2
        # Each process trained on half of every epoch's rows (rounded up), counted in the loop.
        assert r1["rows_per_process"] == [[rows]] * 2
        assert r2["rows_per_process"] == [[(rows + 1) // 2] * 2] * 2
        # Same number of optimizer steps, and the global batch's loss at each of them.
        assert len(r1["losses"]) == len(r2["losses"]) == 2 * steps
        w1 = load_file(str(Workspace(tmp_path / "one").run(task, 1, 0) / WEIGHTS))
        w2 = load_file(str(Workspace(tmp_path / "two").run(task, 1, 0) / WEIGHTS))
        if task == "intent":
            # Averaged gradients of two half batches are the gradient of the whole batch: the runs agree
            # to float rounding. Without the all-reduce, each process would step on its half batch alone.
            torch.testing.assert_close(torch.tensor(r2["losses"]), torch.tensor(r1["losses"]), rtol=1e-5, atol=1e-6)
            for k in w1:
                torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
        else:
            # Tagging averages over tokens, so half batches with different token counts weigh rows a
            # little differently, and 49 rows pad one row twice: close, not equal.
            torch.testing.assert_close(torch.tensor(r2["losses"]), torch.tensor(r1["losses"]), rtol=0.05, atol=0.02)
            for k in w1:
                torch.testing.assert_close(w2[k], w1[k], rtol=0.05, atol=5e-3)
        assert abs(r1["dev_metric"] - r2["dev_metric"]) <= 5.0
