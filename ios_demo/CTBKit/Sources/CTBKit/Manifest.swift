import Foundation

/// A dimension: a fixed `{"size"}` or a named range `{"name", "min", "max"}`.
public struct Dim: Codable, Equatable, CustomStringConvertible {
    public let size: Int?
    public let name: String?
    public let min: Int?
    public let max: Int?

    public var description: String {
        if let fixed = size {
            return String(fixed)
        }
        return "\(name ?? "?")[\(min ?? 0)..\(max ?? 0)]"
    }
}

/// A program input or output. Outputs carry `index` (their position), `task` (the task they feed;
/// nil for a split trunk's hidden state) and `depth` (the attach depth of a hidden state).
public struct TensorSpec: Codable, Equatable {
    public let name: String
    public let dtype: String
    public let dims: [Dim]
    public let index: Int?
    public let task: String?
    public let depth: Int?
}

public struct ProgramSpec: Codable, Equatable {
    public let name: String
    public let file: String
    public let files: [String]
    public let precision: String
    public let inputs: [TensorSpec]
    public let outputs: [TensorSpec]
}

public enum TaskType: String, Codable {
    case classification
    case regression
    case tagging
}

public struct TaskSpec: Codable, Equatable {
    public let name: String
    public let type: TaskType
    public let program: String
    public let output: String
    public let labels: [String]
    public let attach: Int
    public let layers: Int
    public let pair: Bool
    public let precision: String
    public let metric: String?
    public let devMetric: Double?

    enum CodingKeys: String, CodingKey {
        case name, type, program, output, labels, attach, layers, pair, precision, metric
        case devMetric = "dev_metric"
    }
}

public struct TokenizerSpec: Codable, Equatable {
    public let file: String
    public let vocab: String
    public let tables: String
    public let fingerprint: String
    public let maxSeqLen: Int
    public let truncation: String
    public let pairTemplate: String

    enum CodingKeys: String, CodingKey {
        case file, vocab, tables, fingerprint, truncation
        case maxSeqLen = "max_seq_len"
        case pairTemplate = "pair_template"
    }
}

public struct FileEntry: Codable, Equatable {
    public let sha256: String
    public let bytes: Int
}

/// `manifest.json`, schema version 2 (runtime_py/CONTRACT.md and manifest.schema.json).
public struct Manifest: Codable, Equatable {
    public static let supportedSchemaVersion = 2
    public static let fileName = "manifest.json"

    public let schemaVersion: Int
    public let target: String
    public let layout: String
    public let precision: String
    public let toolchainVersion: String
    public let created: String?
    public let backbone: String
    public let trunkFingerprint: String
    public let maxSeqLen: Int
    public let tokenizer: TokenizerSpec
    public let programs: [ProgramSpec]
    public let tasks: [TaskSpec]
    public let files: [String: FileEntry]

    enum CodingKeys: String, CodingKey {
        case target, layout, precision, created, backbone, tokenizer, programs, tasks, files
        case schemaVersion = "schema_version"
        case toolchainVersion = "toolchain_version"
        case trunkFingerprint = "trunk_fingerprint"
        case maxSeqLen = "max_seq_len"
    }

    static let targets = ["android", "ios", "onnx"]
    static let layouts = ["fused", "split"]
    static let precisions = ["fp32", "fp16", "int8", "int8-static", "int4"]
    static let dtypes = ["int64", "int32", "float32", "float16"]
    static let tokenInputs = ["input_ids", "attention_mask", "token_type_ids"]
    static let branchInputs = ["hidden", "attention_mask"]

    public func program(named name: String) -> ProgramSpec? {
        programs.first { $0.name == name }
    }

    public func task(named name: String) -> TaskSpec? {
        tasks.first { $0.name == name }
    }

    /// The split trunk's hidden state at `depth` (`hidden_<depth>`).
    public func trunkOutput(depth: Int) -> TensorSpec? {
        program(named: "trunk")?.outputs.first { $0.depth == depth || $0.name == "hidden_\(depth)" }
    }

    /// The files the programs and the tokenizer need.
    public var neededFiles: [String] {
        var out: [String] = []
        for name in programs.flatMap({ $0.files }) + [tokenizer.file, tokenizer.vocab, tokenizer.tables] {
            if !out.contains(name) {
                out.append(name)
            }
        }
        return out
    }

    // MARK: - Loading

