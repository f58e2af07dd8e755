import Foundation
import XCTest
@testable import CTBKit

/// The toolchain-made files the tests read, the same ones, by the same variables, as the Kotlin
/// tests (android_demo/core/.../Golden.kt): bundles and their verify report folders (golden.json,
/// golden_tokenizer.json, golden_spans.json, verify.json). `CTB_BUNDLES` lists them as
/// BUNDLE:REPORT[:BUNDLE:REPORT...]; `CTB_BUNDLE` (with `CTB_REPORT`, default BUNDLE.verify) comes
/// first when set. The golden tests use the first pair (give a fused bundle first), the parity tests
/// every pair. A missing variable or file fails the test; it is never skipped.
enum Golden {
    struct Missing: Error, CustomStringConvertible {
        let description: String
    }

    static let hint = "run: CTB_BUNDLES=<bundle>:<verify report>[:<bundle>:<report>...] swift test "
        + "(or CTB_BUNDLE=<bundle> CTB_REPORT=<report>)"

    private static func folder(_ path: String, _ variable: String) throws -> URL {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            XCTFail("\(variable): \(path) is not a folder; \(hint)")
            throw Missing(description: "\(path) is not a folder")
        }
        return URL(fileURLWithPath: path, isDirectory: true)
    }

    /// Every (bundle, report) pair given, `CTB_BUNDLE`'s first.
    static func pairs() throws -> [(bundle: URL, report: URL)] {
        let env = ProcessInfo.processInfo.environment
        var out: [(bundle: URL, report: URL)] = []
        if let b = env["CTB_BUNDLE"], !b.isEmpty {
            let r = env["CTB_REPORT"].flatMap { $0.isEmpty ? nil : $0 } ?? b + ".verify"
            out.append((bundle: try folder(b, "CTB_BUNDLE"), report: try folder(r, "CTB_REPORT")))
        }
        let list = (env["CTB_BUNDLES"] ?? "").split(separator: ":").map(String.init)
        guard list.count % 2 == 0 else {
            XCTFail("CTB_BUNDLES has \(list.count) paths; give BUNDLE:REPORT pairs")
            throw Missing(description: "CTB_BUNDLES is not BUNDLE:REPORT pairs")
        }
        for i in stride(from: 0, to: list.count, by: 2) {
            out.append((bundle: try folder(list[i], "CTB_BUNDLES"), report: try folder(list[i + 1], "CTB_BUNDLES")))
        }
        guard !out.isEmpty else {
            XCTFail("CTB_BUNDLES is not set; \(hint)")
            throw Missing(description: "CTB_BUNDLES is not set")
        }
        return out
    }

    static func bundle() throws -> URL {
        try pairs()[0].bundle
    }

    static func reportFile(_ name: String) throws -> URL {
        let url = try pairs()[0].report.appendingPathComponent(name)
        guard FileManager.default.fileExists(atPath: url.path) else {
            XCTFail("\(url.path) is missing; run `ctb-mobile verify` to write it")
            throw Missing(description: "\(name) is missing")
        }
        return url
    }

    static func report<T: Decodable>(_ type: T.Type, _ name: String) throws -> T {
        try JSONDecoder().decode(type, from: Data(contentsOf: try reportFile(name)))
    }

    static func manifest() throws -> Manifest {
        try Manifest.load(from: try bundle())
    }

    static func tokenizer() throws -> WordPieceTokenizer {
        let m = try manifest()
        return try WordPieceTokenizer(folder: try bundle(), spec: m.tokenizer)
    }

    static func cases() throws -> [GoldenCase] {
        try report(GoldenFile.self, "golden.json").cases
    }

    /// golden.json of a report folder.
    static func goldenFile(_ report: URL) throws -> GoldenFile {
        let url = report.appendingPathComponent("golden.json")
        guard BundleFiles.exists(url) else {
            XCTFail("\(url.path) is missing; run `ctb-mobile verify` to write it")
            throw Missing(description: "golden.json is missing")
        }
        return try JSONDecoder().decode(GoldenFile.self, from: Data(contentsOf: url))
    }

    /// A runner over the real bundle whose programs replay golden.json's recorded outputs.
    static func replayRunner() throws -> MultiTaskRunner {
        let m = try manifest()
        return try MultiTaskRunner(bundle: try bundle(), backend: ReplayBackend(manifest: m, cases: try cases()))
    }

    /// A copy of the bundle in a fresh temporary folder, for tests that break it (removed after the test).
    static func copyOfBundle(_ test: XCTestCase) throws -> URL {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("ctb-" + UUID().uuidString, isDirectory: true)
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        test.addTeardownBlock {
            try? FileManager.default.removeItem(at: root)
        }
        let copy = root.appendingPathComponent("bundle", isDirectory: true)
        try FileManager.default.copyItem(at: try bundle(), to: copy)
        return copy
    }
}

