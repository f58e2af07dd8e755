import Foundation
import XCTest
@testable import CTBKit

/// Span decoding against the known-answer cases of golden_spans.json, and the heads' own rules.
final class HeadsTests: XCTestCase {
    private func spec(_ type: TaskType, _ labels: [String]) -> TaskSpec {
        TaskSpec(name: "t", type: type, program: "model", output: "t", labels: labels, attach: 1, layers: 1,
                 pair: false, precision: "fp32", metric: nil, devMetric: nil)
    }

    /// Each case: tokenize with its max_seq_len, one-hot logits from `label_ids`, decode, compare.
    func testKnownAnswerSpans() throws {
        let tokenizer = try Golden.tokenizer()
        let golden = try Golden.report(SpanGoldenFile.self, "golden_spans.json")
        XCTAssertFalse(golden.cases.isEmpty, "golden_spans.json has no cases")
        let task = spec(.tagging, golden.labels)
        let n = golden.labels.count
        for c in golden.cases {
            let e = tokenizer.encode(c.text, maxLength: c.maxSeqLen)
            XCTAssertEqual(e.ids, c.ids, "\(c.name): token ids")
            XCTAssertEqual(e.offsets.map { [$0.lowerBound, $0.upperBound] }, c.offsets, "\(c.name): offsets")
            XCTAssertEqual(c.labelIds.count, e.count, "\(c.name): one label id per token")
            var logits = [Float](repeating: 0, count: e.count * n)
            for (k, label) in c.labelIds.enumerated() where k < e.count {
                logits[k * n + label] = 1
            }
            let got = Heads.decode(task, output: logits, encoding: e, text: codePoints(c.text))
            XCTAssertEqual(got, .tagging(spans: c.spans), "\(c.name)")
        }
    }

    func testRegressionIsTheSingleNumber() {
        let e = Encoding(ids: [], typeIds: [], offsets: [], sequenceIds: [], wordIds: [])
        XCTAssertEqual(Heads.decode(spec(.regression, []), output: [3.25], encoding: e, text: []), .regression(value: 3.25))
    }

    func testClassificationTakesTheFirstArgmaxAndSoftmaxInFloat64() {
        let r = Heads.classify(["a", "b", "c"], [1, 3, 3])
        guard case .classification(let label, let score) = r else {
            return XCTFail("not a classification: \(r)")
        }
        XCTAssertEqual(label, "b")
        XCTAssertEqual(score, 1.0 / (exp(-2.0) + 2.0), accuracy: 1e-15)
    }

    func testBIOOverWordsAsSeqevalGetEntities() {
        let text = codePoints("a b c d e f")
        let tags = ["I-x", "I-x", "B-x", "I-y", "O", "B-"]
        let extents = [0, 2, 4, 6, 8, 10].map { $0..<($0 + 1) }
        let spans = Heads.spans(tags: tags, extents: extents, text: text)
        XCTAssertEqual(spans, [Span(label: "x", start: 0, end: 3, text: "a b"), Span(label: "x", start: 4, end: 5, text: "c"),
                               Span(label: "y", start: 6, end: 7, text: "d")])
    }

    func testSpanOffsetsAreCodePoints() throws {
        let tokenizer = try Golden.tokenizer()
        let text = "🎉 café Zürich"  // the emoji is one code point and two UTF-16 units
        let e = tokenizer.encode(text)
        let labels = ["O", "B-LOC", "I-LOC"]
        var logits = [Float](repeating: 0, count: e.count * 3)
        for k in 0..<e.count {
            let isZurich = e.offsets[k].lowerBound >= 7 && e.sequenceIds[k] == 0
            logits[k * 3 + (isZurich ? 1 : 0)] = 1
        }
        let got = Heads.decode(spec(.tagging, labels), output: logits, encoding: e, text: codePoints(text))
        XCTAssertEqual(got, .tagging(spans: [Span(label: "LOC", start: 7, end: 13, text: "Zürich")]))
    }
}
