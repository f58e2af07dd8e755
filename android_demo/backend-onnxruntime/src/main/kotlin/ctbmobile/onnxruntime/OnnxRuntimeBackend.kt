package ctbmobile.onnxruntime

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OnnxValue
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import ai.onnxruntime.TensorInfo
import ctbmobile.core.BundleException
import ctbmobile.core.LoadedProgram
import ctbmobile.core.Tensor
import ctbmobile.core.TrunkBackend
import java.io.File
import java.nio.FloatBuffer
import java.nio.IntBuffer
import java.nio.LongBuffer

/**
 * Runs a bundle's ONNX programs (`target onnx`: the manifest's `.onnx` file; ONNX Runtime Mobile
 * also reads the `.ort` beside it) with ONNX Runtime. Only the `ai.onnxruntime` API, so the same
 * source builds against `onnxruntime` (JVM) and `onnxruntime-android` (the app). Positional tensors
 * in and out, in the program's own order: MultiTaskRunner maps them through the manifest and checks
 * their count and shapes. [threads]: intra-op threads, 0 = ONNX Runtime's default.
 */
class OnnxRuntimeBackend(private val threads: Int = 0) : TrunkBackend {
    private val env: OrtEnvironment = OrtEnvironment.getEnvironment()

    override fun load(file: File): LoadedProgram {
        if (!file.isFile) throw BundleException("${file.name} is missing at ${file.parent}")
        val options = OrtSession.SessionOptions()
        try {
            if (threads > 0) {
                options.setIntraOpNumThreads(threads)
                options.setInterOpNumThreads(1)
            }
            return Program(env, env.createSession(file.absolutePath, options), file.name)
        } catch (e: ai.onnxruntime.OrtException) {
            throw BundleException("ONNX Runtime cannot load ${file.name}: ${e.message?.lineSequence()?.firstOrNull()}")
        } finally {
            options.close()
        }
    }

    private class Program(private val env: OrtEnvironment, private val session: OrtSession, private val name: String) : LoadedProgram {
        private val inputNames = session.inputNames.toList()

        override fun run(inputs: List<Tensor>): List<Tensor> {
            if (inputs.size != inputNames.size) {
                throw BundleException("$name takes ${inputNames.size} inputs ($inputNames), the manifest gives ${inputs.size}")
            }
            val tensors = inputs.map { toOnnx(it) }
            try {
                session.run(inputNames.zip(tensors).toMap()).use { result ->
                    return (0 until result.size()).map { i -> fromOnnx(result.get(i), "$name output $i") }
                }
            } catch (e: ai.onnxruntime.OrtException) {
                throw BundleException("$name failed in ONNX Runtime: ${e.message?.lineSequence()?.firstOrNull()}")
            } finally {
                tensors.forEach { it.close() }
            }
        }

        /** The manifest fragment the exporter stores in the model's metadata_props (`ctb_mobile_manifest`). */
        override fun metadata(): String? = session.metadata.customMetadata[METADATA_KEY]

        override fun close() = session.close()

        private fun toOnnx(t: Tensor): OnnxTensor {
            val shape = LongArray(t.shape.size) { t.shape[it].toLong() }
            return when (t) {
                is Tensor.Int64 -> OnnxTensor.createTensor(env, LongBuffer.wrap(t.data), shape)
                is Tensor.Int32 -> OnnxTensor.createTensor(env, IntBuffer.wrap(t.data), shape)
                is Tensor.Float32 -> OnnxTensor.createTensor(env, FloatBuffer.wrap(t.data), shape)
            }
        }

        private fun fromOnnx(v: OnnxValue, where: String): Tensor {
            val t = v as? OnnxTensor ?: throw BundleException("$where is not a tensor")
            val info = t.info as TensorInfo
            val shape = info.shape.map { it.toInt() }.toIntArray()
            return when (info.type) {
                ai.onnxruntime.OnnxJavaType.FLOAT -> Tensor.Float32(shape, t.floatBuffer.let { b -> FloatArray(b.remaining()).also { b.get(it) } })
                ai.onnxruntime.OnnxJavaType.INT64 -> Tensor.Int64(shape, t.longBuffer.let { b -> LongArray(b.remaining()).also { b.get(it) } })
                ai.onnxruntime.OnnxJavaType.INT32 -> Tensor.Int32(shape, t.intBuffer.let { b -> IntArray(b.remaining()).also { b.get(it) } })
                else -> throw BundleException("$where is ${info.type}; the manifest's outputs are float32")
            }
        }
    }

    companion object {
        const val METADATA_KEY = "ctb_mobile_manifest"
    }
}
