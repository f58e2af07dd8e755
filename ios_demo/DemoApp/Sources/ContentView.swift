import SwiftUI

/// A text field, every task's result (slots as highlighted spans) and the latency. No inference
/// here: the view reads DemoViewModel's state and calls `load` and `run`.
struct ContentView: View {
    @ObservedObject var model: DemoViewModel

    var body: some View {
        NavigationStack {
            Form {
                Section("Text") {
                    TextField("Type a request", text: $model.text, axis: .vertical)
                        .onSubmit { model.run() }
                    Button("Run") { model.run() }
                        .disabled(model.status == .loading)
                }
                Section("Results") {
                    switch model.status {
                    case .loading:
                        ProgressView("Checking and loading the bundle…")
                    case .failed(let message):
                        Text(message).foregroundStyle(.red)
                    case .ready, .running:
                        EmptyView()
                    }
                    ForEach(model.rows) { row in
                        VStack(alignment: .leading, spacing: 4) {
                            Text(row.id).font(.headline)
                            if row.segments.isEmpty {
                                Text(row.summary)
                            } else {
                                Text(highlighted(row.segments))
                            }
                        }
                    }
                    if let ms = model.latencyMs {
                        LabeledContent("Latency", value: String(format: "%.1f ms", ms))
                    }
                }
            }
            .navigationTitle("ctb-mobile")
        }
        .task { await model.load() }
    }

    /// Span segments highlighted, each followed by its label.
    private func highlighted(_ segments: [Segment]) -> AttributedString {
        var out = AttributedString()
        for segment in segments {
            var piece = AttributedString(segment.text)
            if let label = segment.label {
                piece.backgroundColor = Color.yellow.opacity(0.35)
                var tag = AttributedString(" \(label) ")
                tag.font = Font.caption2.bold()
                tag.foregroundColor = Color.orange
                out.append(piece)
                out.append(tag)
            } else {
                out.append(piece)
            }
        }
        return out
    }
}
