package ctbmobile.core

import java.io.File

/**
 * One encoded input, as Hugging Face `tokenizers` gives it. Offsets are `[start, end)` in code
 * points of the text each token came from (`[0, 0]` for the template's special tokens).
 * [sequenceIds]: 0 first text, 1 second text, -1 template token. [wordIds]: the contract's words
 * (tokens of the first text; a new word wherever the original text between two tokens holds a
 * word break), -1 elsewhere.
 */
class Encoding(
    val ids: IntArray,
    val typeIds: IntArray,
    val starts: IntArray,
    val ends: IntArray,
    val sequenceIds: IntArray,
    val wordIds: IntArray,
) {
    val size: Int get() = ids.size
}

/** Code points of a string; an unpaired surrogate is an [InputException]. */
fun codePoints(text: String, what: String = "text"): IntArray {
    val out = IntArray(text.codePointCount(0, text.length))
    var i = 0
    var k = 0
    while (i < text.length) {
        val cp = text.codePointAt(i)
        if (cp in 0xD800..0xDFFF) throw InputException("$what has an unpaired surrogate at UTF-16 index $i; pass valid Unicode")
        out[k++] = cp
        i += Character.charCount(cp)
    }
    return out
}

/**
 * BERT WordPiece exactly as Hugging Face `tokenizers` runs the bundle's `tokenizer.json`: added
 * tokens matched in the raw text, the normaliser and pre-tokenizer from `tokenizer_tables.json`,
 * greedy longest-match WordPiece, longest-first truncation, then the post-processor's template.
 * Every step is linear in the text (a piece is never longer than the longest vocabulary entry).
 */
