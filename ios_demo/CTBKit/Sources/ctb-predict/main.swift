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
        print(PredictionJSON.line(text: text, results: results, order: order))
    }
} catch {
    fail(String(describing: error))
}
