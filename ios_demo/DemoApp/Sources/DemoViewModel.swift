import CTBKit
import CTBKitOnnx
import Foundation

/// A stretch of the input text, highlighted when it is a span.
struct Segment: Identifiable, Equatable {
    let id: Int
    let text: String
    let label: String?
}

/// One task's result as the view shows it.
struct TaskRow: Identifiable, Equatable {
    let id: String  // the task name
    let summary: String
    let segments: [Segment]  // tagging: the text cut at span edges; empty otherwise
}

/// Installs and loads the bundle once, off the main thread, and shows every single-text task's
/// result. The prediction logic (debounce, cancelling stale requests, the latency of the inference
/// alone) is CTBKit's PredictionController, which a test drives; the view only reads the published
/// state, sets `text` and calls `load` and `run`.
@MainActor
final class DemoViewModel: ObservableObject {
    enum Status: Equatable {
        case loading
        case ready
        case running
        case failed(String)
    }

    @Published var text = "wake me up at 7 am tomorrow" {
        didSet {
            if text != oldValue {
                controller?.textChanged(text)  // debounced: a keystroke does not queue an inference
            }
        }
    }
    @Published private(set) var status = Status.loading
    @Published private(set) var rows: [TaskRow] = []
    @Published private(set) var latencyMs: Double?

    private var runner: MultiTaskRunner?
    private var controller: PredictionController?

    /// The bundle `ctb-mobile embed` copied into the app's resources: installed into Application
    /// Support once per manifest (BundleInstaller: checked, stamped, repaired when damaged), opened
    /// with the backend its manifest's target names (CoreML or ONNX Runtime), compiled CoreML models of
    /// earlier bundles pruned.
    func load() async {
        guard runner == nil else { return }
        guard let source = Bundle.main.url(forResource: "bundle", withExtension: nil) else {
            status = .failed("The app has no model bundle: run `ctb-mobile embed BUNDLE --app ios_demo`, then build again.")
            return
        }
        do {
            let loaded = try await Task.detached(priority: .userInitiated) { () throws -> MultiTaskRunner in
                let installed = try BundleInstaller(source: source, root: try BundleInstaller.applicationSupportRoot()).install()
                return try BundleBackends.open(installed.folder, checkFiles: false).runner  // the installer checked the files
            }.value
            runner = loaded
            let tasks = loaded.singleTextTasks
            controller = PredictionController(predict: { text in try loaded.predictTimed(text, tasks: tasks) },
                                              onChange: { [weak self] state in self?.show(state, tasks: tasks) })
            status = .ready
            run()
        } catch {
            status = .failed(String(describing: error))
        }
    }

    /// Predicts the current text now (the Run button, the return key).
    func run() {
        controller?.submit(text)
    }

    private func show(_ state: PredictionController.State, tasks: [String]) {
        switch state {
        case .idle:
            status = .ready
        case .waiting:
            status = .running
        case .done(let input, let prediction):
            rows = tasks.map { DemoViewModel.row($0, prediction.results[$0], text: input) }
            latencyMs = prediction.inferenceMs
            status = .ready
        case .failed(_, let message):
            status = .failed(message)
        }
    }

    static func row(_ task: String, _ result: TaskResult?, text: String) -> TaskRow {
        switch result {
        case .classification(let label, let score)?:
            return TaskRow(id: task, summary: "\(label)  \(String(format: "%.3f", score))", segments: [])
        case .regression(let value)?:
            return TaskRow(id: task, summary: String(format: "%.4f", value), segments: [])
        case .tagging(let spans)?:
            let summary = spans.isEmpty ? "no spans" : spans.map { "\($0.label): \($0.text)" }.joined(separator: ", ")
            return TaskRow(id: task, summary: summary, segments: segments(text, spans))
        case nil:
            return TaskRow(id: task, summary: "no result", segments: [])
        }
    }

    /// The text cut at the spans' edges (code point offsets, as the spans give them).
    static func segments(_ text: String, _ spans: [Span]) -> [Segment] {
        let cps = codePoints(text)
        var out: [Segment] = []
        var at = 0
        for span in spans.sorted(by: { $0.start < $1.start }) where span.start >= at && span.end <= cps.count {
            if span.start > at {
                out.append(Segment(id: out.count, text: codePointText(cps, at..<span.start), label: nil))
            }
            out.append(Segment(id: out.count, text: span.text, label: span.label))
            at = span.end
        }
        if at < cps.count {
            out.append(Segment(id: out.count, text: codePointText(cps, at..<cps.count), label: nil))
        }
        return out
    }
}
