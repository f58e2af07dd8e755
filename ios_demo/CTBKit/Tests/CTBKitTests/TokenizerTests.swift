import Foundation
import XCTest
@testable import CTBKit

/// The tokenizer gives Hugging Face `tokenizers`' ids, type ids, offsets (code points) and sequence
/// ids for every case of golden_tokenizer.json, and the token ids of every golden.json text.
final class TokenizerTests: XCTestCase {
    func testEveryGoldenTokenizerCase() throws {
        let tokenizer = try Golden.tokenizer()
        let manifest = try Golden.manifest()
        let golden = try Golden.report(TokenizerGoldenFile.self, "golden_tokenizer.json")
        XCTAssertEqual(golden.maxSeqLen, tokenizer.maxLength, "golden_tokenizer.json was made at another max_seq_len")
        if let fingerprint = golden.tokenizerFingerprint {
            XCTAssertEqual(fingerprint, manifest.tokenizer.fingerprint, "golden_tokenizer.json is for another tokenizer")
        }
        XCTAssertGreaterThanOrEqual(golden.cases.count, 2000, "golden_tokenizer.json should hold at least 2,000 cases")
        var failed = 0
        for (i, c) in golden.cases.enumerated() {
            let e = tokenizer.encode(c.text, pair: c.pair)
            let offsets = e.offsets.map { [$0.lowerBound, $0.upperBound] }
            if e.ids == c.ids && e.typeIds == c.typeIds && offsets == c.offsets && e.sequenceIds == c.sequenceIds {
                continue
            }
            failed += 1
            if failed <= 10 {
                XCTFail("case \(i) (\(c.group ?? "?")) \(String(reflecting: String(c.text.prefix(60)))): "
                    + "ids \(e.ids) expected \(c.ids); offsets \(offsets) expected \(c.offsets); "
                    + "type ids \(e.typeIds) expected \(c.typeIds); sequence ids \(e.sequenceIds) expected \(c.sequenceIds)")
            }
        }
        XCTAssertEqual(failed, 0, "\(failed) of \(golden.cases.count) golden tokenizer cases differ")
        print("golden tokenizer: \(golden.cases.count - failed)/\(golden.cases.count) cases identical")
    }

    func testGoldenTextsGiveTheRecordedIds() throws {
        let tokenizer = try Golden.tokenizer()
        let cases = try Golden.cases()
        XCTAssertFalse(cases.isEmpty, "golden.json has no cases")
        for (i, c) in cases.enumerated() {
            let e = tokenizer.encode(c.text)
            XCTAssertEqual(e.ids, c.inputIds, "golden.json case \(i): token ids")
            XCTAssertEqual(e.typeIds, c.tokenTypeIds, "golden.json case \(i): type ids")
        }
    }

    func testAddedSpecialTokensTypedInTheTextAreMatchedCaseSensitively() throws {
        let tokenizer = try Golden.tokenizer()
        let e = tokenizer.encode("[CLS] hi [SEP] [MASK]")
        let lower = tokenizer.encode("[mask]")
        XCTAssertEqual(e.ids.first, e.ids[1], "a typed [CLS] is the [CLS] id")
        XCTAssertEqual(e.offsets[1], 0..<5)
        XCTAssertEqual(e.wordIds[1], 0)
        XCTAssertNotEqual(lower.ids[1], e.ids[4], "lowercase [mask] is text, not [MASK]")
    }

    func testPairsTruncateLongestFirst() throws {
        let tokenizer = try Golden.tokenizer()
        let long = String(repeating: "first ", count: 60)
        let e = tokenizer.encode(long, pair: "short", maxLength: 16)
        XCTAssertEqual(e.count, 16)
        XCTAssertEqual(e.sequenceIds.filter { $0 == 1 }.count, 1, "the short pair keeps its one token")
        let both = tokenizer.encode(long, pair: long, maxLength: 16)
        XCTAssertEqual(both.sequenceIds.filter { $0 == 0 }.count, 6, "(16 - 3) / 2 for the first")
        XCTAssertEqual(both.sequenceIds.filter { $0 == 1 }.count, 7, "the odd token goes to the second")
    }

    /// One rule for the exporter, Swift and Kotlin: the post-processor is TemplateProcessing; a
    /// BertProcessing tokenizer.json (the bundle's own with only that field changed) is refused in one line.
    func testBertProcessingIsRefusedAsKotlinRefusesIt() throws {
        let folder = try Golden.bundle()
        let spec = try Golden.manifest().tokenizer
        let url = folder.appendingPathComponent(spec.file)
        var object = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any] ?? [:]
        object["post_processor"] = ["type": "BertProcessing", "sep": ["[SEP]", 102] as [Any], "cls": ["[CLS]", 101] as [Any]] as [String: Any]
        let edited = try JSONSerialization.data(withJSONObject: object)
        XCTAssertThrowsError(try WordPieceTokenizer(tokenizerJSON: edited,
                                                    tablesJSON: Data(contentsOf: folder.appendingPathComponent(spec.tables)),
                                                    vocabTxt: Data(contentsOf: folder.appendingPathComponent(spec.vocab)))) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains("post_processor/type is BertProcessing"), message)
            XCTAssertTrue(message.contains("TemplateProcessing only"), message)
            XCTAssertFalse(message.contains("\n"), "one line: \(message)")
        }
    }

    func testPlainSHA256KnownAnswers() {
        func digest(_ bytes: [UInt8]) -> String {
            var h = PlainSHA256()
            h.update(bytes)
            return hex(h.finalize())
        }
        XCTAssertEqual(digest([]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(digest(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(digest(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        var h = PlainSHA256()
        for _ in 0..<1000 {
            h.update([UInt8](repeating: 0x61, count: 1000))  // one million "a", fed in pieces
        }
        XCTAssertEqual(hex(h.finalize()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        var stream = SHA256Stream()
        stream.update(Data("abc".utf8))
        XCTAssertEqual(stream.hexDigest(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}
