// Pure Kotlin/JVM: tokenizer, manifest, task heads, runner. No Android or runtime dependency.
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    implementation(libs.gson)
    implementation(libs.kotlinx.coroutines.core)
    testImplementation(libs.junit.jupiter)
    testImplementation(libs.kotlinx.coroutines.test)
    testRuntimeOnly(libs.junit.platform.launcher)
}

// The tests read bundles and their verify reports from CTB_BUNDLES (BUNDLE:REPORT[:...]) or
// CTB_BUNDLE and CTB_REPORT (see core/test.sh, which runs them with Maven).
tasks.test {
    useJUnitPlatform()
    systemProperty("ctb.demo", rootDir.path) // VersionsTest reads pom.xml and the version catalog
    testLogging { events("passed", "failed") }
}
