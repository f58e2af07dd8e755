package ctbmobile.demo

import android.app.Application
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import ctbmobile.core.MultiTaskRunner
import ctbmobile.core.TaskResult
import ctbmobile.executorch.AssetBundle
import ctbmobile.executorch.ExecuTorchBackend
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.ensureActive
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

/** Loads the bundle once and runs every prediction on Dispatchers.Default, never on the UI thread. */
class DemoViewModel(app: Application) : AndroidViewModel(app) {
    private val _state = MutableStateFlow(UiState())
    val state: StateFlow<UiState> = _state

    @Volatile
    private var runner: MultiTaskRunner? = null
    private var pending: Job? = null

    init {
        viewModelScope.launch(Dispatchers.Default) {
            try {
                runner = MultiTaskRunner.open(AssetBundle.install(app), ExecuTorchBackend())
                _state.update { it.copy(ready = true) }
            } catch (e: Exception) {
                _state.update { it.copy(error = "cannot load the model: ${e.message}") }
            }
        }
    }

    /** Predicts every single-text task for [text]; a newer call supersedes one still waiting. */
    fun predict(text: String) {
        val r = runner ?: return
        pending?.cancel()
        pending = viewModelScope.launch(Dispatchers.Default) {
            val tasks = r.tasks.filter { !it.pair }.map { it.name }
            val start = System.nanoTime()
            try {
                val results = r.predict(text, tasks = tasks)
                val ms = (System.nanoTime() - start) / 1e6
                ensureActive() // a newer utterance is waiting: do not show this one
                _state.update { it.copy(text = text, results = results, latencyMs = ms, error = null) }
            } catch (e: CancellationException) {
                throw e
            } catch (e: Exception) { // bad input or a program that breaks the manifest: shown, never a crash
                _state.update { it.copy(error = e.message) }
            }
        }
    }

    override fun onCleared() {
        runner?.close() // waits for a prediction still running
    }
}
