"""Program runners, one per target: `open_program(target, path, ...)` returns a Program whose `run(feeds)`
takes a dict of numpy arrays (by input name) and returns the outputs in order, whose `metadata()` is
the manifest fragment embedded in the artifact at export (under the target's `metadata_key`: ONNX
metadata_props, the .pte constant method, CoreML user metadata), and whose `threads` is the number of
threads it runs on (None: the runtime's own default, which it does not report).

Only the backend a bundle needs is imported. ONNX Runtime sessions may be called from several
threads at once; ExecuTorch calls are serialised by one lock, since its thread pool is one per process.
"""

import json
import platform
import threading
import weakref
from pathlib import Path

from runtime_py.targets import TARGETS, Target


def _need(target) -> Target:
    from runtime_py.bundle import BundleError

    t = TARGETS[target]
    missing = t.missing()
    if missing:
        raise BundleError(f"a {target} bundle {missing}")
    return t


class OnnxProgram:
    """`threads`: intra-op threads (0 = ONNX Runtime's default, one per physical core). `spin=False` stops
    idle intra-op threads from spinning, so another program timed right after this one gets the cores."""

    def __init__(self, path: Path, threads: int = 0, spin: bool = True):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.threads = self.session.get_session_options().intra_op_num_threads or None

    def run(self, feeds: dict) -> list:
        return self.session.run(None, {k: feeds[k] for k in self.inputs})

    def metadata(self) -> dict:
        key = TARGETS["onnx"].metadata_key
        return json.loads(self.session.get_modelmeta().custom_metadata_map.get(key, "{}"))

    def input_types(self) -> dict:
        """input name -> numpy dtype name, as the program declares it ("tensor(int64)" -> "int64")."""
        kinds = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32",
                 "tensor(float16)": "float16"}
        return {i.name: kinds.get(i.type, i.type) for i in self.session.get_inputs()}


_EXECUTORCH = threading.Lock()  # ExecuTorch's (XNNPACK's) thread pool is one per process: one call at a time
_OPEN = weakref.WeakSet()  # the ExecuTorch programs whose methods are loaded on that pool


def _executorch_pool(threads: int) -> None:
    """Size ExecuTorch's process-wide thread pool to `threads` (0: leave it). An XNNPACK method keeps the pool
    it was loaded with, and a resize destroys that pool, so the programs already open are released first and
    loaded again on the new one: from then on they run on `threads` too. Call under _EXECUTORCH."""
    from executorch.extension.pybindings import portable_lib

    if not threads or portable_lib._threadpool_get_thread_count() == threads:
        return
    programs = list(_OPEN)
    for p in programs:
        p.program = p.method = None
    portable_lib._unsafe_reset_threadpool(threads)
    for p in programs:
        p.load()


class ExecuTorchProgram:
    """`threads`: ExecuTorch's thread pool, one per process, is sized to it before the program loads (0: as
    it is, one per core unless a program opened before set it). The `threads` attribute is the pool's size
    now, which the last program opened with threads > 0 decides for all of them."""

    def __init__(self, path: Path, inputs: list, threads: int = 0):
        self.path, self.inputs = Path(path), list(inputs)
        with _EXECUTORCH:
            _executorch_pool(threads)
            self.load()
            _OPEN.add(self)

    def load(self) -> None:
        from executorch.runtime import Runtime

        self.program = Runtime.get().load_program(str(self.path))
        self.method = self.program.load_method("forward")

    @property
    def threads(self) -> int:
        from executorch.extension.pybindings import portable_lib

        return portable_lib._threadpool_get_thread_count()

    def run(self, feeds: dict) -> list:
        import torch

        args = [torch.from_numpy(feeds[k]) for k in self.inputs]
        with _EXECUTORCH:
            return [o.numpy().copy() for o in self.method.execute(args)]

    def metadata(self) -> dict:
        with _EXECUTORCH:
            return json.loads(self.program.load_method(TARGETS["android"].metadata_key).execute([])[0])


class CoreMLProgram:
    def __init__(self, path: Path, outputs: list):
        import coremltools as ct

        from runtime_py.bundle import BundleError

        here = TARGETS["ios"].runs_here()
        self.spec_model = ct.models.MLModel(str(path), skip_model_load=not here)
        if not here:
            raise BundleError(f"{path.name}: CoreML prediction needs macOS (this is {platform.system()}); "
                              "run this bundle on a Mac or an iOS device")
        self.outputs = list(outputs)
        self.lock = threading.Lock()
        self.threads = None  # CoreML chooses its compute units itself

    def run(self, feeds: dict) -> list:
        import numpy as np

        out = []
        for i in range(len(next(iter(feeds.values())))):  # CoreML programs take batch 1
            with self.lock:
                r = self.spec_model.predict({k: v[i: i + 1].astype(np.int32) for k, v in feeds.items()})
            out.append([np.asarray(r[o]) for o in self.outputs])
        return [np.concatenate([o[j] for o in out]) for j in range(len(self.outputs))]

    def metadata(self) -> dict:
        return json.loads(self.spec_model.user_defined_metadata.get(TARGETS["ios"].metadata_key, "{}"))


def open_program(target: str, path: Path, inputs: list, outputs: list, threads: int = 0, spin: bool = True):
    """The program at `path`, on `threads` threads (0: the runtime's default). `inputs` / `outputs`: its
    input and output names in order (the manifest's); `spin`: ONNX Runtime's idle threads spin (see OnnxProgram)."""
    _need(target)
    if target == "onnx":
        return OnnxProgram(path, threads, spin)
    if target == "android":
        return ExecuTorchProgram(path, inputs, threads)
    return CoreMLProgram(path, outputs)

