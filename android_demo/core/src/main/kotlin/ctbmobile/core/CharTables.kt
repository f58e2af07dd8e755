package ctbmobile.core

import com.google.gson.JsonArray
import com.google.gson.JsonElement
import com.google.gson.JsonPrimitive
import java.io.File

/**
 * The tokenizer's character classes from `tokenizer_tables.json`, read off Hugging Face `tokenizers`
 * by probing every code point. Nothing here asks the JDK what a character is. One byte of flags per
 * code point (1.1 MB) keeps every lookup O(1).
 */
class CharTables internal constructor(private val flags: ByteArray, private val map: Map<Int, IntArray>) {
    /** What the normaliser makes of one code point, appended to [out] (nothing when it is deleted). */
    internal fun normalize(cp: Int, out: IntList) {
        val f = flags[cp].toInt()
        when {
            f and REMOVE != 0 -> Unit
            f and SPACE != 0 -> out.add(0x20)
            f and PAD != 0 -> { out.add(0x20); out.add(cp); out.add(0x20) }
            f and MAP != 0 -> for (c in map.getValue(cp)) out.add(c)
            else -> out.add(cp)
        }
    }

    /** The pre-tokenizer splits at it and drops it. */
    fun isWhitespace(cp: Int): Boolean = flags[cp].toInt() and WHITESPACE != 0

    /** The pre-tokenizer isolates it as a one-code-point word. */
    fun isPunctuation(cp: Int): Boolean = flags[cp].toInt() and PUNCTUATION != 0

    /**
     * It separates words in the original text (CONTRACT.md, "Words and spans"): the normaliser makes
     * it a space, or the pre-tokenizer splits at it and the normaliser keeps it.
     */
    fun isWordBreak(cp: Int): Boolean {
        val f = flags[cp].toInt()
        return f and SPACE != 0 || (f and WHITESPACE != 0 && f and REMOVE == 0)
    }

    companion object {
        private const val REMOVE = 1
        private const val SPACE = 2
        private const val PAD = 4
        private const val MAP = 8
        private const val WHITESPACE = 16
        private const val PUNCTUATION = 32

        fun load(file: File): CharTables {
            val root = Node(readJsonObject(file), "${file.name}:")
            if (root.int("schema_version") != 1) {
                throw BundleException("${file.name}: schema_version ${root.int("schema_version")} is not 1; export the bundle again")
            }
            val flags = ByteArray(0x110000)
            for ((key, flag) in listOf("remove" to REMOVE, "space" to SPACE, "pad" to PAD, "whitespace" to WHITESPACE, "punctuation" to PUNCTUATION)) {
                root.array(key).forEachIndexed { i, e ->
                    val r = range(e) { "${file.name}: $key[$i]" }
                    for (cp in r[0]..r[1]) flags[cp] = (flags[cp].toInt() or flag).toByte()
                }
            }
            val map = HashMap<Int, IntArray>()
            for ((k, v) in root.obj("map").json.entrySet()) {
                val cp = k.toIntOrNull()?.takeIf { it in 0..0x10FFFF } ?: throw BundleException("${file.name}: map key '$k' is not a code point")
                if (v !is JsonArray) throw BundleException("${file.name}: map.$k must be an array of code points")
                map[cp] = IntArray(v.size()) { i -> codePoint(v[i]) { "${file.name}: map.$k[$i]" } }
                flags[cp] = (flags[cp].toInt() or MAP).toByte()
            }
            return CharTables(flags, map)
        }

        private fun range(e: JsonElement, where: () -> String): IntArray {
            if (e !is JsonArray || e.size() != 2) throw BundleException("${where()} must be [first, last]")
            val r = intArrayOf(codePoint(e[0], where), codePoint(e[1], where))
            if (r[0] > r[1]) throw BundleException("${where()} is an empty range")
            return r
        }

        private fun codePoint(e: JsonElement, where: () -> String): Int {
            if (e !is JsonPrimitive || !e.isNumber) throw BundleException("${where()} must hold code points")
            val v = e.asLong
            if (v < 0 || v > 0x10FFFF) throw BundleException("${where()} holds $v, not a code point")
            return v.toInt()
        }
    }
}

/** A growable IntArray. */
internal class IntList(capacity: Int = 16) {
    var data = IntArray(maxOf(capacity, 4))
        private set
    var size = 0
        private set

    fun add(v: Int) {
        if (size == data.size) data = data.copyOf(size * 2)
        data[size++] = v
    }

    operator fun get(i: Int) = data[i]

    fun clear() { size = 0 }

    fun truncate(n: Int) { if (n < size) size = n }

    fun toArray(): IntArray = data.copyOf(size)
}
