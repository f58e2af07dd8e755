package ctbmobile.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.fail
import org.junit.jupiter.api.Test
import java.io.File

/** The Maven build (pom.xml) and Gradle's version catalog (gradle/libs.versions.toml) name the same versions. */
class VersionsTest {
    private val demo: File = File(System.getProperty("ctb.demo") ?: fail("system property ctb.demo is not set; run the tests with Maven (core/test.sh)"))

    @Test
    fun `pom and version catalog pin the same versions`() {
        val pom = File(demo, "pom.xml").readText()
        val catalog = File(demo, "gradle/libs.versions.toml").readLines()
        val versions = catalog.dropWhile { it.trim() != "[versions]" }.drop(1).takeWhile { !it.trim().startsWith("[") }
            .mapNotNull { Regex("""^\s*([A-Za-z0-9_-]+)\s*=\s*"([^"]+)"""").find(it)?.destructured?.let { (k, v) -> k to v } }.toMap()
        // catalog key -> pom property
        val pairs = mapOf("kotlin" to "kotlin.version", "gson" to "gson.version", "junit" to "junit.version",
            "coroutines" to "coroutines.version", "onnxruntime" to "onnxruntime.version", "surefire" to "surefire.version")
        val checked = pairs.map { (key, property) ->
            val inCatalog = versions[key] ?: fail("gradle/libs.versions.toml has no version '$key'")
            val inPom = Regex("<${Regex.escape(property)}>([^<]+)</${Regex.escape(property)}>").find(pom)?.groupValues?.get(1)
                ?: fail("pom.xml has no property $property")
            assertEquals(inCatalog, inPom, "$key: libs.versions.toml says $inCatalog, pom.xml's $property says $inPom; make them equal")
            "$key $inPom"
        }
        println("versions: ${checked.joinToString()}")
    }
}
