package ctbmobile.onnxruntime

import ctbmobile.core.ClassificationResult
import ctbmobile.core.MultiTaskRunner
import ctbmobile.core.RegressionResult
import ctbmobile.core.TaggingResult
import ctbmobile.core.TaskResult
import ctbmobile.core.pythonJsonString
import java.io.File
import java.math.BigDecimal
import java.math.MathContext
import java.math.RoundingMode
import kotlin.system.exitProcess

/**
 * `predict BUNDLE TEXT...`: one JSON line per text on stdout (UTF-8), as `ctb-mobile predict BUNDLE
 * TEXT...` prints it (Python's `json.dumps(..., ensure_ascii=False, allow_nan=False)`: ", " and ": "
 * separators, floats as Python's repr): {"text": TEXT, "<task>": {"label", "score"} | {"value"} |
 * {"spans": [{"label", "start", "end", "text"}]}, ...}, the single-text tasks in manifest order.
 * Scores equal runtime_py's within the bundle's tolerance, not to the last digit (ONNX Runtime 1.29
 * here, 1.32 in Python).
 * The entry point a Kotlin or Java backend service would use (MultiTaskRunner + OnnxRuntimeBackend).
 * Errors: one line on stderr, exit status 2.
 */
fun main(args: Array<String>) {
    // ONNX Runtime's native code needs more stack than the launcher's main thread may have: with a few
    // kilobytes of arguments the JVM died of SIGSEGV in session setup. The work runs on its own thread.
    val worker = Thread(null, { predict(args) }, "predict", 64L shl 20)
    worker.start()
    worker.join()
}

private fun predict(args: Array<String>) {
    if (args.size < 2) fail("usage: predict BUNDLE TEXT... (BUNDLE: an ONNX bundle folder from ctb-mobile export --target onnx)")
    try {
        MultiTaskRunner.openFor(File(args[0]), mapOf("onnx" to { OnnxRuntimeBackend() })).use { runner ->
            val tasks = runner.tasks.filter { !it.pair }.map { it.name }
            for (text in args.drop(1)) {
                val results = runner.predict(text, tasks = tasks)
                val bad = results.entries.firstOrNull { (_, r) -> (r as? ClassificationResult)?.score?.isFinite() == false || (r as? RegressionResult)?.value?.isFinite() == false }
                if (bad != null) fail("the model gave a non-finite output (NaN or infinity) for task ${bad.key} on '${text.take(40)}'; its branch weights are broken: retrain the branch (a lower learning rate)")
                System.out.write((PyJson.line(text, results) + "\n").toByteArray(Charsets.UTF_8))
                System.out.flush()
            }
        }
    } catch (e: Exception) {
        fail(e.message?.lineSequence()?.firstOrNull() ?: e.toString())
    }
}

private fun fail(message: String): Nothing {
    System.err.println("predict: $message")
    exitProcess(2)
}

/** JSON as `ctb-mobile predict` writes it: json.dumps with default separators, ensure_ascii=False, float repr. */
object PyJson {
    fun line(text: String, results: Map<String, TaskResult>): String {
        val parts = mutableListOf("\"text\": ${str(text)}")
        for ((task, r) in results) parts.add("${str(task)}: ${result(r)}")
        return "{" + parts.joinToString(", ") + "}"
    }

    private fun result(r: TaskResult): String = when (r) {
        is ClassificationResult -> "{\"label\": ${str(r.label)}, \"score\": ${num(r.score)}}"
        is RegressionResult -> "{\"value\": ${num(r.value)}}"
        is TaggingResult -> "{\"spans\": [" + r.spans.joinToString(", ") {
            "{\"label\": ${str(it.label)}, \"start\": ${it.start}, \"end\": ${it.end}, \"text\": ${str(it.text)}}"
        } + "]}"
    }

    fun str(s: String, ensureAscii: Boolean = false): String = pythonJsonString(s, ensureAscii)

    /** Python's float repr: the shortest digits that read back as [x]; fixed notation for 1e-4 <= |x| < 1e16. */
    fun num(x: Double): String {
        if (x.isNaN()) return "NaN"
        if (x.isInfinite()) return if (x > 0) "Infinity" else "-Infinity"
        if (x == 0.0) return if (1.0 / x < 0) "-0.0" else "0.0"
        val exact = BigDecimal(x)
        var d = exact
        for (p in 1..17) {
            d = exact.round(MathContext(p, RoundingMode.HALF_EVEN))
            if (d.toDouble() == x) break
        }
        val digits = d.unscaledValue().abs().toString().trimEnd('0').ifEmpty { "0" }
        val exp = d.precision() - d.scale() - 1 // decimal exponent of the first digit
        val sign = if (x < 0) "-" else ""
        return sign + if (exp in -4..15) {
            when {
                exp < 0 -> "0." + "0".repeat(-exp - 1) + digits
                digits.length <= exp + 1 -> digits + "0".repeat(exp + 1 - digits.length) + ".0"
                else -> digits.substring(0, exp + 1) + "." + digits.substring(exp + 1)
            }
        } else {
            val mant = if (digits.length == 1) digits else digits[0] + "." + digits.substring(1)
            mant + "e" + (if (exp < 0) "-" else "+") + "%02d".format(Math.abs(exp))
        }
    }
}
