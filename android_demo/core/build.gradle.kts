// Pure Kotlin/JVM: tokenizer, manifest, task heads, runner. No Android or runtime dependency.
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    implementation(libs.gson)
    testImplementation(libs.junit.jupiter)
    testRuntimeOnly(libs.junit.platform.launcher)
}

// The tests read a bundle and its verify report from CTB_BUNDLE and CTB_REPORT (see core/test.sh).
tasks.test {
    useJUnitPlatform()
    testLogging { events("passed", "failed") }
}
