import Foundation

/// One encoded input, as Hugging Face `tokenizers` gives it. Offsets are `[start, end)` in Unicode
/// code points of the text each token came from (`0..<0` for the template's special tokens).
/// `sequenceIds`: 0 first text, 1 second text, nil template token. `wordIds`: the contract's words
/// (tokens of the first text grouped at whitespace in the original text), nil elsewhere.
public struct Encoding: Equatable {
    public let ids: [Int]
    public let typeIds: [Int]
    public let offsets: [Range<Int>]
    public let sequenceIds: [Int?]
    public let wordIds: [Int?]

    public var count: Int { ids.count }

    /// 1 for every token (the runner feeds one input at a time, unpadded).
    public var attentionMask: [Int] { [Int](repeating: 1, count: ids.count) }
}

/// The code points of a string: what every offset counts.
public func codePoints(_ text: String) -> [UInt32] {
    text.unicodeScalars.map { $0.value }
}

/// The text of code points `range` of `scalars`.
public func codePointText(_ scalars: [UInt32], _ range: Range<Int>) -> String {
    var view = String.UnicodeScalarView()
    for cp in scalars[range] {
        if let s = Unicode.Scalar(cp) {
            view.append(s)
        }
    }
    return String(view)
}

/// BERT WordPiece exactly as Hugging Face `tokenizers` runs the bundle's `tokenizer.json`: added
/// tokens matched in the raw text (leftmost-longest), the normaliser and pre-tokenizer from
/// `tokenizer_tables.json` one code point at a time, greedy longest-match WordPiece (a word over
/// `max_input_chars_per_word` code points, or with no match, is one [UNK]), longest-first
/// truncation (tokenizers' utils/truncation.rs), then the post-processor's template.
///
/// The vocabulary is read from `vocab.txt` as code points (id = line number, trailing whitespace
/// trimmed as `tokenizers` reads it), because Swift String keys compare by Unicode canonical
/// equivalence and would merge vocabulary entries that `tokenizers` keeps apart.
public final class WordPieceTokenizer {
    struct AddedToken {
        let content: [UInt32]
        let id: Int
    }

    /// A template item: a special token's ids (`sequence` -1) or a sequence (A = 0, B = 1), with its type id.
    struct TemplateItem {
        let sequence: Int
        let specialIds: [Int]
        let typeId: Int
    }

    /// Token ids with their code point offsets, before the template.
    private struct Pieces {
        var ids: [Int] = []
        var starts: [Int] = []
        var ends: [Int] = []

        var count: Int { ids.count }

        mutating func add(_ id: Int, _ start: Int, _ end: Int) {
            ids.append(id)
            starts.append(start)
            ends.append(end)
        }

        mutating func truncate(_ n: Int) {
            guard n < ids.count else { return }
            let drop = ids.count - n
            ids.removeLast(drop)
            starts.removeLast(drop)
            ends.removeLast(drop)
        }
    }

    public let tables: CharTables
    /// The truncation max_length of `tokenizer.json`: the longest encoding, special tokens included.
    public let maxLength: Int
    private let vocab: [[UInt32]: Int]
    private let added: [UInt32: [AddedToken]]
    private let unkId: Int
    private let prefix: [UInt32]
    private let maxCharsPerWord: Int
    private let maxPieceLength: Int
    private let single: [TemplateItem]
    private let pair: [TemplateItem]

    /// Reads the tokenizer files the manifest names in `folder`.
    public convenience init(folder: URL, spec: TokenizerSpec) throws {
        try self.init(
            tokenizerJSON: WordPieceTokenizer.read(folder, spec.file),
            tablesJSON: WordPieceTokenizer.read(folder, spec.tables),
            vocabTxt: WordPieceTokenizer.read(folder, spec.vocab),
            names: (spec.file, spec.tables, spec.vocab)
        )
    }

