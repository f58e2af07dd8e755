package ctbmobile.onnxruntime

import com.google.gson.GsonBuilder
import com.google.gson.JsonParser
import ctbmobile.core.BundleException
import ctbmobile.core.Golden
import ctbmobile.core.Manifest
import ctbmobile.core.MultiTaskRunner
import ctbmobile.core.TaskType
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.File

/**
 * The contract's labels_sha256 (the labels each program was exported with): a bundle's programs
 * embed it, MultiTaskRunner.open recomputes it from the manifest's labels, and a label edited in
 * manifest.json is refused. Bundles exported before the contract carried it have none; this test is
 * skipped (not passed) when no ONNX bundle given has it.
 */
class LabelsTest {
    @TempDir
    lateinit var tmp: File

    @Test
    fun `a label edited in manifest_json is refused by labels_sha256`() {
        val backend = OnnxRuntimeBackend()
        val withLabels = Golden.pairs.map { it.first }.filter { b ->
            val m = Manifest.load(b, checkFiles = false)
            m.target == "onnx" && m.programs.all { p ->
                backend.load(File(b, p.file)).use { JsonParser.parseString(it.metadata()).asJsonObject.has("labels_sha256") }
            }
        }
        println("labels_sha256: ${withLabels.size} of ${Golden.pairs.size} bundles embed it${withLabels.joinToString("") { ", " + it.name }}")
        val onnx = Golden.pairs.map { it.first }.filter { Manifest.load(it, checkFiles = false).target == "onnx" }
        assertEquals(onnx, withLabels, "every ONNX bundle embeds labels_sha256 (the runner refuses one that does not)")
        for (bundle in withLabels) {
            MultiTaskRunner.open(bundle, backend).close() // the manifest's labels hash to what every program embeds
            val dir = File(tmp, bundle.name).also { bundle.copyRecursively(it) }
            val m = Manifest.load(dir, checkFiles = false)
            val i = m.tasks.indexOfFirst { it.type != TaskType.REGRESSION && it.labels.size >= 2 }
            val f = File(dir, Manifest.FILE)
            val json = JsonParser.parseString(f.readText()).asJsonObject
            val labels = json.getAsJsonArray("tasks")[i].asJsonObject.getAsJsonArray("labels")
            val first = labels[0]
            labels[0] = labels[1]
            labels[1] = first // two labels swapped: same count, so only the hash can tell
            f.writeText(GsonBuilder().setPrettyPrinting().serializeNulls().create().toJson(json))
            val e = assertThrows(BundleException::class.java) { MultiTaskRunner.open(dir, backend) }
            println("refused: ${e.message}")
            assertTrue("labels" in e.message!! && m.tasks[i].name in e.message!!, e.message)
        }
    }
}
