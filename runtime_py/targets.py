"""The targets a bundle is exported for: one `Target` record each, declared once below with `register`.

Export (`toolchain.export`), the runtime (`runtime_py.backends`, the manifest's file check) and bench
read these records; nothing else spells a target's package, precisions, file suffix or metadata key.
The exporter is named by its module path, so the runtime never imports the toolchain.
"""

import importlib.util
import platform
from dataclasses import dataclass

METADATA_KEY = "ctb_mobile_manifest"  # ONNX metadata_props / CoreML user metadata key holding the manifest fragment


@dataclass(frozen=True)
class Target:
    name: str
    package: str  # the Python package its programs need to export and run
    extra: str  # pip install 'ctb-mobile[<extra>]' installs it
    precisions: tuple  # what --precision accepts, in the order the help lists them
    default_precision: str
    suffixes: tuple  # program file suffixes a manifest may name; export writes the first
    metadata_key: str  # where a program embeds its manifest fragment (ExecuTorch: a constant method's name)
    exporter: str  # the toolchain module that writes its programs (a dotted name: not imported here)
    systems: tuple = ()  # the platform.system() names its programs run on; () = every system

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    def runs_here(self) -> bool:
        """Whether this machine can run its programs (CoreML prediction needs macOS)."""
        return not self.systems or platform.system() in self.systems

    def missing(self) -> str | None:
        """The one-line advice when its package is not installed, else None."""
        if importlib.util.find_spec(self.package) is None:
            return f"needs {self.package}; run: pip install 'ctb-mobile[{self.extra}]'"
        return None


TARGETS: dict = {}  # name -> Target, in the order `--target all` exports them


def register(target: Target) -> Target:
    """Declare a target (once per name)."""
    if target.name in TARGETS:
        raise ValueError(f"target {target.name!r} is registered twice")
    if target.default_precision not in target.precisions:
        raise ValueError(f"target {target.name!r}: default precision {target.default_precision!r} is not one of "
                         f"{target.precisions}")
    TARGETS[target.name] = target
    return target


def get(name: str) -> Target:
    """The registered target; a KeyError naming the known ones otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r}; use one of: {', '.join(TARGETS)}") from None


register(Target("android", package="executorch", extra="executorch", precisions=("fp32", "int8", "int4"),
                default_precision="int8", suffixes=(".pte",), metadata_key="manifest",
                exporter="toolchain.export.executorch"))
register(Target("ios", package="coremltools", extra="coreml", precisions=("fp16", "int8", "int4", "fp32"),
                default_precision="fp16", suffixes=(".mlpackage", ".mlmodel"), metadata_key=METADATA_KEY,
                exporter="toolchain.export.coreml", systems=("Darwin",)))
register(Target("onnx", package="onnxruntime", extra="onnx", precisions=("fp32", "int8", "int8-static", "int4"),
                default_precision="int8", suffixes=(".onnx",), metadata_key=METADATA_KEY,
                exporter="toolchain.export.onnx"))
