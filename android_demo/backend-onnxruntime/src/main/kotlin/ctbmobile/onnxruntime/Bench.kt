package ctbmobile.onnxruntime

import com.google.gson.JsonObject
import ctbmobile.core.Heads
import ctbmobile.core.MultiTaskRunner
import ctbmobile.core.codePoints
import java.io.File
import kotlin.system.exitProcess

/**
 * `bench BUNDLE [--repeats N] [--seq 16,64] [--text TEXT]`: per-call latency of the JVM stack on one
 * ONNX bundle, 1 intra-op thread, batch 1, as an app calls it. For each seq length, [TEXT] is
 * repeated word by word until it tokenizes to that many tokens (the bundle's max_seq_len caps it),
 * then, after max(500, N) warm-up calls of the whole stack, N rounds time each part once, in turn. Prints one JSON line per length:
 * {"seq", "tokens", "text", "p50_ms": {"call", "tokenizer", "model", "heads"}}: call = runner.predict
 * (tokenize + programs + heads), tokenizer = encode, model = runner.raw (the programs alone), heads =
 * every task's decode. benchmarks/jvm_vs_runtime_py.py runs it against runtime_py.
 */
fun main(args: Array<String>) {
    var repeats = 200
    var seqs = listOf(16, 64)
    var base = "what is the weather like in paris tomorrow morning"
    val rest = args.toMutableList()
    if (rest.isEmpty()) benchFail("usage: bench BUNDLE [--repeats N] [--seq 16,64] [--text TEXT]")
    val bundle = File(rest.removeAt(0))
    while (rest.isNotEmpty()) {
        val flag = rest.removeAt(0)
        val value = rest.removeFirstOrNull() ?: benchFail("$flag needs a value")
        when (flag) {
            "--repeats" -> repeats = value.toIntOrNull()?.takeIf { it > 0 } ?: benchFail("--repeats $value: give a positive count")
            "--seq" -> seqs = value.split(",").map { it.trim().toIntOrNull()?.takeIf { n -> n >= 2 } ?: benchFail("--seq $value: give lengths like 16,64") }
            "--text" -> base = value
            else -> benchFail("unknown option $flag; options: --repeats, --seq, --text")
        }
    }
    try {
        MultiTaskRunner.openFor(bundle, mapOf("onnx" to { OnnxRuntimeBackend(threads = 1) })).use { runner ->
            val tasks = runner.tasks.filter { !it.pair }
            val names = tasks.map { it.name }
            for (seq in seqs) {
                val text = padTo(runner, base, seq)
                val cps = codePoints(text)
                val encoding = runner.tokenizer.encode(cps, null)
                val raw = runner.raw(encoding, names)
                repeat(maxOf(500, repeats)) { sink = runner.predict(text, tasks = names).hashCode() } // JIT warm-up of the whole stack
                val parts = linkedMapOf<String, () -> Any?>(
                    "call" to { runner.predict(text, tasks = names) },
                    "tokenizer" to { runner.tokenizer.encode(codePoints(text), null) },
                    "model" to { runner.raw(encoding, names) },
                    "heads" to { tasks.map { Heads.decode(it, raw.getValue(it.name), encoding, cps) } },
                )
                val p50 = JsonObject()
                for ((part, ms) in medians(repeats, parts)) p50.addProperty(part, ms)
                val line = JsonObject()
                line.addProperty("seq", seq)
                line.addProperty("tokens", encoding.size)
                line.addProperty("text", text)
                line.addProperty("repeats", repeats)
                line.add("p50_ms", p50)
                println(line)
            }
        }
    } catch (e: Exception) {
        benchFail(e.message?.lineSequence()?.firstOrNull() ?: e.toString())
    }
}

/** [base] repeated word by word until it tokenizes to [seq] tokens or more (or max_seq_len). */
private fun padTo(runner: MultiTaskRunner, base: String, seq: Int): String {
    val words = base.split(" ").filter { it.isNotEmpty() }
    val out = ArrayList<String>()
    var i = 0
    while (runner.tokenizer.encode(out.joinToString(" ")).size < minOf(seq, runner.manifest.maxSeqLen)) {
        out.add(words[i % words.size])
        i++
    }
    return out.joinToString(" ")
}

/** Where each timed call's result goes, so the JIT cannot drop the work. */
@Volatile
private var sink = 0

/**
 * Median milliseconds of each part over [n] rounds (after n / 5 warm-up rounds); a round times every
 * part once, in turn, so a busy machine slows all parts alike.
 */
private fun medians(n: Int, parts: Map<String, () -> Any?>): Map<String, Double> {
    repeat(maxOf(1, n / 5)) { parts.values.forEach { sink = it().hashCode() } }
    val times = parts.keys.associateWith { DoubleArray(n) }
    for (i in 0 until n) {
        for ((part, f) in parts) {
            val t0 = System.nanoTime()
            val r = f()
            times.getValue(part)[i] = (System.nanoTime() - t0) / 1e6
            sink = r.hashCode()
        }
    }
    return times.mapValues { (_, t) ->
        t.sort()
        if (n % 2 == 1) t[n / 2] else (t[n / 2 - 1] + t[n / 2]) / 2
    }
}

private fun benchFail(message: String): Nothing {
    System.err.println("bench: $message")
    exitProcess(2)
}
