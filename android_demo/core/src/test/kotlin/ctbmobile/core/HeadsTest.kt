package ctbmobile.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test
import kotlin.math.exp

/** Known answers for the heads that the golden files may not exercise. */
class HeadsTest {
    private val regression = TaskSpec("stsb", TaskType.REGRESSION, "model", "stsb", emptyList(), 4, true)
    private val empty = Encoding(IntArray(0), IntArray(0), IntArray(0), IntArray(0), IntArray(0), IntArray(0))

    @Test
    fun `regression is the output's single number`() {
        assertEquals(RegressionResult(3.25), Heads.decode(regression, floatArrayOf(3.25f), empty, IntArray(0)))
    }

    @Test
    fun `classification takes the first argmax and softmax in float64`() {
        val r = Heads.classify(listOf("a", "b", "c"), floatArrayOf(1f, 3f, 3f))
        assertEquals("b", r.label)
        assertEquals(1.0 / (exp(-2.0) + 2.0), r.score, 1e-15)
    }

    @Test
    fun `BIO over words as seqeval's get_entities`() {
        val text = codePoints("a b c d e f")
        val tags = listOf("I-x", "I-x", "B-x", "I-y", "O", "B-")
        val starts = listOf(0, 2, 4, 6, 8, 10)
        val spans = Heads.spans(tags, starts, starts.map { it + 1 }, text)
        assertEquals(listOf(Span("x", 0, 3, "a b"), Span("x", 4, 5, "c"), Span("y", 6, 7, "d")), spans)
    }
}