// MARK: - The golden files

/// golden_tokenizer.json
struct TokenizerGoldenFile: Decodable {
    struct Case: Decodable {
        let group: String?
        let text: String
        let pair: String?
        let ids: [Int]
        let typeIds: [Int]
        let offsets: [[Int]]
        let sequenceIds: [Int?]

        enum CodingKeys: String, CodingKey {
            case group, text, pair, ids, offsets
            case typeIds = "type_ids"
            case sequenceIds = "sequence_ids"
        }
    }

    let maxSeqLen: Int
    let tokenizerFingerprint: String?
    let cases: [Case]

    enum CodingKeys: String, CodingKey {
        case cases
        case maxSeqLen = "max_seq_len"
        case tokenizerFingerprint = "tokenizer_fingerprint"
    }
}

/// golden_spans.json
struct SpanGoldenFile: Decodable {
    struct Case: Decodable {
        let name: String
        let text: String
        let maxSeqLen: Int
        let ids: [Int]
        let offsets: [[Int]]
        let labelIds: [Int]
        let spans: [Span]

        enum CodingKeys: String, CodingKey {
            case name, text, ids, offsets, spans
            case maxSeqLen = "max_seq_len"
            case labelIds = "label_ids"
        }
    }

    let labels: [String]
    let cases: [Case]
}

/// golden.json
struct GoldenFile: Decodable {
    /// How close an app's run must come: every raw output within `maxAbs`, every score within `score`.
    struct Tolerance: Decodable {
        let maxAbs: Double
        let score: Double

        enum CodingKeys: String, CodingKey {
            case score
            case maxAbs = "max_abs"
        }
    }

    let cases: [GoldenCase]
    let tolerance: Tolerance?
}

struct GoldenCase: Decodable {
    let text: String
    let inputIds: [Int]
    let tokenTypeIds: [Int]
    let outputs: [String: Nested]
    let predictions: [String: Prediction]

    enum CodingKeys: String, CodingKey {
        case text, outputs, predictions
        case inputIds = "input_ids"
        case tokenTypeIds = "token_type_ids"
    }
}

/// A decoded result as golden.json writes `predictions` (runtime_py's).
struct Prediction: Decodable {
    let label: String?
    let score: Double?
    let value: Double?
    let spans: [Span]?
}

/// A number or a nested JSON array of numbers.
indirect enum Nested: Decodable {
    case number(Double)
    case list([Nested])

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let v = try? c.decode(Double.self) {
            self = .number(v)
        } else {
            self = .list(try c.decode([Nested].self))
        }
    }

    /// The numbers, row-major.
    var flat: [Float] {
        switch self {
        case .number(let v):
            return [Float(v)]
        case .list(let items):
            return items.flatMap { $0.flat }
        }
    }
}

/// Compares one decoded result with runtime_py's: labels, spans and span texts exactly, numbers within `tol`.
func assertSame(_ got: TaskResult?, _ expected: Prediction?, tol: Double, _ context: String,
                file: StaticString = #filePath, line: UInt = #line) {
    guard let got = got, let expected = expected else {
        XCTFail("\(context): result \(String(describing: got)), expected \(String(describing: expected))", file: file, line: line)
        return
    }
    switch got {
    case .classification(let label, let score):
        XCTAssertEqual(label, expected.label, "\(context): label", file: file, line: line)
        XCTAssertEqual(score, expected.score ?? .nan, accuracy: tol, "\(context): score", file: file, line: line)
    case .regression(let value):
        XCTAssertEqual(value, expected.value ?? .nan, accuracy: tol, "\(context): value", file: file, line: line)
    case .tagging(let spans):
        XCTAssertEqual(spans, expected.spans ?? [], "\(context): spans", file: file, line: line)
    }
}

// MARK: - Replaying the recorded outputs

/// Replays the toolchain's recorded program outputs: given the token ids it is fed, it returns
/// golden.json's `outputs` for the case with those ids (the bundle's real outputs, as `ctb-mobile
/// verify` ran them), positionally in the manifest's order. Its metadata is the JSON embedded in the
/// real program file (or `metadata`, to fake another program). A split trunk's hidden state is not
/// recorded: it is zeros, and each branch replays the case of the trunk call before it. Outputs of
/// tasks golden.json does not record (pair tasks) are zeros; ids it has no case for fail the test.
final class ReplayBackend: TrunkBackend {
    let manifest: Manifest
    let byIds: [[Int]: GoldenCase]
    var dropLastOutput = false
    var metadata: String? = nil
    fileprivate var lastIds: [Int] = []

