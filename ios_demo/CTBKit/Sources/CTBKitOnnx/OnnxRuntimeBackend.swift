import CTBKit
import Foundation
import OnnxRuntimeBindings

/// ONNX Runtime programs (`target onnx` bundles: the manifest's `.onnx` file) through the ONNX Runtime
/// Objective-C API as Swift sees it (package onnxruntime-swift-package-manager, product `onnxruntime`).
/// One ORTEnv per backend, one ORTSession per program, loaded once. Inputs are fed by the manifest's
/// names as tensors of the manifest's dtype (int64 token ids, float32 hidden states); outputs are
/// requested and read by the manifest's names, in the manifest's order, as float32.
///
/// The embedded manifest (`ctb_mobile_manifest` in the model's metadata_props) is read from the file
/// by OnnxModelMetadata: the Objective-C API has no model metadata accessor.
public final class OnnxRuntimeBackend: TrunkBackend {
    /// The ONNX metadata_props key holding the embedded manifest.
    public static let metadataKey = "ctb_mobile_manifest"

    /// The tensor element type fed for each input dtype an onnx manifest may declare.
    public static let inputTypes: [String: ORTTensorElementDataType] = ["int64": .int64, "int32": .int32, "float32": .float]

    private let env: ORTEnv
    private let threads: Int32

    /// `threads`: intra-op threads per session (1, as the bench and runtime_py measure; 0 lets ONNX Runtime choose).
    public init(threads: Int32 = 1) throws {
        env = try ORTEnv(loggingLevel: .warning)
        self.threads = threads
    }

    public func load(_ program: ProgramSpec, file: URL, sha256: String) throws -> LoadedProgram {
        let name = file.lastPathComponent
        for input in program.inputs where OnnxRuntimeBackend.inputTypes[input.dtype] == nil {
            throw BundleError.program(file: name, problem: "input \(input.name) is \(input.dtype) in the manifest, which this "
                + "backend does not feed; export the bundle with --target onnx")
        }
        let session: ORTSession
        do {
            let options = try ORTSessionOptions()
            try options.setIntraOpNumThreads(threads)
            try options.setGraphOptimizationLevel(.all)
            session = try ORTSession(env: env, modelPath: file.path, sessionOptions: options)
        } catch {
            throw BundleError.program(file: name, problem: "ONNX Runtime cannot load it (\(error.localizedDescription)); "
                + "export the bundle again with --target onnx")
        }
        let inputs = try session.inputNames()
        let outputs = try session.outputNames()
        let wantInputs = program.inputs.map { $0.name }
        let wantOutputs = program.outputs.map { $0.name }
        guard Set(inputs) == Set(wantInputs) else {
            throw BundleError.program(file: name, problem: "takes inputs \(inputs), manifest field programs/\(program.name)/inputs "
                + "lists \(wantInputs); export the bundle again")
        }
        guard Set(wantOutputs).isSubset(of: Set(outputs)) else {
            throw BundleError.program(file: name, problem: "returns outputs \(outputs), manifest field programs/\(program.name)/outputs "
                + "lists \(wantOutputs); export the bundle again")
        }
        let metadata = try OnnxModelMetadata.read(file)[OnnxRuntimeBackend.metadataKey]
        return OnnxRuntimeProgram(session: session, spec: program, file: name, metadataJSON: metadata)
    }
}

/// One ONNX Runtime session. ORTSession.run is safe to call from several threads; MultiTaskRunner
/// serialises its calls anyway.
final class OnnxRuntimeProgram: LoadedProgram {
    let session: ORTSession
    let spec: ProgramSpec
    let file: String
    let metadataJSON: String?
    private let outputNames: Set<String>

    init(session: ORTSession, spec: ProgramSpec, file: String, metadataJSON: String?) {
        self.session = session
        self.spec = spec
        self.file = file
        self.metadataJSON = metadataJSON
        self.outputNames = Set(spec.outputs.map { $0.name })
    }

    func run(_ inputs: [Tensor]) throws -> [Tensor] {
        var feeds: [String: ORTValue] = [:]
        for (input, tensor) in zip(spec.inputs, inputs) {
            feeds[input.name] = try OnnxRuntimeProgram.value(tensor, as: input, file: file)
        }
        let results = try session.run(withInputs: feeds, outputNames: outputNames, runOptions: nil)
        var out: [Tensor] = []
        for output in spec.outputs {
            guard let value = results[output.name] else {
                throw BundleError.program(file: file, problem: "ONNX Runtime returned no output named \(output.name) "
                    + "(manifest field programs/\(spec.name)/outputs); export the bundle again")
            }
            out.append(try OnnxRuntimeProgram.tensor(value, name: output.name, file: file))
        }
        return out
    }

    /// A tensor as an ORTValue of the manifest's dtype for this input (the bytes are copied once).
    static func value(_ t: Tensor, as input: TensorSpec, file: String) throws -> ORTValue {
        guard let type = OnnxRuntimeBackend.inputTypes[input.dtype] else {
            throw BundleError.program(file: file, problem: "input \(input.name) is \(input.dtype) in the manifest; "
                + "export the bundle with --target onnx")
        }
        let data: NSMutableData
        switch type {
        case .int64:
            data = bytes(t.ints.map { Int64($0) })
        case .int32:
            data = bytes(t.ints.map { Int32(truncatingIfNeeded: $0) })
        default:
            data = bytes(t.floats)
        }
        return try ORTValue(tensorData: data, elementType: type, shape: t.shape.map { NSNumber(value: $0) })
    }

    static func bytes<T>(_ values: [T]) -> NSMutableData {
        values.withUnsafeBytes { raw in
            NSMutableData(bytes: raw.baseAddress, length: raw.count)
        }
    }

    /// An output ORTValue (float32, or an integer type) as a float32 tensor.
    static func tensor(_ value: ORTValue, name: String, file: String) throws -> Tensor {
        let info = try value.tensorTypeAndShapeInfo()
        let shape = info.shape.map { $0.intValue }
        let count = shape.reduce(1, *)
        let data = try value.tensorData() as Data
        var values = [Float](repeating: 0, count: count)
        let width: Int
        switch info.elementType {
        case .float, .int32:
            width = 4
        case .int64:
            width = 8
        default:
            throw BundleError.program(file: file, problem: "output \(name) has element type \(info.elementType.rawValue), "
                + "not float32; export the bundle again")
        }
        guard data.count >= count * width else {
            throw BundleError.program(file: file, problem: "output \(name) holds \(data.count) bytes for shape \(shape)")
        }
        data.withUnsafeBytes { raw in
            for i in 0..<count {
                switch info.elementType {
                case .float:
                    values[i] = raw.load(fromByteOffset: i * 4, as: Float.self)
                case .int32:
                    values[i] = Float(raw.load(fromByteOffset: i * 4, as: Int32.self))
                default:
                    values[i] = Float(raw.load(fromByteOffset: i * 8, as: Int64.self))
                }
            }
        }
        return Tensor(shape: shape, values: .float32(values))
    }
}
