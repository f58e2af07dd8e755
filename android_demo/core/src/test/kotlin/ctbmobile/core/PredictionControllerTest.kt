package ctbmobile.core

import kotlinx.coroutines.ExperimentalCoroutinesApi
import kotlinx.coroutines.delay
import kotlinx.coroutines.launch
import kotlinx.coroutines.NonCancellable
import kotlinx.coroutines.withContext
import kotlinx.coroutines.test.UnconfinedTestDispatcher
import kotlinx.coroutines.test.StandardTestDispatcher
import kotlinx.coroutines.test.advanceUntilIdle
import kotlinx.coroutines.test.currentTime
import kotlinx.coroutines.test.runTest
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.io.File
import java.util.concurrent.CountDownLatch
import kotlin.concurrent.thread

/** The demo screen's logic (PredictionController) in virtual time, and the runner's own timing. */
@OptIn(ExperimentalCoroutinesApi::class)
class PredictionControllerTest {
    /** Golden.json's first texts, with runtime_py's predictions as what the fake inference returns. */
    private val texts = Golden.cases.take(6).map { it["text"].asString }

    private fun result(text: String): Map<String, TaskResult> {
        val case = Golden.cases.first { it["text"].asString == text }
        val tasks = Golden.manifest.tasks.associateBy { it.name }
        val e = Golden.tokenizer.encode(text)
        return case.getAsJsonObject("predictions").keySet().associateWith {
            Heads.decode(tasks.getValue(it), case.getAsJsonObject("outputs")[it].floats(), e, codePoints(text))
        }
    }

    @Test
    fun `five quick keystrokes run one inference, of the last text`() = runTest {
        val ran = mutableListOf<String>()
        val controller = PredictionController(this, { t -> ran.add(t); Timed(result(t), 3_000_000) }, 150, StandardTestDispatcher(testScheduler))
        for (t in texts.take(5)) {
            controller.onText(t)
            delay(40) // typing faster than the debounce
        }
        advanceUntilIdle()
        assertEquals(listOf(texts[4]), ran)
        assertEquals(texts[4], controller.state.value.text)
        assertEquals(result(texts[4]), controller.state.value.results)
    }

    @Test
    fun `a slow inference overtaken by new text is never published`() = runTest {
        val ran = mutableListOf<String>()
        val published = mutableListOf<String>()
        val controller = PredictionController(this, { t ->
            ran.add(t)
            withContext(NonCancellable) { delay(if (t == texts[0]) 1_000 else 10) } // the first is slow and, as a native call, not cancellable
            Timed(result(t), 1)
        }, 150, StandardTestDispatcher(testScheduler))
        backgroundScope.launch(UnconfinedTestDispatcher(testScheduler)) { controller.state.collect { published.add(it.text) } }
        controller.onText(texts[0])
        delay(400) // its inference is running
        controller.onText(texts[1])
        advanceUntilIdle()
        assertEquals(listOf(texts[0], texts[1]), ran, "both ran: the first was already running")
        assertTrue(texts[0] !in published, "stale result published: $published")
        assertEquals(texts[1], controller.state.value.text)
    }

    @Test
    fun `the latency shown is the inference's own, not the debounce or the queue`() = runTest {
        val controller = PredictionController(this, { t -> delay(500); Timed(result(t), 7_000_000) }, 150, StandardTestDispatcher(testScheduler))
        controller.onText(texts[2])
        advanceUntilIdle()
        assertTrue(currentTime >= 650)
        assertEquals(7.0, controller.state.value.latencyMs)
    }

    @Test
    fun `an input error is shown, not thrown`() = runTest {
        val runner = MultiTaskRunner.open(Golden.bundle, ReplayBackend(Golden.manifest, Golden.cases))
        val controller = PredictionController(this, { t -> runner.predictTimed(t, tasks = listOf("no_such_task")) }, 150, StandardTestDispatcher(testScheduler))
        controller.onText(texts[0])
        advanceUntilIdle()
        assertTrue("no_such_task" in controller.state.value.error.orEmpty(), controller.state.value.error)
        runner.close()
    }

    /** A real runner whose program takes 300 ms: a call queued behind another reports its own time only. */
    @Test
    fun `predictTimed excludes the wait for the runner's lock`() {
        val replay = ReplayBackend(Golden.manifest, Golden.cases)
        val slow = object : TrunkBackend {
            override fun load(file: File): LoadedProgram {
                val p = replay.load(file)
                return object : LoadedProgram by p {
                    override fun run(inputs: List<Tensor>): List<Tensor> { Thread.sleep(300); return p.run(inputs) }
                }
            }
        }
        MultiTaskRunner.open(Golden.bundle, slow).use { runner ->
            val single = runner.tasks.filter { !it.pair }.map { it.name }
            val started = CountDownLatch(1)
            val first = thread { started.countDown(); runner.predictTimed(texts[0], tasks = single) }
            started.await()
            Thread.sleep(50) // the first call holds the lock
            val t0 = System.nanoTime()
            val second = runner.predictTimed(texts[1], tasks = single)
            val wall = (System.nanoTime() - t0) / 1e6
            first.join()
            println("queued call: %.0f ms wall, %.0f ms reported".format(wall, second.millis))
            assertTrue(second.millis >= 290 && second.millis < wall - 150, "reported ${second.millis} ms of $wall ms")
            assertEquals(result(texts[1]).keys, second.value.keys)
        }
    }
}
