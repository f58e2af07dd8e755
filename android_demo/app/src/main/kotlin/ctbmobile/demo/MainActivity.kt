package ctbmobile.demo

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Spacer
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.height
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Card
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.LaunchedEffect
import androidx.compose.runtime.collectAsState
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.saveable.rememberSaveable
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.Color
import androidx.compose.ui.text.SpanStyle
import androidx.compose.ui.text.buildAnnotatedString
import androidx.compose.ui.unit.dp
import androidx.lifecycle.viewmodel.compose.viewModel
import ctbmobile.core.ClassificationResult
import ctbmobile.core.RegressionResult
import ctbmobile.core.Span
import ctbmobile.core.TaggingResult
import ctbmobile.core.TaskResult
import kotlin.math.abs

class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent {
            MaterialTheme {
                Surface(Modifier.fillMaxSize()) { DemoScreen() }
            }
        }
    }
}

@Composable
fun DemoScreen(vm: DemoViewModel = viewModel()) {
    val state by vm.state.collectAsState()
    var text by rememberSaveable { mutableStateOf("wake me up at 7 am tomorrow") }
    LaunchedEffect(state.ready) { if (state.ready) vm.predict(text) }
    Column(Modifier.padding(16.dp).verticalScroll(rememberScrollState())) {
        OutlinedTextField(
            value = text,
            onValueChange = { text = it; vm.predict(it) },
            label = { Text("Utterance") },
            modifier = Modifier.fillMaxWidth(),
        )
        Spacer(Modifier.height(8.dp))
        when {
            state.error != null -> Text(state.error!!, color = MaterialTheme.colorScheme.error)
            !state.ready -> Text("Loading the model…")
            state.latencyMs != null -> Text("%.1f ms for %d tasks (one trunk pass)".format(state.latencyMs, state.results.size))
        }
        for ((task, result) in state.results) {
            Card(Modifier.fillMaxWidth().padding(top = 8.dp)) {
                Column(Modifier.padding(12.dp)) {
                    Text(task, style = MaterialTheme.typography.labelMedium)
                    TaskResultView(result, state.text)
                }
            }
        }
    }
}

@Composable
private fun TaskResultView(result: TaskResult, text: String) {
    when (result) {
        is ClassificationResult -> Text("${result.label}  (%.3f)".format(result.score), style = MaterialTheme.typography.titleMedium)
        is RegressionResult -> Text("%.4f".format(result.value), style = MaterialTheme.typography.titleMedium)
        is TaggingResult -> {
            Text(highlighted(text, result.spans), style = MaterialTheme.typography.titleMedium)
            for (s in result.spans) Text("${s.label}: ${s.text}", color = colorFor(s.label))
            if (result.spans.isEmpty()) Text("no slots")
        }
    }
}

/** The text with each span's background coloured; span offsets are code points, Compose wants UTF-16 indices. */
private fun highlighted(text: String, spans: List<Span>) = buildAnnotatedString {
    append(text)
    for (s in spans) {
        addStyle(SpanStyle(background = colorFor(s.label).copy(alpha = 0.25f)), text.offsetByCodePoints(0, s.start), text.offsetByCodePoints(0, s.end))
    }
}

private val palette = listOf(Color(0xFF1E88E5), Color(0xFFD81B60), Color(0xFF43A047), Color(0xFFFB8C00), Color(0xFF8E24AA), Color(0xFF00897B))

private fun colorFor(label: String) = palette[abs(label.hashCode()) % palette.size]
