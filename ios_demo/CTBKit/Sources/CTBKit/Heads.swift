import Foundation

/// A labelled span: `[start, end)` in code points of the original text; `text` = those code points.
public struct Span: Equatable, Codable, Sendable {
    public let label: String
    public let start: Int
    public let end: Int
    public let text: String

    public init(label: String, start: Int, end: Int, text: String) {
        self.label = label
        self.start = start
        self.end = end
        self.text = text
    }
}

/// One task's decoded result.
public enum TaskResult: Equatable, Sendable {
    /// `label` = labels[argmax], `score` = softmax in float64 at argmax.
    case classification(label: String, score: Double)
    /// The output's single number.
    case regression(value: Double)
    /// BIO spans over the first text's words.
    case tagging(spans: [Span])
}

/// Task heads: one task's raw output for one input -> label and score, value, or spans (CONTRACT.md,
/// "Words and spans").
public enum Heads {
    /// `output` is one input's row, batch dim removed, row-major: `labels` logits (classification),
    /// one value (regression), or `tokens x labels` logits (tagging).
    public static func decode(_ task: TaskSpec, output: [Float], encoding: Encoding, text: [UInt32]) -> TaskResult {
        switch task.type {
        case .classification:
            return classify(task.labels, output)
        case .regression:
            return .regression(value: Double(output.first ?? Float.nan))
        case .tagging:
            return .tagging(spans: tag(task.labels, output, encoding: encoding, text: text))
        }
    }

    /// label = labels[first argmax], score = softmax in float64 at argmax.
    public static func classify(_ labels: [String], _ logits: [Float]) -> TaskResult {
        let best = argmax(logits, from: 0, count: logits.count)
        let top = Double(logits[best])
        var sum = 0.0
        for v in logits {
            sum += exp(Double(v) - top)
        }
        return .classification(label: labels[best], score: 1.0 / sum)
    }

    /// Index (from `from`) of the first largest of values[from..<from + count].
    public static func argmax(_ values: [Float], from: Int, count: Int) -> Int {
        var best = 0
        for i in 1..<Swift.max(count, 1) where values[from + i] > values[from + best] {
            best = i
        }
        return best
    }

    /// Tagging: each word (Encoding.wordIds) takes its first token's argmax label and covers
    /// [its tokens' first start, their last end); then BIO over the words.
    public static func tag(_ labels: [String], _ logits: [Float], encoding: Encoding, text: [UInt32]) -> [Span] {
        let n = labels.count
        var tags: [String] = []
        var extents: [Range<Int>] = []
        for k in 0..<encoding.count {
            guard let w = encoding.wordIds[k], (k + 1) * n <= logits.count else { continue }
            let r = encoding.offsets[k]
            if w == tags.count {
                tags.append(labels[argmax(logits, from: k * n, count: n)])
                extents.append(r)
            } else if w < extents.count {
                let e = extents[w]
                extents[w] = Swift.min(e.lowerBound, r.lowerBound)..<Swift.max(e.upperBound, r.upperBound)
            }
        }
        return spans(tags: tags, extents: extents, text: text)
    }

    /// BIO tags, one per word, with each word's code point range -> spans, as seqeval's
    /// get_entities: `B-X` starts a span, `I-X` continues a span of type X or else starts one,
    /// anything else (`O`, a bare `B-`) ends it.
    public static func spans(tags: [String], extents: [Range<Int>], text: [UInt32]) -> [Span] {
        var out: [Span] = []
        var label: String? = nil
        var start = 0
        var end = 0
        func close() {
            if let l = label {
                out.append(Span(label: l, start: start, end: end, text: codePointText(text, start..<end)))
            }
            label = nil
        }
        for (w, tag) in tags.enumerated() {
            guard let kind = bioKind(tag) else {
                close()
                continue
            }
            if kind.begin || label.map({ !sameScalars($0, kind.type) }) ?? true {
                close()
                label = kind.type
                start = extents[w].lowerBound
                end = extents[w].upperBound
            } else {
                end = extents[w].upperBound
            }
        }
        close()
        return out
    }

    /// `B-X` -> (true, X), `I-X` -> (false, X), anything else (`O`, `B-`) -> nil; compared as code points.
    static func bioKind(_ tag: String) -> (begin: Bool, type: String)? {
        let s = Array(tag.unicodeScalars)
        guard s.count > 2, s[1] == "-", s[0] == "B" || s[0] == "I" else {
            return nil
        }
        var rest = String.UnicodeScalarView()
        rest.append(contentsOf: s[2...])
        return (begin: s[0] == "B", type: String(rest))
    }

    private static func sameScalars(_ a: String, _ b: String) -> Bool {
        Array(a.unicodeScalars) == Array(b.unicodeScalars)
    }
}
