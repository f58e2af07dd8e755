package ctbmobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/** golden.json: the bundle's recorded outputs decode to runtime_py's predictions, alone and through the runner. */
class GoldenTest {
    private val scoreTolerance = 1e-5 // outputs are rounded to 6 decimals in golden.json

    @Test
    fun `golden outputs decode to runtime_py's predictions`() {
        val m = Golden.manifest
        val tasks = m.tasks.associateBy { it.name }
        var checked = 0
        for ((i, case) in Golden.cases.withIndex()) {
            val text = case["text"].asString
            val encoding = Golden.tokenizer.encode(text)
            assertArrayEquals(case["input_ids"].ints(), encoding.ids, "case $i: token ids")
            val cps = codePoints(text)
            for ((name, expected) in case.getAsJsonObject("predictions").entrySet()) {
                val out = case.getAsJsonObject("outputs")[name].floats()
                val got = Heads.decode(tasks.getValue(name), out, encoding, cps)
                assertSameResult(expected.asJsonObject, got, scoreTolerance, "case $i task $name")
                checked++
            }
        }
        assertTrue(checked > 0, "golden.json has no predictions")
        println("golden decoding: $checked task results over ${Golden.cases.size} cases")
    }

    @Test
    fun `runner replaying the program's outputs gives runtime_py's predictions`() {
        MultiTaskRunner.open(Golden.bundle, ReplayBackend(Golden.manifest, Golden.cases)).use { runner ->
            val single = runner.tasks.filter { !it.pair }.map { it.name }
            for ((i, case) in Golden.cases.withIndex()) {
                val got = runner.predict(case["text"].asString, tasks = single)
                val expected = case.getAsJsonObject("predictions")
                assertEquals(expected.keySet(), got.keys, "case $i: tasks")
                for ((name, result) in got) assertSameResult(expected.getAsJsonObject(name), result, scoreTolerance, "case $i task $name")
            }
        }
    }
}
