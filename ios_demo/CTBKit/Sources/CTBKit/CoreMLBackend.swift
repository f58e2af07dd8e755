#if canImport(CoreML)
import CoreML
import Foundation

/// CoreML programs (.mlpackage). Each package is compiled once (MLModel.compileModel) into a
/// CompiledModelCache (`<Application Support>/CTBKit/compiled/<sha256>.mlmodelc`) and loaded once per
/// runner. Inputs are fed by the manifest's names (`programs/N/inputs/K/name`) as MLMultiArrays of
/// the type `inputTypes` gives for the manifest's dtype, shape [1, seq] (a split branch's hidden
/// state [1, seq, hidden]); outputs are read by the manifest's names, in the manifest's order.
/// tests/test_coreml_contract.py checks these names, types and shape ranges against the exported
/// program's spec, since CoreML cannot run off Apple platforms.
public final class CoreMLBackend: TrunkBackend {
    /// The CoreML user metadata key holding the embedded manifest.
    public static let metadataKey = "ctb_mobile_manifest"

    /// The MLMultiArray type fed for each input dtype an ios manifest may declare. CoreML has no
    /// int64 multiarrays: the exporter declares token inputs int32 in the manifest and the program.
    public static let inputTypes: [String: MLMultiArrayDataType] = ["int32": .int32, "float32": .float32]

    private let configuration: MLModelConfiguration
    private let cacheFolder: URL?

    /// `cacheFolder` overrides where compiled models are kept (default: Application Support).
    public init(computeUnits: MLComputeUnits = .all, cacheFolder: URL? = nil) {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        self.configuration = configuration
        self.cacheFolder = cacheFolder
    }

    /// The compiled-model cache this backend uses.
    public func cache() throws -> CompiledModelCache {
        if let chosen = cacheFolder {
            return CompiledModelCache(folder: chosen)
        }
        return try CompiledModelCache.applicationSupport()
    }

    /// Removes every compiled model but those of the programs in force (`runner.programDigests`): each
    /// new bundle would otherwise leave another .mlmodelc in Application Support. Returns what it removed.
    @discardableResult
    public func pruneCompiledModels(keeping digests: Set<String>) throws -> [String] {
        try cache().prune(keeping: digests)
    }

    public func load(_ program: ProgramSpec, file: URL, sha256: String) throws -> LoadedProgram {
        for input in program.inputs where CoreMLBackend.inputTypes[input.dtype] == nil {
            throw BundleError.program(file: file.lastPathComponent, problem: "input \(input.name) is \(input.dtype) in the manifest; "
                + "CoreML takes \(CoreMLBackend.inputTypes.keys.sorted().joined(separator: " or ")); export the bundle with --target ios")
        }
        let compiled = try compiledModel(file, sha256: sha256)
        do {
            let model = try MLModel(contentsOf: compiled, configuration: configuration)
            return CoreMLProgram(model: model, spec: program, file: file.lastPathComponent)
        } catch {
            throw BundleError.program(file: file.lastPathComponent, problem: "CoreML cannot load it (\(error.localizedDescription))")
        }
    }

    /// The compiled model for a package, compiling it on first use; the cache is keyed by the
    /// package's sha256, so a new bundle is compiled again and an unchanged one never is.
    func compiledModel(_ package: URL, sha256: String) throws -> URL {
        let compiled = try self.cache()
        if compiled.contains(sha256) {
            return compiled.entry(for: sha256)
        }
        let temporary: URL
        do {
            temporary = try MLModel.compileModel(at: package)
        } catch {
            throw BundleError.program(file: package.lastPathComponent,
                                      problem: "CoreML cannot compile it (\(error.localizedDescription)); export the bundle again")
        }
        return try compiled.store(temporary, sha256: sha256)
    }
}

/// One loaded CoreML model.
final class CoreMLProgram: LoadedProgram {
    let model: MLModel
    let spec: ProgramSpec
    let file: String

    init(model: MLModel, spec: ProgramSpec, file: String) {
        self.model = model
        self.spec = spec
        self.file = file
    }

    var metadataJSON: String? {
        let user = model.modelDescription.metadata[MLModelMetadataKey.creatorDefinedKey] as? [String: String]
        return user?[CoreMLBackend.metadataKey]
    }

