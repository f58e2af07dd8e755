import Foundation
import XCTest
@testable import CTBKit

/// The screen logic: debounced input, stale requests cancelled before they run, stale results
/// dropped, and the latency of the inference alone. A fake inference records what it was asked.
@MainActor
final class PredictionControllerTests: XCTestCase {
    /// Thread-safe record of the texts the fake inference ran.
    final class Calls: @unchecked Sendable {
        private let lock = NSLock()
        private var texts: [String] = []

        func add(_ text: String) {
            lock.lock()
            texts.append(text)
            lock.unlock()
        }

        var all: [String] {
            lock.lock()
            defer { lock.unlock() }
            return texts
        }
    }

    private func fake(_ calls: Calls, seconds: Double = 0, ms: Double = 1.5) -> PredictionController.Predict {
        { text in
            calls.add(text)
            if seconds > 0 {
                Thread.sleep(forTimeInterval: seconds)
            }
            return TimedPrediction(results: ["echo": .classification(label: text, score: 1)], inferenceMs: ms)
        }
    }

    func testKeystrokesWithinTheDebounceRunOneInferenceOnTheLastText() async {
        let calls = Calls()
        var states: [PredictionController.State] = []
        let controller = PredictionController(debounce: .milliseconds(150), predict: fake(calls)) { states.append($0) }
        for text in ["w", "wa", "wak", "wake"] {
            controller.textChanged(text)
        }
        await controller.settle()
        XCTAssertEqual(calls.all, ["wake"], "one inference, on the text as it stands")
        XCTAssertEqual(controller.inferencesStarted, 1)
        XCTAssertEqual(states.last, .done(text: "wake", prediction: TimedPrediction(results: ["echo": .classification(label: "wake", score: 1)],
                                                                                    inferenceMs: 1.5)))
    }

    func testACancelledRequestNeverRuns() async {
        let calls = Calls()
        let controller = PredictionController(debounce: .milliseconds(150), predict: fake(calls))
        controller.textChanged("set an alarm")
        controller.cancel()
        await controller.settle()
        try? await Task.sleep(for: .milliseconds(250))
        XCTAssertEqual(calls.all, [])
        XCTAssertEqual(controller.inferencesStarted, 0)
    }

    func testAResultForASupersededTextIsDropped() async throws {
        let calls = Calls()
        var shown: [String] = []
        let controller = PredictionController(debounce: .milliseconds(20), predict: fake(calls, seconds: 0.3)) { state in
            if case .done(let text, _) = state {
                shown.append(text)
            }
        }
        controller.textChanged("first")
        try await Task.sleep(for: .milliseconds(120))  // "first" is running now (0.3 s)
        controller.textChanged("second")
        await controller.settle()
        try await Task.sleep(for: .milliseconds(400))  // "first" has finished by now
        XCTAssertEqual(calls.all, ["first", "second"])
        XCTAssertEqual(shown, ["second"], "the stale result never reaches the screen")
    }

    func testTheLatencyIsTheInferenceNotTheDebounce() async {
        let calls = Calls()
        let controller = PredictionController(debounce: .milliseconds(150), predict: fake(calls, ms: 2.0))
        let start = Date()
        controller.textChanged("play jazz")
        await controller.settle()
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.15)
        guard case .done(_, let prediction) = controller.state else {
            return XCTFail("state \(controller.state)")
        }
        XCTAssertEqual(prediction.inferenceMs, 2.0, "the figure the runner measured, not the 150 ms wait")
    }

    func testSubmitRunsAtOnceAndErrorsAreOneLine() async {
        struct Broken: Error, CustomStringConvertible {
            var description: String { "model.mlpackage: CoreML cannot load it" }
        }
        let controller = PredictionController(debounce: .seconds(10)) { _ in throw Broken() }
        controller.submit("hello")
        await controller.settle()
        XCTAssertEqual(controller.state, .failed(text: "hello", message: "model.mlpackage: CoreML cannot load it"))
    }

    /// The runner's own timing starts once it holds its lock: a caller queued behind another
    /// inference does not count the wait. Every program call takes 0.2 s here.
    func testRunnerTimingExcludesTheWaitForTheLock() throws {
        let m = try Golden.manifest()
        let slow = SlowBackend(inner: ReplayBackend(manifest: m, cases: try Golden.cases()))
        let runner = try MultiTaskRunner(bundle: try Golden.bundle(), backend: slow)
        let text = try Golden.cases()[0].text
        let single = runner.singleTextTasks
        let untimed = try runner.predict(text, tasks: single)
        slow.seconds = 0.2
        let first = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            _ = try? runner.predict(text, tasks: single)
            first.signal()
        }
        Thread.sleep(forTimeInterval: 0.05)  // the other call holds the runner now
        let start = Date()
        let timed = try runner.predictTimed(text, tasks: single)
        let wall = Date().timeIntervalSince(start) * 1000
        first.wait()
        let calls = Double(m.layout == "fused" ? 1 : 1 + single.count)
        XCTAssertEqual(timed.results, untimed)
        XCTAssertGreaterThanOrEqual(timed.inferenceMs, 200 * calls * 0.9)
        XCTAssertLessThan(timed.inferenceMs, wall - 100, "waited \(wall) ms in all, of which the inference \(timed.inferenceMs) ms")
    }
}

/// Wraps a backend so that every program call takes `seconds` longer.
final class SlowBackend: TrunkBackend, @unchecked Sendable {
    let inner: TrunkBackend
    var seconds = 0.0

    init(inner: TrunkBackend) {
        self.inner = inner
    }

    func load(_ program: ProgramSpec, file: URL, sha256: String) throws -> LoadedProgram {
        SlowProgram(inner: try inner.load(program, file: file, sha256: sha256), backend: self)
    }
}

final class SlowProgram: LoadedProgram {
    let inner: LoadedProgram
    let backend: SlowBackend

    init(inner: LoadedProgram, backend: SlowBackend) {
        self.inner = inner
        self.backend = backend
    }

    var metadataJSON: String? { inner.metadataJSON }

    func run(_ inputs: [Tensor]) throws -> [Tensor] {
        if backend.seconds > 0 {
            Thread.sleep(forTimeInterval: backend.seconds)
        }
        return try inner.run(inputs)
    }
}