    /// Reads `manifest.json` in `folder` and checks it: schema version first, then every required
    /// field with its type, the rules between fields, and (by default) every listed file's presence,
    /// size and sha256, in file name order.
    public static func load(from folder: URL, checkFiles: Bool = true) throws -> Manifest {
        let url = folder.appendingPathComponent(fileName)
        guard BundleFiles.exists(url) else {
            throw BundleError.notABundle(folder: folder.path)
        }
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw BundleError.unreadable(file: fileName, reason: error.localizedDescription)
        }
        let manifest = try parse(data)
        if checkFiles {
            try manifest.checkFiles(in: folder)
        }
        return manifest
    }

    /// A checked manifest from the bytes of `manifest.json` (files not looked at).
    public static func parse(_ data: Data) throws -> Manifest {
        let probe: VersionProbe
        do {
            probe = try JSONDecoder().decode(VersionProbe.self, from: data)
        } catch {
            let (path, problem) = decodingProblem(error)
            if path == "schema_version" {
                throw BundleError.schemaVersion(found: "that is not a number")
            }
            throw BundleError.unreadable(file: fileName, reason: path.isEmpty ? problem : "\(path) \(problem)")
        }
        guard let version = probe.version else {
            throw BundleError.field(path: "schema_version", problem: "missing")
        }
        guard version == supportedSchemaVersion else {
            throw BundleError.schemaVersion(found: String(version))
        }
        let manifest: Manifest
        do {
            manifest = try JSONDecoder().decode(Manifest.self, from: data)
        } catch {
            let (path, problem) = decodingProblem(error)
            if path.isEmpty {
                throw BundleError.unreadable(file: fileName, reason: problem)
            }
            throw BundleError.field(path: path, problem: problem)
        }
        try manifest.validate()
        return manifest
    }

    private struct VersionProbe: Decodable {
        let version: Int?

        enum CodingKeys: String, CodingKey {
            case version = "schema_version"
        }
    }

    // MARK: - Rules

    /// What the JSON types cannot say: allowed values, name patterns, references between fields,
    /// output order, ranks, label counts, and the files the programs and the tokenizer need.
    func validate() throws {
        try Manifest.oneOf(target, Manifest.targets, "target")
        try Manifest.oneOf(layout, Manifest.layouts, "layout")
        try Manifest.oneOf(precision, Manifest.precisions, "precision")
        try Manifest.sha256Field(trunkFingerprint, "trunk_fingerprint")
        guard maxSeqLen >= 3 && maxSeqLen <= 8192 else {
            throw BundleError.field(path: "max_seq_len", problem: "\(maxSeqLen) is outside 3...8192")
        }
        try validateTokenizer()
        guard !programs.isEmpty else {
            throw BundleError.field(path: "programs", problem: "empty")
        }
        let names = programs.map { $0.name }
        guard Set(names).count == names.count else {
            throw BundleError.field(path: "programs", problem: "two programs share a name")
        }
        if layout == "fused" && names != ["model"] {
            throw BundleError.field(path: "programs", problem: "a fused bundle has exactly one program, 'model'")
        }
        if layout == "split" && !names.contains("trunk") {
            throw BundleError.field(path: "programs", problem: "a split bundle needs a 'trunk' program")
        }
        for (i, p) in programs.enumerated() {
            try validateProgram(p, at: "programs/\(i)")
        }
        guard !tasks.isEmpty else {
            throw BundleError.field(path: "tasks", problem: "empty")
        }
        guard Set(tasks.map({ $0.name })).count == tasks.count else {
            throw BundleError.field(path: "tasks", problem: "two tasks share a name")
        }
        for (i, t) in tasks.enumerated() {
            try validateTask(t, program: program(named: t.program), at: "tasks/\(i)")
        }
        for name in files.keys.sorted() {
            guard BundleFiles.isPlainName(name) else {
                throw BundleError.field(path: "files", problem: "'\(name)' is not a plain file name in the bundle folder")
            }
            let entry = files[name]!
            try Manifest.sha256Field(entry.sha256, "files/\(name)/sha256")
            guard entry.bytes >= 0 else {
                throw BundleError.field(path: "files/\(name)/bytes", problem: "negative")
            }
        }
        if let unlisted = neededFiles.first(where: { files[$0] == nil }) {
            throw BundleError.field(path: "files", problem: "\(unlisted) is used but has no checksum")
        }
    }

    private func validateTokenizer() throws {
        let t = tokenizer
        for (value, key) in [(t.file, "file"), (t.vocab, "vocab"), (t.tables, "tables")] {
            guard BundleFiles.isPlainName(value) else {
                throw BundleError.field(path: "tokenizer/\(key)", problem: "'\(value)' is not a plain file name")
            }
        }
        try Manifest.sha256Field(t.fingerprint, "tokenizer/fingerprint")
        guard t.maxSeqLen == maxSeqLen else {
            throw BundleError.field(path: "tokenizer/max_seq_len", problem: "\(t.maxSeqLen) differs from max_seq_len \(maxSeqLen)")
        }
        guard t.truncation == "longest_first" else {
            throw BundleError.field(path: "tokenizer/truncation", problem: "'\(t.truncation)', expected 'longest_first'")
        }
        guard t.pairTemplate == "[CLS] A [SEP] B [SEP]" else {
            throw BundleError.field(path: "tokenizer/pair_template", problem: "'\(t.pairTemplate)', expected '[CLS] A [SEP] B [SEP]'")
        }
    }

    /// One program entry: names, files, inputs for its role (token inputs, or a split branch's
    /// hidden state and mask), outputs indexed 0, 1, 2, ... in order.
    func validateProgram(_ p: ProgramSpec, at path: String) throws {
        guard BundleFiles.isPlainTaskName(p.name) else {
            throw BundleError.field(path: "\(path)/name", problem: "'\(p.name)' is not a plain name")
        }
        guard !p.files.isEmpty else {
            throw BundleError.field(path: "\(path)/files", problem: "empty")
        }
        for name in [p.file] + p.files where !BundleFiles.isPlainName(name) {
            throw BundleError.field(path: "\(path)/files", problem: "'\(name)' is not a plain file name")
        }
        guard p.files.contains(p.file) else {
            throw BundleError.field(path: "\(path)/file", problem: "'\(p.file)' is not among the program's files")
        }
        try Manifest.oneOf(p.precision, Manifest.precisions, "\(path)/precision")
        let isBranch = layout == "split" && p.name != "trunk"
        let expected = isBranch ? Manifest.branchInputs : Manifest.tokenInputs
        guard p.inputs.map({ $0.name }).sorted() == expected.sorted() else {
            throw BundleError.field(path: "\(path)/inputs", problem: "takes \(p.inputs.map { $0.name }), expected \(expected)")
        }
        for (j, input) in p.inputs.enumerated() {
            try validateTensor(input, at: "\(path)/inputs/\(j)")
            let allowed = input.name == "hidden" ? ["float32"] : ["int64", "int32"]
            try Manifest.oneOf(input.dtype, allowed, "\(path)/inputs/\(j)/dtype")
            guard input.dims.count >= 2 else {
                throw BundleError.field(path: "\(path)/inputs/\(j)/dims", problem: "an input is at least [batch, seq]")
            }
            let seq = input.dims[1]
            let longest = seq.size ?? seq.max ?? 0
            guard longest >= maxSeqLen else {
                throw BundleError.field(path: "\(path)/inputs/\(j)/dims", problem: "takes at most \(longest) tokens, max_seq_len is \(maxSeqLen)")
            }
        }
        guard !p.outputs.isEmpty else {
            throw BundleError.field(path: "\(path)/outputs", problem: "empty")
        }
        guard Set(p.outputs.map({ $0.name })).count == p.outputs.count else {
            throw BundleError.field(path: "\(path)/outputs", problem: "two outputs share a name")
        }
        for (j, output) in p.outputs.enumerated() {
            try validateTensor(output, at: "\(path)/outputs/\(j)")
            guard output.index == j else {
                throw BundleError.field(path: "\(path)/outputs/\(j)/index", problem: "\(output.index.map { String($0) } ?? "missing"), expected its position \(j)")
            }
            if let task = output.task, !BundleFiles.isPlainTaskName(task) {
                throw BundleError.field(path: "\(path)/outputs/\(j)/task", problem: "'\(task)' is not a plain name")
            }
        }
    }

    private func validateTensor(_ t: TensorSpec, at path: String) throws {
        guard BundleFiles.isPlainTaskName(t.name) else {
            throw BundleError.field(path: "\(path)/name", problem: "'\(t.name)' is not a plain name")
        }
        try Manifest.oneOf(t.dtype, Manifest.dtypes, "\(path)/dtype")
        guard t.dims.count >= 1 && t.dims.count <= 4 else {
            throw BundleError.field(path: "\(path)/dims", problem: "\(t.dims.count) dims, expected 1 to 4")
        }
        for (k, d) in t.dims.enumerated() {
            if let fixed = d.size {
                guard fixed >= 1 else {
                    throw BundleError.field(path: "\(path)/dims/\(k)/size", problem: "must be at least 1")
                }
            } else {
                guard d.name != nil, let lo = d.min, let hi = d.max, lo >= 0, hi >= 1, lo <= hi else {
                    throw BundleError.field(path: "\(path)/dims/\(k)", problem: "a dim is {size} or {name, min, max} with min <= max")
                }
            }
        }
    }

    /// One task entry: its program and output exist and feed it, the output's rank fits the task
    /// type, and the label count equals the output's last size.
    func validateTask(_ t: TaskSpec, program p: ProgramSpec?, at path: String) throws {
        guard BundleFiles.isPlainTaskName(t.name) else {
            throw BundleError.field(path: "\(path)/name", problem: "'\(t.name)' is not a plain task name")
        }
        try Manifest.oneOf(t.precision, Manifest.precisions, "\(path)/precision")
        guard let p = p else {
            throw BundleError.field(path: "\(path)/program", problem: "'\(t.program)' is not a program of the bundle")
        }
        if layout == "split" && p.name == "trunk" {
            throw BundleError.field(path: "\(path)/program", problem: "a split task reads its branch program, not the trunk")
        }
        guard let out = p.outputs.first(where: { $0.name == t.output }) else {
            throw BundleError.field(path: "\(path)/output", problem: "'\(t.output)' is not an output of program '\(p.name)'")
        }
        if out.task != t.name {
            throw BundleError.field(path: "\(path)/output", problem: "output '\(out.name)' feeds task '\(out.task ?? "null")', not '\(t.name)'")
        }
        let last = out.dims.last?.size
        switch t.type {
        case .classification, .tagging:
            let rank = t.type == .tagging ? 3 : 2
            guard out.dims.count == rank else {
                throw BundleError.field(path: "\(path)/output", problem: "a \(t.type.rawValue) output has rank \(rank), '\(out.name)' has \(out.dims.count)")
            }
            guard !t.labels.isEmpty else {
                throw BundleError.field(path: "\(path)/labels", problem: "empty")
            }
            guard last == t.labels.count else {
                throw BundleError.field(path: "\(path)/labels", problem: "\(t.labels.count) labels but output '\(out.name)' has \(out.dims.last.map { $0.description } ?? "?") values per row")
            }
        case .regression:
            // [batch] or [batch, 1]: one number per input
            guard out.dims.count == 1 || (out.dims.count == 2 && last == 1) else {
                throw BundleError.field(path: "\(path)/output", problem: "a regression output is [batch] or [batch, 1], '\(out.name)' has \(out.dims.count) dims")
            }
        }
        if layout == "split" && trunkOutput(depth: t.attach) == nil {
            throw BundleError.field(path: "\(path)/attach", problem: "depth \(t.attach), which the trunk does not output")
        }
    }

    private static func oneOf(_ value: String, _ allowed: [String], _ path: String) throws {
        guard allowed.contains(value) else {
            throw BundleError.field(path: path, problem: "'\(value)' is not one of \(allowed.joined(separator: ", "))")
        }
    }

    private static func sha256Field(_ value: String, _ path: String) throws {
        let bytes = Array(value.utf8)
        let ok = bytes.count == 64 && bytes.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
        guard ok else {
            throw BundleError.field(path: path, problem: "not 64 lowercase hex digits")
        }
    }

    // MARK: - Files

    /// Every file in `files` exists in `folder` with its size and sha256.
    public func checkFiles(in folder: URL) throws {
        for name in files.keys.sorted() {
            let entry = files[name]!
            let url = folder.appendingPathComponent(name)
            guard BundleFiles.exists(url) else {
                throw BundleError.missingFile(name: name)
            }
            let size = try BundleFiles.size(of: url)
            guard size == entry.bytes else {
                throw BundleError.sizeMismatch(name: name, bytes: size, expected: entry.bytes)
            }
            guard try BundleFiles.sha256(of: url) == entry.sha256 else {
                throw BundleError.checksumMismatch(name: name)
            }
        }
    }
}

/// A DecodingError as (field path like `programs/0/outputs`, what is wrong with it).
func decodingProblem(_ error: Error) -> (String, String) {
    guard let e = error as? DecodingError else {
        return ("", "\(error)")
    }
    switch e {
    case .keyNotFound(let key, let context):
        return (codingPath(context.codingPath + [key]), "missing")
    case .typeMismatch(let type, let context):
        return (codingPath(context.codingPath), "expected \(type)")
    case .valueNotFound(let type, let context):
        return (codingPath(context.codingPath), "is null, expected \(type)")
    case .dataCorrupted(let context):
        if context.codingPath.isEmpty {
            return ("", "not valid JSON")
        }
        return (codingPath(context.codingPath), "has a value this runtime does not know")
    @unknown default:
        return ("", "\(error)")
    }
}

private func codingPath(_ keys: [CodingKey]) -> String {
    keys.map { key in key.intValue.map { String($0) } ?? key.stringValue }.joined(separator: "/")
}
