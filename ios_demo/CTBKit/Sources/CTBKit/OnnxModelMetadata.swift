import Foundation

/// The `metadata_props` of an ONNX model file: ModelProto field 14, each a StringStringEntryProto
/// (key = field 1, value = field 2), read by walking the protobuf's top-level fields (the graph and
/// its weights are skipped by their length, never parsed). The file is memory-mapped, not read.
///
/// Why here: the ONNX Runtime Objective-C/Swift API (onnxruntime-swift-package-manager up to 1.24.2)
/// binds no model metadata accessor (the C API's SessionGetModelMetadata is not exposed), so
/// OnnxRuntimeBackend reads `ctb_mobile_manifest` from the file itself. Foundation only, so that it
/// is tested on every platform.
public enum OnnxModelMetadata {
    /// The key/value pairs of `url`'s metadata_props.
    public static func read(_ url: URL) throws -> [String: String] {
        let data: Data
        do {
            data = try Data(contentsOf: url, options: .alwaysMapped)
        } catch {
            throw BundleError.unreadable(file: url.lastPathComponent, reason: error.localizedDescription)
        }
        guard let props = parse(data) else {
            throw BundleError.program(file: url.lastPathComponent, problem: "is not an ONNX model (its protobuf does not parse); "
                + "export the bundle again")
        }
        return props
    }

    /// metadata_props of a serialized ModelProto, or nil when the bytes are not a well-formed protobuf.
    public static func parse(_ data: Data) -> [String: String]? {
        data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> [String: String]? in
            var props: [String: String] = [:]
            var model = ProtoReader(bytes: raw, at: 0, end: raw.count)
            while !model.atEnd {
                guard let field = model.next() else { return nil }
                guard field.number == 14, let payload = field.payload else { continue }
                var entry = ProtoReader(bytes: raw, at: payload.lowerBound, end: payload.upperBound)
                var key: String?
                var value: String?
                while !entry.atEnd {
                    guard let f = entry.next() else { return nil }
                    guard let p = f.payload else { continue }
                    let text = String(decoding: UnsafeRawBufferPointer(rebasing: raw[p]), as: UTF8.self)
                    if f.number == 1 {
                        key = text
                    } else if f.number == 2 {
                        value = text
                    }
                }
                if let k = key {
                    props[k] = value ?? ""
                }
            }
            return props
        }
    }
}

/// A protobuf wire-format reader over [at, end) of a buffer: field numbers, wire types and, for
/// length-delimited fields, the payload's range.
struct ProtoReader {
    let bytes: UnsafeRawBufferPointer
    var at: Int
    let end: Int

    var atEnd: Bool { at >= end }

    mutating func varint() -> UInt64? {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while at < end && shift < 64 {
            let b = bytes[at]
            at += 1
            result |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 {
                return result
            }
            shift += 7
        }
        return nil
    }

    /// The next field (its payload's range when length-delimited), or nil when the bytes are malformed.
    mutating func next() -> (number: UInt64, payload: Range<Int>?)? {
        guard let tag = varint() else { return nil }
        let number = tag >> 3
        guard number > 0 else { return nil }
        switch tag & 7 {
        case 0:
            guard varint() != nil else { return nil }
            return (number, nil)
        case 1, 5:
            let width = tag & 7 == 1 ? 8 : 4
            guard end - at >= width else { return nil }
            at += width
            return (number, nil)
        case 2:
            guard let length = varint(), length <= UInt64(end - at) else { return nil }
            let start = at
            at += Int(length)
            return (number, start..<at)
        default:
            return nil  // groups (3, 4) are not used by ONNX; 6 and 7 do not exist
        }
    }
}