    func run(_ inputs: [Tensor]) throws -> [Tensor] {
        var features: [String: Any] = [:]
        for (input, tensor) in zip(spec.inputs, inputs) {
            features[input.name] = MLFeatureValue(multiArray: try CoreMLProgram.multiArray(tensor, as: input, file: file))
        }
        let result = try model.prediction(from: try MLDictionaryFeatureProvider(dictionary: features))
        var out: [Tensor] = []
        for output in spec.outputs {
            guard let array = result.featureValue(for: output.name)?.multiArrayValue else {
                throw BundleError.program(file: file, problem: "CoreML returned no output named \(output.name) "
                    + "(manifest field programs/\(spec.name)/outputs); export the bundle again")
            }
            out.append(try CoreMLProgram.tensor(array, file: file))
        }
        return out
    }

    /// Element offsets, in row-major order, of an array with these strides.
    static func offsets(shape: [Int], strides: [Int]) -> [Int] {
        let count = shape.reduce(1, *)
        var out = [Int](repeating: 0, count: count)
        for linear in 0..<count {
            var rest = linear
            var offset = 0
            for k in stride(from: shape.count - 1, through: 0, by: -1) {
                offset += (rest % shape[k]) * strides[k]
                rest /= shape[k]
            }
            out[linear] = offset
        }
        return out
    }

    /// An input tensor as an MLMultiArray of the type `CoreMLBackend.inputTypes` gives for the
    /// manifest's dtype of this input (int32 token ids, float32 hidden states), row-major.
    static func multiArray(_ t: Tensor, as input: TensorSpec, file: String) throws -> MLMultiArray {
        guard let type = CoreMLBackend.inputTypes[input.dtype] else {
            throw BundleError.program(file: file, problem: "input \(input.name) is \(input.dtype) in the manifest, "
                + "which CoreML does not take; export the bundle with --target ios")
        }
        let shape = t.shape.map { NSNumber(value: $0) }
        let array = try MLMultiArray(shape: shape, dataType: type)
        switch type {
        case .int32:
            let v = t.ints.map { Int32(truncatingIfNeeded: $0) }
            array.withUnsafeMutableBytes { raw, strides in
                let at = offsets(shape: t.shape, strides: strides)
                for i in 0..<v.count {
                    raw.storeBytes(of: v[i], toByteOffset: at[i] * 4, as: Int32.self)
                }
            }
        default:
            let v = t.floats
            array.withUnsafeMutableBytes { raw, strides in
                let at = offsets(shape: t.shape, strides: strides)
                for i in 0..<v.count {
                    raw.storeBytes(of: v[i], toByteOffset: at[i] * 4, as: Float.self)
                }
            }
        }
        return array
    }

    /// An output MLMultiArray (float32, float16, double or int32, any strides) as a float32 tensor.
    static func tensor(_ array: MLMultiArray, file: String) throws -> Tensor {
        let shape = array.shape.map { $0.intValue }
        let at = offsets(shape: shape, strides: array.strides.map { $0.intValue })
        var values = [Float](repeating: 0, count: at.count)
        let type = array.dataType
        let width: Int
        switch type {
        case .float32, .int32:
            width = 4
        case .double:
            width = 8
        case .float16:
            width = 2
        default:
            throw BundleError.program(file: file, problem: "CoreML returned a multiarray of type \(type.rawValue), "
                + "not float32, float16, double or int32")
        }
        array.withUnsafeBytes { raw in
            for i in 0..<at.count {
                let byte = at[i] * width
                switch type {
                case .float32:
                    values[i] = raw.load(fromByteOffset: byte, as: Float.self)
                case .double:
                    values[i] = Float(raw.load(fromByteOffset: byte, as: Double.self))
                case .int32:
                    values[i] = Float(raw.load(fromByteOffset: byte, as: Int32.self))
                default:
                    values[i] = halfToFloat(raw.load(fromByteOffset: byte, as: UInt16.self))
                }
            }
        }
        return Tensor(shape: shape, values: .float32(values))
    }

    /// IEEE 754 half -> Float, by bits (Float16 is not available on every platform Swift builds for).
    static func halfToFloat(_ h: UInt16) -> Float {
        let sign: Float = (h & 0x8000) != 0 ? -1 : 1
        let exponent = Int((h >> 10) & 0x1F)
        let mantissa = UInt32(h & 0x3FF)
        if exponent == 0 {
            return sign * Float(mantissa) * 5.9604645e-08  // subnormal: mantissa * 2^-24
        }
        if exponent == 31 {
            return mantissa == 0 ? sign * Float.infinity : Float.nan
        }
        let bits = (UInt32(exponent - 15 + 127) << 23) | (mantissa << 13)
        return sign * Float(bitPattern: bits)
    }
}
#endif
