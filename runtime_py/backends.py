"""Program runners, one per target: `open_program(target, path)` returns a Program whose `run(feeds)`
takes a dict of numpy arrays (by input name) and returns the outputs in order, and whose
`metadata()` is the manifest fragment embedded in the artifact at export (ONNX metadata_props,
the .pte constant method `manifest`, CoreML user metadata).

Only the backend a bundle needs is imported. ONNX Runtime sessions may be called from several
threads at once; an ExecuTorch method may not, so its calls are serialised by a lock.
"""

import json
import platform
import threading
from pathlib import Path

METADATA_KEY = "ctb_mobile_manifest"
PACKAGES = {"onnx": ("onnxruntime", "onnx"), "android": ("executorch", "executorch"), "ios": ("coremltools", "coreml")}


def _need(target):
    import importlib.util

    from runtime_py.bundle import BundleError

    package, extra = PACKAGES[target]
    if importlib.util.find_spec(package) is None:
        raise BundleError(f"a {target} bundle needs {package}; run: pip install 'ctb-mobile[{extra}]'")


class OnnxProgram:
    """`spin=False` stops idle intra-op threads from spinning, so another program timed right after
    this one gets the cores (the benchmark's setting); threads 0 = one per core."""

    def __init__(self, path: Path, threads: int = 0, spin: bool = True):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, feeds: dict) -> list:
        return self.session.run(None, {k: feeds[k] for k in self.inputs})

    def metadata(self) -> dict:
        return json.loads(self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "{}"))

    def input_types(self) -> dict:
        """input name -> numpy dtype name, as the program declares it ("tensor(int64)" -> "int64")."""
        kinds = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32",
                 "tensor(float16)": "float16"}
        return {i.name: kinds.get(i.type, i.type) for i in self.session.get_inputs()}


class ExecuTorchProgram:
    def __init__(self, path: Path, inputs: list):
        from executorch.runtime import Runtime

        self.program = Runtime.get().load_program(str(path))
        self.method = self.program.load_method("forward")
        self.inputs = list(inputs)
        self.lock = threading.Lock()

    def run(self, feeds: dict) -> list:
        import torch

        args = [torch.from_numpy(feeds[k]) for k in self.inputs]
        with self.lock:
            return [o.numpy().copy() for o in self.method.execute(args)]

    def metadata(self) -> dict:
        with self.lock:
            return json.loads(self.program.load_method("manifest").execute([])[0])


class CoreMLProgram:
    def __init__(self, path: Path, outputs: list):
        import coremltools as ct

        from runtime_py.bundle import BundleError

        self.spec_model = ct.models.MLModel(str(path), skip_model_load=platform.system() != "Darwin")
        if platform.system() != "Darwin":
            raise BundleError(f"{path.name}: CoreML prediction needs macOS (this is {platform.system()}); "
                              "run this bundle on a Mac or an iOS device")
        self.outputs = list(outputs)
        self.lock = threading.Lock()

    def run(self, feeds: dict) -> list:
        import numpy as np

        out = []
        for i in range(len(next(iter(feeds.values())))):  # CoreML programs take batch 1
            with self.lock:
                r = self.spec_model.predict({k: v[i: i + 1].astype(np.int32) for k, v in feeds.items()})
            out.append([np.asarray(r[o]) for o in self.outputs])
        return [np.concatenate([o[j] for o in out]) for j in range(len(self.outputs))]

    def metadata(self) -> dict:
        return json.loads(self.spec_model.user_defined_metadata.get(METADATA_KEY, "{}"))


def open_program(target: str, path: Path, inputs: list, outputs: list, threads: int = 0):
    _need(target)
    if target == "onnx":
        return OnnxProgram(path, threads)
    if target == "android":
        return ExecuTorchProgram(path, inputs)
    return CoreMLProgram(path, outputs)


def file_runner(target: str, bundle_dir, threads: int = 0, spin: bool = True) -> callable:
    """run(file, feeds) -> outputs, opening each program on first use (the exporter's guard, bench, tests).
    `threads` and `spin` apply to ONNX Runtime; ExecuTorch keeps its own pool."""
    programs = {}

    def run(file, feeds):
        if file not in programs:
            inputs = ["hidden", "attention_mask"] if "hidden" in feeds else ["input_ids", "attention_mask",
                                                                             "token_type_ids"]
            programs[file] = (OnnxProgram(Path(bundle_dir) / file, threads, spin) if target == "onnx" else
                              open_program(target, Path(bundle_dir) / file, inputs, []))
        return programs[file].run(feeds)

    return run
