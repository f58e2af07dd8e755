import Foundation
#if canImport(CryptoKit)
import CryptoKit
#endif

/// sha256 and size of bundle files by the contract's rule: a file's sha256 is of its bytes; a folder's
/// (a CoreML .mlpackage) is one sha256 over its files sorted by relative path (`/` separators,
/// compared as UTF-8 bytes), each contributing that path's UTF-8 bytes and then its bytes.
enum BundleFiles {
    /// A plain file name inside the bundle folder: `^[A-Za-z0-9_][A-Za-z0-9._-]*$` (no `/`, no `..`, no leading dot).
    static func isPlainName(_ name: String) -> Bool {
        plain(name, extra: [0x2E, 0x2D]) && name.utf8.count <= 255  // extra: "." "-"
    }

    /// A task or program name: `^[A-Za-z0-9_][A-Za-z0-9_-]*$`.
    static func isPlainTaskName(_ name: String) -> Bool {
        plain(name, extra: [0x2D]) && name.utf8.count <= 128  // extra: "-"
    }

    private static func plain(_ name: String, extra: Set<UInt8>) -> Bool {
        let bytes = Array(name.utf8)
        guard let first = bytes.first, isWordByte(first) else { return false }
        return bytes.allSatisfy { isWordByte($0) || extra.contains($0) }
    }

    private static func isWordByte(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F
    }

    static func exists(_ url: URL) -> Bool {
        FileManager.default.fileExists(atPath: url.path)
    }

    static func isDirectory(_ url: URL) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) && isDir.boolValue
    }

    /// The sha256 (lowercase hex) of a file, or of a folder by the rule above.
    static func sha256(of url: URL) throws -> String {
        var hasher = SHA256Stream()
        if isDirectory(url) {
            for (path, file) in try folderFiles(url) {
                hasher.update(Data(path.utf8))
                try feed(file, into: &hasher)
            }
        } else {
            try feed(url, into: &hasher)
        }
        return hasher.hexDigest()
    }

    /// The size of a file, or the sum over a folder's files.
    static func size(of url: URL) throws -> Int {
        if isDirectory(url) {
            var total = 0
            for (_, file) in try folderFiles(url) {
                total += try fileSize(file)
            }
            return total
        }
        return try fileSize(url)
    }

    /// A folder's regular files (symlinks followed) with their relative paths, sorted as UTF-8 bytes.
    static func folderFiles(_ dir: URL) throws -> [(path: String, url: URL)] {
        let paths = try FileManager.default.subpathsOfDirectory(atPath: dir.path)
        var out: [(path: String, url: URL)] = []
        for path in paths {
            let url = dir.appendingPathComponent(path)
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) && !isDir.boolValue {
                out.append((path: path, url: url))
            }
        }
        out.sort { $0.path.utf8.lexicographicallyPrecedes($1.path.utf8) }
        return out
    }

    private static func fileSize(_ url: URL) throws -> Int {
        let values = try url.resolvingSymlinksInPath().resourceValues(forKeys: [.fileSizeKey])
        return values.fileSize ?? 0
    }

    private static func feed(_ url: URL, into hasher: inout SHA256Stream) throws {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            hasher.update(chunk)
        }
    }
}

/// Incremental SHA-256: CryptoKit where it exists, else the plain implementation below.
struct SHA256Stream {
    #if canImport(CryptoKit)
    private var hasher = CryptoKit.SHA256()

    mutating func update(_ data: Data) {
        hasher.update(data: data)
    }

    func hexDigest() -> String {
        hex(Array(hasher.finalize()))
    }
    #else
    private var hasher = PlainSHA256()

    mutating func update(_ data: Data) {
        hasher.update([UInt8](data))
    }

    func hexDigest() -> String {
        var copy = hasher
        return hex(copy.finalize())
    }
    #endif
}

/// Lowercase hex of bytes.
func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".unicodeScalars)
    var s = String.UnicodeScalarView()
    for b in bytes {
        s.append(digits[Int(b >> 4)])
        s.append(digits[Int(b & 0x0F)])
    }
    return String(s)
}

/// SHA-256 (FIPS 180-4) in plain Swift, for platforms without CryptoKit (Linux). Always compiled, so
/// that the tests can check it against known answers everywhere.
struct PlainSHA256 {
    private static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    private var state: [UInt32] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ]
    private var pending: [UInt8] = []
    private var length: UInt64 = 0

    mutating func update(_ bytes: [UInt8]) {
        length += UInt64(bytes.count)
        pending.append(contentsOf: bytes)
        var offset = 0
        while pending.count - offset >= 64 {
            compress(pending, at: offset)
            offset += 64
        }
        pending.removeFirst(offset)
    }

    /// The 32-byte digest; the hasher is spent afterwards.
    mutating func finalize() -> [UInt8] {
        let bits = length &* 8
        var tail = pending
        tail.append(0x80)
        while tail.count % 64 != 56 {
            tail.append(0)
        }
        for i in stride(from: 56, through: 0, by: -8) {
            tail.append(UInt8(truncatingIfNeeded: bits >> UInt64(i)))
        }
        var offset = 0
        while offset < tail.count {
            compress(tail, at: offset)
            offset += 64
        }
        pending = []
        var out: [UInt8] = []
        for word in state {
            out.append(UInt8(truncatingIfNeeded: word >> 24))
            out.append(UInt8(truncatingIfNeeded: word >> 16))
            out.append(UInt8(truncatingIfNeeded: word >> 8))
            out.append(UInt8(truncatingIfNeeded: word))
        }
        return out
    }

    private static func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 {
        (x >> n) | (x << (32 - n))
    }

    private mutating func compress(_ block: [UInt8], at start: Int) {
        var w = [UInt32](repeating: 0, count: 64)
        for i in 0..<16 {
            let j = start + 4 * i
            var v = UInt32(block[j]) << 24
            v |= UInt32(block[j + 1]) << 16
            v |= UInt32(block[j + 2]) << 8
            v |= UInt32(block[j + 3])
            w[i] = v
        }
        for i in 16..<64 {
            let s0 = PlainSHA256.rotr(w[i - 15], 7) ^ PlainSHA256.rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
            let s1 = PlainSHA256.rotr(w[i - 2], 17) ^ PlainSHA256.rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
            w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
        }
        var a = state[0]
        var b = state[1]
        var c = state[2]
        var d = state[3]
        var e = state[4]
        var f = state[5]
        var g = state[6]
        var h = state[7]
        for i in 0..<64 {
            let bigS1 = PlainSHA256.rotr(e, 6) ^ PlainSHA256.rotr(e, 11) ^ PlainSHA256.rotr(e, 25)
            let choose = (e & f) ^ (~e & g)
            let t1 = h &+ bigS1 &+ choose &+ PlainSHA256.k[i] &+ w[i]
            let bigS0 = PlainSHA256.rotr(a, 2) ^ PlainSHA256.rotr(a, 13) ^ PlainSHA256.rotr(a, 22)
            let majority = (a & b) ^ (a & c) ^ (b & c)
            let t2 = bigS0 &+ majority
            h = g
            g = f
            f = e
            e = d &+ t1
            d = c
            c = b
            b = a
            a = t1 &+ t2
        }
        state[0] = state[0] &+ a
        state[1] = state[1] &+ b
        state[2] = state[2] &+ c
        state[3] = state[3] &+ d
        state[4] = state[4] &+ e
        state[5] = state[5] &+ f
        state[6] = state[6] &+ g
        state[7] = state[7] &+ h
    }
}
