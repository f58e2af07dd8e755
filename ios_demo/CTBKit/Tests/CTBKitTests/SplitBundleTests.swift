import Foundation
import XCTest
@testable import CTBKit

/// The split layout and updateBranch, on a small split bundle written here: the real bundle's
/// tokenizer files, a trunk and two branches whose "program files" are JSON read by FakeBackend
/// (their embedded metadata, and which label each output favours).
final class SplitBundleTests: XCTestCase {
    private let trunk = String(repeating: "a", count: 64)
    private let topicLabels = ["alarm", "music", "weather"]
    private let slotLabels = ["O", "B-X", "I-X"]

    /// Program files: `{"metadata": {...embedded manifest...}, "hot": k}`.
    final class FakeBackend: TrunkBackend {
        func load(_ program: ProgramSpec, file: URL, sha256: String) throws -> LoadedProgram {
            let object = try JSONSerialization.jsonObject(with: Data(contentsOf: file)) as? [String: Any] ?? [:]
            let metadata = try JSONSerialization.data(withJSONObject: object["metadata"] ?? [String: Any]())
            return FakeProgram(spec: program, metadataJSON: String(data: metadata, encoding: .utf8),
                               hot: object["hot"] as? Int ?? 0)
        }
    }

    /// Returns, for every output, zeros with 1 at index `hot` of the last dim of every row.
    final class FakeProgram: LoadedProgram {
        let spec: ProgramSpec
        let metadataJSON: String?
        let hot: Int

        init(spec: ProgramSpec, metadataJSON: String?, hot: Int) {
            self.spec = spec
            self.metadataJSON = metadataJSON
            self.hot = hot
        }

        func run(_ inputs: [Tensor]) throws -> [Tensor] {
            let seq = inputs[0].shape[1]
            return spec.outputs.map { o in
                let shape = o.dims.map { d in d.size ?? (d.name == "seq" ? seq : 1) }
                let last = shape.last ?? 1
                var values = [Float](repeating: 0, count: shape.reduce(1, *))
                for row in 0..<(values.count / last) {
                    values[row * last + hot % last] = 1
                }
                return Tensor(shape: shape, values: .float32(values))
            }
        }
    }

    private func dims(_ items: [Any]) -> [[String: Any]] {
        items.map { item -> [String: Any] in
            if let size = item as? Int {
                return ["size": size]
            }
            return ["name": item as? String ?? "?", "min": 1, "max": (item as? String) == "batch" ? 1 : maxSeqLen]
        }
    }

    private var maxSeqLen = 64

    private func program(_ name: String, inputs: [(String, String, [Any])], outputs: [[String: Any]]) -> [String: Any] {
        ["name": name, "file": "\(name).fake", "files": ["\(name).fake"], "precision": "fp32",
         "inputs": inputs.map { input -> [String: Any] in ["name": input.0, "dtype": input.1, "dims": dims(input.2)] },
         "outputs": outputs]
    }

    private func task(_ name: String, _ type: String, _ labels: [String]) -> [String: Any] {
        ["name": name, "type": type, "program": "branch_\(name)", "output": name, "labels": labels, "attach": 2,
         "layers": 1, "pair": false, "precision": "fp32"]
    }

    private func writeProgram(_ url: URL, name: String, outputs: [String], trunk: String, tokenizer: String, hot: Int) throws {
        let labels = ["topic": topicLabels, "slots": slotLabels].filter { outputs.contains($0.key) }
        let metadata: [String: Any] = ["target": "ios", "program": name, "trunk_fingerprint": trunk,
                                       "tokenizer_fingerprint": tokenizer, "outputs": outputs, "tasks": [],
                                       "labels_sha256": MultiTaskRunner.labelsSHA256(labels)]
        let object: [String: Any] = ["metadata": metadata, "hot": hot]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        try data.write(to: url)
    }

