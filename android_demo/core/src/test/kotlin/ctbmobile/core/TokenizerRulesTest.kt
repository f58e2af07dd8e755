package ctbmobile.core

import com.google.gson.JsonObject
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.File

/** One tokenizer rule for every app: the vocabulary is vocab.txt, the post-processor TemplateProcessing. */
class TokenizerRulesTest {
    @TempDir
    lateinit var tmp: File

    private fun editTokenizer(edit: (JsonObject) -> Unit): File {
        val dir = Golden.copyOfBundle(tmp)
        val f = File(dir, Golden.manifest.tokenizer.file)
        f.writeText(Golden.json(f).also(edit).toString())
        return dir
    }

    private fun load(dir: File): WordPieceTokenizer {
        val t = Golden.manifest.tokenizer
        return WordPieceTokenizer.load(File(dir, t.file), File(dir, t.tables), File(dir, t.vocab))
    }

    @Test
    fun `the vocabulary comes from vocab_txt, not tokenizer_json's model vocab`() {
        // tokenizer.json's model.vocab emptied of every token but [UNK]: the ids must still be golden.json's
        val dir = editTokenizer { root ->
            val model = root.getAsJsonObject("model")
            val unk = model["unk_token"].asString
            model.add("vocab", JsonObject().apply { addProperty(unk, 0) })
        }
        val tokenizer = load(dir)
        for (case in Golden.cases) assertArrayEquals(case["input_ids"].ints(), tokenizer.encode(case["text"].asString).ids, case["text"].asString)
    }

    @Test
    fun `a BertProcessing post-processor is refused`() {
        val dir = editTokenizer { root ->
            root.add("post_processor", JsonObject().apply { addProperty("type", "BertProcessing") })
        }
        val e = assertThrows(BundleException::class.java) { load(dir) }
        assertTrue("BertProcessing" in e.message!! && "TemplateProcessing" in e.message!!, e.message)
    }

    @Test
    fun `a missing vocab_txt is refused by name`() {
        val dir = Golden.copyOfBundle(tmp)
        File(dir, Golden.manifest.tokenizer.vocab).delete()
        val e = assertThrows(BundleException::class.java) { load(dir) }
        assertTrue(Golden.manifest.tokenizer.vocab in e.message!!, e.message)
    }
}
