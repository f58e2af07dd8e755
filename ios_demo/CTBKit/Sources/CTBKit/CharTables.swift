import Foundation

/// Inclusive code point ranges, sorted, looked up by binary search.
struct RangeSet {
    private let lows: [UInt32]
    private let highs: [UInt32]

    init(_ ranges: [[UInt32]]) {
        let sorted = ranges.sorted { $0[0] < $1[0] }
        lows = sorted.map { $0[0] }
        highs = sorted.map { $0[1] }
    }

    func contains(_ cp: UInt32) -> Bool {
        var lo = 0
        var hi = lows.count - 1
        while lo <= hi {
            let mid = (lo + hi) / 2
            if cp < lows[mid] {
                hi = mid - 1
            } else if cp > highs[mid] {
                lo = mid + 1
            } else {
                return true
            }
        }
        return false
    }
}

/// The tokenizer's character classes from `tokenizer_tables.json`, read off Hugging Face
/// `tokenizers` by probing every code point. Nothing here asks the platform what a character is:
/// no Foundation character sets, no Unicode normalisation, no String comparison.
public struct CharTables {
    static let schemaVersion = 1
    private static let space: UInt32 = 0x20

    private let remove: RangeSet
    private let spaces: RangeSet
    private let pad: RangeSet
    private let map: [UInt32: [UInt32]]
    private let whitespace: RangeSet
    private let punctuation: RangeSet

    /// The tokenizers version the tables were read off (informational).
    public let tokenizersVersion: String?

    private struct File: Decodable {
        let schemaVersion: Int
        let tokenizersVersion: String?
        let remove: [[UInt32]]
        let space: [[UInt32]]
        let pad: [[UInt32]]
        let map: [String: [UInt32]]
        let whitespace: [[UInt32]]
        let punctuation: [[UInt32]]

        enum CodingKeys: String, CodingKey {
            case remove, space, pad, map, whitespace, punctuation
            case schemaVersion = "schema_version"
            case tokenizersVersion = "tokenizers_version"
        }
    }

    /// Reads the tables; `name` is the file name used in errors.
    init(data: Data, name: String) throws {
        let f: File
        do {
            f = try JSONDecoder().decode(File.self, from: data)
        } catch {
            let (path, problem) = decodingProblem(error)
            throw BundleError.tokenizer(file: name, problem: path.isEmpty ? problem : "field \(path) \(problem); export the bundle again")
        }
        guard f.schemaVersion == CharTables.schemaVersion else {
            throw BundleError.tokenizer(file: name, problem: "schema_version \(f.schemaVersion), this runtime reads \(CharTables.schemaVersion); export the bundle again")
        }
        let lists = [("remove", f.remove), ("space", f.space), ("pad", f.pad), ("whitespace", f.whitespace), ("punctuation", f.punctuation)]
        for (key, ranges) in lists {
            for (i, r) in ranges.enumerated() where r.count != 2 || r[0] > r[1] || r[1] > 0x10FFFF {
                throw BundleError.tokenizer(file: name, problem: "\(key)/\(i) is not a range [first, last] of code points")
            }
        }
        var map: [UInt32: [UInt32]] = [:]
        for (key, value) in f.map {
            guard let cp = UInt32(key), cp <= 0x10FFFF else {
                throw BundleError.tokenizer(file: name, problem: "map key '\(key)' is not a code point")
            }
            map[cp] = value
        }
        remove = RangeSet(f.remove)
        spaces = RangeSet(f.space)
        pad = RangeSet(f.pad)
        self.map = map
        whitespace = RangeSet(f.whitespace)
        punctuation = RangeSet(f.punctuation)
        tokenizersVersion = f.tokenizersVersion
    }

    /// What the normaliser makes of one code point, appended to `out` (nothing when it is deleted).
    /// A code point in none of the tables stays as it is.
    func normalize(_ cp: UInt32, into out: inout [UInt32]) {
        if remove.contains(cp) {
            return
        }
        if spaces.contains(cp) {
            out.append(CharTables.space)
        } else if pad.contains(cp) {
            out.append(CharTables.space)
            out.append(cp)
            out.append(CharTables.space)
        } else if let mapped = map[cp] {
            out.append(contentsOf: mapped)
        } else {
            out.append(cp)
        }
    }

    /// The pre-tokenizer splits at these (and drops them).
    public func isWhitespace(_ cp: UInt32) -> Bool {
        whitespace.contains(cp)
    }

    /// The pre-tokenizer isolates these as one-code-point words.
    public func isPunctuation(_ cp: UInt32) -> Bool {
        punctuation.contains(cp)
    }

    /// Separates words in the original text (CONTRACT.md, "Words and spans"): a code point the
    /// normaliser turns into a space, or the pre-tokenizer's whitespace that the normaliser keeps.
    public func isWordBreak(_ cp: UInt32) -> Bool {
        spaces.contains(cp) || (whitespace.contains(cp) && !remove.contains(cp))
    }
}
