import Foundation

/// A new branch program for one task of a split bundle: its manifest entries and the file's sha256.
public struct BranchUpdate {
    public let program: ProgramSpec
    public let task: TaskSpec
    public let sha256: String

    public init(program: ProgramSpec, task: TaskSpec, sha256: String) {
        self.program = program
        self.task = task
        self.sha256 = sha256
    }
}

/// One prediction with the time of its inference alone, in milliseconds.
public struct TimedPrediction: Equatable, Sendable {
    public let results: [String: TaskResult]
    public let inferenceMs: Double

    public init(results: [String: TaskResult], inferenceMs: Double) {
        self.results = results
        self.inferenceMs = inferenceMs
    }
}

/// Loads a bundle (manifest, files, tokenizer, programs) once and predicts every task from one
/// tokenization and one trunk pass. Positional outputs are mapped through the manifest and checked
/// in count and shape on every call. Calls are serialised by a lock, so one runner may be shared
/// between threads.
public final class MultiTaskRunner: @unchecked Sendable {
    public let folder: URL
    public let manifest: Manifest
    public let tokenizer: WordPieceTokenizer
    private let backend: TrunkBackend
    private let lock = NSLock()
    private var state: State

    /// Tasks and programs in force (updateBranch replaces one task's), with the loaded programs.
    private struct State {
        var tasks: [TaskSpec]
        var programs: [String: ProgramSpec]
        var loaded: [String: LoadedProgram]
        var digests: [String: String]  // program name -> its file's sha256

        func task(_ name: String) -> TaskSpec? {
            tasks.first { $0.name == name }
        }
    }

    /// Opens the bundle in `folder`: checks the manifest and (by default) every file's size and
    /// sha256, reads the tokenizer, loads the programs through `backend`, checks their embedded
    /// metadata, and runs one probe (`[CLS] [SEP]`) through every task so that outputs in another
    /// order or shape fail here.
    public init(bundle folder: URL, backend: TrunkBackend, checkFiles: Bool = true) throws {
        let manifest = try Manifest.load(from: folder, checkFiles: checkFiles)
        let spec = manifest.tokenizer
        let tokenizer = try WordPieceTokenizer(folder: folder, spec: spec)
        guard MultiTaskRunner.tokenizerFingerprint(manifest) == spec.fingerprint else {
            throw BundleError.tokenizer(file: spec.file, problem: "\(spec.file), \(spec.vocab) or \(spec.tables) differ from manifest "
                + "field tokenizer/fingerprint (replaced); export the bundle again")
        }
        guard tokenizer.maxLength == manifest.maxSeqLen else {
            throw BundleError.tokenizer(file: spec.file, problem: "truncates at \(tokenizer.maxLength) tokens, the manifest's "
                + "max_seq_len is \(manifest.maxSeqLen); export the bundle again")
        }
        var needed = manifest.layout == "fused" ? ["model"] : ["trunk"]
        for task in manifest.tasks where !needed.contains(task.program) {
            needed.append(task.program)
        }
        var loaded: [String: LoadedProgram] = [:]
        var digests: [String: String] = [:]
        var programs: [String: ProgramSpec] = [:]
        for p in manifest.programs {
            programs[p.name] = p
        }
        for name in needed {
            guard let p = programs[name], let entry = manifest.files[p.file] else {
                throw BundleError.field(path: "programs", problem: "program '\(name)' or its file is not listed")
            }
            let program = try backend.load(p, file: folder.appendingPathComponent(p.file), sha256: entry.sha256)
            try MultiTaskRunner.checkEmbedded(program, p, file: p.file, manifest: manifest,
                                              labels: MultiTaskRunner.labels(manifest.tasks))
            loaded[name] = program
            digests[name] = entry.sha256
        }
        self.folder = folder
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.backend = backend
        self.state = State(tasks: manifest.tasks, programs: programs, loaded: loaded, digests: digests)
        _ = try run(state, encoding: tokenizer.encode(""), tasks: manifest.tasks.map { $0.name })  // the probe
    }

    /// The tasks in force, in the manifest's order.
    public var tasks: [TaskSpec] {
        lock.lock()
        defer { lock.unlock() }
        return state.tasks
    }

    /// The sha256s of the program files in force (after `updateBranch`, the new branch's): what a
    /// cache of compiled programs keeps (`CoreMLBackend.pruneCompiledModels(keeping:)`).
    public var programDigests: Set<String> {
        lock.lock()
        defer { lock.unlock() }
        return Set(state.digests.values)
    }

