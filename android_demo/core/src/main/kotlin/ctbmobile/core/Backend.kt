package ctbmobile.core

import java.io.Closeable
import java.io.File

/** A dense row-major tensor: its shape and one of three element types. */
sealed class Tensor(val shape: IntArray, count: Int) {
    class Int64(shape: IntArray, val data: LongArray) : Tensor(shape, data.size)
    class Int32(shape: IntArray, val data: IntArray) : Tensor(shape, data.size)
    class Float32(shape: IntArray, val data: FloatArray) : Tensor(shape, data.size)

    init {
        require(shape.all { it >= 0 }) { "negative dim in ${shape.toList()}" }
        val n = shape.fold(1L) { a, d -> a * d }
        require(n == count.toLong()) { "shape ${shape.toList()} holds $n values, the data has $count" }
    }

    val dtype: String
        get() = when (this) {
            is Int64 -> "int64"
            is Int32 -> "int32"
            is Float32 -> "float32"
        }

    override fun toString() = "$dtype${shape.toList()}"
}

/** One loaded program (a .pte, .onnx, ...): positional inputs in, positional outputs out. */
interface LoadedProgram : Closeable {
    fun run(inputs: List<Tensor>): List<Tensor>

    /** The manifest fragment embedded in the program at export (JSON), or null when it has none. */
    fun metadata(): String?
}

/** A runtime that loads program files (ExecuTorch on Android; a replay or a fake in JVM tests). */
interface TrunkBackend {
    fun load(file: File): LoadedProgram
}