    /// From the bytes of `tokenizer.json`, `tokenizer_tables.json` and `vocab.txt`; `names` are used in errors.
    public init(tokenizerJSON: Data, tablesJSON: Data, vocabTxt: Data,
                names: (String, String, String) = ("tokenizer.json", "tokenizer_tables.json", "vocab.txt")) throws {
        let name = names.0
        let file: TokenizerFile
        do {
            file = try JSONDecoder().decode(TokenizerFile.self, from: tokenizerJSON)
        } catch {
            let (path, problem) = decodingProblem(error)
            throw BundleError.tokenizer(file: name, problem: path.isEmpty ? problem : "field \(path) \(problem)")
        }
        let kinds: [(String, String?, String)] = [("normalizer", file.normalizer?.type, "BertNormalizer"),
                                                  ("pre_tokenizer", file.preTokenizer?.type, "BertPreTokenizer"),
                                                  ("model", file.model.type, "WordPiece")]
        for (key, type, want) in kinds where type != want {
            throw BundleError.tokenizer(file: name, problem: "\(key) is \(type ?? "null"); this runtime implements \(want) only")
        }
        if file.padding != nil {
            throw BundleError.tokenizer(file: name, problem: "padding is set; a bundle's tokenizer pads nothing")
        }
        guard let truncation = file.truncation else {
            throw BundleError.tokenizer(file: name, problem: "truncation is not set; a bundle's tokenizer truncates at max_seq_len")
        }
        guard truncation.strategy == "LongestFirst", (truncation.direction ?? "Right") == "Right", (truncation.stride ?? 0) == 0 else {
            throw BundleError.tokenizer(file: name, problem: "truncation must be LongestFirst, Right, stride 0 (the contract's)")
        }
        let tables = try CharTables(data: tablesJSON, name: names.1)
        let vocab = try WordPieceTokenizer.readVocab(vocabTxt, tables: tables, name: names.2)
        var added: [UInt32: [AddedToken]] = [:]
        for (i, t) in file.addedTokens.enumerated() {
            let flags = [("single_word", t.singleWord), ("lstrip", t.lstrip), ("rstrip", t.rstrip), ("normalized", t.normalized)]
            for (flag, value) in flags where value == true {
                throw BundleError.tokenizer(file: name, problem: "added_tokens/\(i) '\(t.content)' has \(flag); this runtime matches raw tokens only")
            }
            let content = codePoints(t.content)
            guard let first = content.first else {
                throw BundleError.tokenizer(file: name, problem: "added_tokens/\(i) is empty")
            }
            added[first, default: []].append(AddedToken(content: content, id: t.id))
        }
        added = added.mapValues { list in list.sorted { $0.content.count > $1.content.count } }  // longest first
        guard let unk = vocab[codePoints(file.model.unkToken)] else {
            throw BundleError.tokenizer(file: name, problem: "unk_token '\(file.model.unkToken)' is not in \(names.2)")
        }
        let (single, pair) = try WordPieceTokenizer.templates(file.postProcessor, name: name)

        self.tables = tables
        self.maxLength = truncation.maxLength
        self.vocab = vocab
        self.added = added
        self.unkId = unk
        self.prefix = codePoints(file.model.continuingSubwordPrefix ?? "##")
        self.maxCharsPerWord = file.model.maxInputCharsPerWord ?? 100
        self.maxPieceLength = vocab.keys.map { $0.count }.max() ?? 0
        self.single = single
        self.pair = pair
    }

    // MARK: - Encoding

    /// The encoding of `text` (and `pair`), truncated to `maxLength` tokens in all (default: the
    /// tokenizer's own), as `tokenizers` gives it.
    public func encode(_ text: String, pair: String? = nil, maxLength: Int? = nil) -> Encoding {
        encode(codePoints: codePoints(text), pair: pair.map { codePoints($0) }, maxLength: maxLength ?? self.maxLength)
    }

    public func encode(codePoints a: [UInt32], pair b: [UInt32]?, maxLength: Int) -> Encoding {
        let template = b == nil ? single : pair
        let specials = template.reduce(0) { $0 + $1.specialIds.count }
        var first = pieces(a)
        var second: Pieces? = nil
        if let b = b {
            second = pieces(b)
        }
        truncate(&first, &second, limit: Swift.max(0, maxLength - specials))
        return assemble(template, first, second, a)
    }

