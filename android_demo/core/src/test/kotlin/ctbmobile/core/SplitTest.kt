package ctbmobile.core

import com.google.gson.Gson
import com.google.gson.GsonBuilder
import com.google.gson.JsonArray
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.File

/**
 * Split layout and branch updates. The tests are given one fused bundle, and the JVM cannot run
 * .pte programs, so this builds a small split bundle in a temporary folder: the real bundle's
 * tokenizer files, and fake program files whose bytes are their embedded metadata plus what the
 * fake backend computes from them. Every sha256 in its manifest is computed here, so the file,
 * fingerprint and shape checks run on real files.
 */
class SplitTest {
    private val trunk = "1".repeat(64)
    private val otherTrunk = "2".repeat(64)
    private val tokenizerFingerprint = Golden.manifest.tokenizer.fingerprint
    private val seqLen = Golden.manifest.maxSeqLen
    @TempDir
    lateinit var dir: File
    private val backend = FakeBackend()

    /** Fake programs: the trunk outputs hidden_<d>[t][j] = 1000 d + id_t; a classification branch puts 1 at
     * (hidden[0][0] / 1000) mod labels (its attach depth), a tagging branch tags every token with label 1. */
    private class FakeBackend : TrunkBackend {
        val open = mutableMapOf<String, Boolean>()

        override fun load(file: File): LoadedProgram {
            val text = file.readText()
            val spec = JsonParser.parseString(text).asJsonObject
            val program = spec["program"].asString
            open[file.name] = true
            return object : LoadedProgram {
                override fun run(inputs: List<Tensor>): List<Tensor> {
                    if (program == "trunk") {
                        val ids = (inputs[0] as Tensor.Int64).data
                        val n = ids.size
                        return spec["depths"].asJsonArray.map { d ->
                            Tensor.Float32(intArrayOf(1, n, 4), FloatArray(n * 4) { 1000f * d.asInt + ids[it / 4] })
                        }
                    }
                    val hidden = inputs[0] as Tensor.Float32
                    val mask = inputs[1] as Tensor.Int64
                    check(mask.data.all { it == 1L } && mask.shape[1] == hidden.shape[1])
                    val labels = spec["labels"].asInt
                    return if (spec["kind"].asString == "classification") {
                        listOf(Tensor.Float32(intArrayOf(1, labels), FloatArray(labels) { if (it == (hidden.data[0] / 1000).toInt() % labels) 1f else 0f }))
                    } else {
                        val n = hidden.shape[1]
                        listOf(Tensor.Float32(intArrayOf(1, n, labels), FloatArray(n * labels) { if (it % labels == 1) 1f else 0f }))
                    }
                }

                override fun metadata() = text

                override fun close() { open[file.name] = false }
            }
        }
    }

    private fun dims(vararg last: Int) = JsonArray().apply {
        add(JsonObject().apply { addProperty("name", "batch"); addProperty("min", 1); addProperty("max", 64) })
        add(JsonObject().apply { addProperty("name", "seq"); addProperty("min", 1); addProperty("max", seqLen) })
        last.forEach { s -> add(JsonObject().apply { addProperty("size", s) }) }
    }

    private fun tensor(name: String, dtype: String, dims: JsonArray, index: Int? = null, task: String? = null) = JsonObject().apply {
        addProperty("name", name)
        index?.let { addProperty("index", it); addProperty("task", task) } // outputs: task null for a trunk hidden state
        addProperty("dtype", dtype)
        add("dims", dims)
    }

    private fun program(name: String, inputs: List<JsonObject>, outputs: List<JsonObject>) = JsonObject().apply {
        addProperty("name", name); addProperty("file", "$name.pte"); add("files", JsonArray().apply { add("$name.pte") })
        addProperty("precision", "fp32")
        add("inputs", JsonArray().apply { inputs.forEach { add(it) } })
        add("outputs", JsonArray().apply { outputs.forEach { add(it) } })
    }

    private fun trunkProgram() = program(
        "trunk",
        listOf("input_ids", "attention_mask", "token_type_ids").map { tensor(it, "int64", dims()) },
        listOf(tensor("hidden_2", "float32", dims(4), 0).apply { addProperty("depth", 2) },
            tensor("hidden_3", "float32", dims(4), 1).apply { addProperty("depth", 3) }),
    )

    private fun branchProgram(task: String, outDims: JsonArray) = program(
        "branch_$task",
        listOf(tensor("hidden", "float32", dims(4)), tensor("attention_mask", "int64", dims())),
        listOf(tensor(task, "float32", outDims, 0, task)),
    )

    private fun task(name: String, type: String, labels: List<String>, attach: Int) = JsonObject().apply {
        addProperty("name", name); addProperty("type", type); addProperty("program", "branch_$name"); addProperty("output", name)
        add("labels", JsonArray().apply { labels.forEach { add(it) } }); addProperty("attach", attach); addProperty("pair", false)
        addProperty("layers", 1); addProperty("precision", "fp32")
    }

    /** Writes a fake program file (its embedded metadata and its behaviour); returns its sha256. */
    private fun writeProgram(file: File, program: String, fingerprint: String, outputs: List<String>, extra: Map<String, Any>,
                             labels: Map<String, List<String>> = emptyMap()): String {
        val meta = mapOf("target" to "android", "program" to program, "trunk_fingerprint" to fingerprint,
            "tokenizer_fingerprint" to tokenizerFingerprint, "outputs" to outputs, "tasks" to outputs,
            "labels_sha256" to labelsSha256(labels)) + extra
        file.writeText(Gson().toJson(meta))
        return BundleFiles.sha256(file)
    }

