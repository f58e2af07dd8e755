package ctbmobile.core

import com.google.gson.JsonArray
import com.google.gson.JsonElement
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import com.google.gson.JsonPrimitive
import java.io.File

/** Reads a JSON file; a missing or malformed file is a [BundleException] naming it. */
internal fun readJsonObject(file: File): JsonObject {
    if (!file.isFile) throw BundleException("${file.name} is missing in ${file.parentFile}")
    val root = try {
        file.bufferedReader(Charsets.UTF_8).use { JsonParser.parseReader(it) }
    } catch (e: Exception) {
        throw BundleException("${file.name} is not valid JSON (${e.message?.lineSequence()?.first()})")
    }
    if (!root.isJsonObject) throw BundleException("${file.name} is not a JSON object")
    return root.asJsonObject
}

/**
 * A JSON object with its path (`manifest.json: programs[0]`), so that every missing or mistyped
 * field is reported by name.
 */
internal class Node(val json: JsonObject, val path: String) {
    private fun field(key: String) = if (path.endsWith(":")) "$path $key" else "$path.$key"

    private fun get(key: String): JsonElement {
        val v = json.get(key)
        if (v == null || v.isJsonNull) throw BundleException("${field(key)} is missing")
        return v
    }

    fun has(key: String): Boolean = json.get(key)?.isJsonNull == false

    /** A required key whose value may be null. */
    fun nullableStr(key: String): String? {
        if (!json.has(key)) throw BundleException("${field(key)} is missing")
        return optStr(key)
    }

    private fun fail(key: String, what: String): Nothing = throw BundleException("${field(key)} must be $what")

    fun str(key: String): String {
        val v = get(key)
        if (v !is JsonPrimitive || !v.isString) fail(key, "a string")
        return v.asString
    }

    fun optStr(key: String): String? = if (has(key)) str(key) else null

    fun long(key: String): Long {
        val v = get(key)
        if (v !is JsonPrimitive || !v.isNumber) fail(key, "an integer")
        val d = v.asBigDecimal
        try {
            return d.longValueExact()
        } catch (e: ArithmeticException) {
            fail(key, "an integer")
        }
    }

    fun int(key: String): Int {
        val v = long(key)
        if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) fail(key, "a 32-bit integer")
        return v.toInt()
    }

    fun optInt(key: String): Int? = if (has(key)) int(key) else null

    fun bool(key: String): Boolean {
        val v = get(key)
        if (v !is JsonPrimitive || !v.isBoolean) fail(key, "true or false")
        return v.asBoolean
    }

    fun optBool(key: String, default: Boolean): Boolean = if (has(key)) bool(key) else default

    fun obj(key: String): Node {
        val v = get(key)
        if (!v.isJsonObject) fail(key, "an object")
        return Node(v.asJsonObject, field(key))
    }

    fun optObj(key: String): Node? = if (has(key)) obj(key) else null

    fun array(key: String): JsonArray {
        val v = get(key)
        if (!v.isJsonArray) fail(key, "an array")
        return v.asJsonArray
    }

    fun objs(key: String): List<Node> = array(key).mapIndexed { i, e ->
        if (!e.isJsonObject) throw BundleException("${field(key)}[$i] must be an object")
        Node(e.asJsonObject, "${field(key)}[$i]")
    }

    fun strs(key: String): List<String> = array(key).mapIndexed { i, e ->
        if (e !is JsonPrimitive || !e.isString) throw BundleException("${field(key)}[$i] must be a string")
        e.asString
    }

    fun entries(key: String): List<Pair<String, Node>> = obj(key).let { o ->
        o.json.entrySet().map { (k, v) ->
            if (!v.isJsonObject) throw BundleException("${o.path}.$k must be an object")
            k to Node(v.asJsonObject, "${o.path}.$k")
        }
    }
}

/**
 * [s] as a JSON string the way Python's json.dumps writes it: with [ensureAscii] (its default) every
 * character outside printable ASCII is a \u escape; without, only control characters are.
 */
fun pythonJsonString(s: String, ensureAscii: Boolean = true): String {
    val b = StringBuilder("\"")
    for (c in s) {
        when {
            c == '"' -> b.append("\\\"")
            c == '\\' -> b.append("\\\\")
            c == '\n' -> b.append("\\n")
            c == '\r' -> b.append("\\r")
            c == '\t' -> b.append("\\t")
            c == '\b' -> b.append("\\b")
            c == '\u000c' -> b.append("\\f")
            c.code in 0x20..0x7e || (!ensureAscii && c.code >= 0x7f) -> b.append(c)
            else -> b.append("\\u%04x".format(c.code)) // UTF-16 units, as Python escapes astral characters
        }
    }
    return b.append('"').toString()
}

/**
 * The contract's `labels_sha256`: sha256 of `json.dumps({task: [labels]}, sort_keys=True)` over the
 * tasks a program's outputs feed (regression tasks `[]`, a split trunk `{}`).
 */
fun labelsSha256(labels: Map<String, List<String>>): String {
    val text = labels.toSortedMap().entries.joinToString(", ", "{", "}") { (task, l) ->
        pythonJsonString(task) + ": " + l.joinToString(", ", "[", "]") { pythonJsonString(it) }
    }
    return java.security.MessageDigest.getInstance("SHA-256").digest(text.toByteArray(Charsets.UTF_8))
        .joinToString("") { "%02x".format(it) }
}