    /// `tokenizers`' longest-first truncation to `limit` tokens in all: a single sequence keeps its
    /// first `limit`; for a pair, if the shorter one fits in half, the longer one takes the rest,
    /// else both get half (the longer one the odd token, the second one when they are as long).
    private func truncate(_ a: inout Pieces, _ b: inout Pieces?, limit: Int) {
        let total = a.count + (b?.count ?? 0)
        guard total > limit else { return }
        guard var other = b else {
            a.truncate(limit)
            return
        }
        let swap = a.count > other.count
        var short = Swift.min(a.count, other.count)
        var long = short > limit ? short : Swift.max(short, limit - short)
        if short + long > limit {
            short = limit / 2
            long = short + limit % 2
        }
        a.truncate(swap ? long : short)
        other.truncate(swap ? short : long)
        b = other
    }

    private func assemble(_ template: [TemplateItem], _ a: Pieces, _ b: Pieces?, _ firstText: [UInt32]) -> Encoding {
        var ids: [Int] = []
        var types: [Int] = []
        var offsets: [Range<Int>] = []
        var seqs: [Int?] = []
        var words: [Int?] = []
        for item in template {
            if item.sequence < 0 {
                for id in item.specialIds {
                    ids.append(id)
                    types.append(item.typeId)
                    offsets.append(0..<0)
                    seqs.append(nil)
                    words.append(nil)
                }
                continue
            }
            let chosen: Pieces? = item.sequence == 0 ? a : b
            guard let p = chosen else { continue }
            var word = -1
            for i in 0..<p.count {
                ids.append(p.ids[i])
                types.append(item.typeId)
                offsets.append(p.starts[i]..<p.ends[i])
                seqs.append(item.sequence)
                if item.sequence == 0 {
                    if i == 0 || hasWordBreak(firstText, from: p.ends[i - 1], to: p.starts[i]) {
                        word += 1
                    }
                    words.append(word)
                } else {
                    words.append(nil)
                }
            }
        }
        return Encoding(ids: ids, typeIds: types, offsets: offsets, sequenceIds: seqs, wordIds: words)
    }

    private func hasWordBreak(_ text: [UInt32], from: Int, to: Int) -> Bool {
        guard from < to else { return false }
        for i in from..<to where tables.isWordBreak(text[i]) {
            return true
        }
        return false
    }

    /// Added tokens first (in the raw text, leftmost-longest); every other stretch normalised and split.
    private func pieces(_ text: [UInt32]) -> Pieces {
        var out = Pieces()
        var stretch = 0
        var i = 0
        while i < text.count {
            guard let token = addedToken(in: text, at: i) else {
                i += 1
                continue
            }
            addStretch(text, from: stretch, to: i, into: &out)
            out.add(token.id, i, i + token.content.count)
            i += token.content.count
            stretch = i
        }
        addStretch(text, from: stretch, to: text.count, into: &out)
        return out
    }

    private func addedToken(in text: [UInt32], at start: Int) -> AddedToken? {
        guard let candidates = added[text[start]] else { return nil }
        for token in candidates where start + token.content.count <= text.count {
            if Array(text[start..<(start + token.content.count)]) == token.content {
                return token
            }
        }
        return nil
    }

