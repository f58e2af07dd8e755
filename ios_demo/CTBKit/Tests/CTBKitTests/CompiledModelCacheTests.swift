import Foundation
import XCTest
@testable import CTBKit

/// The compiled-model cache keeps one .mlmodelc per program package in force and prunes the rest
/// (each new bundle used to leave another .mlmodelc in Application Support). Temporary folders only:
/// no CoreML needed, so this runs on Linux too.
final class CompiledModelCacheTests: XCTestCase {
    private func temporaryFolder() throws -> URL {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ctb-cache-" + UUID().uuidString, isDirectory: true)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        addTeardownBlock {
            try? FileManager.default.removeItem(at: folder)
        }
        return folder
    }

    /// A stand-in for MLModel.compileModel's output: a folder with one file.
    private func compiled(in folder: URL, _ name: String) throws -> URL {
        let url = folder.appendingPathComponent(name, isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        try Data(name.utf8).write(to: url.appendingPathComponent("model.espresso.net"))
        return url
    }

    private func digest(_ c: Character) -> String {
        String(repeating: c, count: 64)
    }

    func testStoreKeysByDigestAndKeepsTheFirstCopy() throws {
        let root = try temporaryFolder()
        let cache = CompiledModelCache(folder: root.appendingPathComponent("compiled"))
        XCTAssertFalse(cache.contains(digest("a")))
        let entry = try cache.store(try compiled(in: root, "first.mlmodelc"), sha256: digest("a"))
        XCTAssertEqual(entry.lastPathComponent, digest("a") + ".mlmodelc")
        XCTAssertTrue(cache.contains(digest("a")))
        let again = try cache.store(try compiled(in: root, "second.mlmodelc"), sha256: digest("a"))
        XCTAssertEqual(again, entry)
        XCTAssertEqual(try String(contentsOf: entry.appendingPathComponent("model.espresso.net"), encoding: .utf8), "first.mlmodelc")
        XCTAssertFalse(FileManager.default.fileExists(atPath: root.appendingPathComponent("second.mlmodelc").path),
                       "the redundant copy is removed")
    }

    func testPruneRemovesEveryModelOfOtherBundles() throws {
        let root = try temporaryFolder()
        let cache = CompiledModelCache(folder: root.appendingPathComponent("compiled"))
        for c in ["a", "b", "c", "d"] {
            _ = try cache.store(try compiled(in: root, "\(c).mlmodelc"), sha256: digest(Character(c)))
        }
        let stray = cache.folder.appendingPathComponent("tmp-half-moved")
        try Data().write(to: stray)
        XCTAssertEqual(cache.entries(), ["a", "b", "c", "d"].map { digest(Character($0)) })

        // the bundle in force uses b and d (say a trunk and a branch); a and c belong to earlier bundles
        let removed = try cache.prune(keeping: [digest("b"), digest("d").uppercased()])
        XCTAssertEqual(removed, [digest("a") + ".mlmodelc", digest("c") + ".mlmodelc", "tmp-half-moved"])
        XCTAssertEqual(cache.entries(), [digest("b"), digest("d")])
        XCTAssertEqual(try cache.prune(keeping: [digest("b"), digest("d")]), [], "nothing left to prune")
    }

    func testPruneOfAFolderNeverCreatedIsANoOp() throws {
        let root = try temporaryFolder()
        let cache = CompiledModelCache(folder: root.appendingPathComponent("never"))
        XCTAssertEqual(try cache.prune(keeping: []), [])
    }

    /// The runner reports the sha256s of the programs in force: what the app keeps when it prunes.
    func testRunnerProgramDigestsAreTheManifestsProgramFiles() throws {
        let runner = try Golden.replayRunner()
        let m = runner.manifest
        let expected = Set(m.programs.compactMap { m.files[$0.file]?.sha256 })
        XCTAssertEqual(runner.programDigests, expected)
    }
}
