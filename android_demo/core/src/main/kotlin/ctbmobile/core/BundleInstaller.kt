package ctbmobile.core

import com.google.gson.JsonObject
import com.google.gson.JsonParser
import java.io.File
import java.io.InputStream
import java.security.MessageDigest

/** Where a shipped bundle's files come from: an Android app's assets, or a folder on the JVM. */
interface AssetSource {
    /** The file names in the bundle. */
    fun list(): List<String>

    fun open(name: String): InputStream
}

/** A bundle folder as an [AssetSource]. */
class FolderAssetSource(private val dir: File) : AssetSource {
    override fun list(): List<String> = dir.list()?.sorted().orEmpty()

    override fun open(name: String): InputStream = File(dir, name).inputStream()
}

/**
 * Installs a shipped bundle into `root/<first 16 hex of the manifest's sha256>/` (a runtime such as
 * ExecuTorch loads programs from a file path only). Every file is checked against the manifest's
 * sha256 before a stamp (`.stamp`: the manifest's sha256, each file's size and mtime) is written. A
 * later install trusts the folder without hashing it only while every file still has the stamped
 * size and mtime; otherwise it checks every file again and copies again the ones that are missing or
 * differ, so a corrupted copy is repaired, and a 91 MB program is not hashed at every launch.
 * Folders of other bundles under [root] are removed.
 */
class BundleInstaller(private val root: File) {
    fun install(source: AssetSource): File {
        val manifestBytes = source.open(Manifest.FILE).use { it.readBytes() }
        val manifestSha = hex(MessageDigest.getInstance("SHA-256").digest(manifestBytes))
        val dest = File(root, manifestSha.take(16))
        val stampFile = File(dest, STAMP)
        if (stampMatches(stampFile, dest, manifestSha)) return dest

        stampFile.delete() // not trusted from here until every file is checked again
        dest.mkdirs()
        if (!dest.isDirectory) throw BundleException("cannot create the bundle folder $dest; free some storage")
        val manifestFile = File(dest, Manifest.FILE)
        if (!manifestFile.isFile || !manifestFile.readBytes().contentEquals(manifestBytes)) copy(source, Manifest.FILE, dest)
        val manifest = Manifest.load(dest, checkFiles = false)
        val shipped = source.list().toSet()
        for ((name, entry) in manifest.files) {
            val f = File(dest, name)
            if (f.isFile && f.length() == entry.bytes && BundleFiles.sha256(f) == entry.sha256) continue
            if (name !in shipped) throw BundleException("$name is listed in the manifest but not shipped with the app; embed the bundle again")
            copy(source, name, dest)
            if (f.length() != entry.bytes || BundleFiles.sha256(f) != entry.sha256) {
                f.delete()
                throw BundleException("the shipped $name does not match its sha256 in the manifest; embed the bundle again")
            }
        }
        writeStamp(stampFile, dest, manifestSha, listOf(Manifest.FILE) + manifest.files.keys)
        root.listFiles()?.filter { it.name != dest.name }?.forEach { it.deleteRecursively() } // older bundles
        return dest
    }

    private fun copy(source: AssetSource, name: String, dest: File) {
        val tmp = File(dest, ".$name.partial")
        source.open(name).use { input -> tmp.outputStream().use { input.copyTo(it) } }
        val f = File(dest, name)
        f.delete()
        if (!tmp.renameTo(f)) throw BundleException("cannot move $tmp to $f; free some storage")
    }

    private fun stampMatches(stampFile: File, dest: File, manifestSha: String): Boolean {
        if (!stampFile.isFile) return false
        val stamp: JsonObject = runCatching { JsonParser.parseString(stampFile.readText()).asJsonObject }.getOrNull() ?: return false
        if (stamp.get("manifest_sha256")?.asString != manifestSha) return false
        val files = stamp.getAsJsonObject("files") ?: return false
        if (files.size() == 0) return false
        return files.entrySet().all { (name, e) ->
            val f = File(dest, name)
            val o = e.asJsonObject
            f.isFile && f.length() == o["bytes"].asLong && f.lastModified() == o["mtime"].asLong
        }
    }

    private fun writeStamp(stampFile: File, dest: File, manifestSha: String, names: List<String>) {
        val files = JsonObject()
        for (name in names) {
            val f = File(dest, name)
            files.add(name, JsonObject().apply { addProperty("bytes", f.length()); addProperty("mtime", f.lastModified()) })
        }
        val stamp = JsonObject().apply { addProperty("manifest_sha256", manifestSha); add("files", files) }
        val tmp = File(dest, ".$STAMP.partial")
        tmp.writeText(stamp.toString())
        if (!tmp.renameTo(stampFile)) throw BundleException("cannot write $stampFile; free some storage")
    }

    private fun hex(bytes: ByteArray) = bytes.joinToString("") { "%02x".format(it) }

    companion object {
        const val STAMP = ".stamp"
    }
}
