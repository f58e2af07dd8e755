package ctbmobile.core

import com.google.gson.JsonArray
import com.google.gson.JsonElement
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import org.junit.jupiter.api.Assertions.fail
import java.io.File

/**
 * The toolchain-made files the tests read: bundles and their verify reports (golden.json,
 * golden_tokenizer.json, golden_spans.json, verify.json). `CTB_BUNDLES` lists them as
 * BUNDLE:REPORT[:BUNDLE:REPORT...] (core/test.sh sets it); the core's tests use the first pair
 * (`CTB_BUNDLE` / `CTB_REPORT` override it), backend-onnxruntime's parity tests every ONNX pair.
 * Missing files fail the tests; they are never skipped.
 */
object Golden {
    /** Every (bundle, report) pair given. */
    val pairs: List<Pair<File, File>> by lazy {
        val list = System.getenv("CTB_BUNDLES")?.takeIf { it.isNotBlank() }?.split(File.pathSeparator).orEmpty()
        if (list.size % 2 != 0) fail<Nothing>("CTB_BUNDLES has ${list.size} paths; give BUNDLE:REPORT pairs")
        val given = list.chunked(2).map { (b, r) -> folder(b, "CTB_BUNDLES") to folder(r, "CTB_BUNDLES") }
        val single = System.getenv("CTB_BUNDLE")?.takeIf { it.isNotBlank() }?.let { b ->
            folder(b, "CTB_BUNDLE") to folder(System.getenv("CTB_REPORT") ?: "$b.verify", "CTB_REPORT")
        }
        val all = listOfNotNull(single) + given
        if (all.isEmpty()) fail<Nothing>("CTB_BUNDLES is not set; run core/test.sh BUNDLE_DIR REPORT_DIR [BUNDLE_DIR REPORT_DIR ...]")
        all
    }
    val bundle: File get() = pairs[0].first
    val report: File get() = pairs[0].second

    private fun folder(path: String, variable: String): File {
        val f = File(path)
        if (!f.isDirectory) fail<Nothing>("$variable: $path is not a folder")
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
         * The manifest JSON embedded in a program file, found in its bytes: an ExecuTorch .pte keeps the
         * `manifest` constant method's string after a 4-byte little-endian length, an ONNX model keeps
         * metadata_props' `ctb_mobile_manifest` value after a protobuf varint length.
         */
        fun embeddedManifest(file: File): String? {
            val bytes = file.readBytes()
            val key = "\"trunk_fingerprint\"".toByteArray()
            val at = indexOf(bytes, key, 0)
            if (at < 0) return null
            var start = at
            while (start >= 1) {
                start--
                if (bytes[start] != '{'.code.toByte()) continue
                val lengths = listOfNotNull(if (start >= 4) le32(bytes, start - 4) else null, varintBefore(bytes, start))
                for (len in lengths) {
                    if (len > 0 && start + len <= bytes.size && start + len > at) {
                        val text = String(bytes, start, len, Charsets.UTF_8)
                        if (runCatching { JsonParser.parseString(text).asJsonObject }.isSuccess) return text
                    }
                }
            }
            return null
        }

        private fun le32(b: ByteArray, i: Int) = (b[i].toInt() and 0xff) or ((b[i + 1].toInt() and 0xff) shl 8) or
            ((b[i + 2].toInt() and 0xff) shl 16) or ((b[i + 3].toInt() and 0xff) shl 24)

        /** The protobuf varint that ends just before [end] (its last byte < 0x80, the ones before >= 0x80). */
        private fun varintBefore(b: ByteArray, end: Int): Int? {
            if (end < 1 || b[end - 1].toInt() and 0x80 != 0) return null
            var first = end - 1
            while (first > 0 && end - first < 5 && b[first - 1].toInt() and 0x80 != 0) first--
            var v = 0
            for (i in end - 1 downTo first) v = (v shl 7) or (b[i].toInt() and 0x7f)
            return v
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