class WordPieceTokenizer private constructor(
    private val vocab: Map<String, Int>,
    private val tables: CharTables,
    private val added: Map<Int, List<AddedToken>>,
    private val unkId: Int,
    private val prefix: String,
    private val maxCharsPerWord: Int,
    private val maxPieceLength: Int,
    private val single: List<TemplateItem>,
    private val pair: List<TemplateItem>,
    /** The truncation max_length of `tokenizer.json`: the longest encoding, special tokens included. */
    val maxLength: Int,
) {
    internal class AddedToken(val content: IntArray, val id: Int)

    /** A template item: a special token (its ids) or a sequence (`A` = 0, `B` = 1), with its type id. */
    internal class TemplateItem(val sequence: Int, val specialIds: IntArray, val typeId: Int)

    /** Token ids with their code point offsets, before the template. */
    private class Pieces {
        val ids = IntList()
        val starts = IntList()
        val ends = IntList()
        val size get() = ids.size

        fun add(id: Int, start: Int, end: Int) { ids.add(id); starts.add(start); ends.add(end) }

        fun truncate(n: Int) { ids.truncate(n); starts.truncate(n); ends.truncate(n) }
    }

    /** The encoding of [text] (and [pair]), truncated to [maxLength] tokens like `tokenizers`. */
    fun encode(text: String, pair: String? = null, maxLength: Int = this.maxLength): Encoding {
        val a = codePoints(text)
        val b = pair?.let { codePoints(it, "pair") }
        return encode(a, b, maxLength)
    }

    fun encode(text: IntArray, pair: IntArray?, maxLength: Int = this.maxLength): Encoding {
        val template = if (pair == null) single else this.pair
        val specials = template.sumOf { it.specialIds.size }
        if (maxLength < specials) throw InputException("max length $maxLength is shorter than the $specials special tokens")
        val first = pieces(text)
        val second = pair?.let { pieces(it) }
        truncate(first, second, maxLength - specials)
        return assemble(template, first, second, text)
    }

    /**
     * `tokenizers`' longest-first truncation (utils/truncation.rs) to [limit] tokens in all: a single
     * sequence keeps its first [limit]; a pair keeps the shorter sequence whole when it fits in half
     * of [limit] and the longer one takes the rest, else each gets half (the odd token goes to the
     * longer one, to the second when they tie).
     */
    private fun truncate(a: Pieces, b: Pieces?, limit: Int) {
        val total = a.size + (b?.size ?: 0)
        if (total <= limit) return
        if (b == null) {
            a.truncate(limit)
            return
        }
        val swap = a.size > b.size
        var short = minOf(a.size, b.size)
        var long = if (short > limit) short else maxOf(short, limit - short)
        if (short + long > limit) {
            short = limit / 2
            long = short + limit % 2
        }
        a.truncate(if (swap) long else short)
        b.truncate(if (swap) short else long)
    }

    private fun assemble(template: List<TemplateItem>, a: Pieces, b: Pieces?, firstText: IntArray): Encoding {
        val n = template.sumOf { if (it.sequence < 0) it.specialIds.size else if (it.sequence == 0) a.size else b!!.size }
        val ids = IntArray(n)
        val types = IntArray(n)
        val starts = IntArray(n)
        val ends = IntArray(n)
        val seqs = IntArray(n)
        val words = IntArray(n) { -1 }
        var k = 0
        for (item in template) {
            if (item.sequence < 0) {
                for (id in item.specialIds) {
                    ids[k] = id; types[k] = item.typeId; seqs[k] = -1; k++
                }
                continue
            }
            val p = if (item.sequence == 0) a else b!!
            var word = -1
            for (i in 0 until p.size) {
                ids[k] = p.ids[i]; types[k] = item.typeId; starts[k] = p.starts[i]; ends[k] = p.ends[i]
                seqs[k] = item.sequence
                if (item.sequence == 0) {
                    if (i == 0 || hasWordBreak(firstText, p.ends[i - 1], p.starts[i])) word++
                    words[k] = word
                }
                k++
            }
        }
        return Encoding(ids, types, starts, ends, seqs, words)
    }

    private fun hasWordBreak(text: IntArray, from: Int, to: Int): Boolean {
        for (i in from until to) if (tables.isWordBreak(text[i])) return true
        return false
    }

    /** Added tokens first (in the raw text, leftmost-longest), every other stretch normalised and split. */
    private fun pieces(text: IntArray): Pieces {
        val out = Pieces()
        val norm = IntList(text.size + 16)
        val orig = IntList(text.size + 16)
        var stretch = 0
        var i = 0
        while (i < text.size) {
            val token = addedAt(text, i)
            if (token == null) {
                i++
                continue
            }
            stretch(text, stretch, i, norm, orig, out)
            out.add(token.id, i, i + token.content.size)
            i += token.content.size
            stretch = i
        }
        stretch(text, stretch, text.size, norm, orig, out)
        return out
    }

    private fun addedAt(text: IntArray, at: Int): AddedToken? {
        val candidates = added[text[at]] ?: return null // longest first
        for (t in candidates) {
            if (at + t.content.size > text.size) continue
            var same = true
            for (j in t.content.indices) if (text[at + j] != t.content[j]) { same = false; break }
            if (same) return t
        }
        return null
    }

    private fun stretch(text: IntArray, from: Int, to: Int, norm: IntList, orig: IntList, out: Pieces) {
        norm.clear()
        orig.clear()
        for (i in from until to) {
            val before = norm.size
            tables.normalize(text[i], norm)
            repeat(norm.size - before) { orig.add(i) }
        }
        var word = -1 // start of the current word in norm, -1 when none
        for (j in 0 until norm.size) {
            val cp = norm[j]
            if (tables.isWhitespace(cp)) {
                if (word >= 0) wordPiece(norm, orig, word, j, out)
                word = -1
            } else if (tables.isPunctuation(cp)) {
                if (word >= 0) wordPiece(norm, orig, word, j, out)
                wordPiece(norm, orig, j, j + 1, out)
                word = -1
            } else if (word < 0) {
                word = j
            }
        }
        if (word >= 0) wordPiece(norm, orig, word, norm.size, out)
    }

    /** Greedy longest match over norm[from, to); a word too long or with no match is one [UNK]. */
    private fun wordPiece(norm: IntList, orig: IntList, from: Int, to: Int, out: Pieces) {
        if (to - from > maxCharsPerWord) {
            out.add(unkId, orig[from], orig[to - 1] + 1)
            return
        }
        val mark = out.size
        var start = from
        while (start < to) {
            var end = minOf(to, start + maxPieceLength)
            var id = -1
            while (end > start) {
                val piece = String(norm.data, start, end - start)
                val found = vocab[if (start > from) prefix + piece else piece]
                if (found != null) { id = found; break }
                end--
            }
            if (id < 0) {
                out.truncate(mark)
                out.add(unkId, orig[from], orig[to - 1] + 1)
                return
            }
            out.add(id, orig[start], orig[end - 1] + 1)
            start = end
        }
    }

    companion object {
        /**
         * Reads `tokenizer.json` (a BertNormalizer / BertPreTokenizer / WordPiece tokenizer with a
         * TemplateProcessing post-processor), its character tables and the vocabulary from
         * [vocabTxt]. One rule for every app (Kotlin, Swift): the vocabulary is `vocab.txt`, id = line
         * number, never `tokenizer.json`'s `model.vocab` (the exporter checks that the two agree).
         */
        fun load(tokenizerJson: File, tablesJson: File, vocabTxt: File): WordPieceTokenizer {
            val name = tokenizerJson.name
            val root = Node(readJsonObject(tokenizerJson), "$name:")
            for ((key, type) in listOf("normalizer" to "BertNormalizer", "pre_tokenizer" to "BertPreTokenizer", "model" to "WordPiece")) {
                val t = root.obj(key).str("type")
                if (t != type) throw BundleException("$name: $key is $t; this runtime implements $type only")
            }
            if (root.has("padding")) throw BundleException("$name: padding is set; a bundle's tokenizer pads nothing")
            val tables = CharTables.load(tablesJson)
            val model = root.obj("model")
            val vocab = HashMap<String, Int>()
            if (!vocabTxt.isFile) throw BundleException("the vocabulary file ${vocabTxt.name} is missing; copy the bundle again")
            // as `tokenizers` reads vocab.txt: id = line number, trailing whitespace trimmed, a repeated token keeps its last id
            vocabTxt.readLines(Charsets.UTF_8).forEachIndexed { i, line ->
                val cps = codePoints(line, "${vocabTxt.name} line ${i + 1}")
                var n = cps.size
                while (n > 0 && tables.isWhitespace(cps[n - 1])) n--
                vocab[String(cps, 0, n)] = i
            }
            if (vocab.isEmpty()) throw BundleException("${vocabTxt.name} is empty; export the bundle again")
            val added = HashMap<Int, MutableList<AddedToken>>()
            for (t in root.objs("added_tokens")) {
                val content = t.str("content")
                for (flag in listOf("single_word", "lstrip", "rstrip", "normalized")) {
                    if (t.optBool(flag, false)) throw BundleException("${t.path}: added token '$content' has $flag; this runtime matches raw tokens only")
                }
                if (content.isEmpty()) throw BundleException("${t.path}.content is empty")
                val cps = codePoints(content)
                added.getOrPut(cps[0]) { mutableListOf() }.add(AddedToken(cps, t.int("id")))
            }
            added.values.forEach { list -> list.sortByDescending { it.content.size } }
            val unk = model.str("unk_token")
            val unkId = vocab[unk] ?: throw BundleException("$name: unk_token '$unk' is not in the vocabulary")
            val truncation = root.obj("truncation")
            if (truncation.str("strategy") != "LongestFirst" || (truncation.optStr("direction") ?: "Right") != "Right" ||
                (truncation.optInt("stride") ?: 0) != 0
            ) {
                throw BundleException("$name: truncation must be LongestFirst, Right, stride 0 (the contract's)")
            }
            val (single, pair) = template(root.obj("post_processor"))
            return WordPieceTokenizer(
                vocab, tables, added, unkId,
                model.optStr("continuing_subword_prefix") ?: "##",
                model.optInt("max_input_chars_per_word") ?: 100,
                vocab.keys.maxOf { it.codePointCount(0, it.length) },
                single, pair, truncation.int("max_length"),
            )
        }

        private fun template(pp: Node): Pair<List<TemplateItem>, List<TemplateItem>> {
            if (pp.str("type") != "TemplateProcessing") {
                throw BundleException("${pp.path}.type is ${pp.str("type")}; this runtime implements TemplateProcessing")
            }
            val specials = pp.entries("special_tokens").associate { (k, v) ->
                k to v.array("ids").map { it.asInt }.toIntArray()
            }
            fun items(key: String) = pp.objs(key).map { item ->
                when {
                    item.has("SpecialToken") -> item.obj("SpecialToken").let { s ->
                        val ids = specials[s.str("id")] ?: throw BundleException("${s.path}.id '${s.str("id")}' is not in special_tokens")
                        TemplateItem(-1, ids, s.int("type_id"))
                    }
                    item.has("Sequence") -> item.obj("Sequence").let { s ->
                        val seq = when (s.str("id")) { "A" -> 0; "B" -> 1; else -> throw BundleException("${s.path}.id must be A or B") }
                        TemplateItem(seq, IntArray(0), s.int("type_id"))
                    }
                    else -> throw BundleException("${item.path} must be a SpecialToken or a Sequence")
                }
            }
            val single = items("single")
            val pair = items("pair")
            if (single.filter { it.sequence >= 0 }.map { it.sequence } != listOf(0)) {
                throw BundleException("${pp.path}.single must hold sequence A once")
            }
            if (pair.filter { it.sequence >= 0 }.map { it.sequence } != listOf(0, 1)) {
                throw BundleException("${pp.path}.pair must hold sequence A, then B")
            }
            return single to pair
        }
    }
}
