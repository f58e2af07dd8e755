import Foundation
import XCTest
@testable import CTBKit

/// ctb-predict's lines are byte for byte what `ctb-mobile predict` prints (Python's json.dumps with
/// ensure_ascii=False): the known answers below are Python's own output for these values.
final class PredictionJSONTests: XCTestCase {
    func testNumbersAreWrittenAsPythonsRepr() {
        let python: [(Double, String)] = [
            (0.1, "0.1"), (1e-05, "1e-05"), (1.5e-07, "1.5e-07"), (1e16, "1e+16"), (1e15, "1000000000000000.0"),
            (123456789.0, "123456789.0"), (0.0001, "0.0001"), (0.00012345, "0.00012345"),
            (0.9312345678901234, "0.9312345678901234"), (-2.5, "-2.5"), (1e100, "1e+100"), (5e-324, "5e-324"),
            (0.0, "0.0"), (1.0, "1.0"), (100.0, "100.0"), (9007199254740992.0, "9007199254740992.0"),
            (0.30000000000000004, "0.30000000000000004"),
        ]
        for (value, expected) in python {
            XCTAssertEqual(PredictionJSON.number(value), expected, "\(value)")
        }
        XCTAssertEqual(PredictionJSON.number(.nan), "NaN")
        XCTAssertEqual(PredictionJSON.number(-.infinity), "-Infinity")
    }

    func testALineIsWhatPythonPrints() {
        let text = "a\"b\\c\n\t\u{01}\u{7F} é 😀 \u{2028}"
        let results: [String: TaskResult] = [
            "x": .tagging(spans: [Span(label: "time", start: 0, end: 3, text: "7 am")]),
        ]
        // python: json.dumps({"text": text, "x": {"spans": [...]}}, ensure_ascii=False)
        let python = "{\"text\": \"a\\\"b\\\\c\\n\\t\\u0001\u{7F} é 😀 \u{2028}\", "
            + "\"x\": {\"spans\": [{\"label\": \"time\", \"start\": 0, \"end\": 3, \"text\": \"7 am\"}]}}"
        XCTAssertEqual(PredictionJSON.line(text: text, results: results, order: ["x"]), python)
        XCTAssertEqual(PredictionJSON.object(.classification(label: "alarm", score: 0.5)), "{\"label\": \"alarm\", \"score\": 0.5}")
        XCTAssertEqual(PredictionJSON.object(.regression(value: 3.25)), "{\"value\": 3.25}")
    }

    /// Every golden.json case's runtime_py predictions, written as a line: valid JSON holding the
    /// same text and results, tasks in the manifest's order.
    func testGoldenPredictionsRoundTrip() throws {
        let manifest = try Golden.manifest()
        let order = manifest.tasks.map { $0.name }
        for (i, c) in try Golden.cases().enumerated() {
            var results: [String: TaskResult] = [:]
            for (name, p) in c.predictions {
                if let spans = p.spans {
                    results[name] = .tagging(spans: spans)
                } else if let label = p.label, let score = p.score {
                    results[name] = .classification(label: label, score: score)
                } else if let value = p.value {
                    results[name] = .regression(value: value)
                }
            }
            let line = PredictionJSON.line(text: c.text, results: results, order: order)
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            XCTAssertEqual(object?["text"] as? String, c.text, "case \(i)")
            XCTAssertEqual(Set(object?.keys.map { $0 } ?? []), Set(["text"] + Array(c.predictions.keys)), "case \(i)")
            let positions = order.compactMap { name in line.range(of: "\"\(name)\": ")?.lowerBound }
            XCTAssertEqual(positions, positions.sorted(), "case \(i): tasks in the manifest's order")
        }
    }
}
