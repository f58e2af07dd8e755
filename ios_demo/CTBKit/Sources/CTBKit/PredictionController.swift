import Foundation

/// The demo screen's prediction logic, free of UI so that a test drives it: input is debounced, a
/// newer text cancels the stale request, a cancelled request never starts its inference, a result
/// that arrives for a superseded text is dropped, and the latency shown is the inference alone (as
/// `MultiTaskRunner.predictTimed` measures it), not the debounce or the wait behind another call.
///
/// All calls and updates happen on the main actor; the inference itself runs off it.
@MainActor
public final class PredictionController {
    /// What the screen shows.
    public enum State: Equatable {
        case idle
        case waiting(text: String)
        case done(text: String, prediction: TimedPrediction)
        case failed(text: String, message: String)
    }

    /// Runs one inference (off the main actor); the app passes `runner.predictTimed`.
    public typealias Predict = @Sendable (String) throws -> TimedPrediction

    public let debounce: Duration
    public private(set) var state = State.idle {
        didSet { onChange(state) }
    }
    /// Inferences started (after the debounce and the cancellation check), for tests and logs.
    public private(set) var inferencesStarted = 0

    private let predict: Predict
    private let onChange: @MainActor (State) -> Void
    private var pending: Task<Void, Never>?
    private var generation = 0

    /// `onChange` receives every new state, on the main actor.
    public init(debounce: Duration = .milliseconds(150), predict: @escaping Predict, onChange: @escaping @MainActor (State) -> Void = { _ in }) {
        self.debounce = debounce
        self.predict = predict
        self.onChange = onChange
    }

    /// The text changed (a keystroke): predict it once it has been still for `debounce`.
    public func textChanged(_ text: String) {
        schedule(text, after: debounce)
    }

    /// Predict now (the Run button, return key), cancelling anything pending.
    public func submit(_ text: String) {
        schedule(text, after: nil)
    }

    /// Cancels the pending request; a running inference finishes but its result is dropped.
    public func cancel() {
        generation += 1
        pending?.cancel()
        pending = nil
    }

    /// Returns when no request is pending (tests; the app never waits).
    public func settle() async {
        while let task = pending {
            await task.value
            if pending == task {
                pending = nil
            }
        }
    }

    private func schedule(_ text: String, after delay: Duration?) {
        cancel()
        let mine = generation
        let predict = self.predict
        state = .waiting(text: text)
        pending = Task { [weak self] in
            if let delay = delay {
                do {
                    try await Task.sleep(for: delay)
                } catch {
                    return  // cancelled while the text was still changing: nothing ran
                }
            }
            guard !Task.isCancelled, let self = self, self.generation == mine else { return }
            self.inferencesStarted += 1
            let outcome: Result<TimedPrediction, Error>
            do {
                outcome = .success(try await PredictionController.infer(text, predict))
            } catch {
                outcome = .failure(error)
            }
            guard self.generation == mine else { return }  // superseded while it ran: drop it
            switch outcome {
            case .success(let prediction):
                self.state = .done(text: text, prediction: prediction)
            case .failure(let error) where error is CancellationError:
                return
            case .failure(let error):
                self.state = .failed(text: text, message: String(describing: error))
            }
        }
    }

    /// The inference, off the main actor (a nonisolated async function runs on the global executor);
    /// a request cancelled before this point does not run.
    nonisolated private static func infer(_ text: String, _ predict: Predict) async throws -> TimedPrediction {
        try Task.checkCancellation()
        return try predict(text)
    }
}
