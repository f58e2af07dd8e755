import Foundation
import XCTest
@testable import CTBKit

/// OnnxModelMetadata reads ModelProto.metadata_props by walking the protobuf (OnnxRuntimeBackend's
/// way to the embedded manifest: ONNX Runtime's Swift API has no metadata accessor). Hand-built
/// protobufs here; the real program too when the golden bundle is an onnx one.
final class OnnxModelMetadataTests: XCTestCase {
    private func varint(_ n: Int) -> [UInt8] {
        var out: [UInt8] = []
        var v = n
        while v >= 0x80 {
            out.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
        return out
    }

    private func field(_ number: Int, _ payload: [UInt8]) -> [UInt8] {
        varint(number << 3 | 2) + varint(payload.count) + payload
    }

    private func entry(_ key: String, _ value: String) -> [UInt8] {
        field(14, field(1, Array(key.utf8)) + field(2, Array(value.utf8)))
    }

    func testMetadataPropsAreReadAndTheGraphIsSkipped() {
        let manifest = "{\"trunk_fingerprint\": \"" + String(repeating: "ab", count: 32) + "\", \"outputs\": [\"logits\"]}"
        XCTAssertGreaterThan(manifest.utf8.count, 127, "a two-byte length")
        // a graph (field 7) holding a decoy of the key, a fixed64 and a fixed32 field, then the props
        let graph = field(7, Array("ctb_mobile_manifest\u{12}\u{05}decoy".utf8) + [UInt8(0x00), UInt8(0xFF)])
        var bytes: [UInt8] = [0x08, 0x08]  // ir_version 8
        bytes += graph
        bytes += [0x11] + [UInt8](repeating: 0xAA, count: 8)  // field 2, fixed64
        bytes += [0x1D] + [UInt8](repeating: 0xBB, count: 4)  // field 3, fixed32
        bytes += entry("ctb_mobile_manifest", manifest)
        bytes += entry("other", "é")
        let props = OnnxModelMetadata.parse(Data(bytes))
        XCTAssertEqual(props, ["ctb_mobile_manifest": manifest, "other": "é"])
    }

    func testMalformedBytesAreNotAModel() {
        let whole: [UInt8] = [0x08, 0x08] + entry("ctb_mobile_manifest", "{}")
        XCTAssertNotNil(OnnxModelMetadata.parse(Data(whole)))
        XCTAssertNil(OnnxModelMetadata.parse(Data(whole.dropLast(1))), "a length past the end")
        XCTAssertNil(OnnxModelMetadata.parse(Data([0x0B, 0x00])), "a group (wire type 3)")
        XCTAssertEqual(OnnxModelMetadata.parse(Data()), [:], "an empty ModelProto has no props")
    }

    func testAFileThatIsNotAModelIsRefusedInOneLine() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("ctb-\(UUID().uuidString).onnx")
        try Data([0x0F, 0xFF, 0xFF]).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        XCTAssertThrowsError(try OnnxModelMetadata.read(url)) { error in
            XCTAssertTrue("\(error)".contains("is not an ONNX model"), "\(error)")
        }
    }

    /// On an onnx golden bundle: every program's embedded manifest names this trunk and its outputs.
    func testTheRealProgramsCarryTheirManifest() throws {
        let m = try Golden.manifest()
        guard m.target == "onnx" else { return }  // CoreML and ExecuTorch programs are not ONNX files
        for p in m.programs {
            let props = try OnnxModelMetadata.read(try Golden.bundle().appendingPathComponent(p.file))
            let text = try XCTUnwrap(props["ctb_mobile_manifest"], "\(p.file) has no ctb_mobile_manifest")
            let meta = try JSONDecoder().decode(EmbeddedMetadata.self, from: Data(text.utf8))
            XCTAssertEqual(meta.trunkFingerprint, m.trunkFingerprint)
            XCTAssertEqual(meta.outputs, p.outputs.map { $0.name })
        }
    }
}
