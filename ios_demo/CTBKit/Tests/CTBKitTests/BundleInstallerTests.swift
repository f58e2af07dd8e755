import Foundation
import XCTest
@testable import CTBKit

/// BundleInstaller on copies of the real bundle (CTB_BUNDLE) in temporary folders: one copy per
/// manifest, a stamp so that launches hash nothing, a damaged copy repaired rather than refused at
/// every launch, earlier bundles removed, a broken source refused with nothing installed.
final class BundleInstallerTests: XCTestCase {
    private func temporaryRoot() throws -> URL {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("ctb-install-" + UUID().uuidString, isDirectory: true)
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        addTeardownBlock {
            try? FileManager.default.removeItem(at: root)
        }
        return root.appendingPathComponent("bundles", isDirectory: true)
    }

    private func listing(_ root: URL) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []).sorted()
    }

    /// Same size, other bytes: a digit 0 of the tokenizer tables becomes 1.
    private func damage(_ folder: URL) throws -> String {
        let tables = try Golden.manifest().tokenizer.tables
        let url = folder.appendingPathComponent(tables)
        var bytes = [UInt8](try Data(contentsOf: url))
        guard let i = bytes.lastIndex(of: 0x30) else {
            XCTFail("\(tables) has no digit 0 to change")
            return tables
        }
        bytes[i] = 0x31
        try Data(bytes).write(to: url)
        return tables
    }

    func testFirstLaunchCopiesAndStampsLaterLaunchesHashNothing() throws {
        let root = try temporaryRoot()
        let installer = BundleInstaller(source: try Golden.bundle(), root: root)
        let first = try installer.install()
        XCTAssertEqual(first.action, .copied)
        let key = first.folder.lastPathComponent
        XCTAssertEqual(key, try BundleFiles.sha256(of: try Golden.bundle().appendingPathComponent(Manifest.fileName)))
        XCTAssertEqual(listing(root), [key, "\(key).stamp.json"])
        XCTAssertNoThrow(try Manifest.load(from: first.folder, checkFiles: true))
        XCTAssertEqual(try installer.install(), BundleInstaller.Installation(folder: first.folder, action: .reused))
    }

    func testADamagedCopyIsRepairedNotRefusedForever() throws {
        let root = try temporaryRoot()
        let installer = BundleInstaller(source: try Golden.bundle(), root: root)
        let folder = try installer.install().folder
        let name = try damage(folder)
        XCTAssertThrowsError(try Manifest.load(from: folder, checkFiles: true)) { error in
            XCTAssertEqual(error as? BundleError, .checksumMismatch(name: name))
        }
        XCTAssertEqual(try installer.install().action, .copied, "the stamp sees the change, the sha256 check fails, it copies again")
        XCTAssertNoThrow(try Manifest.load(from: folder, checkFiles: true))
        XCTAssertEqual(try installer.install().action, .reused)
    }

    func testATouchedButIntactCopyIsRecheckedNotCopied() throws {
        let root = try temporaryRoot()
        let installer = BundleInstaller(source: try Golden.bundle(), root: root)
        let folder = try installer.install().folder
        let vocab = folder.appendingPathComponent(try Golden.manifest().tokenizer.vocab)
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSince1970: 1_000_000)], ofItemAtPath: vocab.path)
        XCTAssertEqual(try installer.install().action, .rechecked)
        XCTAssertEqual(try installer.install().action, .reused)

        try FileManager.default.removeItem(at: root.appendingPathComponent("\(folder.lastPathComponent).stamp.json"))
        XCTAssertEqual(try installer.install().action, .rechecked, "a lost stamp: hashed again, not copied")
    }

    func testANewBundleReplacesTheOldOne() throws {
        let root = try temporaryRoot()
        let old = try BundleInstaller(source: try Golden.bundle(), root: root).install().folder
        let source = try Golden.copyOfBundle(self)
        let manifestURL = source.appendingPathComponent(Manifest.fileName)
        var object = try JSONSerialization.jsonObject(with: Data(contentsOf: manifestURL)) as? [String: Any] ?? [:]
        object["created"] = "2099-01-01T00:00:00Z"  // another manifest: another install key
        try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]).write(to: manifestURL)

        let new = try BundleInstaller(source: source, root: root).install()
        XCTAssertEqual(new.action, .copied)
        XCTAssertNotEqual(new.folder, old)
        XCTAssertEqual(listing(root), [new.folder.lastPathComponent, "\(new.folder.lastPathComponent).stamp.json"],
                       "the earlier bundle and its stamp are removed")
    }

    func testABrokenSourceIsRefusedAndNothingIsInstalled() throws {
        let root = try temporaryRoot()
        let source = try Golden.copyOfBundle(self)
        let name = try damage(source)
        XCTAssertThrowsError(try BundleInstaller(source: source, root: root).install()) { error in
            XCTAssertEqual(error as? BundleError, .checksumMismatch(name: name))
            XCTAssertFalse("\(error)".contains("\n"), "one line: \(error)")
        }
        XCTAssertEqual(listing(root), [], "no folder, no stamp, no temporary copy left")
    }
}
