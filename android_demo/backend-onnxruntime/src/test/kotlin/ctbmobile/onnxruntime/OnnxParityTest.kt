package ctbmobile.onnxruntime

import com.google.gson.JsonObject
import ctbmobile.core.BranchUpdate
import ctbmobile.core.BundleException
import ctbmobile.core.BundleFiles
import ctbmobile.core.ClassificationResult
import ctbmobile.core.Golden
import ctbmobile.core.Manifest
import ctbmobile.core.MultiTaskRunner
import ctbmobile.core.RegressionResult
import ctbmobile.core.TaggingResult
import ctbmobile.core.TaskResult
import ctbmobile.core.floats
import ctbmobile.core.ints
import ctbmobile.core.toJson
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Assumptions.assumeTrue
import org.junit.jupiter.api.DynamicTest
import org.junit.jupiter.api.TestFactory
import org.junit.jupiter.api.io.TempDir
import java.io.File

/**
 * App-side parity on the real programs: every ONNX bundle given (CTB_BUNDLES) is opened with its
 * sha256 checks and run through tokenizer -> OnnxRuntimeBackend -> heads for every golden.json text;
 * the results must equal runtime_py's on the same bundle (golden.json `predictions`: labels and spans
 * exactly, scores within its tolerance.score) and the raw outputs golden.json's `outputs` within
 * tolerance.max_abs. A split bundle also has a branch replaced through updateBranch on the real runtime.
 */
class OnnxParityTest {
    @TempDir
    lateinit var tmp: File

    private val onnx: List<Pair<File, File>> get() = Golden.pairs.filter { Manifest.load(it.first, checkFiles = false).target == "onnx" }

    private fun cases(report: File) = Golden.json(File(report, "golden.json")).getAsJsonArray("cases").map { it.asJsonObject }

    @TestFactory
    fun `every golden text through the Kotlin stack equals runtime_py`(): List<DynamicTest> {
        assertTrue(onnx.isNotEmpty(), "no ONNX bundle among CTB_BUNDLES (${Golden.pairs.map { it.first.name }}); pass one to core/test.sh")
        return onnx.map { (bundle, report) -> DynamicTest.dynamicTest("app parity ${bundle.name}") { parity(bundle, report) } }
    }