    /// The names of the tasks that take one text (not a pair).
    public var singleTextTasks: [String] {
        tasks.filter { !$0.pair }.map { $0.name }
    }

    /// Every chosen task's result for `text` (and `pair`, for pair tasks); all tasks by default,
    /// as runtime_py: a pair goes to pair tasks only, and pair tasks need a pair.
    public func predict(_ text: String, pair: String? = nil, tasks: [String]? = nil) throws -> [String: TaskResult] {
        try predictWithOutputs(text, pair: pair, tasks: tasks).results
    }

    /// `predict`'s results with the time of the inference alone (tokenizer, programs, heads), measured
    /// once this call holds the runner: a wait for another caller's inference is not in it.
    public func predictTimed(_ text: String, pair: String? = nil, tasks: [String]? = nil) throws -> TimedPrediction {
        var started: UInt64 = 0
        let out = try predictWithOutputs(text, pair: pair, tasks: tasks, started: &started)
        let ms = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e6
        return TimedPrediction(results: out.results, inferenceMs: ms)
    }

    /// `predict`'s results with what they were decoded from: the encoding and each task's raw output
    /// row (batch removed, row-major), for parity checks against golden.json's `outputs`.
    public func predictWithOutputs(_ text: String, pair: String? = nil, tasks: [String]? = nil) throws
        -> (results: [String: TaskResult], encoding: Encoding, outputs: [String: [Float]]) {
        var started: UInt64 = 0
        return try predictWithOutputs(text, pair: pair, tasks: tasks, started: &started)
    }

    private func predictWithOutputs(_ text: String, pair: String?, tasks: [String]?, started: inout UInt64) throws
        -> (results: [String: TaskResult], encoding: Encoding, outputs: [String: [Float]]) {
        lock.lock()
        defer { lock.unlock() }
        started = DispatchTime.now().uptimeNanoseconds
        let s = state
        let chosen = try choose(s, tasks, paired: pair != nil)
        let a = codePoints(text)
        let b: [UInt32]? = pair.map { codePoints($0) }
        let encoding = tokenizer.encode(codePoints: a, pair: b, maxLength: tokenizer.maxLength)
        let raw = try run(s, encoding: encoding, tasks: chosen)
        var out: [String: TaskResult] = [:]
        for name in chosen {
            if let task = s.task(name), let row = raw[name] {
                out[name] = Heads.decode(task, output: row, encoding: encoding, text: a)
            }
        }
        return (results: out, encoding: encoding, outputs: raw)
    }

    private func choose(_ s: State, _ tasks: [String]?, paired: Bool) throws -> [String] {
        let known = s.tasks.map { $0.name }
        let chosen = tasks ?? known
        for name in chosen {
            guard let task = s.task(name) else {
                throw InputError.unknownTask(name: name, known: known)
            }
            if task.pair && !paired {
                throw InputError.pairNeeded(task: name)
            }
            if !task.pair && paired {
                throw InputError.pairGiven(task: name)
            }
        }
        return chosen
    }

    /// Swaps one task's branch in a split bundle. The file must have `update.sha256` and carry this
    /// bundle's trunk and tokenizer fingerprints; the new branch is probed before it replaces the
    /// old one. Other tasks are left untouched; on any failure the runner stays as it was.
    public func updateBranch(file: URL, update: BranchUpdate) throws {
        lock.lock()
        defer { lock.unlock() }
        let program = update.program
        let task = update.task
        let name = file.lastPathComponent
        func refuse(_ problem: String) -> BundleError {
            BundleError.program(file: name, problem: "branch update for task \(task.name): \(problem)")
        }
        guard manifest.layout == "split" else {
            throw refuse("this bundle is fused; only a split bundle's branches can be swapped")
        }
        guard let old = state.task(task.name) else {
            throw refuse("the bundle has no task \(task.name)")
        }
        guard program.name != "trunk" && task.program == program.name else {
            throw refuse("the task names program '\(task.program)', the update brings '\(program.name)'")
        }
        try manifest.validateProgram(program, at: "update/program")
        try manifest.validateTask(task, program: program, at: "update/task")
        guard BundleFiles.exists(file) else {
            throw BundleError.missingFile(name: name)
        }
        let digest = update.sha256.lowercased()
        guard try BundleFiles.sha256(of: file) == digest else {
            throw BundleError.checksumMismatch(name: name)
        }
        let loaded = try backend.load(program, file: file, sha256: digest)
        try MultiTaskRunner.checkEmbedded(loaded, program, file: name, manifest: manifest,
                                          labels: MultiTaskRunner.labels(state.tasks.map { $0.name == task.name ? task : $0 }))
        var next = state
        next.tasks = state.tasks.map { $0.name == task.name ? task : $0 }
        next.programs[old.program] = nil
        next.programs[program.name] = program
        next.loaded[old.program] = nil
        next.loaded[program.name] = loaded
        next.digests[old.program] = nil
        next.digests[program.name] = digest
        _ = try run(next, encoding: tokenizer.encode(""), tasks: [task.name])  // the probe
        state = next
    }

