package ctbmobile.core

import com.google.gson.JsonArray
import com.google.gson.JsonElement
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import org.junit.jupiter.api.Assertions.fail
import java.io.File

/**
 * The toolchain-made files the tests read: a bundle (`CTB_BUNDLE`) and its verify report
 * (`CTB_REPORT`: golden.json, golden_tokenizer.json, golden_spans.json, verify.json). Missing
 * files fail the tests; they are never skipped.
 */
object Golden {
    val bundle: File get() = dir("CTB_BUNDLE")
    val report: File get() = dir("CTB_REPORT")

    private fun dir(variable: String): File {
        val path = System.getenv(variable) ?: fail("$variable is not set; run core/test.sh BUNDLE_DIR REPORT_DIR")
        val f = File(path)
        if (!f.isDirectory) fail<Nothing>("$variable=$path is not a folder")
        return f
    }

    fun json(file: File): JsonObject {
        if (!file.isFile) fail<Nothing>("${file.path} is missing; run `ctb-mobile verify` to write it")
        return file.bufferedReader().use { JsonParser.parseReader(it).asJsonObject }
    }

    fun report(name: String) = json(File(report, name))

    val manifest: Manifest by lazy { Manifest.load(bundle) }

    val tokenizer: WordPieceTokenizer by lazy {
        val t = manifest.tokenizer
        WordPieceTokenizer.load(File(bundle, t.file), File(bundle, t.tables), File(bundle, t.vocab))
    }

    /** golden.json's cases. */
    val cases: List<JsonObject> by lazy { report("golden.json").getAsJsonArray("cases").map { it.asJsonObject } }

    /** A copy of the bundle in [dir] (a test's temporary folder), for tests that break it. */
    fun copyOfBundle(dir: File): File = dir.also { bundle.copyRecursively(it, overwrite = true) }
}

fun JsonElement.ints(): IntArray = asJsonArray.map { it.asInt }.toIntArray()

/** A nested JSON array of numbers, flattened row-major. */
fun JsonElement.floats(): FloatArray {
    val out = ArrayList<Float>()
    fun walk(e: JsonElement) {
        if (e is JsonArray) e.forEach { walk(it) } else out.add(e.asFloat)
    }
    walk(this)
    return out.toFloatArray()
}

/** The shape of a nested JSON array of numbers. */
fun JsonElement.shape(): IntArray {
    val dims = ArrayList<Int>()
    var e = this
    while (e is JsonArray) {
        dims.add(e.size())
        if (e.size() == 0) break
        e = e[0]
    }
    return dims.toIntArray()
}

/** A decoded result as golden.json writes `predictions`, for comparing with runtime_py's. */
fun TaskResult.toJson(): JsonObject = JsonObject().also { o ->
    when (this) {
        is ClassificationResult -> { o.addProperty("label", label); o.addProperty("score", score) }
        is RegressionResult -> o.addProperty("value", value)
        is TaggingResult -> o.add("spans", JsonArray().also { a ->
            spans.forEach { s ->
                a.add(JsonObject().apply {
                    addProperty("label", s.label); addProperty("start", s.start); addProperty("end", s.end); addProperty("text", s.text)
                })
            }
        })
    }
}

/** Compares one decoded result with runtime_py's: labels, spans and texts exactly, numbers within [tol]. */
fun assertSameResult(expected: JsonObject, got: TaskResult, tol: Double, where: String) {
    val g = got.toJson()
    when (got) {
        is ClassificationResult -> {
            if (expected["label"].asString != got.label) fail<Unit>("$where: label ${got.label}, expected ${expected["label"]}")
            val d = Math.abs(expected["score"].asDouble - got.score)
            if (d > tol) fail<Unit>("$where: score ${got.score}, expected ${expected["score"]} (diff $d)")
        }
        is RegressionResult -> {
            val d = Math.abs(expected["value"].asDouble - got.value)
            if (d > tol) fail<Unit>("$where: value ${got.value}, expected ${expected["value"]} (diff $d)")
        }
        is TaggingResult -> if (expected["spans"] != g["spans"]) fail<Unit>("$where: spans ${g["spans"]}, expected ${expected["spans"]}")
    }
}

/**
 * Replays the toolchain's recorded program outputs: given the token ids it is fed, it returns
 * golden.json's `outputs` for the case with those ids (the bundle's real outputs, as `ctb-mobile
 * verify` ran them), positionally in the manifest's order. Its metadata is the JSON embedded in the
 * real program file. Ids it has no recording for are a test failure.
 */
class ReplayBackend(
    private val manifest: Manifest,
    private val cases: List<JsonObject>,
    private val dropLastOutput: Boolean = false,
) : TrunkBackend {
    override fun load(file: File): LoadedProgram {
        val spec = manifest.programs.first { it.file == file.name }
        val metadata = embeddedManifest(file)
        val byIds = cases.associateBy { it["input_ids"].ints().toList() }
        return object : LoadedProgram {
            override fun run(inputs: List<Tensor>): List<Tensor> {
                val ids = (inputs[spec.inputs.indexOfFirst { it.name == "input_ids" }] as Tensor.Int64).data.map { it.toInt() }
                val case = byIds[ids] ?: fail("replay: golden.json has no case with input_ids $ids")
                val outputs = spec.outputs.map { o ->
                    val row = case.getAsJsonObject("outputs")[o.task ?: o.name]
                    Tensor.Float32(intArrayOf(1) + row.shape(), row.floats())
                }
                return if (dropLastOutput) outputs.dropLast(1) else outputs
            }

            override fun metadata() = metadata

            override fun close() {}
        }
    }

    companion object {
        /**
         * The `manifest` constant method's string as stored in an ExecuTorch program: the .pte
         * flatbuffer keeps it verbatim after a 4-byte little-endian length.
         */
        fun embeddedManifest(file: File): String? {
            val bytes = file.readBytes()
            val key = "\"trunk_fingerprint\"".toByteArray()
            val at = indexOf(bytes, key, 0)
            if (at < 0) return null
            var start = at
            while (start >= 4) {
                start--
                if (bytes[start] != '{'.code.toByte()) continue
                val len = (bytes[start - 4].toInt() and 0xff) or ((bytes[start - 3].toInt() and 0xff) shl 8) or
                    ((bytes[start - 2].toInt() and 0xff) shl 16) or ((bytes[start - 1].toInt() and 0xff) shl 24)
                if (len > 0 && start + len <= bytes.size && start + len > at) {
                    val text = String(bytes, start, len, Charsets.UTF_8)
                    if (runCatching { JsonParser.parseString(text).asJsonObject }.isSuccess) return text
                }
            }
            return null
        }

        private fun indexOf(bytes: ByteArray, key: ByteArray, from: Int): Int {
            outer@ for (i in from..bytes.size - key.size) {
                for (j in key.indices) if (bytes[i + j] != key[j]) continue@outer
                return i
            }
            return -1
        }
    }
}
