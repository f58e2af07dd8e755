package ctbmobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/**
 * golden_spans.json: the hand-written known-answer span cases. Each is tokenized at its own
 * max_seq_len, its per-token label ids become one-hot logits, and the tagging head must give the
 * expected spans.
 */
class SpanCasesTest {
    @Test
    fun `known-answer span cases`() {
        val golden = Golden.report("golden_spans.json")
        val labels = golden.getAsJsonArray("labels").map { it.asString }
        val cases = golden.getAsJsonArray("cases").map { it.asJsonObject }
        assertTrue(cases.isNotEmpty(), "golden_spans.json has no cases")
        for (case in cases) {
            val name = case["name"].asString
            val text = case["text"].asString
            val e = Golden.tokenizer.encode(text, maxLength = case["max_seq_len"].asInt)
            assertArrayEquals(case["ids"].ints(), e.ids, "$name: token ids")
            val labelIds = case["label_ids"].ints()
            val logits = FloatArray(e.size * labels.size).also { l -> labelIds.forEachIndexed { k, id -> l[k * labels.size + id] = 1f } }
            val got = TaggingResult(Heads.tag(labels, logits, e, codePoints(text))).toJson()["spans"]
            assertEquals(case["spans"], got, "$name: spans")
        }
        println("span cases: ${cases.size}/${cases.size}")
    }
}
