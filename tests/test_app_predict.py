"""The JVM entry point (`android_demo/predict.sh BUNDLE TEXT...`: the Kotlin core with ONNX Runtime's Java
API, what a Kotlin or Java backend service would call) prints what `ctb-mobile predict BUNDLE TEXT...`
prints, for the same bundle and texts: the same tasks in the same order, labels and spans exactly, scores
within the bundle's app tolerance. It needs Maven, so it is the `app` tier: CI runs it after the app tests
(`python -m pytest -q -m app`), on the bundles in CTB_APP_BUNDLES (os.pathsep-separated), or on the tiny
fp32 ONNX bundle when that is unset."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from toolchain.verify import GOLDEN_EDGE_CASES, app_tolerance

pytestmark = pytest.mark.app

TEXTS = [line.strip() for line in (ROOT / "models/data/snips/valid/seq.in").read_text(encoding="utf-8").splitlines()[:40]]
TEXTS += [t for t in GOLDEN_EDGE_CASES if t and "\x00" not in t]  # a command-line argument is neither empty nor holds NUL


def bundles(request) -> list:
    given = [Path(p) for p in os.environ.get("CTB_APP_BUNDLES", "").split(os.pathsep) if p]
    return given or [request.getfixturevalue("tiny_bundles")[("onnx", "fused")]]  # trains the tiny store


def lines(cmd: list) -> list:
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", timeout=900)
    assert done.returncode == 0, f"{cmd[0]} exited {done.returncode}: {done.stderr[-2000:]}"
    return [json.loads(x) for x in done.stdout.splitlines()]


def test_jvm_predict_prints_what_ctb_mobile_predict_prints(request):
    for bundle in bundles(request):
        py = lines([sys.executable, "-m", "toolchain.cli", "predict", str(bundle), *TEXTS])
        jvm = lines(["bash", str(ROOT / "android_demo/predict.sh"), str(bundle), *TEXTS])
        tol = app_tolerance(json.loads((bundle / "manifest.json").read_text())["precision"])["score"]
        assert len(py) == len(jvm) == len(TEXTS)
        worst = 0.0
        for i, (a, b) in enumerate(zip(py, jvm)):
            assert list(a) == list(b), f"{bundle.name} text {i}: keys {list(b)}, expected {list(a)}"
            assert a["text"] == b["text"]
            for task in list(a)[1:]:
                x, y = a[task], b[task]
                assert set(x) == set(y), f"{bundle.name} text {i} {task}: {y} against {x}"
                if "label" in x:
                    assert x["label"] == y["label"], f"{bundle.name} text {i} {task}: {y} against {x}"
                    worst = max(worst, abs(x["score"] - y["score"]))
                elif "spans" in x:
                    assert x["spans"] == y["spans"], f"{bundle.name} text {i} {task}: {y} against {x}"
                else:
                    worst = max(worst, abs(x["value"] - y["value"]))
        assert worst <= tol, f"{bundle.name}: a score differs by {worst:.2e}, more than {tol:g}"
        print(f"jvm predict diff {bundle.name}: {len(TEXTS)} texts, {len(py[0]) - 1} tasks each, labels and spans "
              f"equal, max score diff {worst:.2e} (allowed {tol:g})")
