package ctbmobile.core

import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance

/** Input rules: what Python gives for empty and very long text, one-line errors for bad input. */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class InputTest {
    private val runner = MultiTaskRunner.open(Golden.bundle, ReplayBackend(Golden.manifest, Golden.cases))
    private val single = runner.tasks.filter { !it.pair }.map { it.name }

    @AfterAll
    fun close() = runner.close()

    private fun case(text: String) = Golden.cases.firstOrNull { it["text"].asString == text }
        ?: throw AssertionError("golden.json has no case for '${text.take(40)}'")

    private fun assertPredictions(expectedCase: com.google.gson.JsonObject, got: Map<String, TaskResult>) {
        val expected = expectedCase.getAsJsonObject("predictions")
        for ((name, r) in got) assertSameResult(expected.getAsJsonObject(name), r, 1e-5, name)
    }

    @Test
    fun `empty text is CLS SEP and predicts what Python predicts`() {
        val encoding = runner.tokenizer.encode("")
        assertArrayEquals(case("")["input_ids"].ints(), encoding.ids)
        assertEquals(2, encoding.size)
        assertPredictions(case(""), runner.predict("", tasks = single))
    }

    @Test
    fun `100,000-character text is truncated quickly`() {
        val long = ("what is " + "very ".repeat(20_000)).take(100_000)
        runner.tokenizer.encode(long) // warm up
        val t0 = System.nanoTime()
        val encoding = runner.tokenizer.encode(long)
        val ms = (System.nanoTime() - t0) / 1e6
        println("tokenized 100,000 characters in %.1f ms".format(ms))
        assertEquals(runner.manifest.maxSeqLen, encoding.size)
        assertTrue(ms < 1000, "tokenizing 100,000 characters took $ms ms")
        // the same tokens as the golden edge case "what is very very ... long" after truncation
        val golden = Golden.cases.first { it["text"].asString.startsWith("what is very very") }
        assertArrayEquals(golden["input_ids"].ints(), encoding.ids)
        assertPredictions(golden, runner.predict(long, tasks = single))
    }

    @Test
    fun `an unpaired surrogate is an input error`() {
        val e = assertThrows(InputException::class.java) { runner.predict("wake me \uD800 up", tasks = single) }
        assertTrue("surrogate" in e.message!!, e.message)
    }

    @Test
    fun `an unknown task is an input error`() {
        val e = assertThrows(InputException::class.java) { runner.predict("hello", tasks = listOf("no_such_task")) }
        assertTrue("no_such_task" in e.message!!, e.message)
    }
}
