pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

plugins {
    // downloads the JDK 17 that `jvmToolchain(17)` asks for when none is installed
    id("org.gradle.toolchains.foojay-resolver-convention") version "0.9.0"
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "ctb-mobile-android-demo"
include(":core", ":backend-executorch", ":backend-onnxruntime", ":app")
