package ctbmobile.core

import java.io.File

/** A dimension: a range `{"name", "min", "max"}` or a fixed `{"size"}`. */
data class Dim(val name: String?, val size: Int?, val min: Int?, val max: Int?) {
    val fixed: Boolean get() = size != null

    override fun toString() = size?.toString() ?: name ?: "?"
}

/** A program input or output, positional: [index] is its place in the program's order. */
data class TensorSpec(
    val name: String,
    val dtype: String,
    val dims: List<Dim>,
    val index: Int,
    val task: String? = null,
    val depth: Int? = null,
)

data class ProgramSpec(
    val name: String,
    val file: String,
    val files: List<String>,
    val precision: String,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
)

enum class TaskType { CLASSIFICATION, REGRESSION, TAGGING }

data class TaskSpec(
    val name: String,
    val type: TaskType,
    val program: String,
    val output: String,
    val labels: List<String>,
    val attach: Int,
    val pair: Boolean,
)

data class TokenizerSpec(
    val file: String,
    val vocab: String,
    val tables: String,
    val fingerprint: String,
    val maxSeqLen: Int,
    val truncation: String,
    val pairTemplate: String,
)

data class FileEntry(val sha256: String, val bytes: Long)

/** `manifest.json`, schema version 2 (runtime_py/CONTRACT.md). */
data class Manifest(
    val target: String,
    val layout: String,
    val precision: String,
    val trunkFingerprint: String,
    val maxSeqLen: Int,
    val tokenizer: TokenizerSpec,
    val programs: List<ProgramSpec>,
    val tasks: List<TaskSpec>,
    val files: Map<String, FileEntry>,
) {
    fun program(name: String): ProgramSpec = programs.first { it.name == name }

    /** The files the programs and the tokenizer need. */
    val needed: List<String>
        get() = (programs.flatMap { it.files } + listOf(tokenizer.file, tokenizer.vocab, tokenizer.tables)).distinct()

    companion object {
        const val SCHEMA_VERSION = 2
        const val FILE = "manifest.json"
        private val TARGETS = listOf("android", "ios", "onnx")
        private val LAYOUTS = listOf("fused", "split")
        private val PRECISIONS = listOf("fp32", "fp16", "int8", "int8-static", "int4")
        private val DTYPES = listOf("int64", "int32", "float32", "float16")
        private val TASK_NAME = Regex("^[A-Za-z0-9_][A-Za-z0-9_-]*$")
        private val HEX64 = Regex("^[0-9a-f]{64}$")

        /** Reads and checks `manifest.json` in [dir]: structure, then every listed file's size and sha256. */
        fun load(dir: File, checkFiles: Boolean = true): Manifest {
            val file = File(dir, FILE)
            if (!file.isFile) throw BundleException("$dir is not a bundle (no $FILE)")
            val m = parse(Node(readJsonObject(file), "$FILE:"))
            if (checkFiles) m.checkFiles(dir)
            return m
        }

        internal fun parse(root: Node): Manifest {
            if (!root.has("schema_version")) throw BundleException("$FILE: schema_version is missing")
            val version = root.json.get("schema_version")
            if (!version.isJsonPrimitive || version.asJsonPrimitive.isNumber.not() || version.asString != "$SCHEMA_VERSION") {
                throw BundleException("$FILE: schema_version $version is not $SCHEMA_VERSION; export the bundle with a matching toolchain")
            }
            val fingerprint = root.str("trunk_fingerprint")
            if (!HEX64.matches(fingerprint)) throw BundleException("$FILE: trunk_fingerprint must be 64 hex digits")
            val programs = root.objs("programs").map { program(it) }
            if (programs.isEmpty()) throw BundleException("$FILE: programs is empty")
            root.str("toolchain_version") // required by the schema, not used by the runtime
            root.str("backbone")
            val m = Manifest(
                target = oneOf(root, "target", TARGETS),
                layout = oneOf(root, "layout", LAYOUTS),
                precision = oneOf(root, "precision", PRECISIONS),
                trunkFingerprint = fingerprint,
                maxSeqLen = positive(root, "max_seq_len"),
                tokenizer = tokenizer(root.obj("tokenizer")),
                programs = programs,
                tasks = root.objs("tasks").map { task(it) },
                files = root.entries("files").associate { (name, f) ->
                    plainName(name, "$FILE: files")
                    val sha = f.str("sha256")
                    if (!HEX64.matches(sha)) throw BundleException("${f.path}.sha256 must be 64 hex digits")
                    name to FileEntry(sha, f.long("bytes"))
                },
            )
            m.checkStructure()
            return m
        }

        private fun oneOf(node: Node, key: String, allowed: List<String>): String {
            val v = node.str(key)
            if (v !in allowed) throw BundleException("${node.path} $key '$v' is not one of ${allowed.joinToString()}")
            return v
        }

        private fun positive(node: Node, key: String): Int {
            val v = node.int(key)
            if (v < 1) throw BundleException("${node.path} $key must be at least 1")
            return v
        }

        private fun plainName(name: String, where: String): String {
            if (!BundleFiles.PLAIN_NAME.matches(name)) throw BundleException("$where: '$name' is not a plain file name in the bundle folder")
            return name
        }

        private fun tokenizer(t: Node) = TokenizerSpec(
            file = plainName(t.str("file"), "${t.path}.file"),
            vocab = plainName(t.str("vocab"), "${t.path}.vocab"),
            tables = plainName(t.str("tables"), "${t.path}.tables"),
            fingerprint = t.str("fingerprint"),
            maxSeqLen = t.int("max_seq_len"),
            truncation = oneOf(t, "truncation", listOf("longest_first")),
            pairTemplate = oneOf(t, "pair_template", listOf("[CLS] A [SEP] B [SEP]")),
        )

        internal fun program(p: Node): ProgramSpec {
            val spec = ProgramSpec(
                name = p.str("name"),
                file = plainName(p.str("file"), "${p.path}.file"),
                files = p.strs("files").map { plainName(it, "${p.path}.files") },
                precision = oneOf(p, "precision", PRECISIONS),
                inputs = p.objs("inputs").mapIndexed { i, n -> tensor(n, i) },
                outputs = p.objs("outputs").map { n -> tensor(n, n.int("index"), n.nullableStr("task")) },
            )
            if (spec.file !in spec.files) throw BundleException("${p.path}.files does not list its file ${spec.file}")
            spec.outputs.forEachIndexed { i, o ->
                if (o.index != i) throw BundleException("${p.path}.outputs[$i].index is ${o.index}, not its position $i")
            }
            return spec
        }

        private fun tensor(n: Node, index: Int, task: String? = null): TensorSpec {
            val dims = n.array("dims").mapIndexed { i, e ->
                if (!e.isJsonObject) throw BundleException("${n.path}.dims[$i] must be an object")
                val d = Node(e.asJsonObject, "${n.path}.dims[$i]")
                if (d.has("size")) Dim(d.optStr("name"), d.int("size"), null, null)
                else Dim(d.str("name"), null, d.int("min"), d.int("max"))
            }
            if (dims.isEmpty()) throw BundleException("${n.path}.dims is empty")
            return TensorSpec(n.str("name"), oneOf(n, "dtype", DTYPES), dims, index, task, n.optInt("depth"))
        }

        internal fun task(t: Node): TaskSpec {
            val name = t.str("name")
            if (!TASK_NAME.matches(name)) throw BundleException("${t.path}.name '$name' is not a plain task name")
            val type = when (val s = t.str("type")) {
                "classification" -> TaskType.CLASSIFICATION
                "regression" -> TaskType.REGRESSION
                "tagging" -> TaskType.TAGGING
                else -> throw BundleException("${t.path}.type '$s' is not classification, regression or tagging")
            }
            t.int("layers") // required by the schema, not used by the runtime
            oneOf(t, "precision", PRECISIONS)
            return TaskSpec(name, type, t.str("program"), t.str("output"), t.strs("labels"), t.int("attach"), t.bool("pair"))
        }
    }

    private fun checkStructure() {
        val names = programs.map { it.name }
        if (names.toSet().size != names.size) throw BundleException("$FILE: programs has a repeated name")
        if (layout == "fused" && names != listOf("model")) throw BundleException("$FILE: a fused bundle has one program, model")
        if (layout == "split" && "trunk" !in names) throw BundleException("$FILE: a split bundle needs a trunk program")
        if (tasks.isEmpty()) throw BundleException("$FILE: tasks is empty")
        if (tasks.map { it.name }.toSet().size != tasks.size) throw BundleException("$FILE: tasks has a repeated name")
        if (tokenizer.maxSeqLen != maxSeqLen) throw BundleException("$FILE: tokenizer.max_seq_len ${tokenizer.maxSeqLen} differs from max_seq_len $maxSeqLen")
        for (t in tasks) checkTask(t, programs.firstOrNull { it.name == t.program })
        for (p in programs) checkInputs(p)
        val unlisted = needed.filter { it !in files }
        if (unlisted.isNotEmpty()) throw BundleException("$FILE: ${unlisted.first()} is used but not listed in files")
    }

    internal fun checkTask(t: TaskSpec, p: ProgramSpec?) {
        val where = "$FILE: task ${t.name}"
        if (p == null) throw BundleException("$where names program '${t.program}', which the bundle does not have")
        if (layout == "split" && p.name == "trunk") throw BundleException("$where reads the trunk program; split tasks read their branch")
        val out = p.outputs.firstOrNull { it.name == t.output }
            ?: throw BundleException("$where names output '${t.output}', which program ${p.name} does not have")
        if (out.task != t.name) throw BundleException("$where: output ${out.name} feeds task ${out.task}")
        val shape = "${out.dims}"
        when (t.type) {
            TaskType.REGRESSION -> if (out.dims.size != 1) {
                throw BundleException("$where: a regression output is [batch], ${out.name} is $shape")
            }
            else -> {
                val rank = if (t.type == TaskType.TAGGING) 3 else 2
                if (out.dims.size != rank) throw BundleException("$where: a ${t.type.name.lowercase()} output has $rank dims, ${out.name} is $shape")
                if (t.labels.isEmpty()) throw BundleException("$where has no labels")
                val last = out.dims.last().size
                if (last != t.labels.size) throw BundleException("$where has ${t.labels.size} labels but output ${out.name} has $last values per row")
            }
        }
        if (layout == "split" && trunkOutput(t.attach) == null) throw BundleException("$where attaches at depth ${t.attach}, which the trunk does not output")
    }

    internal fun checkInputs(p: ProgramSpec) {
        val expected = if (layout == "split" && p.name != "trunk") listOf("hidden", "attention_mask")
        else listOf("input_ids", "attention_mask", "token_type_ids")
        if (p.inputs.map { it.name }.sorted() != expected.sorted()) {
            throw BundleException("$FILE: program ${p.name} takes ${p.inputs.map { it.name }}, expected $expected")
        }
        val seq = p.inputs.first { it.name == "attention_mask" }.dims.getOrNull(1)
        val longest = seq?.size ?: seq?.max
        if (longest == null || longest < maxSeqLen) throw BundleException("$FILE: program ${p.name} takes at most $longest tokens, max_seq_len is $maxSeqLen")
    }

    /** The split trunk's hidden state at [depth] (`hidden_<depth>`). */
    fun trunkOutput(depth: Int): TensorSpec? =
        programs.firstOrNull { it.name == "trunk" }?.outputs?.firstOrNull { it.depth == depth || it.name == "hidden_$depth" }

    /** Every listed file exists with its size and sha256. */
    fun checkFiles(dir: File) {
        for ((name, entry) in files) {
            val f = File(dir, name)
            if (!f.exists()) throw BundleException("$name is missing from the bundle folder $dir")
            val size = BundleFiles.size(f)
            if (size != entry.bytes) throw BundleException("$name has $size bytes, the manifest says ${entry.bytes}; copy the bundle again")
            if (BundleFiles.sha256(f) != entry.sha256) throw BundleException("$name does not match its sha256 in the manifest; copy the bundle again")
        }
    }
}
