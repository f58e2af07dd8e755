#if canImport(CTBKitOnnx)
import CTBKitOnnx
import Foundation
import XCTest
@testable import CTBKit

/// App-side parity on the real runtimes, as the Kotlin stack's: every golden.json text through the
/// Swift stack (tokenizer -> CoreML or ONNX Runtime, as the manifest's target says -> heads) for
/// every bundle given (CTB_BUNDLE, then CTB_BUNDLES) that runs here, compared with runtime_py's results
/// on the same bundle: token ids, labels and spans exactly, scores and raw outputs within
/// golden.json's tolerance. A split bundle has a branch replaced through updateBranch on the real
/// runtime: a copy is accepted, a copy with another trunk fingerprint and a wrong sha256 are refused.
/// Runs where CTBKitOnnx builds (macOS; ONNX Runtime ships Apple binaries only).
final class ParityTests: XCTestCase {
    private func temporaryFolder() throws -> URL {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ctb-parity-" + UUID().uuidString, isDirectory: true)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        addTeardownBlock {
            try? FileManager.default.removeItem(at: folder)
        }
        return folder
    }

    /// The pairs given (Golden.pairs) whose target runs here; an android bundle is the Kotlin side's.
    private func runnable() throws -> [(bundle: URL, report: URL)] {
        var out: [(bundle: URL, report: URL)] = []
        for pair in try Golden.pairs() {
            let target = try Manifest.load(from: pair.bundle, checkFiles: false).target
            #if canImport(CoreML)
            let runs = BundleBackends.targets.contains(target)
            #else
            let runs = target == "onnx"
            #endif
            if runs {
                out.append(pair)
            } else {
                print("parity: \(pair.bundle.lastPathComponent) is a \(target) bundle, which does not run here")
            }
        }
        if out.isEmpty {
            XCTFail("no bundle among those given runs here (ios needs CoreML, onnx ONNX Runtime); \(Golden.hint)")
        }
        return out
    }

    func testEveryGoldenTextThroughTheRealRuntimeGivesRuntimePyResults() throws {
        var total = 0
        for (bundle, report) in try runnable() {
            let golden = try Golden.goldenFile(report)
            guard let tol = golden.tolerance else {
                XCTFail("\(report.path)/golden.json has no tolerance; run `ctb-mobile verify` with the current toolchain")
                continue
            }
            let runner = try BundleBackends.open(bundle, compiledModels: try temporaryFolder()).runner
            let m = runner.manifest
            let single = runner.singleTextTasks
            var results = 0
            var exact = 0
            var maxScore = 0.0
            var maxRaw = 0.0
            for (i, c) in golden.cases.enumerated() {
                let where_ = "\(bundle.lastPathComponent) case \(i) \(String(reflecting: String(c.text.prefix(40))))"
                let got = try runner.predictWithOutputs(c.text, tasks: single)
                XCTAssertEqual(got.encoding.ids, c.inputIds, "\(where_): token ids")
                for (name, expected) in c.predictions.sorted(by: { $0.key < $1.key }) {
                    results += 1
                    if let row = got.outputs[name], let want = c.outputs[name]?.flat, row.count == want.count {
                        for (a, b) in zip(row, want) {
                            maxRaw = max(maxRaw, Double(abs(a - b)))
                        }
                    } else {
                        XCTFail("\(where_) task \(name): raw output \(got.outputs[name]?.count ?? 0) values, golden.json "
                            + "\(c.outputs[name]?.flat.count ?? 0)")
                    }
                    switch got.results[name] {
                    case .classification(let label, let score)?:
                        if label == expected.label {
                            exact += 1
                        } else {
                            XCTFail("\(where_) task \(name): label \(label), runtime_py \(expected.label ?? "none")")
                        }
                        maxScore = max(maxScore, abs(score - (expected.score ?? .nan)))
                    case .regression(let value)?:
                        exact += 1
                        maxRaw = max(maxRaw, abs(value - (expected.value ?? .nan)))
                    case .tagging(let spans)?:
                        if spans == expected.spans ?? [] {
                            exact += 1
                        } else {
                            XCTFail("\(where_) task \(name): spans \(spans), runtime_py \(expected.spans ?? [])")
                        }
                    case nil:
                        XCTFail("\(where_): no result for task \(name)")
                    }
                }
            }
            print("app parity \(bundle.lastPathComponent) (\(m.target) \(m.layout) \(m.precision)): texts \(golden.cases.count), "
                + "task results \(results), exact labels and spans \(exact)/\(results), max score diff "
                + "\(String(format: "%.2e", maxScore)) (tolerance \(tol.score)), max raw-output diff "
                + "\(String(format: "%.2e", maxRaw)) (tolerance \(tol.maxAbs))")
            XCTAssertGreaterThan(golden.cases.count, 0, "\(report.path)/golden.json has no cases")
            XCTAssertEqual(exact, results, "\(bundle.lastPathComponent): labels and spans")
            XCTAssertLessThanOrEqual(maxScore, tol.score, "\(bundle.lastPathComponent): scores")
            XCTAssertLessThanOrEqual(maxRaw, tol.maxAbs, "\(bundle.lastPathComponent): raw outputs")
            total += golden.cases.count
        }
        print("app parity: \(total) texts in all")
    }

    func testUpdateBranchOnTheRealRuntime() throws {
        var split = 0
        for (source, report) in try runnable() {
            let manifest = try Manifest.load(from: source, checkFiles: false)
            guard manifest.layout == "split" else { continue }
            split += 1
            let folder = try temporaryFolder()
            let bundle = folder.appendingPathComponent("bundle", isDirectory: true)
            try FileManager.default.copyItem(at: source, to: bundle)
            let runner = try BundleBackends.open(bundle, compiledModels: folder.appendingPathComponent("compiled")).runner
            let single = runner.singleTextTasks
            guard let task = manifest.tasks.first(where: { !$0.pair }), let program = manifest.program(named: task.program) else {
                XCTFail("\(source.lastPathComponent): no single-text task")
                continue
            }
            let texts = try Golden.goldenFile(report).cases.prefix(5).map { $0.text }
            let before = try texts.map { try runner.predict($0, tasks: single) }
            let original = bundle.appendingPathComponent(program.file)

            // a copy of the branch (a new file, the same program): accepted, results unchanged
            let copy = bundle.appendingPathComponent("v2-" + program.file)
            try FileManager.default.copyItem(at: original, to: copy)
            try runner.updateBranch(file: copy, update: BranchUpdate(program: program, task: task, sha256: try BundleFiles.sha256(of: copy)))
            XCTAssertEqual(try texts.map { try runner.predict($0, tasks: single) }, before, "\(program.file): the same branch again")

            // a wrong sha256: refused, nothing changes
            let wrong = BranchUpdate(program: program, task: task, sha256: String(repeating: "0", count: 64))
            XCTAssertThrowsError(try runner.updateBranch(file: copy, update: wrong)) { error in
                XCTAssertEqual(error as? BundleError, .checksumMismatch(name: copy.lastPathComponent))
            }

            // a copy whose embedded manifest names another trunk (right sha256): refused by the fingerprint check
            let tampered = bundle.appendingPathComponent("tampered-" + program.file)
            try FileManager.default.copyItem(at: original, to: tampered)
            let other = String(manifest.trunkFingerprint.map { (c: Character) -> Character in c == "a" ? "b" : "a" })
            XCTAssertGreaterThan(try replaceBytes(manifest.trunkFingerprint, with: other, in: tampered), 0,
                                 "\(program.file) does not embed the trunk fingerprint")
            let forged = BranchUpdate(program: program, task: task, sha256: try BundleFiles.sha256(of: tampered))
            XCTAssertThrowsError(try runner.updateBranch(file: tampered, update: forged)) { error in
                XCTAssertTrue("\(error)".contains("trunk \(other.prefix(16))"), "\(error)")
            }
            XCTAssertEqual(try texts.map { try runner.predict($0, tasks: single) }, before, "a refused update changes nothing")
            print("updateBranch \(source.lastPathComponent) (\(manifest.target)): copy accepted, other trunk refused, wrong sha256 refused")
        }
        XCTAssertGreaterThan(split, 0, "no split bundle among the bundles given; add one to CTB_BUNDLES for the updateBranch check")
    }

    func testTheBackendIsTheOneTheManifestsTargetNames() throws {
        for (bundle, _) in try runnable() {
            let manifest = try Manifest.load(from: bundle, checkFiles: false)
            let backend = try BundleBackends.backend(for: manifest, compiledModels: try temporaryFolder())
            switch manifest.target {
            case "onnx":
                XCTAssertTrue(backend is OnnxRuntimeBackend)
            case "ios":
                #if canImport(CoreML)
                XCTAssertTrue(backend is CoreMLBackend)
                #endif
            default:
                XCTFail("\(bundle.path): target \(manifest.target)")
            }
            var object = try JSONSerialization.jsonObject(with: Data(contentsOf: bundle.appendingPathComponent(Manifest.fileName)))
                as? [String: Any] ?? [:]
            object["target"] = "android"
            let android = try Manifest.parse(try JSONSerialization.data(withJSONObject: object))
            XCTAssertThrowsError(try BundleBackends.backend(for: android)) { error in
                XCTAssertTrue("\(error)".contains("'android' bundles run in android_demo"), "\(error)")
            }
        }
    }

    /// Replaces every occurrence of `old` by `new` (same length) in a file or in every file of a
    /// folder (an .mlpackage); returns how many it replaced.
    private func replaceBytes(_ old: String, with new: String, in url: URL) throws -> Int {
        let from = Data(old.utf8)
        let to = Data(new.utf8)
        precondition(from.count == to.count)
        let files = BundleFiles.isDirectory(url) ? try BundleFiles.folderFiles(url).map { $0.url } : [url]
        var count = 0
        for file in files {
            var data = try Data(contentsOf: file)
            var start = data.startIndex
            var changed = false
            while let r = data.range(of: from, in: start..<data.endIndex) {
                data.replaceSubrange(r, with: to)
                start = r.upperBound
                count += 1
                changed = true
            }
            if changed {
                try data.write(to: file)
            }
        }
        return count
    }
}
#endif
