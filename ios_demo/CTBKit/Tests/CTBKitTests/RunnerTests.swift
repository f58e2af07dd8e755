import Foundation
import XCTest
@testable import CTBKit

/// golden.json: the bundle's recorded outputs decode to runtime_py's predictions, alone and through
/// the runner (a replay backend stands in for CoreML, which `swift test` on Linux does not have).
final class RunnerTests: XCTestCase {
    private let tolerance = 1e-5  // outputs are rounded to 6 decimals in golden.json

    func testTheBundleIsTheOneVerifyPassed() throws {
        struct Verify: Decodable {
            let ok: Bool
            let manifestSha256: String?

            enum CodingKeys: String, CodingKey {
                case ok
                case manifestSha256 = "manifest_sha256"
            }
        }
        let verify = try Golden.report(Verify.self, "verify.json")
        XCTAssertTrue(verify.ok, "verify.json says the bundle failed verification")
        let manifestFile = try Golden.bundle().appendingPathComponent(Manifest.fileName)
        XCTAssertEqual(verify.manifestSha256, try BundleFiles.sha256(of: manifestFile), "verify.json is for another manifest")
    }

    func testGoldenOutputsDecodeToRuntimePyPredictions() throws {
        let manifest = try Golden.manifest()
        let tokenizer = try Golden.tokenizer()
        var checked = 0
        for (i, c) in try Golden.cases().enumerated() {
            let e = tokenizer.encode(c.text)
            XCTAssertEqual(e.ids, c.inputIds, "case \(i): token ids")
            for (name, expected) in c.predictions {
                guard let task = manifest.task(named: name), let out = c.outputs[name] else {
                    XCTFail("case \(i): golden.json names task \(name), which the bundle or the case lacks")
                    continue
                }
                let got = Heads.decode(task, output: out.flat, encoding: e, text: codePoints(c.text))
                assertSame(got, expected, tol: tolerance, "case \(i) task \(name)")
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 0, "golden.json has no predictions")
        print("golden decoding: \(checked) task results")
    }

    func testRunnerReplayingTheProgramsGivesRuntimePyPredictions() throws {
        let runner = try Golden.replayRunner()
        let single = runner.singleTextTasks
        for (i, c) in try Golden.cases().enumerated() {
            let got = try runner.predict(c.text, tasks: single)
            XCTAssertEqual(Set(got.keys), Set(c.predictions.keys), "case \(i): tasks")
            for (name, expected) in c.predictions {
                assertSame(got[name], expected, tol: tolerance, "case \(i) task \(name)")
            }
        }
    }

    // MARK: - Inputs

    private func goldenCase(_ matching: (String) -> Bool) throws -> GoldenCase {
        guard let c = try Golden.cases().first(where: { matching($0.text) }) else {
            XCTFail("golden.json lacks the edge case")
            throw Golden.Missing(description: "edge case")
        }
        return c
    }

    func testEmptyTextIsClsSepAndPredictsWhatPythonPredicts() throws {
        let runner = try Golden.replayRunner()
        let c = try goldenCase { $0.isEmpty }
        let e = runner.tokenizer.encode("")
        XCTAssertEqual(e.ids, c.inputIds)
        XCTAssertEqual(e.count, 2)
        let got = try runner.predict("", tasks: runner.singleTextTasks)
        for (name, expected) in c.predictions {
            assertSame(got[name], expected, tol: tolerance, "empty text, task \(name)")
        }
    }

    func testHundredThousandCharactersAreTruncated() throws {
        let runner = try Golden.replayRunner()
        let long = String(("what is " + String(repeating: "very ", count: 20_000)).prefix(100_000))
        XCTAssertEqual(long.unicodeScalars.count, 100_000)
        let start = Date()
        let e = runner.tokenizer.encode(long)
        let seconds = Date().timeIntervalSince(start)
        print("tokenized 100,000 characters in \(Int(seconds * 1000)) ms")
        XCTAssertEqual(e.count, runner.manifest.maxSeqLen)
        XCTAssertLessThan(seconds, 5, "tokenizing 100,000 characters is too slow")
        let c = try goldenCase { $0.hasPrefix("what is very very") }
        XCTAssertEqual(e.ids, c.inputIds, "the same tokens as golden.json's long edge case after truncation")
        let got = try runner.predict(long, tasks: runner.singleTextTasks)
        for (name, expected) in c.predictions {
            assertSame(got[name], expected, tol: tolerance, "long text, task \(name)")
        }
    }

    func testAnUnknownTaskIsAnInputError() throws {
        let runner = try Golden.replayRunner()
        XCTAssertThrowsError(try runner.predict("hello", tasks: ["no_such_task"])) { error in
            guard case InputError.unknownTask(let name, _) = error else {
                return XCTFail("expected an unknown task error, got \(error)")
            }
            XCTAssertEqual(name, "no_such_task")
        }
    }

    // MARK: - Broken bundles

    private func assertRefused(_ folder: URL, backend: TrunkBackend? = nil, _ words: [String],
                               file: StaticString = #filePath, line: UInt = #line) throws -> BundleError? {
        let chosen: TrunkBackend
        if let given = backend {
            chosen = given
        } else {
            chosen = ReplayBackend(manifest: try Golden.manifest(), cases: try Golden.cases())
        }
        do {
            _ = try MultiTaskRunner(bundle: folder, backend: chosen)
            XCTFail("the bundle was accepted", file: file, line: line)
            return nil
        } catch let error as BundleError {
            let message = error.description
            print("refused: \(message)")
            XCTAssertFalse(message.contains("\n"), "one line: \(message)", file: file, line: line)
            for w in words {
                XCTAssertTrue(message.contains(w), "'\(w)' not in: \(message)", file: file, line: line)
            }
            return error
        }
    }

    private func editManifest(_ folder: URL, _ edit: (inout [String: Any]) -> Void) throws {
        let url = folder.appendingPathComponent(Manifest.fileName)
        var object = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any] ?? [:]
        edit(&object)
        try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]).write(to: url)
    }

    func testAMissingFileIsRefusedByName() throws {
        let copy = try Golden.copyOfBundle(self)
        let vocab = try Golden.manifest().tokenizer.vocab
        try FileManager.default.removeItem(at: copy.appendingPathComponent(vocab))
        let error = try assertRefused(copy, [vocab, "missing"])
        XCTAssertEqual(error, .missingFile(name: vocab))
    }

    func testASha256MismatchIsRefusedByName() throws {
        let copy = try Golden.copyOfBundle(self)
        let tables = try Golden.manifest().tokenizer.tables
        let url = copy.appendingPathComponent(tables)
        var bytes = [UInt8](try Data(contentsOf: url))
        guard let i = bytes.lastIndex(of: 0x30) else {  // "0"
            return XCTFail("\(tables) has no digit 0 to change")
        }
        bytes[i] = 0x31  // same size, other bytes
        try Data(bytes).write(to: url)
        let error = try assertRefused(copy, [tables, "sha256"])
        XCTAssertEqual(error, .checksumMismatch(name: tables))
    }

    func testAnUnknownSchemaVersionIsRefused() throws {
        let copy = try Golden.copyOfBundle(self)
        try editManifest(copy) { $0["schema_version"] = 3 }
        let error = try assertRefused(copy, ["schema_version", "3"])
        XCTAssertEqual(error, .schemaVersion(found: "3"))
    }

    func testAMissingRequiredFieldIsRefusedByName() throws {
        let copy = try Golden.copyOfBundle(self)
        try editManifest(copy) { object in
            var programs = object["programs"] as? [[String: Any]] ?? []
            programs[0]["outputs"] = nil
            object["programs"] = programs
        }
        _ = try assertRefused(copy, ["programs/0/outputs", "missing"])
    }

    func testAnOutputCountThatDiffersFromTheManifestIsRefused() throws {
        let backend = ReplayBackend(manifest: try Golden.manifest(), cases: try Golden.cases(), dropLastOutput: true)
        _ = try assertRefused(try Golden.bundle(), backend: backend, ["outputs", "lists"])
    }

    func testAProgramFromAnotherTrunkIsRefused() throws {
        let m = try Golden.manifest()
        let other = String(repeating: "0", count: 64)
        let metadata = "{\"trunk_fingerprint\": \"\(other)\", \"tokenizer_fingerprint\": \"\(m.tokenizer.fingerprint)\", "
            + "\"outputs\": []}"
        let backend = ReplayBackend(manifest: m, cases: try Golden.cases(), metadata: metadata)
        _ = try assertRefused(try Golden.bundle(), backend: backend, ["trunk", String(other.prefix(16))])
    }
}
