import Foundation

/// Copies a bundle from the app's resources (read-only) into a folder of the app's own
/// (`<Application Support>/CTBKit/bundles/<manifest sha256>`) once per manifest, and repairs it
/// instead of refusing it forever.
///
/// After a copy is checked (every file's size and sha256 against the manifest) the installer writes
/// a stamp beside it, `<manifest sha256>.stamp.json`, with each file's size and modification time.
/// A later launch compares the folder with the stamp only (a few `stat`s, no hashing of a 90 MB
/// program); on any difference, or no stamp, it checks the sha256s again and copies the bundle
/// again when they fail. Other bundles' folders and stamps (earlier app versions) are removed.
/// What the stamp cannot see: a file changed in place with its size and modification time restored.
public struct BundleInstaller {
    /// What `install` did.
    public enum Action: String, Equatable {
        /// The folder and its stamp agree: nothing hashed, nothing copied.
        case reused
        /// The stamp was missing or differed, the files' sha256s were right: stamp written again.
        case rechecked
        /// Copied from the source (first launch, a new bundle, or a repair of a damaged copy).
        case copied
    }

    public struct Installation: Equatable {
        public let folder: URL
        public let action: Action
    }

    /// One file's size and modification time (seconds since 1970) as the stamp records it.
    struct Stat: Codable, Equatable {
        let bytes: Int
        let mtime: Double
    }

    struct Stamp: Codable, Equatable {
        let manifestSha256: String
        let files: [String: Stat]  // relative path -> stat, every regular file in the folder

        enum CodingKeys: String, CodingKey {
            case files
            case manifestSha256 = "manifest_sha256"
        }
    }

    public let source: URL
    public let root: URL

    /// `source`: the bundle in the app's resources; `root`: where installed bundles live.
    public init(source: URL, root: URL) {
        self.source = source
        self.root = root
    }

    /// `<Application Support>/CTBKit/bundles`.
    public static func applicationSupportRoot() throws -> URL {
        let support = try FileManager.default.url(for: .applicationSupportDirectory, in: .userDomainMask,
                                                  appropriateFor: nil, create: true)
        return support.appendingPathComponent("CTBKit", isDirectory: true).appendingPathComponent("bundles", isDirectory: true)
    }

    /// The installed, checked copy of the source bundle (see the type's description).
    public func install() throws -> Installation {
        let fm = FileManager.default
        let manifestFile = source.appendingPathComponent(Manifest.fileName)
        guard BundleFiles.exists(manifestFile) else {
            throw BundleError.notABundle(folder: source.path)
        }
        let key = try BundleFiles.sha256(of: manifestFile)
        let folder = root.appendingPathComponent(key, isDirectory: true)
        let stampFile = root.appendingPathComponent("\(key).stamp.json")
        try fm.createDirectory(at: root, withIntermediateDirectories: true)
        defer { pruneOthers(keeping: key) }

        if BundleFiles.isDirectory(folder) {
            if let stamp = try? JSONDecoder().decode(Stamp.self, from: Data(contentsOf: stampFile)),
               stamp.manifestSha256 == key, (try? BundleInstaller.stats(folder)) == stamp.files {
                return Installation(folder: folder, action: .reused)
            }
            if (try? Manifest.load(from: folder, checkFiles: true)) != nil,
               try BundleFiles.sha256(of: folder.appendingPathComponent(Manifest.fileName)) == key {
                try writeStamp(folder, key: key, to: stampFile)
                return Installation(folder: folder, action: .rechecked)
            }
        }

        // (re)copy: into a temporary folder, checked, then renamed into place
        try? fm.removeItem(at: stampFile)
        let temporary = root.appendingPathComponent(".installing-\(UUID().uuidString)", isDirectory: true)
        defer { try? fm.removeItem(at: temporary) }
        try fm.copyItem(at: source, to: temporary)
        _ = try Manifest.load(from: temporary, checkFiles: true)  // a bad source: its one-line error, nothing installed
        if fm.fileExists(atPath: folder.path) {
            try fm.removeItem(at: folder)
        }
        try fm.moveItem(at: temporary, to: folder)
        try writeStamp(folder, key: key, to: stampFile)
        return Installation(folder: folder, action: .copied)
    }

    private func writeStamp(_ folder: URL, key: String, to file: URL) throws {
        let stamp = Stamp(manifestSha256: key, files: try BundleInstaller.stats(folder))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try encoder.encode(stamp).write(to: file, options: .atomic)
    }

    /// Size and modification time of every regular file under `folder`, by relative path.
    static func stats(_ folder: URL) throws -> [String: Stat] {
        var out: [String: Stat] = [:]
        for (path, url) in try BundleFiles.folderFiles(folder) {
            let values = try url.resolvingSymlinksInPath().resourceValues(forKeys: [.fileSizeKey, .contentModificationDateKey])
            out[path] = Stat(bytes: values.fileSize ?? -1, mtime: values.contentModificationDate?.timeIntervalSince1970 ?? -1)
        }
        return out
    }

    /// Removes every other installed bundle and stamp under `root` (earlier versions of the app's
    /// bundle), and the temporary copy of an install that was interrupted.
    private func pruneOthers(keeping key: String) {
        let fm = FileManager.default
        let keep: Set<String> = [key, "\(key).stamp.json"]
        for name in (try? fm.contentsOfDirectory(atPath: root.path)) ?? [] where !keep.contains(name) {
            try? fm.removeItem(at: root.appendingPathComponent(name))
        }
    }
}