    /// Normalises text[from..<to] one code point at a time (keeping each result's original index),
    /// splits it at whitespace, isolates punctuation, and runs WordPiece on each word.
    private func addStretch(_ text: [UInt32], from: Int, to: Int, into out: inout Pieces) {
        guard from < to else { return }
        var norm: [UInt32] = []
        var orig: [Int] = []
        norm.reserveCapacity(to - from)
        orig.reserveCapacity(to - from)
        for i in from..<to {
            let before = norm.count
            tables.normalize(text[i], into: &norm)
            for _ in before..<norm.count {
                orig.append(i)
            }
        }
        var wordStart = -1
        for j in 0..<norm.count {
            let cp = norm[j]
            if tables.isWhitespace(cp) {
                if wordStart >= 0 {
                    wordPiece(norm, orig, wordStart, j, &out)
                }
                wordStart = -1
            } else if tables.isPunctuation(cp) {
                if wordStart >= 0 {
                    wordPiece(norm, orig, wordStart, j, &out)
                }
                wordPiece(norm, orig, j, j + 1, &out)
                wordStart = -1
            } else if wordStart < 0 {
                wordStart = j
            }
        }
        if wordStart >= 0 {
            wordPiece(norm, orig, wordStart, norm.count, &out)
        }
    }

    /// Greedy longest match over norm[from..<to]; a word too long, or with no match, is one [UNK]
    /// covering the whole word.
    private func wordPiece(_ norm: [UInt32], _ orig: [Int], _ from: Int, _ to: Int, _ out: inout Pieces) {
        if to - from > maxCharsPerWord {
            out.add(unkId, orig[from], orig[to - 1] + 1)
            return
        }
        let mark = out.count
        var start = from
        while start < to {
            var end = Swift.min(to, start + maxPieceLength)
            var found: Int? = nil
            while end > start {
                var key: [UInt32] = start > from ? prefix : []
                key.append(contentsOf: norm[start..<end])
                if let id = vocab[key] {
                    found = id
                    break
                }
                end -= 1
            }
            guard let id = found else {
                out.truncate(mark)
                out.add(unkId, orig[from], orig[to - 1] + 1)
                return
            }
            out.add(id, orig[start], orig[end - 1] + 1)
            start = end
        }
    }

    // MARK: - Reading the files

    private static func read(_ folder: URL, _ name: String) throws -> Data {
        let url = folder.appendingPathComponent(name)
        guard BundleFiles.exists(url) else {
            throw BundleError.missingFile(name: name)
        }
        do {
            return try Data(contentsOf: url)
        } catch {
            throw BundleError.unreadable(file: name, reason: error.localizedDescription)
        }
    }

    /// `vocab.txt` as `tokenizers` reads it: id = line number, trailing whitespace trimmed, a
    /// repeated token keeps its last id.
    static func readVocab(_ data: Data, tables: CharTables, name: String) throws -> [[UInt32]: Int] {
        var vocab: [[UInt32]: Int] = [:]
        let bytes = [UInt8](data)
        var lineStart = 0
        var id = 0
        var i = 0
        while i <= bytes.count {
            if i == bytes.count && lineStart == bytes.count {
                break  // the file ends with a newline (or is empty)
            }
            if i == bytes.count || bytes[i] == 0x0A {
                guard let line = String(bytes: bytes[lineStart..<i], encoding: .utf8) else {
                    throw BundleError.tokenizer(file: name, problem: "line \(id + 1) is not valid UTF-8")
                }
                var token = codePoints(line)
                while let last = token.last, tables.isWhitespace(last) {
                    token.removeLast()
                }
                vocab[token] = id
                id += 1
                lineStart = i + 1
            }
            i += 1
        }
        guard !vocab.isEmpty else {
            throw BundleError.tokenizer(file: name, problem: "the vocabulary is empty")
        }
        return vocab
    }

