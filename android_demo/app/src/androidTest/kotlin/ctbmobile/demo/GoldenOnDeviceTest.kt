package ctbmobile.demo

import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import ctbmobile.core.ClassificationResult
import ctbmobile.core.MultiTaskRunner
import ctbmobile.core.RegressionResult
import ctbmobile.core.TaggingResult
import ctbmobile.executorch.AssetBundle
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import kotlin.math.abs

/**
 * golden.json's rows through the real program (.pte or .onnx, as the manifest's target says) on a
 * device: the same token ids, every output within 1e-3 of what `ctb-mobile verify` recorded, and the
 * same predictions (scores within 1e-3).
 */
@RunWith(AndroidJUnit4::class)
class GoldenOnDeviceTest {
    private val tolerance = 1e-3

    @Test
    fun goldenRowsThroughTheRealProgram() {
        val instrumentation = InstrumentationRegistry.getInstrumentation()
        val golden = instrumentation.context.assets.open("golden/golden.json").reader().use { JsonParser.parseReader(it).asJsonObject }
        val tasks = golden.getAsJsonArray("tasks").map { it.asString }
        val cases = golden.getAsJsonArray("cases").map { it.asJsonObject }
        assertTrue("golden.json has no cases", cases.isNotEmpty())
        MultiTaskRunner.openFor(AssetBundle.install(instrumentation.targetContext), BACKENDS).use { runner ->
            for ((i, case) in cases.withIndex()) {
                val text = case["text"].asString
                val encoding = runner.tokenizer.encode(text)
                assertArrayEquals("case $i ids", case["input_ids"].asJsonArray.map { it.asInt }.toIntArray(), encoding.ids)
                val raw = runner.raw(encoding, tasks)
                for (task in tasks) {
                    val expected = flatten(case.getAsJsonObject("outputs")[task])
                    val got = raw.getValue(task)
                    assertEquals("case $i $task output size", expected.size, got.size)
                    val diff = expected.indices.maxOfOrNull { abs(expected[it] - got[it]) } ?: 0.0
                    assertTrue("case $i $task: outputs differ by $diff", diff <= tolerance)
                }
                val predictions = runner.predict(text, tasks = tasks)
                for (task in tasks) assertSame(case.getAsJsonObject("predictions").getAsJsonObject(task), predictions.getValue(task), "case $i $task")
            }
        }
    }

    private fun assertSame(expected: JsonObject, got: ctbmobile.core.TaskResult, where: String) {
        when (got) {
            is ClassificationResult -> {
                assertEquals("$where label", expected["label"].asString, got.label)
                assertEquals("$where score", expected["score"].asDouble, got.score, tolerance)
            }
            is RegressionResult -> assertEquals("$where value", expected["value"].asDouble, got.value, tolerance)
            is TaggingResult -> {
                val spans = expected.getAsJsonArray("spans").map { it.asJsonObject }
                assertEquals("$where spans", spans.map { listOf(it["label"].asString, it["start"].asInt, it["end"].asInt, it["text"].asString) },
                    got.spans.map { listOf(it.label, it.start, it.end, it.text) })
            }
        }
    }

    private fun flatten(e: com.google.gson.JsonElement): DoubleArray {
        val out = ArrayList<Double>()
        fun walk(x: com.google.gson.JsonElement) {
            if (x.isJsonArray) x.asJsonArray.forEach { walk(it) } else out.add(x.asDouble)
        }
        walk(e)
        return out.toDoubleArray()
    }
}
