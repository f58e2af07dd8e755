import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
os.environ.setdefault("CTB_CACHE_DIR", tempfile.mkdtemp(prefix="ctb-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (GLUE files) not beside the repo")


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the ctb-mobile entry point in-process: returns (exit code, stdout, stderr)."""
    from toolchain.cli import main

    def run(*args):
        # in-process: leave pytest's stderr alone (toolchain.quiet.route); set on every call, so a test's
        # monkeypatch.undo() cannot send the rest of the session's stderr to the log
        monkeypatch.setenv("CTB_VERBOSE", "1")
        monkeypatch.setattr(sys, "argv", ["ctb-mobile", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def copy_bundle(src, tmp_path, name="b") -> Path:
    import shutil

    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def reseal(bundle, *names):
    """Update the manifest's checksum of files, as a careless re-export would."""
    import json

    from runtime_py.bundle import file_bytes, file_sha256

    m = json.loads((bundle / "manifest.json").read_text())
    for name in names:
        m["files"][name] = {"sha256": file_sha256(bundle / name), "bytes": file_bytes(bundle / name)}
    (bundle / "manifest.json").write_text(json.dumps(m))


def write_recipe(tmp_path, body: str, name="r.toml") -> Path:
    """A recipe in tmp_path whose `@DATA@` stands for the shipped models/data folder."""
    p = tmp_path / name
    p.write_text(body.replace("@DATA@", str(ROOT / "models" / "data")))
    return p


TINY_TASK = """
name = "t"
backbone = "tiny-random"
max_seq_len = 32
[train]
epochs = 2
batch_size = 16
lr = 1e-3
[[tasks]]
name = "intent"
type = "classification"
format = "seqio"
train = "@DATA@/snips/train"
dev = "@DATA@/snips/valid"
max_train_examples = 96
max_dev_examples = 32
"""


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny-backbone store on real SNIPS/CLINC text: snips_intent, snips_slots and clinc_domain (a second
    attach depth), trained one epoch; shared by the export, runtime and bench tests."""
    import json

    from toolchain import store
    from toolchain.config import load_recipe
    from toolchain.train import run_sweep
    from toolchain.workspace import Workspace

    out = tmp_path_factory.mktemp("export")
    recipe_path = write_recipe(out, (ROOT / "models/tiny.toml").read_text().replace('"data/', '"@DATA@/'))
    recipe = load_recipe(recipe_path).override(epochs=1)
    run_sweep(recipe, Workspace(out), layers=[2])
    sel = json.loads((out / "selected.json").read_text())
    runs = [out / sel["snips_intent"]["run"], out / sel["snips_slots"]["run"]]
    store.create(out / "store", store_bb(), "tiny-random", runs)
    run_sweep(recipe, Workspace(out), tasks=["clinc_domain"], layers=[1])  # a second attach depth
    store.add(out / "store", out / "runs/clinc_domain/L1-s0")
    return out, recipe


class _Bundles(dict):
    """fp32 bundles of the tiny store by (target, layout), each exported on first use in the session."""

    def __init__(self, tiny, base):
        super().__init__()
        self.tiny, self.base = tiny, base

    def __missing__(self, key):
        from toolchain.export import export_bundle

        out, recipe = self.tiny
        target, layout = key
        self[key] = self.base / f"{target}-{layout}"
        export_bundle(recipe, out / "store", target, "fp32", layout, self[key], log=lambda m: None)
        return self[key]


@pytest.fixture(scope="session")
def tiny_bundles(tiny, tmp_path_factory):
    """fp32 bundles of the tiny store (onnx fused, android fused and split), exported once per session
    when a test first asks for one."""
    return _Bundles(tiny, tmp_path_factory.mktemp("bundles"))


def store_bb():
    from toolchain import backbone

    return backbone.load("tiny-random")

