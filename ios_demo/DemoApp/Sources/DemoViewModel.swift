import CTBKit
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

/// Loads the bundle's runner once, off the main thread, and runs every single-text task on the
/// text in a detached task; the view only reads the published state and calls `load` and `run`.
@MainActor
final class DemoViewModel: ObservableObject {
    enum Status: Equatable {
        case loading
        case ready
        case running
        case failed(String)
    }

    @Published var text = "wake me up at 7 am tomorrow"
    @Published private(set) var status = Status.loading
    @Published private(set) var rows: [TaskRow] = []
    @Published private(set) var latencyMs: Double?

    private var runner: MultiTaskRunner?
    private var generation = 0

    /// The bundle `ctb-mobile embed` copied into the app's resources, checked and loaded once.
    func load() async {
        guard runner == nil else { return }
        guard let folder = Bundle.main.url(forResource: "bundle", withExtension: nil) else {
            status = .failed("The app has no model bundle: run `ctb-mobile embed BUNDLE --app ios_demo`, then build again.")
            return
        }
        do {
            let loaded = try await Task.detached(priority: .userInitiated) {
                try MultiTaskRunner(bundle: folder, backend: CoreMLBackend())
            }.value
            runner = loaded
            status = .ready
            run()
        } catch {
            status = .failed(String(describing: error))
        }
    }

    /// Predicts every single-text task for the current text; a newer run supersedes an older one.
    func run() {
        guard let runner = runner else { return }
        generation += 1
        let mine = generation
        let input = text
        let tasks = runner.singleTextTasks
        status = .running
        Task {
            do {
                let (results, ms) = try await Task.detached(priority: .userInitiated) { () throws -> ([String: TaskResult], Double) in
                    let start = DispatchTime.now().uptimeNanoseconds
                    let results = try runner.predict(input, tasks: tasks)
                    return (results, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
                }.value
                guard mine == generation else { return }
                rows = tasks.map { DemoViewModel.row($0, results[$0], text: input) }
                latencyMs = ms
                status = .ready
            } catch {
                guard mine == generation else { return }
                status = .failed(String(describing: error))
            }
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
