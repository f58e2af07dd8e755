// ctb-predict: the Swift stack on the command line, for diffing it against the toolchain.
//
//   swift run ctb-predict BUNDLE TEXT... [--task NAME]...
//
// Prints one JSON line per text, as `ctb-mobile predict BUNDLE TEXT...` prints it: {"text": TEXT,
// "<task>": {"label", "score"} | {"value"} | {"spans": [{"label", "start", "end", "text"}]}, ...}, tasks
// in the manifest's order (or the --task order), keys and number formats as Python's json.dumps
// (ensure_ascii=False). The bundle runs on the backend its manifest's target names: CoreML for
// `ios`, ONNX Runtime for `onnx`. Errors: one line on stderr, exit status 2.
import CTBKit
import CTBKitOnnx
import Foundation

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    exit(2)
}

/// A JSON string as Python's json.dumps(ensure_ascii=False) writes it.
func jsonString(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\u{08}": out += "\\b"
        case "\u{0C}": out += "\\f"
        default:
            if scalar.value < 0x20 {
                out += String(format: "\\u%04x", scalar.value)
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

/// A number as Python's repr of a float (shortest round-trip digits, exponent below 1e-4 and from 1e16).
func jsonNumber(_ d: Double) -> String {
    if d.isNaN {
        return "NaN"
    }
    if d.isInfinite {
        return d < 0 ? "-Infinity" : "Infinity"
    }
    return "\(d)"
}

func jsonResult(_ r: TaskResult) -> String {
    switch r {
    case .classification(let label, let score):
        return "{\"label\": \(jsonString(label)), \"score\": \(jsonNumber(score))}"
    case .regression(let value):
        return "{\"value\": \(jsonNumber(value))}"
    case .tagging(let spans):
        let items = spans.map { s in
            "{\"label\": \(jsonString(s.label)), \"start\": \(s.start), \"end\": \(s.end), \"text\": \(jsonString(s.text))}"
        }
        return "{\"spans\": [\(items.joined(separator: ", "))]}"
    }
}

var positional: [String] = []
var chosen: [String] = []
var arguments = Array(CommandLine.arguments.dropFirst())
while !arguments.isEmpty {
    let a = arguments.removeFirst()
    if a == "--task" || a == "-t" {
        guard !arguments.isEmpty else { fail("--task needs a task name") }
        chosen.append(arguments.removeFirst())
    } else if a == "-h" || a == "--help" {
        print("usage: ctb-predict BUNDLE TEXT... [--task NAME]...")
        exit(0)
    } else {
        positional.append(a)
    }
}
guard positional.count >= 2 else {
    fail("usage: ctb-predict BUNDLE TEXT... [--task NAME]... (a bundle folder and at least one text)")
}

let folder = URL(fileURLWithPath: positional[0], isDirectory: true)
let compiled = FileManager.default.temporaryDirectory.appendingPathComponent("ctb-predict-compiled", isDirectory: true)
do {
    let runner = try BundleBackends.open(folder, compiledModels: compiled).runner
    let order = chosen.isEmpty ? runner.tasks.map { $0.name } : chosen
    for text in positional.dropFirst() {
        let results = try runner.predict(text, tasks: chosen.isEmpty ? nil : chosen)
        var fields = ["\"text\": \(jsonString(text))"]
        for name in order {
            if let r = results[name] {
                fields.append("\(jsonString(name)): \(jsonResult(r))")
            }
        }
        print("{" + fields.joined(separator: ", ") + "}")
    }
} catch {
    fail(String(describing: error))
}
