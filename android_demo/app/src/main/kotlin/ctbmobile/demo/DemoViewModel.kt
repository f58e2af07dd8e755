package ctbmobile.demo

import android.app.Application
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import ctbmobile.core.MultiTaskRunner
import ctbmobile.core.PredictionController
import ctbmobile.core.TaskResult
import ctbmobile.core.TrunkBackend
import ctbmobile.executorch.AssetBundle
import ctbmobile.executorch.ExecuTorchBackend
import ctbmobile.onnxruntime.OnnxRuntimeBackend
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch

/** What the screen shows: the results are for [text], the utterance they were computed from. */
data class UiState(
    val ready: Boolean = false,
    val error: String? = null,
    val text: String = "",
    val results: Map<String, TaskResult> = emptyMap(),
    val latencyMs: Double? = null,
)

/** The backend for each bundle target the app can run; the bundle's manifest says which it is. */
val BACKENDS: Map<String, () -> TrunkBackend> = mapOf(
    "android" to { ExecuTorchBackend() },
    "onnx" to { OnnxRuntimeBackend() },
)

/**
 * Installs and loads the bundle once, off the UI thread, with the backend its manifest's target
 * names. The screen logic (debounce, cancel the stale call, time the inference alone) is the core's
 * PredictionController, tested on the JVM; this class only wires it to Android.
 */
class DemoViewModel(app: Application) : AndroidViewModel(app) {
    private val _state = MutableStateFlow(UiState())
    val state: StateFlow<UiState> = _state

    @Volatile
    private var runner: MultiTaskRunner? = null

    @Volatile
    private var controller: PredictionController? = null

    init {
        viewModelScope.launch(Dispatchers.Default) {
            try {
                val r = MultiTaskRunner.openFor(AssetBundle.install(app), BACKENDS)
                val single = r.tasks.filter { !it.pair }.map { it.name }
                val c = PredictionController(viewModelScope, { text -> r.predictTimed(text, tasks = single) })
                runner = r
                controller = c
                _state.update { it.copy(ready = true) }
                c.state.collect { p ->
                    _state.update { it.copy(text = p.text, results = p.results, latencyMs = p.latencyMs, error = p.error) }
                }
            } catch (e: kotlinx.coroutines.CancellationException) {
                throw e
            } catch (e: Exception) {
                _state.update { it.copy(error = "cannot load the model: ${e.message}") }
            }
        }
    }

    /** Every single-text task for [text], once typing pauses; a newer text supersedes this one. */
    fun predict(text: String) {
        controller?.onText(text)
    }

    override fun onCleared() {
        runner?.close() // waits for a prediction still running
    }
}