    private fun parity(bundle: File, report: File) {
        val golden = Golden.json(File(report, "golden.json"))
        val tolerance = golden.getAsJsonObject("tolerance")
        val maxAbs = tolerance["max_abs"].asDouble
        val scoreTol = tolerance["score"].asDouble
        val cases = golden.getAsJsonArray("cases").map { it.asJsonObject }
        val failures = ArrayList<String>()
        var results = 0
        var labels = 0
        var labelMatches = 0
        var spanLists = 0
        var spanMatches = 0
        var maxScoreDiff = 0.0
        var maxRawDiff = 0.0
        MultiTaskRunner.open(bundle, OnnxRuntimeBackend()).use { runner ->
            val single = runner.tasks.filter { !it.pair }.map { it.name }
            for ((i, case) in cases.withIndex()) {
                val text = case["text"].asString
                val encoding = runner.tokenizer.encode(text)
                if (!encoding.ids.contentEquals(case["input_ids"].ints())) failures.add("case $i: token ids ${encoding.ids.toList()}, golden ${case["input_ids"]}")
                val got = runner.predict(text, tasks = single)
                val expected = case.getAsJsonObject("predictions")
                if (expected.keySet() != got.keys) failures.add("case $i: tasks ${got.keys}, golden ${expected.keySet()}")
                for ((name, r) in got) {
                    val e = expected.getAsJsonObject(name) ?: continue
                    results++
                    when (r) {
                        is ClassificationResult -> {
                            labels++
                            if (e["label"].asString == r.label) labelMatches++ else failures.add("case $i $name: label ${r.label}, runtime_py ${e["label"].asString}")
                            val d = Math.abs(e["score"].asDouble - r.score)
                            maxScoreDiff = maxOf(maxScoreDiff, d)
                            if (d > scoreTol) failures.add("case $i $name: score ${r.score}, runtime_py ${e["score"]} (diff $d > $scoreTol)")
                        }
                        is RegressionResult -> {
                            val d = Math.abs(e["value"].asDouble - r.value)
                            maxScoreDiff = maxOf(maxScoreDiff, d)
                            if (d > scoreTol) failures.add("case $i $name: value ${r.value}, runtime_py ${e["value"]} (diff $d > $scoreTol)")
                        }
                        is TaggingResult -> {
                            spanLists++
                            if (e["spans"] == r.toJson()["spans"]) spanMatches++ else failures.add("case $i $name: spans ${r.toJson()["spans"]}, runtime_py ${e["spans"]}")
                        }
                    }
                }
                val raw = runner.raw(encoding, single)
                for ((name, row) in raw) {
                    val want = case.getAsJsonObject("outputs")[name]?.floats() ?: continue
                    if (want.size != row.size) { failures.add("case $i $name: ${row.size} raw values, golden ${want.size}"); continue }
                    val d = row.indices.maxOfOrNull { Math.abs(row[it].toDouble() - want[it].toDouble()) } ?: 0.0
                    maxRawDiff = maxOf(maxRawDiff, d)
                    if (d > maxAbs) failures.add("case $i $name: raw output differs by $d > $maxAbs")
                }
            }
            // golden_spans.json: every case's text tokenizes to its ids here, and is one of golden.json's texts (so it ran above)
            val texts = cases.map { it["text"].asString }.toSet()
            val spanCases = Golden.json(File(report, "golden_spans.json")).getAsJsonArray("cases").map { it.asJsonObject }
            var sameIds = 0
            var ran = 0
            for (c in spanCases) {
                val text = c["text"].asString
                val ids = runner.tokenizer.encode(text, maxLength = c["max_seq_len"].asInt).ids
                if (ids.contentEquals(c["ids"].ints())) sameIds++ else failures.add("golden_spans ${c["name"].asString}: ids ${ids.toList()}, golden ${c["ids"]}")
                if (text in texts) ran++ else failures.add("golden_spans ${c["name"].asString}: its text is not among golden.json's cases; run ctb-mobile verify again")
            }
            println("app parity ${bundle.name}: ${cases.size} texts, $results task results, $labelMatches/$labels labels, " +
                "$spanMatches/$spanLists span lists, max score diff ${"%.3g".format(maxScoreDiff)}, max raw diff ${"%.3g".format(maxRawDiff)}")
            println("golden spans ${bundle.name}: $sameIds/${spanCases.size} texts give their token ids, $ran/${spanCases.size} among golden.json's texts (run above)")
        }
        failures.take(10).forEach { println("  $it") }
        assertTrue(cases.size >= 100 && results > 0, "${report.name}/golden.json has ${cases.size} cases; expected the dev texts")
        assertEquals(0, failures.size, "${bundle.name}: ${failures.size} differences from runtime_py; first: ${failures.firstOrNull()}")
    }

    @TestFactory
    fun `a split bundle's branch is replaced on the real runtime, with the fingerprint and sha256 checks`(): List<DynamicTest> {
        val split = onnx.filter { Manifest.load(it.first, checkFiles = false).layout == "split" }
        if (split.isEmpty()) { // reported as skipped, not passed
            return listOf(DynamicTest.dynamicTest("branch update") {
                assumeTrue(false, "no split ONNX bundle among CTB_BUNDLES (${onnx.map { it.first.name }}): the branch update on the real runtime did not run")
            })
        }
        return split.map { (bundle, report) -> DynamicTest.dynamicTest("branch update ${bundle.parentFile.parentFile.name}/${bundle.name}") { branchUpdate(bundle, report, split) } }
    }

