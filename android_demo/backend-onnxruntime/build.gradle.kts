// ONNX Runtime on Android: runs a `target onnx` bundle for the core's MultiTaskRunner. The same
// source builds on the JVM with Maven against com.microsoft.onnxruntime:onnxruntime (pom.xml), where
// its tests (OnnxParityTest: every golden text against runtime_py) run: `bash core/test.sh ...`.
plugins {
    alias(libs.plugins.android.library)
    alias(libs.plugins.kotlin.android)
}

android {
    namespace = "ctbmobile.onnxruntime"
    compileSdk = 35
    defaultConfig {
        minSdk = 26
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    // the JVM tests need core's test helpers and real bundles: Maven runs them (core/test.sh)
    sourceSets.getByName("test").java.setSrcDirs(emptyList<String>())
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    api(project(":core"))
    implementation(libs.onnxruntime.android)
    implementation(libs.gson)
}