    // MARK: - Checks

    /// sha256 over the sha256 hex digests of the tokenizer file, the vocabulary and the tables,
    /// joined by newlines (runtime_py/manifest.py `tokenizer_fingerprint`).
    static func tokenizerFingerprint(_ m: Manifest) -> String {
        let t = m.tokenizer
        let joined = [t.file, t.vocab, t.tables].map { m.files[$0]?.sha256 ?? "" }.joined(separator: "\n")
        var hasher = SHA256Stream()
        hasher.update(Data(joined.utf8))
        return hasher.hexDigest()
    }

    /// The program's own metadata must name this trunk, this tokenizer and the manifest's output order
    /// (a split branch swapped in from another bundle, a tokenizer swapped with its checksum updated).
    /// Each task's labels, by task name.
    static func labels(_ tasks: [TaskSpec]) -> [String: [String]] {
        Dictionary(tasks.map { ($0.name, $0.labels) }, uniquingKeysWith: { first, _ in first })
    }

    /// The contract's `labels_sha256`: sha256 of `json.dumps({task: [labels]}, sort_keys=True)` (ASCII
    /// escapes, `", "` and `": "`) over the tasks a program's outputs feed (a split trunk: `{}`).
    static func labelsSHA256(_ labels: [String: [String]]) -> String {
        let text = "{" + labels.keys.sorted().map { task in
            PredictionJSON.asciiString(task) + ": [" + labels[task]!.map(PredictionJSON.asciiString).joined(separator: ", ") + "]"
        }.joined(separator: ", ") + "}"
        var hasher = SHA256Stream()
        hasher.update(Data(text.utf8))
        return hasher.hexDigest()
    }

    static func checkEmbedded(_ program: LoadedProgram, _ p: ProgramSpec, file: String, manifest: Manifest,
                              labels: [String: [String]]) throws {
        guard let text = program.metadataJSON else {
            throw BundleError.program(file: file, problem: "has no embedded manifest (ctb_mobile_manifest); export it again")
        }
        let meta: EmbeddedMetadata
        do {
            meta = try JSONDecoder().decode(EmbeddedMetadata.self, from: Data(text.utf8))
        } catch {
            throw BundleError.program(file: file, problem: "its embedded manifest is not a JSON object with string fingerprints; export it again")
        }
        guard meta.trunkFingerprint == manifest.trunkFingerprint else {
            throw BundleError.program(file: file, problem: "was exported for trunk \(short(meta.trunkFingerprint)), this bundle's "
                + "trunk is \(short(manifest.trunkFingerprint)); export it against this trunk")
        }
        guard meta.tokenizerFingerprint == manifest.tokenizer.fingerprint else {
            throw BundleError.program(file: file, problem: "was exported with tokenizer \(short(meta.tokenizerFingerprint)), this "
                + "bundle's is \(short(manifest.tokenizer.fingerprint)); export it against this bundle")
        }
        let names = p.outputs.map { $0.name }
        guard meta.outputs == names else {
            throw BundleError.program(file: file, problem: "returns outputs \(meta.outputs ?? []), manifest field "
                + "programs/\(p.name)/outputs lists \(names); export the bundle again")
        }
        guard let embedded = meta.labelsSha256 else {
            throw BundleError.program(file: file, problem: "carries no labels_sha256 (exported by an older ctb-mobile), so "
                + "the manifest's labels cannot be checked; export the bundle again")
        }
        var served: [String: [String]] = [:]
        for task in p.outputs.compactMap({ $0.task }) { served[task] = labels[task] ?? [] }
        guard embedded == labelsSHA256(served) else {
            throw BundleError.program(file: file, problem: "the manifest's labels of \(served.keys.sorted().joined(separator: ", ")) "
                + "differ from the labels it was exported with (its labels_sha256); export the bundle again")
        }
    }

