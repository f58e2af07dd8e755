"""`ctb-mobile embed`: put a verified bundle and its golden files into a demo app.

Refused, each in one line: a bundle with no passing `verify` report for exactly this manifest, a
bundle whose files no longer match their sha256, and a bundle whose target the app cannot run.
The app's bundle and golden folders change together, as one (fsutil.atomic_dirs): both are replaced
whole, or both are left as they were, even if the process is killed midway. Only plain files are
copied: a link anywhere in the bundle or among the golden files is refused, wherever it points.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from toolchain import UserError
from toolchain.fsutil import atomic_dirs, reading
from toolchain.workspace import report_of

REPO = Path(__file__).resolve().parent.parent
GOLDEN_FILES = ("golden.json", "golden_tokenizer.json", "golden_spans.json", "verify.json")


@dataclass(frozen=True)
class App:
    targets: tuple  # the bundle targets its backends run (the manifest's target picks the backend)
    runtime: str
    bundle: str  # folders inside the app, relative to its root
    golden: str


APPS = {
    "android_demo": App(("android", "onnx"), "ExecuTorch or ONNX Runtime", "app/src/main/assets/bundle",
                        "app/src/androidTest/assets/golden"),
    "ios_demo": App(("ios", "onnx"), "CoreML or ONNX Runtime", "DemoApp/Resources/bundle", "DemoApp/Resources/golden"),
}


def _plain(src: Path, what: str) -> None:
    """Refuse a link at `src` or anywhere inside it: its content would come from outside the bundle."""
    for p in [src, *(sorted(src.rglob("*")) if src.is_dir() and not src.is_symlink() else [])]:
        if p.is_symlink():
            raise UserError(f"{what}: {p} is a link (to {os.readlink(p)}); embed copies plain files only: replace "
                            "the link with the file, or export the bundle again")


def embed(bundle_dir, app: str, app_dir=None, report_dir=None) -> dict:
    """Copy the bundle and its verify report's golden files into the app; returns what was written."""
    if app not in APPS:
        raise UserError(f"unknown app {app!r}; use one of: {', '.join(APPS)}")
    spec = APPS[app]
    bundle_dir = Path(bundle_dir)
    app_dir = Path(app_dir) if app_dir else REPO / app
    report_dir = Path(report_dir) if report_dir else report_of(bundle_dir)
    if not app_dir.is_dir():
        raise UserError(f"app folder {app_dir} not found; pass --app-dir pointing at your {app} checkout")
    with reading(bundle_dir):  # an export replacing it finishes first; one cut short by a kill is repaired
        return _embed(bundle_dir, app, spec, app_dir, report_dir)


def _embed(bundle_dir: Path, app: str, spec: App, app_dir: Path, report_dir: Path) -> dict:
    import json

    from runtime_py.bundle import BundleError, file_sha256, load_manifest

    try:
        m = load_manifest(bundle_dir)  # every file present, its size and sha256 as recorded
    except BundleError as e:
        raise UserError(f"{e} (embed copies only intact bundles)") from None
    if m.target not in spec.targets:
        raise UserError(f"{app} runs {' or '.join(spec.targets)} bundles ({spec.runtime}); {bundle_dir} is for target "
                        f"{m.target}; export one with `ctb-mobile export RECIPE --target {spec.targets[0]}`")
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

    names = ["manifest.json", *m.files, *(["README.md"] if os.path.lexists(bundle_dir / "README.md") else [])]
    for name in names:
        _plain(bundle_dir / name, f"bundle {bundle_dir}")
    for name in GOLDEN_FILES:
        _plain(report_dir / name, f"verify report folder {report_dir}")
    dest_bundle, dest_golden = app_dir / spec.bundle, app_dir / spec.golden
    with atomic_dirs({dest_bundle: "bundle", dest_golden: "golden"}, lock=dest_bundle,
                     protect=[bundle_dir, report_dir]) as tmp:
        for name in names:
            src = bundle_dir / name
            shutil.copytree(src, tmp[dest_bundle] / name, symlinks=True) if src.is_dir() else \
                shutil.copyfile(src, tmp[dest_bundle] / name, follow_symlinks=False)
        _plain(tmp[dest_bundle], "the copied bundle")  # nothing became a link while it was copied
        load_manifest(tmp[dest_bundle])  # the copy is intact too
        for name in GOLDEN_FILES:
            shutil.copyfile(report_dir / name, tmp[dest_golden] / name, follow_symlinks=False)
        _plain(tmp[dest_golden], "the copied golden files")
    return {"bundle": str(dest_bundle), "golden": str(dest_golden), "files": names}