    /// Writes the split bundle into a fresh folder; returns it and the tokenizer fingerprint.
    private func makeBundle() throws -> (URL, String) {
        let real = try Golden.bundle()
        let realManifest = try Golden.manifest()
        maxSeqLen = realManifest.maxSeqLen
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ctb-split-" + UUID().uuidString, isDirectory: true)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        addTeardownBlock {
            try? FileManager.default.removeItem(at: folder)
        }
        let t = realManifest.tokenizer
        for name in [t.file, t.vocab, t.tables] {
            try FileManager.default.copyItem(at: real.appendingPathComponent(name), to: folder.appendingPathComponent(name))
        }
        let digests = try [t.file, t.vocab, t.tables].map { try BundleFiles.sha256(of: folder.appendingPathComponent($0)) }
        var hasher = SHA256Stream()
        hasher.update(Data(digests.joined(separator: "\n").utf8))
        let tokenizer = hasher.hexDigest()

        try writeProgram(folder.appendingPathComponent("trunk.fake"), name: "trunk", outputs: ["hidden_2"], trunk: trunk,
                         tokenizer: tokenizer, hot: 0)
        try writeProgram(folder.appendingPathComponent("branch_topic.fake"), name: "branch_topic", outputs: ["topic"],
                         trunk: trunk, tokenizer: tokenizer, hot: 1)
        try writeProgram(folder.appendingPathComponent("branch_slots.fake"), name: "branch_slots", outputs: ["slots"],
                         trunk: trunk, tokenizer: tokenizer, hot: 1)

