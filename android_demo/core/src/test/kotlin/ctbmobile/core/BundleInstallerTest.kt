package ctbmobile.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.File
import java.io.InputStream

/** BundleInstaller on the real bundle: installs once, trusts its stamp, repairs a corrupted copy. */
class BundleInstallerTest {
    @TempDir
    lateinit var root: File

    /** The real bundle folder as the app's assets, counting the files read from it. */
    private class CountingSource(dir: File) : AssetSource {
        private val inner = FolderAssetSource(dir)
        val opened = mutableListOf<String>()
        override fun list() = inner.list()
        override fun open(name: String): InputStream = inner.open(name).also { opened.add(name) }
    }

    private fun opens(dir: File) = MultiTaskRunner.open(dir, ReplayBackend(Golden.manifest, Golden.cases)).close()

    @Test
    fun `install, trust the stamp, then repair a corrupted program file`() {
        val source = CountingSource(Golden.bundle)
        val installer = BundleInstaller(root)
        val dir = installer.install(source)
        val m = Golden.manifest
        assertEquals(m.files.keys + Manifest.FILE, source.opened.toSet(), "the first install copies every listed file")
        assertTrue(File(dir, BundleInstaller.STAMP).isFile, "a stamp after the check")
        opens(dir)

        source.opened.clear()
        assertEquals(dir, installer.install(source))
        assertEquals(listOf(Manifest.FILE), source.opened, "an intact install reads only the shipped manifest")

        // one byte of the (largest) program file changes, same size, another mtime: as storage corruption looks
        val program = File(dir, m.programs.first().file)
        val bytes = program.readBytes()
        val i = bytes.size / 2
        bytes[i] = (bytes[i] + 1).toByte()
        program.writeBytes(bytes)
        program.setLastModified(program.lastModified() - 10_000)
        assertNotEquals(m.files.getValue(program.name).sha256, BundleFiles.sha256(program))

        source.opened.clear()
        assertEquals(dir, installer.install(source))
        assertEquals(listOf(Manifest.FILE, program.name), source.opened, "only the bad file is copied again")
        assertEquals(m.files.getValue(program.name).sha256, BundleFiles.sha256(program), "repaired")
        opens(dir)
    }

    @Test
    fun `a missing installed file is copied again and an older bundle's folder is removed`() {
        val old = File(root, "0123456789abcdef").apply { mkdirs(); File(this, "model.bin").writeText("old") }
        val installer = BundleInstaller(root)
        val dir = installer.install(FolderAssetSource(Golden.bundle))
        assertFalse(old.exists(), "the older bundle's folder is gone")
        File(dir, Golden.manifest.tokenizer.vocab).delete()
        installer.install(FolderAssetSource(Golden.bundle))
        opens(dir)
    }
}