    private fun branchUpdate(bundle: File, report: File, split: List<Pair<File, File>>) {
        val dir = File(tmp, "${bundle.parentFile.parentFile.name}-${bundle.name}").also { bundle.copyRecursively(it) }
        val cases = cases(report).take(60)
        MultiTaskRunner.open(dir, OnnxRuntimeBackend()).use { runner ->
            val m = runner.manifest
            val single = runner.tasks.filter { !it.pair }.map { it.name }
            fun predictions() = cases.map { c -> runner.predict(c["text"].asString, tasks = single) }
            fun json(p: List<Map<String, TaskResult>>) = p.map { r -> r.mapValues { it.value.toJson() } }
            val before = predictions()
            val task = m.tasks.first { !it.pair }
            val program = m.program(task.program)
            val newName = "${program.name}_v2"
            val file = File(dir, "$newName.onnx")
            File(dir, program.file).copyTo(file)
            val spec = program.copy(name = newName, file = file.name, files = listOf(file.name))
            val update = BranchUpdate(spec, task.copy(program = newName), BundleFiles.sha256(file))

            // (b) one hex digit of the embedded trunk fingerprint changed: same length, a valid model, refused naming the trunk
            val bytes = file.readBytes()
            val fp = m.trunkFingerprint.toByteArray()
            val at = indexOf(bytes, fp)
            assertTrue(at >= 0, "${program.file} does not embed the trunk fingerprint")
            val forged = File(dir, "${newName}_forged.onnx")
            forged.writeBytes(bytes.copyOf().also { it[at] = (if (it[at] == '0'.code.toByte()) '1' else '0').code.toByte() })
            val e1 = assertThrows(BundleException::class.java) {
                runner.updateBranch(forged, update.copy(program = spec.copy(file = forged.name, files = listOf(forged.name)), sha256 = BundleFiles.sha256(forged)))
            }
            println("refused: ${e1.message}")
            assertTrue("trunk" in e1.message!! && '\n' !in e1.message!!, e1.message)

            // (c) a wrong sha256
            val e2 = assertThrows(BundleException::class.java) { runner.updateBranch(file, update.copy(sha256 = "0".repeat(64))) }
            println("refused: ${e2.message}")
            assertTrue("sha256" in e2.message!!, e2.message)

            // (d) a branch of another store, exported for another trunk (the other split bundle, when its trunk differs)
            var otherStore = ""
            for ((other, _) in split.filter { it.first != bundle }) {
                val om = Manifest.load(other)
                val ot = om.tasks.firstOrNull { t -> m.tasks.any { it.name == t.name } } ?: continue
                if (om.trunkFingerprint == m.trunkFingerprint) {
                    // the same frozen backbone gives the same trunk fingerprint, so the contract lets its branches in
                    otherStore = "; ${other.name} has the same trunk fingerprint ${m.trunkFingerprint.take(16)} (same frozen backbone): no cross-store refusal to check"
                    continue
                }
                val op = om.program(ot.program)
                val e3 = assertThrows(BundleException::class.java) {
                    runner.updateBranch(File(other, op.file), BranchUpdate(op, ot, om.files.getValue(op.file).sha256))
                }
                println("refused: ${e3.message}")
                assertTrue("trunk" in e3.message!!, e3.message)
                otherStore = ", ${other.name}'s branch (another trunk)"
            }
            assertEquals(json(before), json(predictions()), "a refused update changed the runner")
            assertEquals(task.program, runner.tasks.first { it.name == task.name }.program)

            // (a) the task's own branch under a new name: accepted, the same predictions
            runner.updateBranch(file, update)
            assertEquals(newName, runner.tasks.first { it.name == task.name }.program)
            assertEquals(json(before), json(predictions()), "the same branch under a new name predicts the same")
            println("branch update ${bundle.name}: ${task.name} -> ${file.name} accepted, ${cases.size} texts unchanged; " +
                "forged trunk fingerprint, wrong sha256 refused$otherStore")
        }
    }

    private fun indexOf(bytes: ByteArray, key: ByteArray): Int {
        outer@ for (i in 0..bytes.size - key.size) {
            for (j in key.indices) if (bytes[i + j] != key[j]) continue@outer
            return i
        }
        return -1
    }
}
