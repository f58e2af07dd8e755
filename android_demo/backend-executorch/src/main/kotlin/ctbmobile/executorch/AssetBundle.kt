package ctbmobile.executorch

import android.content.Context
import ctbmobile.core.Manifest
import java.io.File
import java.security.MessageDigest

/**
 * ExecuTorch loads programs from a file path only, so the bundle shipped in the app's assets is
 * copied to app storage once per manifest (a new bundle gets a new folder), and every file's size
 * and sha256 is checked against the manifest before the copy is used.
 */
object AssetBundle {
    fun install(context: Context, assetDir: String = "bundle"): File {
        val assets = context.assets
        val manifest = assets.open("$assetDir/${Manifest.FILE}").use { it.readBytes() }
        val key = MessageDigest.getInstance("SHA-256").digest(manifest).joinToString("") { "%02x".format(it) }.take(16)
        val root = File(context.filesDir, "bundles")
        val dest = File(root, key)
        if (File(dest, ".complete").isFile) return dest
        val tmp = File(root, ".$key.partial")
        tmp.deleteRecursively()
        tmp.mkdirs()
        for (name in assets.list(assetDir).orEmpty()) {
            assets.open("$assetDir/$name").use { input -> File(tmp, name).outputStream().use { input.copyTo(it) } }
        }
        Manifest.load(tmp) // every listed file present, with its size and sha256
        File(tmp, ".complete").writeText("")
        dest.deleteRecursively()
        if (!tmp.renameTo(dest)) throw IllegalStateException("cannot move the bundle copy to $dest")
        root.listFiles()?.filter { it.name != key }?.forEach { it.deleteRecursively() } // older bundles
        return dest
    }
}
