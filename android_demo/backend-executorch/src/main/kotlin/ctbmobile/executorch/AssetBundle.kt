package ctbmobile.executorch

import android.content.Context
import ctbmobile.core.AssetSource
import ctbmobile.core.BundleInstaller
import java.io.File
import java.io.InputStream

/**
 * The bundle shipped in the app's assets (`assets/<assetDir>/`), installed into app storage by the
 * core's BundleInstaller (runtimes load programs from a file path): copied once per manifest, every
 * sha256 checked before a stamp is written, re-checked and repaired when a file's size or mtime no
 * longer matches the stamp. This class only adapts Android's AssetManager.
 */
object AssetBundle {
    fun install(context: Context, assetDir: String = "bundle"): File {
        val assets = context.assets
        return BundleInstaller(File(context.filesDir, "bundles")).install(object : AssetSource {
            override fun list(): List<String> = assets.list(assetDir).orEmpty().toList()
            override fun open(name: String): InputStream = assets.open("$assetDir/$name")
        })
    }
}
