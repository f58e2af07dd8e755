import Foundation

/// Where CoreMLBackend keeps compiled models: `<folder>/<sha256>.mlmodelc`, one per program package,
/// keyed by the package's sha256 from the manifest. Foundation only (no CoreML), so that the
/// pruning is tested on every platform.
///
/// A new bundle brings new packages and so new entries; `prune(keeping:)` removes every entry (and
/// anything else in the folder, such as a half-moved model) that the programs in force do not use.
public struct CompiledModelCache {
    public static let suffix = ".mlmodelc"

    public let folder: URL

    public init(folder: URL) {
        self.folder = folder
    }

    /// `<Application Support>/CTBKit/compiled`, created when missing.
    public static func applicationSupport() throws -> CompiledModelCache {
        let support = try FileManager.default.url(for: .applicationSupportDirectory, in: .userDomainMask,
                                                  appropriateFor: nil, create: true)
        let folder = support.appendingPathComponent("CTBKit", isDirectory: true).appendingPathComponent("compiled", isDirectory: true)
        return CompiledModelCache(folder: folder)
    }

    /// The entry for a package with this sha256 (it may not exist yet).
    public func entry(for sha256: String) -> URL {
        folder.appendingPathComponent(sha256.lowercased() + CompiledModelCache.suffix, isDirectory: true)
    }

    public func contains(_ sha256: String) -> Bool {
        BundleFiles.exists(entry(for: sha256))
    }

    /// Moves a freshly compiled model into the cache (a rename: the cache never holds half a model);
    /// when the entry appeared meanwhile, the new copy is removed and the entry kept.
    public func store(_ compiled: URL, sha256: String) throws -> URL {
        let fm = FileManager.default
        try fm.createDirectory(at: folder, withIntermediateDirectories: true)
        let target = entry(for: sha256)
        if fm.fileExists(atPath: target.path) {
            try? fm.removeItem(at: compiled)
        } else {
            try fm.moveItem(at: compiled, to: target)
        }
        return target
    }

    /// The sha256s of the entries in the folder, sorted.
    public func entries() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        return names.filter { $0.hasSuffix(CompiledModelCache.suffix) }
            .map { String($0.dropLast(CompiledModelCache.suffix.count)) }
            .sorted()
    }

    /// Removes everything in the folder except the entries of `digests` (the programs in force,
    /// `MultiTaskRunner.programDigests`); returns the names removed, sorted.
    @discardableResult
    public func prune(keeping digests: Set<String>) throws -> [String] {
        let fm = FileManager.default
        guard fm.fileExists(atPath: folder.path) else { return [] }
        let keep = Set(digests.map { $0.lowercased() + CompiledModelCache.suffix })
        var removed: [String] = []
        for name in try fm.contentsOfDirectory(atPath: folder.path).sorted() where !keep.contains(name) {
            try fm.removeItem(at: folder.appendingPathComponent(name))
            removed.append(name)
        }
        return removed
    }
}
