package ctbmobile.executorch

import ctbmobile.core.BundleException
import ctbmobile.core.LoadedProgram
import ctbmobile.core.Tensor
import ctbmobile.core.TrunkBackend
import org.pytorch.executorch.DType
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import java.io.File
import org.pytorch.executorch.Tensor as EtTensor

/**
 * Runs a bundle's .pte programs with ExecuTorch (XNNPACK). Positional tensors in and out: the core's
 * MultiTaskRunner maps them through the manifest and checks their count and shapes.
 */
class ExecuTorchBackend(private val threads: Int = 0) : TrunkBackend {
    override fun load(file: File): LoadedProgram {
        if (!file.isFile) throw BundleException("${file.name} is missing at ${file.parent}")
        return Program(Module.load(file.absolutePath, Module.LOAD_MODE_MMAP, threads), file.name)
    }

    private class Program(private val module: Module, private val name: String) : LoadedProgram {
        override fun run(inputs: List<Tensor>): List<Tensor> =
            module.forward(*inputs.map { EValue.from(toExecuTorch(it)) }.toTypedArray()).mapIndexed { i, v ->
                if (!v.isTensor) throw BundleException("$name output $i is not a tensor")
                fromExecuTorch(v.toTensor(), "$name output $i")
            }

        /** The `manifest` constant method the exporter stores in every program (a JSON string). */
        override fun metadata(): String? {
            if ("manifest" !in module.getMethods()) return null
            val out = module.execute("manifest")
            return out.firstOrNull()?.takeIf { it.isString }?.toStr()
        }

        override fun close() = module.close()
    }

    private companion object {
        fun toExecuTorch(t: Tensor): EtTensor {
            val shape = LongArray(t.shape.size) { t.shape[it].toLong() }
            return when (t) {
                is Tensor.Int64 -> EtTensor.fromBlob(t.data, shape)
                is Tensor.Int32 -> EtTensor.fromBlob(t.data, shape)
                is Tensor.Float32 -> EtTensor.fromBlob(t.data, shape)
            }
        }

        fun fromExecuTorch(t: EtTensor, where: String): Tensor {
            val shape = t.shape().map { it.toInt() }.toIntArray()
            return when (t.dtype()) {
                DType.FLOAT, DType.HALF -> Tensor.Float32(shape, t.dataAsFloatArray)
                DType.INT64 -> Tensor.Int64(shape, t.dataAsLongArray)
                DType.INT32 -> Tensor.Int32(shape, t.dataAsIntArray)
                else -> throw BundleException("$where is ${t.dtype()}; the manifest's outputs are float32")
            }
        }
    }
}
