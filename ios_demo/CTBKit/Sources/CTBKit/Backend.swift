import Foundation

/// A dense row-major tensor: its shape and one of three element types.
public struct Tensor: Equatable {
    public enum Values: Equatable {
        case int32([Int32])
        case int64([Int64])
        case float32([Float])
    }

    public let shape: [Int]
    public let values: Values

    public init(shape: [Int], values: Values) {
        self.shape = shape
        self.values = values
        precondition(shape.allSatisfy { $0 >= 0 } && shape.reduce(1, *) == count,
                     "shape \(shape) does not hold \(count) values")
    }

    public var count: Int {
        switch values {
        case .int32(let v): return v.count
        case .int64(let v): return v.count
        case .float32(let v): return v.count
        }
    }

    public var dtype: String {
        switch values {
        case .int32: return "int32"
        case .int64: return "int64"
        case .float32: return "float32"
        }
    }

    /// The values as Float (float32 tensors as they are).
    public var floats: [Float] {
        switch values {
        case .int32(let v): return v.map { Float($0) }
        case .int64(let v): return v.map { Float($0) }
        case .float32(let v): return v
        }
    }

    /// The values as Int (float32 tensors truncated).
    public var ints: [Int] {
        switch values {
        case .int32(let v): return v.map { Int($0) }
        case .int64(let v): return v.map { Int($0) }
        case .float32(let v): return v.map { Int($0) }
        }
    }
}

/// One loaded program (a .mlpackage, .pte, .onnx, or a test's replay): positional inputs in the
/// manifest's input order, positional outputs in the manifest's output order.
public protocol LoadedProgram: AnyObject {
    /// The manifest fragment embedded in the program at export (JSON text), or nil when it has none:
    /// `{"target", "program", "trunk_fingerprint", "tokenizer_fingerprint", "outputs", "tasks"}`.
    var metadataJSON: String? { get }

    func run(_ inputs: [Tensor]) throws -> [Tensor]
}

/// A runtime that loads program files: CoreML on iOS and macOS, a replay or a fake in tests.
public protocol TrunkBackend {
    /// Loads `file` (the program's file, or a new branch's) once. `sha256` identifies its content:
    /// a backend may key a cache of compiled models by it.
    func load(_ program: ProgramSpec, file: URL, sha256: String) throws -> LoadedProgram
}

/// The embedded metadata fields the runner checks.
struct EmbeddedMetadata: Decodable {
    let trunkFingerprint: String?
    let tokenizerFingerprint: String?
    let outputs: [String]?
    let labelsSha256: String?

    enum CodingKeys: String, CodingKey {
        case outputs
        case trunkFingerprint = "trunk_fingerprint"
        case tokenizerFingerprint = "tokenizer_fingerprint"
        case labelsSha256 = "labels_sha256"
    }
}
