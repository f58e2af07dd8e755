package ctbmobile.core

import kotlin.math.exp

/** One task's decoded result. */
sealed interface TaskResult

data class ClassificationResult(val label: String, val score: Double) : TaskResult

data class RegressionResult(val value: Double) : TaskResult

data class TaggingResult(val spans: List<Span>) : TaskResult

/** A labelled span: `[start, end)` in code points of the original text, [text] = those code points. */
data class Span(val label: String, val start: Int, val end: Int, val text: String)

/** Task heads: one task's raw output for one input -> label and score, value, or spans (CONTRACT.md). */
object Heads {
    /** [out] is the output row: `labels` logits (classification, regression: 1 value) or `tokens x labels` (tagging). */
    fun decode(task: TaskSpec, out: FloatArray, encoding: Encoding, text: IntArray): TaskResult = when (task.type) {
        TaskType.CLASSIFICATION -> classify(task.labels, out)
        TaskType.REGRESSION -> RegressionResult(out[0].toDouble())
        TaskType.TAGGING -> TaggingResult(tag(task.labels, out, encoding, text))
    }

    /** label = labels[argmax], score = softmax in float64 at argmax. */
    fun classify(labels: List<String>, logits: FloatArray): ClassificationResult {
        val best = argmax(logits, 0, logits.size)
        val max = logits[best].toDouble()
        var sum = 0.0
        for (v in logits) sum += exp(v.toDouble() - max)
        return ClassificationResult(labels[best], 1.0 / sum)
    }

    /** Index of the first largest value in values[from, from + n). */
    fun argmax(values: FloatArray, from: Int, n: Int): Int {
        var best = 0
        for (i in 1 until n) if (values[from + i] > values[from + best]) best = i
        return best
    }

    /**
     * Tagging: each word (Encoding.wordIds) takes its first token's argmax label; BIO over the words as
     * seqeval's get_entities: `B-X` starts a span, `I-X` continues a span of type X or else starts
     * one, anything else ends it. A word covers [its first token's start, its last token's end).
     */
    fun tag(labels: List<String>, logits: FloatArray, encoding: Encoding, text: IntArray): List<Span> {
        val n = labels.size
        val wordTags = ArrayList<String>()
        val wordStarts = ArrayList<Int>()
        val wordEnds = ArrayList<Int>()
        for (k in 0 until encoding.size) {
            val w = encoding.wordIds[k]
            if (w < 0) continue
            if (w == wordTags.size) {
                wordTags.add(labels[argmax(logits, k * n, n)])
                wordStarts.add(encoding.starts[k])
                wordEnds.add(encoding.ends[k])
            } else {
                wordEnds[w] = encoding.ends[k]
            }
        }
        return spans(wordTags, wordStarts, wordEnds, text)
    }

    /** BIO tags, one per word, with each word's code point range -> spans. */
    fun spans(tags: List<String>, starts: List<Int>, ends: List<Int>, text: IntArray): List<Span> {
        val out = ArrayList<Span>()
        var label: String? = null
        var start = 0
        var end = 0
        fun close() {
            label?.let { out.add(Span(it, start, end, String(text, start, end - start))) }
            label = null
        }
        for (w in tags.indices) {
            val tag = tags[w]
            val kind = if (tag.startsWith("B-") || tag.startsWith("I-")) tag.substring(2).ifEmpty { null } else null
            when {
                kind == null -> close()
                tag.startsWith("B-") || label != kind -> { close(); label = kind; start = starts[w]; end = ends[w] }
                else -> end = ends[w]
            }
        }
        close()
        return out
    }
}