    private static func short(_ fingerprint: String?) -> String {
        String((fingerprint ?? "none").prefix(16))
    }

    // MARK: - Running

    /// Runs the programs for one encoding (batch 1); returns each task's output row, batch removed.
    private func run(_ s: State, encoding: Encoding, tasks: [String]) throws -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        if manifest.layout == "fused" {
            let outputs = try call(s, "model", encoding: encoding, hidden: nil)
            for name in tasks {
                if let task = s.task(name) {
                    out[name] = outputs[task.output]?.floats
                }
            }
            return out
        }
        let hidden = try call(s, "trunk", encoding: encoding, hidden: nil)
        for name in tasks {
            guard let task = s.task(name), let h = manifest.trunkOutput(depth: task.attach), let hiddenState = hidden[h.name] else {
                throw BundleError.field(path: "tasks", problem: "task \(name) attaches at a depth the trunk does not output")
            }
            let outputs = try call(s, task.program, encoding: encoding, hidden: hiddenState)
            out[name] = outputs[task.output]?.floats
        }
        return out
    }

    /// One program call: inputs in the manifest's order, outputs checked in count, dtype and shape, and named.
    private func call(_ s: State, _ programName: String, encoding: Encoding, hidden: Tensor?) throws -> [String: Tensor] {
        guard let p = s.programs[programName], let program = s.loaded[programName] else {
            throw BundleError.field(path: "programs", problem: "program '\(programName)' is not loaded")
        }
        let n = encoding.count
        var inputs: [Tensor] = []
        for spec in p.inputs {
            switch spec.name {
            case "input_ids":
                inputs.append(MultiTaskRunner.tokens(spec, encoding.ids))
            case "attention_mask":
                inputs.append(MultiTaskRunner.tokens(spec, encoding.attentionMask))
            case "token_type_ids":
                inputs.append(MultiTaskRunner.tokens(spec, encoding.typeIds))
            case "hidden":
                guard let h = hidden else {
                    throw BundleError.program(file: p.file, problem: "takes a hidden state but is not a branch")
                }
                inputs.append(h)
            default:
                throw BundleError.program(file: p.file, problem: "takes an unknown input \(spec.name)")
            }
        }
        let outputs = try program.run(inputs)
        guard outputs.count == p.outputs.count else {
            throw BundleError.program(file: p.file, problem: "returned \(outputs.count) outputs, manifest field "
                + "programs/\(p.name)/outputs lists \(p.outputs.count) (\(p.outputs.map { $0.name }.joined(separator: ", "))); "
                + "export the bundle again")
        }
        var named: [String: Tensor] = [:]
        for (j, spec) in p.outputs.enumerated() {
            let t = outputs[j]
            guard t.dtype == "float32" && MultiTaskRunner.fits(t.shape, spec.dims, tokens: n) else {
                throw BundleError.program(file: p.file, problem: "output \(j) (\(spec.name)) is \(t.dtype)\(t.shape), manifest "
                    + "field programs/\(p.name)/outputs/\(j) says \(spec.dtype)\(spec.dims) for \(n) tokens; its outputs are "
                    + "not in the manifest's order or shape; export the bundle again")
            }
            named[spec.name] = t
        }
        return named
    }

    /// A shape fits the manifest's dims: fixed sizes equal, batch 1, seq the token count, other ranges within bounds.
    static func fits(_ shape: [Int], _ dims: [Dim], tokens n: Int) -> Bool {
        guard shape.count == dims.count else { return false }
        for (i, d) in dims.enumerated() {
            let got = shape[i]
            if let size = d.size {
                if got != size { return false }
            } else if d.name == "batch" {
                if got != 1 { return false }
            } else if d.name == "seq" {
                if got != n { return false }
            } else if got < (d.min ?? 0) || got > (d.max ?? Int.max) {
                return false
            }
        }
        return true
    }

    /// A token input of shape [1, n] in the manifest's integer type (int32 for CoreML, int64 elsewhere).
    static func tokens(_ spec: TensorSpec, _ values: [Int]) -> Tensor {
        if spec.dtype == "int32" {
            return Tensor(shape: [1, values.count], values: .int32(values.map { Int32($0) }))
        }
        return Tensor(shape: [1, values.count], values: .int64(values.map { Int64($0) }))
    }
}