    private val intentLabels = listOf("a", "b", "c")
    private val slotLabels = listOf("O", "B-x", "I-x")

    private fun bundle(): File {
        val files = JsonObject()
        fun list(name: String, file: File = File(dir, name)) = files.add(name, JsonObject().apply {
            addProperty("sha256", BundleFiles.sha256(file)); addProperty("bytes", file.length())
        })
        val t = Golden.manifest.tokenizer
        for (name in listOf(t.file, t.vocab, t.tables)) {
            File(Golden.bundle, name).copyTo(File(dir, name), overwrite = true)
            list(name)
        }
        writeProgram(File(dir, "trunk.pte"), "trunk", trunk, listOf("hidden_2", "hidden_3"), mapOf("depths" to listOf(2, 3)))
        writeProgram(File(dir, "branch_intent.pte"), "branch_intent", trunk, listOf("intent"), mapOf("kind" to "classification", "labels" to 3),
            mapOf("intent" to intentLabels))
        writeProgram(File(dir, "branch_slots.pte"), "branch_slots", trunk, listOf("slots"), mapOf("kind" to "tagging", "labels" to 3),
            mapOf("slots" to slotLabels))
        listOf("trunk.pte", "branch_intent.pte", "branch_slots.pte").forEach { list(it) }
        val real = Golden.json(File(Golden.bundle, Manifest.FILE))
        val manifest = JsonObject().apply {
            addProperty("schema_version", 2); addProperty("target", "android"); addProperty("layout", "split")
            addProperty("precision", "fp32"); addProperty("trunk_fingerprint", trunk); addProperty("max_seq_len", seqLen)
            addProperty("toolchain_version", "test"); addProperty("backbone", "fake")
            add("tokenizer", real["tokenizer"])
            add("programs", JsonArray().apply {
                add(trunkProgram()); add(branchProgram("intent", dims().apply { remove(1); add(JsonObject().apply { addProperty("size", 3) }) }))
                add(branchProgram("slots", dims(3)))
            })
            add("tasks", JsonArray().apply {
                add(task("intent", "classification", intentLabels, 2)); add(task("slots", "tagging", slotLabels, 3))
            })
            add("files", files)
        }
        File(dir, Manifest.FILE).writeText(GsonBuilder().serializeNulls().create().toJson(manifest))
        return dir
    }

    private fun update(fingerprint: String, labels: List<String>, corruptSha: Boolean = false): Pair<File, BranchUpdate> {
        val file = File(dir, "new_branch_intent.pte")
        val sha = writeProgram(file, "branch_intent", fingerprint, listOf("intent"), mapOf("kind" to "classification", "labels" to labels.size),
            mapOf("intent" to labels))
        val outDims = dims().apply { remove(1); add(JsonObject().apply { addProperty("size", labels.size) }) }
        val program = Manifest.program(Node(branchProgram("intent", outDims), "update"))
        val task = Manifest.task(Node(task("intent", "classification", labels, 2), "update"))
        return file to BranchUpdate(program, task, if (corruptSha) sha.reversed() else sha)
    }

    private val expectedSlots = TaggingResult(listOf(Span("x", 0, 4, "wake"), Span("x", 5, 7, "me"), Span("x", 8, 10, "up")))

    @Test
    fun `split runner runs the trunk then each branch on its attach depth`() {
        MultiTaskRunner.open(bundle(), backend).use { runner ->
            val got = runner.predict("wake me up")
            assertEquals(ClassificationResult("c", 1.0 / (1.0 + 2.0 / Math.E)), got["intent"])
            assertEquals(expectedSlots, got["slots"])
        }
    }

    @Test
    fun `a branch exported for another trunk is refused and the runner is unchanged`() {
        MultiTaskRunner.open(bundle(), backend).use { runner ->
            val before = runner.predict("wake me up")
            val (file, update) = update(otherTrunk, listOf("w", "x", "y", "z"))
            val e = assertThrows(BundleException::class.java) { runner.updateBranch(file, update) }
            println("refused: ${e.message}")
            assertTrue("trunk" in e.message!!, e.message)
            assertEquals(before, runner.predict("wake me up"))
            assertEquals(intentLabels, runner.tasks.first { it.name == "intent" }.labels)
            assertFalse(backend.open.getValue(file.name), "the refused program is closed")
            assertTrue(backend.open.getValue("branch_intent.pte"), "the old branch is still loaded")
        }
    }

    @Test
    fun `a branch whose sha256 differs is refused`() {
        MultiTaskRunner.open(bundle(), backend).use { runner ->
            val before = runner.predict("wake me up")
            val (file, update) = update(trunk, listOf("w", "x", "y", "z"), corruptSha = true)
            val e = assertThrows(BundleException::class.java) { runner.updateBranch(file, update) }
            assertTrue("sha256" in e.message!!, e.message)
            assertEquals(before, runner.predict("wake me up"))
        }
    }

    @Test
    fun `updateBranch swaps one task and leaves the others`() {
        MultiTaskRunner.open(bundle(), backend).use { runner ->
            val (file, update) = update(trunk, listOf("w", "x", "y", "z"))
            runner.updateBranch(file, update)
            val got = runner.predict("wake me up")
            assertEquals("y", (got["intent"] as ClassificationResult).label) // depth 2 of 4 labels
            assertEquals(expectedSlots, got["slots"])
            assertFalse(backend.open.getValue("branch_intent.pte"), "the replaced branch is closed")
            assertTrue(backend.open.getValue("branch_slots.pte"), "the other branch is untouched")
        }
    }
}
