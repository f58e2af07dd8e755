import Foundation

/// The bundle is missing, malformed, or does not match its manifest. Every case names the field or
/// the file, and its description is one line that says how to fix it.
public enum BundleError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// The folder has no manifest.json.
    case notABundle(folder: String)
    /// A file that should be JSON (or UTF-8 text) cannot be read as such.
    case unreadable(file: String, reason: String)
    /// `schema_version` is not the one this runtime reads (never guessed at).
    case schemaVersion(found: String)
    /// A manifest field is missing, has the wrong type, or breaks a rule; `path` is like `programs/0/outputs`.
    case field(path: String, problem: String)
    /// A file the manifest lists is not in the bundle folder.
    case missingFile(name: String)
    /// A file's size differs from the manifest's `bytes`.
    case sizeMismatch(name: String, bytes: Int, expected: Int)
    /// A file's sha256 differs from the manifest's.
    case checksumMismatch(name: String)
    /// The tokenizer files hold something this runtime does not implement, or disagree with the manifest.
    case tokenizer(file: String, problem: String)
    /// A program file's embedded metadata or outputs do not match the manifest.
    case program(file: String, problem: String)

    public var description: String {
        switch self {
        case .notABundle(let folder):
            return "\(folder) is not a bundle (no manifest.json); export one with `ctb-mobile export`"
        case .unreadable(let file, let reason):
            return "\(file) cannot be read (\(reason)); export the bundle again"
        case .schemaVersion(let found):
            return "manifest.json: schema_version \(found), this runtime reads \(Manifest.supportedSchemaVersion); "
                + "export the bundle with a matching toolchain"
        case .field(let path, let problem):
            return "manifest.json: field \(path): \(problem); export the bundle again"
        case .missingFile(let name):
            return "\(name) is missing from the bundle folder; copy the whole bundle folder"
        case .sizeMismatch(let name, let bytes, let expected):
            return "\(name) has \(bytes) bytes, the manifest says \(expected) (truncated or replaced); copy the bundle again"
        case .checksumMismatch(let name):
            return "\(name) does not match its sha256 in the manifest (modified); copy or export the bundle again"
        case .tokenizer(let file, let problem):
            return "\(file): \(problem)"
        case .program(let file, let problem):
            return "\(file): \(problem)"
        }
    }

    public var errorDescription: String? { description }
}

/// Bad input to the runner (one line): an unknown task, or a pair given to a single-text task.
public enum InputError: Error, Equatable, CustomStringConvertible, LocalizedError {
    case unknownTask(name: String, known: [String])
    case pairNeeded(task: String)
    case pairGiven(task: String)

    public var description: String {
        switch self {
        case .unknownTask(let name, let known):
            return "unknown task '\(name)'; this bundle has: \(known.joined(separator: ", "))"
        case .pairNeeded(let task):
            return "task '\(task)' takes a text pair; pass a pair (and name only pair tasks)"
        case .pairGiven(let task):
            return "task '\(task)' takes one text, but a pair was given; name only pair tasks"
        }
    }

    public var errorDescription: String? { description }
}
