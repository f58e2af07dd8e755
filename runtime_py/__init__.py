"""ctb-mobile's reference runtime: load an exported bundle and predict every task with numpy,
tokenizers and the bundle's backend (onnxruntime, executorch, or coremltools on macOS)."""

from runtime_py.bundle import BundleError, load_manifest, read_manifest
from runtime_py.predictor import InputError, Predictor

__all__ = ["BundleError", "InputError", "Predictor", "load_manifest", "read_manifest"]
