package ctbmobile.core

import com.google.gson.JsonObject
import com.google.gson.JsonParser
import java.io.Closeable
import java.io.File

/** A result and the nanoseconds its computation took. */
data class Timed<T>(val value: T, val nanos: Long) {
    val millis: Double get() = nanos / 1e6
}

/** A new branch program for one task of a split bundle: its manifest entries and the file's sha256. */
data class BranchUpdate(val program: ProgramSpec, val task: TaskSpec, val sha256: String)

/**
 * Loads a bundle (manifest, files, tokenizer, programs) once and predicts every task from one
 * tokenization and one trunk pass. Positional outputs are mapped through the manifest and checked in
 * count and shape on every call. Calls are serialised (ExecuTorch methods are not re-entrant).
 */
class MultiTaskRunner private constructor(
    val dir: File,
    val manifest: Manifest,
    val tokenizer: WordPieceTokenizer,
    private val backend: TrunkBackend,
    private var state: State,
) : Closeable {
    /** Tasks and programs in force (updateBranch replaces one task's), with the loaded programs. */
    private class State(
        val tasks: Map<String, TaskSpec>,
        val programs: Map<String, ProgramSpec>,
        val loaded: Map<String, LoadedProgram>,
    )

    val tasks: List<TaskSpec> @Synchronized get() = state.tasks.values.toList()

    /** Every chosen task's result for [text] (and [pair], for pair tasks); all tasks by default. */
    @Synchronized
    fun predict(text: String, pair: String? = null, tasks: List<String>? = null): Map<String, TaskResult> {
        val chosen = choose(tasks, pair != null)
        val cps = codePoints(text)
        val encoding = tokenizer.encode(cps, pair?.let { codePoints(it, "pair") })
        val raw = run(state, encoding, chosen)
        return chosen.associateWith { Heads.decode(state.tasks.getValue(it), raw.getValue(it), encoding, cps) }
    }

    /**
     * [predict], with the time spent inside this call: tokenization, the programs and the heads,
     * measured after the runner's lock is taken, so a wait behind another call is not counted.
     */
    @Synchronized
    fun predictTimed(text: String, pair: String? = null, tasks: List<String>? = null): Timed<Map<String, TaskResult>> {
        val start = System.nanoTime()
        val results = predict(text, pair, tasks)
        return Timed(results, System.nanoTime() - start)
    }

    /** The raw output row of every chosen task for one encoding (batch 1), as the programs returned it. */
    @Synchronized
    fun raw(encoding: Encoding, tasks: List<String>): Map<String, FloatArray> = run(state, encoding, tasks)

    private fun choose(tasks: List<String>?, paired: Boolean): List<String> {
        val known = state.tasks
        val chosen = tasks ?: known.keys.toList()
        chosen.firstOrNull { it !in known }?.let { throw InputException("unknown task '$it'; this bundle has: ${known.keys.joinToString()}") }
        val wrong = chosen.firstOrNull { known.getValue(it).pair != paired }
        if (wrong != null) {
            throw InputException(if (paired) "task '$wrong' takes one text, but a pair was given; name only pair tasks"
            else "task '$wrong' takes a text pair; pass a pair (and name only pair tasks)")
        }
        return chosen
    }

    /**
     * Swaps one task's branch in a split bundle. The file must have [BranchUpdate.sha256] and carry
     * this bundle's trunk fingerprint; the new branch is probed before it replaces the old one. On any
     * failure the runner stays as it was.
     */
    @Synchronized
    fun updateBranch(file: File, update: BranchUpdate) {
        val (program, task) = update
        val where = "branch update for task ${task.name}"
        if (manifest.layout != "split") throw BundleException("$where: this bundle is fused; only a split bundle's branches can be swapped")
        val old = state.tasks[task.name] ?: throw BundleException("$where: the bundle has no task ${task.name}")
        if (program.name == "trunk" || task.program != program.name) {
            throw BundleException("$where: the task names program '${task.program}', the update brings '${program.name}'")
        }
        manifest.checkInputs(program)
        manifest.checkTask(task, program)
        if (!file.isFile) throw BundleException("$where: ${file.name} is missing")
        if (BundleFiles.sha256(file) != update.sha256.lowercase()) throw BundleException("$where: ${file.name} does not match its sha256")
        val loaded = backend.load(file)
        try {
            checkEmbedded(program, loaded, mapOf(task.name to task.labels), file.name)
            val programs = state.programs - old.program + (program.name to program)
            val next = State(
                state.tasks.mapValues { (name, t) -> if (name == task.name) task else t },
                programs,
                state.loaded - old.program + (program.name to loaded),
            )
            run(next, tokenizer.encode(IntArray(0), null), listOf(task.name)) // the probe
            val replaced = state.loaded.getValue(old.program)
            state = next
            replaced.close()
        } catch (e: Exception) {
            loaded.close()
            throw e
        }
    }

    @Synchronized
    override fun close() {
        state.loaded.values.forEach { it.close() }
    }

    /** The program's embedded manifest names this trunk, tokenizer, output order and (labels_sha256) the tasks' labels in [labels]. */
    private fun checkEmbedded(p: ProgramSpec, program: LoadedProgram, labels: Map<String, List<String>>, file: String = p.file) {
        val text = program.metadata() ?: throw BundleException("$file has no embedded manifest; export it again")
        val meta: JsonObject = try {
            JsonParser.parseString(text).asJsonObject
        } catch (e: Exception) {
            throw BundleException("$file: its embedded manifest is not a JSON object")
        }
        fun field(key: String) = meta.get(key)?.takeIf { it.isJsonPrimitive }?.asString
        val trunk = field("trunk_fingerprint")
        if (trunk != manifest.trunkFingerprint) {
            throw BundleException("$file was exported for trunk ${trunk?.take(16)}, this bundle's trunk is ${manifest.trunkFingerprint.take(16)}; export it against this trunk")
        }
        val tok = field("tokenizer_fingerprint")
        if (tok != manifest.tokenizer.fingerprint) {
            throw BundleException("$file was exported with tokenizer ${tok?.take(16)}, this bundle's is ${manifest.tokenizer.fingerprint.take(16)}")
        }
        val outputs = meta.get("outputs")?.takeIf { it.isJsonArray }?.asJsonArray?.map { it.asString }
        if (outputs != p.outputs.map { it.name }) {
            throw BundleException("$file returns outputs $outputs, the manifest lists ${p.outputs.map { it.name }}")
        }
        val embedded = field("labels_sha256")
            ?: throw BundleException("$file carries no labels_sha256 (exported by an older ctb-mobile), so the manifest's labels cannot be checked; export the bundle again")
        val served = p.outputs.mapNotNull { it.task }.associateWith { labels[it].orEmpty() }
        if (embedded != labelsSha256(served)) {
            throw BundleException("the manifest's labels of ${served.keys.joinToString()} differ from the labels $file was exported with (its labels_sha256); export the bundle again")
        }
    }

    /** Runs the programs for one encoding (batch 1); returns each task's output row, checked against the manifest. */
    private fun run(s: State, encoding: Encoding, tasks: List<String>): Map<String, FloatArray> {
        if (manifest.layout == "fused") {
            val out = call(s, s.programs.getValue("model"), encoding, null)
            return tasks.associateWith { out.getValue(s.tasks.getValue(it).output).data }
        }
        val hidden = call(s, s.programs.getValue("trunk"), encoding, null)
        return tasks.associateWith { name ->
            val task = s.tasks.getValue(name)
            val h = hidden.getValue(manifest.trunkOutput(task.attach)!!.name)
            call(s, s.programs.getValue(task.program), encoding, h).getValue(task.output).data
        }
    }

    /** One program call: inputs in the manifest's order, outputs checked and named. */
    private fun call(s: State, p: ProgramSpec, encoding: Encoding, hidden: Tensor.Float32?): Map<String, Tensor.Float32> {
        val n = encoding.size
        val inputs = p.inputs.map { spec ->
            when (spec.name) {
                "input_ids" -> ints(spec, n) { encoding.ids[it] }
                "attention_mask" -> ints(spec, n) { 1 }
                "token_type_ids" -> ints(spec, n) { encoding.typeIds[it] }
                "hidden" -> hidden ?: throw BundleException("program ${p.name} takes a hidden state but is not a branch")
                else -> throw BundleException("program ${p.name} takes an unknown input ${spec.name}")
            }
        }
        val outputs = s.loaded.getValue(p.name).run(inputs)
        if (outputs.size != p.outputs.size) {
            throw BundleException("${p.file} returned ${outputs.size} outputs, the manifest lists ${p.outputs.size} (${p.outputs.joinToString { it.name }})")
        }
        return p.outputs.associate { spec ->
            val t = outputs[spec.index]
            val expected = spec.dims.map { d -> d.size ?: if (d.name == "batch") 1 else if (d.name == "seq") n else -1 }
            val fits = t.shape.size == expected.size && expected.indices.all { i ->
                val d = spec.dims[i]
                if (expected[i] >= 0) t.shape[i] == expected[i] else t.shape[i] in d.min!!..d.max!!
            }
            if (t !is Tensor.Float32 || !fits) {
                throw BundleException("${p.file} output ${spec.index} (${spec.name}) is $t, the manifest says ${spec.dtype}${spec.dims} for $n tokens")
            }
            spec.name to t
        }
    }

    private fun ints(spec: TensorSpec, n: Int, value: (Int) -> Int): Tensor = when (spec.dtype) {
        "int64" -> Tensor.Int64(intArrayOf(1, n), LongArray(n) { value(it).toLong() })
        "int32" -> Tensor.Int32(intArrayOf(1, n), IntArray(n) { value(it) })
        else -> throw BundleException("input ${spec.name} is ${spec.dtype}; token inputs are int64 or int32")
    }

    companion object {
        /** sha256 over the sha256 hex digests of the tokenizer file, the vocabulary and the tables, joined by newlines. */
        fun tokenizerFingerprint(m: Manifest): String {
            val t = m.tokenizer
            val joined = listOf(t.file, t.vocab, t.tables).joinToString("\n") { m.files.getValue(it).sha256 }
            return java.security.MessageDigest.getInstance("SHA-256").digest(joined.toByteArray())
                .joinToString("") { "%02x".format(it) }
        }

        /**
         * Opens the bundle in [dir] with the backend for its manifest's `target` ([backends]: target ->
         * a backend, e.g. "android" -> ExecuTorch, "onnx" -> ONNX Runtime); the core names no runtime.
         */
        fun openFor(dir: File, backends: Map<String, () -> TrunkBackend>, checkFiles: Boolean = true): MultiTaskRunner {
            val target = Manifest.load(dir, checkFiles = false).target
            val backend = backends[target]
                ?: throw BundleException("$dir is a '$target' bundle; this app runs ${backends.keys.joinToString(" or ") { "'$it'" }} bundles (ctb-mobile export --target ...)")
            return open(dir, backend(), checkFiles)
        }

        /**
         * Opens the bundle in [dir]: checks the manifest and every file's size and sha256, loads the
         * tokenizer and the programs through [backend], checks their embedded metadata, and runs one
         * probe (`[CLS] [SEP]`) through every task so that outputs in another order or shape fail here.
         */
        fun open(dir: File, backend: TrunkBackend, checkFiles: Boolean = true): MultiTaskRunner {
            val manifest = Manifest.load(dir, checkFiles)
            val t = manifest.tokenizer
            val tokenizer = WordPieceTokenizer.load(File(dir, t.file), File(dir, t.tables), File(dir, t.vocab))
            if (tokenizerFingerprint(manifest) != t.fingerprint) {
                throw BundleException("${t.file}, ${t.vocab} and ${t.tables} do not match the manifest's tokenizer.fingerprint; export the bundle again")
            }
            if (tokenizer.maxLength != manifest.maxSeqLen) {
                throw BundleException("${t.file} truncates at ${tokenizer.maxLength} tokens, the manifest's max_seq_len is ${manifest.maxSeqLen}")
            }
            val needed = if (manifest.layout == "fused") listOf("model") else listOf("trunk") + manifest.tasks.map { it.program }.distinct()
            val loaded = LinkedHashMap<String, LoadedProgram>()
            try {
                for (name in needed) loaded[name] = backend.load(File(dir, manifest.program(name).file))
                val state = State(manifest.tasks.associateBy { it.name }, manifest.programs.associateBy { it.name }, loaded)
                val runner = MultiTaskRunner(dir, manifest, tokenizer, backend, state)
                val labels = manifest.tasks.associate { it.name to it.labels }
                for (name in needed) runner.checkEmbedded(manifest.program(name), loaded.getValue(name), labels)
                runner.run(state, tokenizer.encode(IntArray(0), null), manifest.tasks.map { it.name }) // the probe
                return runner
            } catch (e: Exception) {
                loaded.values.forEach { it.close() }
                throw e
            }
        }
    }
}
