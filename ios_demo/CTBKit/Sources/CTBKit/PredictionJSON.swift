import Foundation

/// One prediction as the JSON line `ctb-mobile predict` prints: `{"text": TEXT, "<task>": {"label",
/// "score"} | {"value"} | {"spans": [{"label", "start", "end", "text"}]}, ...}`, byte for byte as
/// Python's `json.dumps(..., ensure_ascii=False)` writes it: `", "` and `": "` separators, strings
/// escaped as Python escapes them, numbers as Python's float repr. `ctb-predict` prints it, so the
/// Swift stack's output can be diffed with the toolchain's.
public enum PredictionJSON {
    /// The line for `text`: its results in `order` (tasks without a result are left out).
    public static func line(text: String, results: [String: TaskResult], order: [String]) -> String {
        var fields = ["\"text\": \(string(text))"]
        for name in order {
            if let r = results[name] {
                fields.append("\(string(name)): \(object(r))")
            }
        }
        return "{" + fields.joined(separator: ", ") + "}"
    }

    /// One task's result as a JSON object.
    public static func object(_ r: TaskResult) -> String {
        switch r {
        case .classification(let label, let score):
            return "{\"label\": \(string(label)), \"score\": \(number(score))}"
        case .regression(let value):
            return "{\"value\": \(number(value))}"
        case .tagging(let spans):
            let items = spans.map { s in
                "{\"label\": \(string(s.label)), \"start\": \(s.start), \"end\": \(s.end), \"text\": \(string(s.text))}"
            }
            return "{\"spans\": [\(items.joined(separator: ", "))]}"
        }
    }

    /// A JSON string as json.dumps with its default ensure_ascii=True: as `string`, and every scalar past
    /// ASCII as `\uXXXX` (UTF-16 code units, so a surrogate pair past U+FFFF).
    public static func asciiString(_ s: String) -> String {
        var out = ""
        for scalar in string(s).unicodeScalars {
            if scalar.isASCII {
                out.unicodeScalars.append(scalar)
            } else {
                for unit in String(scalar).utf16 { out += "\\u" + hex4(UInt32(unit)) }
            }
        }
        return out
    }

    private static func hex4(_ v: UInt32) -> String {
        let digits = Array("0123456789abcdef")
        return String((0..<4).map { digits[Int((v >> (12 - 4 * UInt32($0))) & 0xF)] })
    }

    /// A JSON string as json.dumps(ensure_ascii=False): `"` `\` and control characters escaped, the rest as is.
    public static func string(_ s: String) -> String {
        var out = String.UnicodeScalarView()
        out.append("\"")
        for scalar in s.unicodeScalars {
            let escaped: String?
            switch scalar {
            case "\"": escaped = "\\\""
            case "\\": escaped = "\\\\"
            case "\n": escaped = "\\n"
            case "\r": escaped = "\\r"
            case "\t": escaped = "\\t"
            case "\u{08}": escaped = "\\b"
            case "\u{0C}": escaped = "\\f"
            default:
                escaped = scalar.value < 0x20 ? "\\u00" + hex2(scalar.value) : nil
            }
            if let e = escaped {
                out.append(contentsOf: e.unicodeScalars)
            } else {
                out.append(scalar)
            }
        }
        out.append("\"")
        return String(out)
    }

    private static func hex2(_ v: UInt32) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(v >> 4)], digits[Int(v & 0xF)]])
    }

    /// A Double as Python's repr: the shortest digits that round-trip (Swift's description gives
    /// them), positional for decimal exponents -4..15 (`1000000000000000.0`, `0.0001`), else
    /// `d.ddde+XX` (`1e+16`, `1.5e-07`); NaN and infinities as json.dumps writes them.
    public static func number(_ d: Double) -> String {
        if d.isNaN {
            return "NaN"
        }
        if d.isInfinite {
            return d < 0 ? "-Infinity" : "Infinity"
        }
        let sign = d.sign == .minus ? "-" : ""
        if d == 0 {
            return sign + "0.0"
        }
        // the shortest round-trip digits and the decimal exponent of the first one
        let text = "\(Swift.abs(d))"
        var digits: [Character] = []
        var exponent: Int
        if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            digits = Array(text[..<e].filter { $0 != "." })
            exponent = Int(text[text.index(after: e)...]) ?? 0
        } else {
            let parts = text.split(separator: ".", omittingEmptySubsequences: false)
            let whole = Array(parts[0])
            let fraction = parts.count > 1 ? Array(parts[1]) : []
            digits = whole + fraction
            exponent = whole.count - 1
        }
        while let first = digits.first, first == "0", digits.count > 1 {
            digits.removeFirst()
            exponent -= 1
        }
        while let last = digits.last, last == "0", digits.count > 1 {
            digits.removeLast()
        }
        if exponent >= 16 || exponent < -4 {
            var mantissa = String(digits[0])
            if digits.count > 1 {
                mantissa += "." + String(digits[1...])
            }
            let magnitude = Swift.abs(exponent)
            return sign + mantissa + "e" + (exponent < 0 ? "-" : "+") + (magnitude < 10 ? "0" : "") + String(magnitude)
        }
        if exponent < 0 {
            return sign + "0." + String(repeating: "0", count: -exponent - 1) + String(digits)
        }
        let whole = digits.count > exponent + 1 ? String(digits[...exponent])
            : String(digits) + String(repeating: "0", count: exponent + 1 - digits.count)
        let fraction = digits.count > exponent + 1 ? String(digits[(exponent + 1)...]) : "0"
        return sign + whole + "." + fraction
    }
}
