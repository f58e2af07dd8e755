package ctbmobile.onnxruntime

import ctbmobile.core.Golden
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.io.File

/** predict's JSON writes numbers and strings as Python's json.dumps does: checked on the toolchain's own golden.json text. */
class PyJsonTest {
    @Test
    fun `every score in golden_json is written back as Python wrote it`() {
        val file = File(Golden.report, "golden.json")
        val text = file.readText()
        val scores = Regex(""""score": (-?[0-9][0-9.eE+-]*)""").findAll(text).map { it.groupValues[1] }.toList()
        assertTrue(scores.size >= 100, "${file.path} has ${scores.size} scores")
        val wrong = scores.filter { PyJson.num(it.toDouble()) != it }
        assertEquals(emptyList<String>(), wrong.take(5), "${wrong.size} of ${scores.size} scores written otherwise")
        println("python float repr: ${scores.size}/${scores.size} golden scores")
    }

    @Test
    fun `strings are escaped as json_dumps with ensure_ascii`() {
        // golden.json's texts and span texts as Python wrote them (ensure_ascii): each is written back byte for byte
        val text = File(Golden.report, "golden.json").readText()
        val written = Regex(""""text": ("(?:[^"\\]|\\.)*")""").findAll(text).map { it.groupValues[1] }.toList()
        val parsed = Golden.cases.flatMap { c ->
            listOf(c["text"].asString) + c.getAsJsonObject("predictions").entrySet().flatMap { (_, r) ->
                r.asJsonObject.getAsJsonArray("spans")?.map { it.asJsonObject["text"].asString }.orEmpty()
            }
        }
        val mine = parsed.map { PyJson.str(it, ensureAscii = true) }.toSet()
        val missing = written.filter { it !in mine }
        println("python string escapes: ${written.size - missing.size}/${written.size} golden texts")
        assertTrue(written.isNotEmpty())
        assertEquals(emptyList<String>(), missing.take(5))
    }
}
