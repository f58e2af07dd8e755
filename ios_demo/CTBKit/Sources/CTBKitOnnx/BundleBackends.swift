import CTBKit
import Foundation

/// The backend for a bundle, by its manifest's `target`: `ios` CoreML (.mlpackage), `onnx` ONNX
/// Runtime (.onnx). An `android` (ExecuTorch) bundle is refused in one line.
public enum BundleBackends {
    /// The targets this package runs.
    public static let targets = ["ios", "onnx"]

    /// `compiledModels`: where CoreML keeps compiled models (default: Application Support).
    public static func backend(for manifest: Manifest, compiledModels: URL? = nil) throws -> TrunkBackend {
        switch manifest.target {
        case "onnx":
            return try OnnxRuntimeBackend()
        case "ios":
            #if canImport(CoreML)
            return CoreMLBackend(cacheFolder: compiledModels)
            #else
            throw BundleError.field(path: "target", problem: "'ios' bundles need CoreML, which this platform lacks; "
                + "use a target onnx bundle here")
            #endif
        default:
            throw BundleError.field(path: "target", problem: "'\(manifest.target)' bundles run in android_demo; this app runs "
                + "\(targets.joined(separator: " (CoreML) and ")) (ONNX Runtime) bundles")
        }
    }

    /// The bundle in `folder` opened with the backend its manifest names. `checkFiles: false` when
    /// BundleInstaller has just checked the folder (its stamp), so that launches do not hash 90 MB again.
    public static func open(_ folder: URL, checkFiles: Bool = true, compiledModels: URL? = nil) throws
        -> (runner: MultiTaskRunner, backend: TrunkBackend) {
        let manifest = try Manifest.load(from: folder, checkFiles: false)
        let backend = try backend(for: manifest, compiledModels: compiledModels)
        let runner = try MultiTaskRunner(bundle: folder, backend: backend, checkFiles: checkFiles)
        #if canImport(CoreML)
        if let coreml = backend as? CoreMLBackend {
            try coreml.pruneCompiledModels(keeping: runner.programDigests)  // earlier bundles' .mlmodelc
        }
        #endif
        return (runner: runner, backend: backend)
    }
}
