// The demo screen. The bundle comes from src/main/assets/bundle/ (filled by `ctb-mobile embed`,
// git-ignored; an int8 bundle by default, see README.md); the instrumented test reads golden files from src/androidTest/assets/golden/.
plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
    alias(libs.plugins.kotlin.compose)
}

android {
    namespace = "ctbmobile.demo"
    compileSdk = 35
    defaultConfig {
        applicationId = "ctbmobile.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
    }
    buildFeatures {
        compose = true
    }
    androidResources {
        noCompress += listOf("pte", "onnx", "ort") // copied to storage as they are
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    // the manifest's target picks the backend: "android" -> ExecuTorch (.pte), "onnx" -> ONNX Runtime
    implementation(project(":backend-executorch"))
    implementation(project(":backend-onnxruntime"))
    implementation(libs.kotlinx.coroutines.android)
    implementation(libs.androidx.core.ktx)
    implementation(libs.androidx.activity.compose)
    implementation(libs.androidx.lifecycle.viewmodel.compose)
    implementation(platform(libs.androidx.compose.bom))
    implementation(libs.androidx.compose.ui)
    implementation(libs.androidx.compose.material3)
    androidTestImplementation(libs.androidx.test.ext.junit)
    androidTestImplementation(libs.androidx.test.runner)
    androidTestImplementation(libs.gson)
}