    init(manifest: Manifest, cases: [GoldenCase], dropLastOutput: Bool = false, metadata: String? = nil) {
        self.manifest = manifest
        var byIds: [[Int]: GoldenCase] = [:]
        for c in cases {
            byIds[c.inputIds] = c
        }
        self.byIds = byIds
        self.dropLastOutput = dropLastOutput
        self.metadata = metadata
    }

    func load(_ program: ProgramSpec, file: URL, sha256: String) throws -> LoadedProgram {
        ReplayProgram(backend: self, spec: program, metadataJSON: metadata ?? EmbeddedManifest.read(file))
    }
}

final class ReplayProgram: LoadedProgram {
    struct Miss: Error {}

    let backend: ReplayBackend
    let spec: ProgramSpec
    let metadataJSON: String?

    init(backend: ReplayBackend, spec: ProgramSpec, metadataJSON: String?) {
        self.backend = backend
        self.spec = spec
        self.metadataJSON = metadataJSON
    }

    func run(_ inputs: [Tensor]) throws -> [Tensor] {
        if let i = spec.inputs.firstIndex(where: { $0.name == "input_ids" }) {
            backend.lastIds = inputs[i].ints
        }
        let ids = backend.lastIds
        guard let recorded = backend.byIds[ids] else {
            XCTFail("replay: golden.json has no case with input_ids \(ids)")
            throw Miss()
        }
        var out: [Tensor] = []
        for o in spec.outputs {
            let shape = o.dims.map { d in d.size ?? (d.name == "seq" ? ids.count : 1) }
            let count = shape.reduce(1, *)
            var values = [Float](repeating: 0, count: count)
            if let task = o.task, let row = recorded.outputs[task] {
                values = row.flat
                if values.count != count {
                    XCTFail("replay: golden.json's \(task) output has \(values.count) values, the manifest's shape \(shape) \(count)")
                    throw Miss()
                }
            }
            out.append(Tensor(shape: shape, values: .float32(values)))
        }
        if backend.dropLastOutput {
            out.removeLast()
        }
        return out
    }
}

/// The `ctb_mobile_manifest` JSON as stored inside a program file: in a protobuf map entry (CoreML
/// user metadata in an .mlpackage's model.mlmodel, ONNX metadata_props: key, then field 2 with a
/// varint length), or as an ExecuTorch constant string (a 4-byte little-endian length, then the JSON).
enum EmbeddedManifest {
    static func read(_ url: URL) -> String? {
        var files = [url]
        if BundleFiles.isDirectory(url) {
            files = ((try? BundleFiles.folderFiles(url)) ?? []).map { $0.url }
        }
        for f in files {
            guard let data = try? Data(contentsOf: f) else { continue }
            if let text = protobufEntry(data) ?? lengthPrefixed(data) {
                return text
            }
        }
        return nil
    }

    private static func isManifest(_ bytes: Data) -> String? {
        guard let object = try? JSONSerialization.jsonObject(with: bytes) as? [String: Any],
              object["trunk_fingerprint"] != nil else { return nil }
        return String(data: bytes, encoding: .utf8)
    }

    static func protobufEntry(_ data: Data) -> String? {
        let key = Data(metadataKey.utf8)
        var from = data.startIndex
        while let r = data.range(of: key, in: from..<data.endIndex) {
            from = r.upperBound
            var i = r.upperBound
            guard i < data.endIndex, data[i] == 0x12 else { continue }
            i += 1
            var length = 0
            var shift = 0
            while i < data.endIndex, shift < 35 {
                let b = data[i]
                length |= Int(b & 0x7F) << shift
                i += 1
                shift += 7
                if b & 0x80 == 0 { break }
            }
            guard length > 0, i + length <= data.endIndex else { continue }
            if let text = isManifest(data.subdata(in: i..<(i + length))) {
                return text
            }
        }
        return nil
    }

    static func lengthPrefixed(_ data: Data) -> String? {
        guard let at = data.range(of: Data("\"trunk_fingerprint\"".utf8))?.lowerBound else { return nil }
        var start = at
        while start - 4 > data.startIndex {
            start -= 1
            guard data[start] == 0x7B else { continue }  // {
            let b0 = Int(data[start - 4])
            let b1 = Int(data[start - 3]) << 8
            let b2 = Int(data[start - 2]) << 16
            let b3 = Int(data[start - 1]) << 24
            let length = b0 | b1 | b2 | b3
            if length > 0 && start + length <= data.endIndex && start + length > at,
               let text = isManifest(data.subdata(in: start..<(start + length))) {
                return text
            }
        }
        return nil
    }

    private static let metadataKey = "ctb_mobile_manifest"
}
