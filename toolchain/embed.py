"""`ctb-mobile embed`: put a verified bundle and its golden files into a demo app.

Refused, each in one line: a bundle with no passing `verify` report for exactly this manifest, a
bundle whose files no longer match their sha256, and a bundle whose target the app cannot run.
The app's bundle and golden folders are replaced whole, or left as they were.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

from toolchain import UserError
from toolchain.fsutil import atomic_dir

REPO = Path(__file__).resolve().parent.parent
GOLDEN_FILES = ("golden.json", "golden_tokenizer.json", "golden_spans.json", "verify.json")


@dataclass(frozen=True)
class App:
    target: str  # the one bundle target its backend runs
    runtime: str
    bundle: str  # folders inside the app, relative to its root
    golden: str


APPS = {
    "android_demo": App("android", "ExecuTorch", "app/src/main/assets/bundle", "app/src/androidTest/assets/golden"),
    "ios_demo": App("ios", "CoreML", "DemoApp/Resources/bundle", "DemoApp/Resources/golden"),
}


def embed(bundle_dir, app: str, app_dir=None, report_dir=None) -> dict:
    """Copy the bundle and its verify report's golden files into the app; returns what was written."""
    import json

    from runtime_py.bundle import BundleError, file_sha256, load_manifest

    if app not in APPS:
        raise UserError(f"unknown app {app!r}; use one of: {', '.join(APPS)}")
    spec = APPS[app]
    bundle_dir = Path(bundle_dir)
    app_dir = Path(app_dir) if app_dir else REPO / app
    report_dir = Path(report_dir) if report_dir else bundle_dir.with_name(bundle_dir.name + ".verify")
    if not app_dir.is_dir():
        raise UserError(f"app folder {app_dir} not found; pass --app-dir pointing at your {app} checkout")
    try:
        m = load_manifest(bundle_dir)  # every file present, its size and sha256 as recorded
    except BundleError as e:
        raise UserError(f"{e} (embed copies only intact bundles)") from None
    if m.target != spec.target:
        raise UserError(f"{app} runs {spec.target} bundles ({spec.runtime}); {bundle_dir} is for target {m.target}; "
                        f"export one with `ctb-mobile export RECIPE --target {spec.target}`")
    report = report_dir / "verify.json"
    try:
        result = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = None
    fix = f"run `ctb-mobile verify {bundle_dir} --recipe RECIPE` first"
    if not isinstance(result, dict):
        raise UserError(f"bundle {bundle_dir} has no readable verify report at {report}; {fix}")
    if result.get("manifest_sha256") != file_sha256(bundle_dir / "manifest.json"):
        raise UserError(f"verify report {report} is for another bundle (manifest sha256 differs); {fix}")
    if result.get("ok") is not True:
        failed = [c.get("check") for c in result.get("checks", []) if not c.get("ok")]
        raise UserError(f"bundle {bundle_dir} failed verify ({', '.join(map(str, failed)) or 'no checks'}); fix the "
                        "export and verify again")
    missing = [f for f in GOLDEN_FILES if not (report_dir / f).is_file()]
    if missing:
        raise UserError(f"verify report folder {report_dir} lacks {missing[0]}; {fix}")

    names = ["manifest.json", *m.files, *(["README.md"] if (bundle_dir / "README.md").is_file() else [])]
    dest_bundle, dest_golden = app_dir / spec.bundle, app_dir / spec.golden
    with atomic_dir(dest_bundle) as tmp:
        for name in names:
            src = bundle_dir / name
            shutil.copytree(src, tmp / name) if src.is_dir() else shutil.copyfile(src, tmp / name)
        load_manifest(tmp)  # the copy is intact too
    with atomic_dir(dest_golden) as tmp:
        for name in GOLDEN_FILES:
            shutil.copyfile(report_dir / name, tmp / name)
    return {"bundle": str(dest_bundle), "golden": str(dest_golden), "files": names}
