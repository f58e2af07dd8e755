package ctbmobile.core

import java.io.File
import java.security.MessageDigest

/** sha256 and size of bundle files, by the contract's rule (a folder: its files by relative path). */
object BundleFiles {
    /** A plain file name inside the bundle folder: no `/`, no `..`, no leading dot. */
    val PLAIN_NAME = Regex("^[A-Za-z0-9_][A-Za-z0-9._-]*$")

    /**
     * The sha256 of a file's bytes, or of a folder (a CoreML .mlpackage): its files sorted by their
     * relative path with `/` separators, compared as UTF-8 bytes, each contributing that path's
     * UTF-8 bytes and then its bytes.
     */
    fun sha256(path: File): String {
        val digest = MessageDigest.getInstance("SHA-256")
        if (path.isDirectory) {
            for ((rel, file) in folderFiles(path)) {
                digest.update(rel.toByteArray(Charsets.UTF_8))
                update(digest, file)
            }
        } else {
            update(digest, path)
        }
        return digest.digest().joinToString("") { "%02x".format(it) }
    }

    /** The file size, or the sum over a folder's files. */
    fun size(path: File): Long =
        if (path.isDirectory) folderFiles(path).sumOf { it.second.length() } else path.length()

    private fun folderFiles(dir: File): List<Pair<String, File>> =
        dir.walkTopDown().filter { it.isFile }
            .map { it.relativeTo(dir).invariantSeparatorsPath to it }
            .sortedWith { a, b -> compareUtf8(a.first, b.first) }
            .toList()

    private fun compareUtf8(a: String, b: String): Int {
        val x = a.toByteArray(Charsets.UTF_8)
        val y = b.toByteArray(Charsets.UTF_8)
        for (i in 0 until minOf(x.size, y.size)) {
            val c = (x[i].toInt() and 0xff) - (y[i].toInt() and 0xff)
            if (c != 0) return c
        }
        return x.size - y.size
    }

    private fun update(digest: MessageDigest, file: File) {
        file.inputStream().use { input ->
            val buf = ByteArray(1 shl 16)
            while (true) {
                val n = input.read(buf)
                if (n < 0) break
                digest.update(buf, 0, n)
            }
        }
    }
}
