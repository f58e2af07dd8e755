package ctbmobile.core

import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.delay
import kotlinx.coroutines.ensureActive
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.launch
import kotlin.coroutines.CoroutineContext

/** What the demo screen shows: [results] are for [text]; [latencyMs] is the runner call alone. */
data class PredictionState(
    val text: String = "",
    val results: Map<String, TaskResult> = emptyMap(),
    val latencyMs: Double? = null,
    val error: String? = null,
)

/**
 * The demo screen's logic, in plain Kotlin: each new text cancels the call before it, waits
 * [debounceMillis] for typing to pause, checks that it is still the newest before running, and
 * publishes a result only while it is still the newest. The latency shown is what [predict] reports
 * for its own work (MultiTaskRunner.predictTimed: no debounce, no wait for the runner's lock).
 */
class PredictionController(
    private val scope: CoroutineScope,
    private val predict: suspend (String) -> Timed<Map<String, TaskResult>>,
    private val debounceMillis: Long = 150,
    private val context: CoroutineContext = Dispatchers.Default,
) {
    private val _state = MutableStateFlow(PredictionState())
    val state: StateFlow<PredictionState> = _state
    private val lock = Any()
    private var newest = 0L
    private var job: Job? = null

    fun onText(text: String) {
        val mine: Long
        synchronized(lock) {
            mine = ++newest
            job?.cancel()
            job = scope.launch(context) {
                delay(debounceMillis)
                ensureActive() // superseded while waiting: no inference
                val outcome = try {
                    Result.success(predict(text))
                } catch (e: CancellationException) {
                    throw e
                } catch (e: Exception) { // bad input or a program that breaks the manifest: shown, never a crash
                    Result.failure(e)
                }
                publish(mine) {
                    outcome.fold(
                        { PredictionState(text, it.value, it.millis, null) },
                        { _state.value.copy(error = it.message ?: it.toString()) },
                    )
                }
            }
        }
    }

    /** Sets the state only if call [mine] is still the newest (a stale result is never shown). */
    private fun publish(mine: Long, next: () -> PredictionState) = synchronized(lock) {
        if (mine == newest) _state.value = next()
    }
}