        let tokenInputs: [(String, String, [Any])] = [("input_ids", "int32", ["batch", "seq"]),
                                                      ("attention_mask", "int32", ["batch", "seq"]),
                                                      ("token_type_ids", "int32", ["batch", "seq"])]
        let branchInputs: [(String, String, [Any])] = [("hidden", "float32", ["batch", "seq", 4]),
                                                       ("attention_mask", "int32", ["batch", "seq"])]
        let programs = [
            program("trunk", inputs: tokenInputs, outputs: [["index": 0, "name": "hidden_2", "task": NSNull(), "depth": 2,
                                                             "dtype": "float32", "dims": dims(["batch", "seq", 4])]]),
            program("branch_topic", inputs: branchInputs, outputs: [["index": 0, "name": "topic", "task": "topic",
                                                                     "dtype": "float32", "dims": dims(["batch", 3])]]),
            program("branch_slots", inputs: branchInputs, outputs: [["index": 0, "name": "slots", "task": "slots",
                                                                     "dtype": "float32", "dims": dims(["batch", "seq", 3])]]),
        ]
        var files: [String: Any] = [:]
        for name in [t.file, t.vocab, t.tables, "trunk.fake", "branch_topic.fake", "branch_slots.fake"] {
            let url = folder.appendingPathComponent(name)
            let entry: [String: Any] = ["sha256": try BundleFiles.sha256(of: url), "bytes": try BundleFiles.size(of: url)]
            files[name] = entry
        }
        let manifest: [String: Any] = [
            "schema_version": 2, "target": "ios", "layout": "split", "precision": "fp32", "toolchain_version": "test",
            "created": "", "backbone": "test", "trunk_fingerprint": trunk, "max_seq_len": maxSeqLen,
            "tokenizer": ["file": t.file, "vocab": t.vocab, "tables": t.tables, "fingerprint": tokenizer,
                          "max_seq_len": maxSeqLen, "truncation": "longest_first",
                          "pair_template": "[CLS] A [SEP] B [SEP]"] as [String: Any],
            "programs": programs,
            "tasks": [task("topic", "classification", topicLabels), task("slots", "tagging", slotLabels)],
            "quantization": NSNull(),
            "files": files,
        ]
        let data = try JSONSerialization.data(withJSONObject: manifest, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: folder.appendingPathComponent(Manifest.fileName))
        return (folder, tokenizer)
    }

    /// One-hot logits [0, 1, 0]: the label at 1 with softmax 1 / (1 + 2 e^-1).
    private func assertClassification(_ result: TaskResult?, _ label: String, file: StaticString = #filePath, line: UInt = #line) {
        guard case .classification(let got, let score)? = result else {
            return XCTFail("not a classification: \(String(describing: result))", file: file, line: line)
        }
        XCTAssertEqual(got, label, file: file, line: line)
        XCTAssertEqual(score, 1 / (1 + 2 * exp(-1.0)), accuracy: 1e-12, file: file, line: line)
    }

    func testSplitBundleRunsTrunkThenEachBranch() throws {
        let (folder, _) = try makeBundle()
        let runner = try MultiTaskRunner(bundle: folder, backend: FakeBackend())
        let got = try runner.predict("play some jazz")
        assertClassification(got["topic"], "music")
        guard case .tagging(let spans)? = got["slots"] else {
            return XCTFail("slots: \(String(describing: got["slots"]))")
        }
        XCTAssertEqual(spans.map { $0.text }, ["play", "some", "jazz"], "every word B-X: one span each")
    }

    func testUpdateBranchChecksSha256AndTrunkAndLeavesOtherTasksUntouched() throws {
        let (folder, tokenizer) = try makeBundle()
        let runner = try MultiTaskRunner(bundle: folder, backend: FakeBackend())
        let before = try runner.predict("play some jazz")
        let m = runner.manifest
        guard let program = m.program(named: "branch_topic"), let task = m.task(named: "topic") else {
            return XCTFail("the split bundle lacks branch_topic")
        }

        let update = folder.appendingPathComponent("branch_topic_v2.fake")
        try writeProgram(update, name: "branch_topic", outputs: ["topic"], trunk: trunk, tokenizer: tokenizer, hot: 2)
        let digest = try BundleFiles.sha256(of: update)

        // a wrong sha256: refused, nothing changes
        let wrong = BranchUpdate(program: program, task: task, sha256: String(repeating: "f", count: 64))
        XCTAssertThrowsError(try runner.updateBranch(file: update, update: wrong)) { error in
            XCTAssertEqual(error as? BundleError, .checksumMismatch(name: "branch_topic_v2.fake"))
        }

        // a branch exported against another trunk: refused, nothing changes
        let foreign = folder.appendingPathComponent("branch_topic_foreign.fake")
        try writeProgram(foreign, name: "branch_topic", outputs: ["topic"], trunk: String(repeating: "b", count: 64),
                         tokenizer: tokenizer, hot: 2)
        let foreignUpdate = BranchUpdate(program: program, task: task, sha256: try BundleFiles.sha256(of: foreign))
        XCTAssertThrowsError(try runner.updateBranch(file: foreign, update: foreignUpdate)) { error in
            XCTAssertTrue("\(error)".contains("trunk bbbbbbbbbbbbbbbb"), "\(error)")
        }
        XCTAssertEqual(try runner.predict("play some jazz"), before)

        // the right file: only the topic task changes
        try runner.updateBranch(file: update, update: BranchUpdate(program: program, task: task, sha256: digest))
        let after = try runner.predict("play some jazz")
        assertClassification(after["topic"], "weather")
        XCTAssertEqual(after["slots"], before["slots"], "the other task is untouched")
    }

    func testUpdateBranchOnAFusedBundleIsRefused() throws {
        let runner = try Golden.replayRunner()
        guard runner.manifest.layout == "fused", let task = runner.manifest.tasks.first,
              let program = runner.manifest.program(named: task.program) else { return }
        let file = try Golden.bundle().appendingPathComponent(program.file)
        XCTAssertThrowsError(try runner.updateBranch(file: file, update: BranchUpdate(program: program, task: task, sha256: ""))) { error in
            XCTAssertTrue("\(error)".contains("fused"), "\(error)")
        }
    }
}
