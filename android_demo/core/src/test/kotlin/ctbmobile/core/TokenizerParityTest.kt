package ctbmobile.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/** Every case of golden_tokenizer.json: ids, type ids, offsets and sequence ids exactly as Hugging Face `tokenizers`. */
class TokenizerParityTest {
    @Test
    fun `tokenizer parity with Hugging Face tokenizers`() {
        val golden = Golden.report("golden_tokenizer.json")
        val tokenizer = Golden.tokenizer
        assertEquals(Golden.manifest.maxSeqLen, golden["max_seq_len"].asInt, "golden_tokenizer.json is for another max_seq_len")
        val cases = golden.getAsJsonArray("cases").map { it.asJsonObject }
        val failures = ArrayList<String>()
        for ((i, case) in cases.withIndex()) {
            val text = case["text"].asString
            val pair = case["pair"]?.takeIf { !it.isJsonNull }?.asString
            val e = tokenizer.encode(text, pair)
            val offsets = case.getAsJsonArray("offsets").map { it.ints() }
            val sequenceIds = case.getAsJsonArray("sequence_ids").map { if (it.isJsonNull) -1 else it.asInt }.toIntArray()
            val same = e.ids.contentEquals(case["ids"].ints()) && e.typeIds.contentEquals(case["type_ids"].ints()) &&
                e.starts.contentEquals(offsets.map { it[0] }.toIntArray()) && e.ends.contentEquals(offsets.map { it[1] }.toIntArray()) &&
                e.sequenceIds.contentEquals(sequenceIds)
            if (!same) {
                failures.add("case $i (${case["group"]?.asString}) ${quote(text)}${pair?.let { " + " + quote(it) } ?: ""}: " +
                    "ids ${e.ids.toList()} expected ${case["ids"]}; offsets ${e.starts.indices.map { listOf(e.starts[it], e.ends[it]) }} expected ${case["offsets"]}")
            }
        }
        println("tokenizer parity: ${cases.size - failures.size}/${cases.size}")
        failures.take(10).forEach { println("  $it") }
        assertTrue(cases.size >= 2000, "golden_tokenizer.json has ${cases.size} cases, the contract says at least 2,000")
        assertEquals(0, failures.size, "${failures.size} of ${cases.size} cases differ; first: ${failures.firstOrNull()}")
    }

    private fun quote(s: String) = "'" + s.take(60).codePoints().toArray().joinToString("") { cp ->
        if (cp < 0x20 || cp in 0x7f..0x9f) "\\x%02x".format(cp) else String(Character.toChars(cp))
    } + "'"
}
