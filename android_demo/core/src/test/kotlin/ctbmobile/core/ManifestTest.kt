package ctbmobile.core

import com.google.gson.GsonBuilder
import com.google.gson.JsonObject
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.File

/** The manifest checks, on the real bundle and on broken copies of it. */
class ManifestTest {
    @TempDir
    lateinit var tmp: File

    private fun assertRefused(dir: File, vararg words: String) {
        val e = assertThrows(BundleException::class.java) { MultiTaskRunner.open(dir, ReplayBackend(Golden.manifest, Golden.cases)) }
        val message = e.message!!
        println("refused: $message")
        assertFalse('\n' in message, "one line: $message")
        for (w in words) assertTrue(w in message, "'$w' not in: $message")
    }

    private fun editManifest(dir: File, edit: (JsonObject) -> Unit) {
        val f = File(dir, Manifest.FILE)
        val json = Golden.json(f).also(edit)
        f.writeText(GsonBuilder().setPrettyPrinting().create().toJson(json))
    }

    @Test
    fun `the real bundle passes every check and is the one verify passed`() {
        val m = Golden.manifest
        assertTrue(m.needed.all { it in m.files }, "needed files listed")
        for (t in m.tasks.filter { it.type != TaskType.REGRESSION }) {
            val out = m.program(t.program).outputs.first { it.name == t.output }
            assertEquals(t.labels.size, out.dims.last().size, "task ${t.name}: labels vs output size")
        }
        val verify = Golden.report("verify.json")
        assertTrue(verify["ok"].asBoolean, "verify.json says the bundle failed verification")
        assertEquals(verify["manifest_sha256"].asString, BundleFiles.sha256(File(Golden.bundle, Manifest.FILE)), "verify.json is for another manifest")
        MultiTaskRunner.open(Golden.bundle, ReplayBackend(m, Golden.cases)).close()
    }

    @Test
    fun `a missing bundle file is refused by name`() {
        val dir = Golden.copyOfBundle(tmp)
        File(dir, Golden.manifest.tokenizer.vocab).delete()
        assertRefused(dir, Golden.manifest.tokenizer.vocab, "missing")
    }

    @Test
    fun `a sha256 mismatch is refused by name`() {
        val dir = Golden.copyOfBundle(tmp)
        val f = File(dir, Golden.manifest.tokenizer.tables)
        val bytes = f.readBytes()
        val i = bytes.indexOfLast { it == '0'.code.toByte() }
        bytes[i] = '1'.code.toByte() // same size, other bytes
        f.writeBytes(bytes)
        assertRefused(dir, Golden.manifest.tokenizer.tables, "sha256")
    }

    @Test
    fun `an unknown schema version is refused`() {
        val dir = Golden.copyOfBundle(tmp)
        editManifest(dir) { it.addProperty("schema_version", 3) }
        assertRefused(dir, "schema_version", "3")
    }

    @Test
    fun `a missing required field is refused by name`() {
        val dir = Golden.copyOfBundle(tmp)
        editManifest(dir) { it.getAsJsonArray("programs")[0].asJsonObject.remove("outputs") }
        assertRefused(dir, "programs[0].outputs", "missing")
    }

    @Test
    fun `an output count that differs from the manifest is refused`() {
        val e = assertThrows(BundleException::class.java) {
            MultiTaskRunner.open(Golden.bundle, ReplayBackend(Golden.manifest, Golden.cases, dropLastOutput = true))
        }
        println("refused: ${e.message}")
        assertTrue("outputs" in e.message!! && "manifest lists" in e.message!!, e.message)
    }
}