    /// The post-processor's single and pair templates. One rule for the exporter and both apps:
    /// TemplateProcessing only (the exporter writes it; BertProcessing and anything else is refused).
    static func templates(_ pp: TokenizerFile.PostProcessor?, name: String) throws -> ([TemplateItem], [TemplateItem]) {
        guard let pp = pp else {
            throw BundleError.tokenizer(file: name, problem: "post_processor is null; a bundle's tokenizer adds [CLS] and [SEP]")
        }
        guard pp.type == "TemplateProcessing" else {
            throw BundleError.tokenizer(file: name, problem: "post_processor/type is \(pp.type); this runtime implements "
                + "TemplateProcessing only; export the bundle again with the current toolchain")
        }
        let specials = pp.specialTokens ?? [:]
        func items(_ pieces: [TokenizerFile.Piece]?, _ key: String) throws -> [TemplateItem] {
            var out: [TemplateItem] = []
            for (i, piece) in (pieces ?? []).enumerated() {
                if let s = piece.specialToken {
                    guard let entry = specials[s.id] else {
                        throw BundleError.tokenizer(file: name, problem: "post_processor/\(key)/\(i) names '\(s.id)', which is not in special_tokens")
                    }
                    out.append(TemplateItem(sequence: -1, specialIds: entry.ids, typeId: s.typeId))
                } else if let s = piece.sequence, s.id == "A" || s.id == "B" {
                    out.append(TemplateItem(sequence: s.id == "A" ? 0 : 1, specialIds: [], typeId: s.typeId))
                } else {
                    throw BundleError.tokenizer(file: name, problem: "post_processor/\(key)/\(i) is not a SpecialToken or Sequence A/B")
                }
            }
            return out
        }
        let single = try items(pp.single, "single")
        let pair = try items(pp.pair, "pair")
        guard single.filter({ $0.sequence >= 0 }).map({ $0.sequence }) == [0] else {
            throw BundleError.tokenizer(file: name, problem: "post_processor/single must hold sequence A once")
        }
        guard pair.filter({ $0.sequence >= 0 }).map({ $0.sequence }) == [0, 1] else {
            throw BundleError.tokenizer(file: name, problem: "post_processor/pair must hold sequence A, then B")
        }
        return (single, pair)
    }
}

/// The parts of `tokenizer.json` this runtime reads (the vocabulary comes from vocab.txt).
struct TokenizerFile: Decodable {
    struct Typed: Decodable {
        let type: String
    }

    /// Any JSON object: only whether the field is set matters.
    struct Present: Decodable {}

    struct Model: Decodable {
        let type: String
        let unkToken: String
        let continuingSubwordPrefix: String?
        let maxInputCharsPerWord: Int?

        enum CodingKeys: String, CodingKey {
            case type
            case unkToken = "unk_token"
            case continuingSubwordPrefix = "continuing_subword_prefix"
            case maxInputCharsPerWord = "max_input_chars_per_word"
        }
    }

    struct AddedToken: Decodable {
        let id: Int
        let content: String
        let singleWord: Bool?
        let lstrip: Bool?
        let rstrip: Bool?
        let normalized: Bool?

        enum CodingKeys: String, CodingKey {
            case id, content, lstrip, rstrip, normalized
            case singleWord = "single_word"
        }
    }

    struct Truncation: Decodable {
        let direction: String?
        let maxLength: Int
        let strategy: String
        let stride: Int?

        enum CodingKeys: String, CodingKey {
            case direction, strategy, stride
            case maxLength = "max_length"
        }
    }

    struct Ref: Decodable {
        let id: String
        let typeId: Int

        enum CodingKeys: String, CodingKey {
            case id
            case typeId = "type_id"
        }
    }

    struct Piece: Decodable {
        let specialToken: Ref?
        let sequence: Ref?

        enum CodingKeys: String, CodingKey {
            case specialToken = "SpecialToken"
            case sequence = "Sequence"
        }
    }

    struct SpecialEntry: Decodable {
        let ids: [Int]
    }

    struct PostProcessor: Decodable {
        let type: String
        let single: [Piece]?
        let pair: [Piece]?
        let specialTokens: [String: SpecialEntry]?

        enum CodingKeys: String, CodingKey {
            case type, single, pair
            case specialTokens = "special_tokens"
        }
    }

    let addedTokens: [AddedToken]
    let normalizer: Typed?
    let preTokenizer: Typed?
    let model: Model
    let postProcessor: PostProcessor?
    let truncation: Truncation?
    let padding: Present?

    enum CodingKeys: String, CodingKey {
        case normalizer, model, truncation, padding
        case addedTokens = "added_tokens"
        case preTokenizer = "pre_tokenizer"
        case postProcessor = "post_processor"
    }
}
