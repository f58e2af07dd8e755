#!/usr/bin/env bash
# Builds and tests android_demo/core on the JVM (no Android SDK, no Gradle):
#
#   bash android_demo/core/test.sh [BUNDLE_DIR REPORT_DIR]        (or env CTB_BUNDLE, CTB_REPORT)
#   bash android_demo/core/test.sh --tools                        (install the tools below and exit)
#
# Installs what is missing: kotlinc (npm package kotlin-compiler) into android_demo/.tools, and
# JUnit 5 and Gson with apt-get; one run at a time installs (a lock), so CI can start `--tools` early
# and in the background. With no bundle given it makes one with the toolchain (models/tiny.toml,
# android fused fp32) and verifies it, from the repository root with .venv active. Compiles
# core/src/main and core/src/test with kotlinc (JVM target 17) and runs the JUnit console launcher.
# The last line is "N passed, N failed" (a build that cannot run counts as one failure); the exit
# status is non-zero if anything failed or nothing ran.
set -uo pipefail

KOTLIN_VERSION=2.4.20
CORE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEMO=$(dirname "$CORE")
REPO=$(dirname "$DEMO")
TOOLS=$DEMO/.tools
KOTLIN_HOME=$TOOLS/node_modules/kotlin-compiler
JUNIT=/usr/share/java/junit-platform-console-standalone.jar
GSON=/usr/share/java/gson.jar
TOOLS_ONLY=0
if [ "${1:-}" = "--tools" ]; then TOOLS_ONLY=1; shift; fi
BUNDLE=${1:-${CTB_BUNDLE:-}}
REPORT=${2:-${CTB_REPORT:-}}
START=$SECONDS

broken() {
    echo "core/test.sh: $1" >&2
    echo "0 passed, 1 failed"
    exit 1
}

command -v java >/dev/null || broken "java not found; install a JDK 17 (apt-get install -y openjdk-17-jdk-headless)"

mkdir -p "$TOOLS"
exec 9>"$TOOLS/.install.lock"
flock 9 || broken "could not lock $TOOLS/.install.lock"
if [ "$(cat "$KOTLIN_HOME/build.txt" 2>/dev/null)" != "$KOTLIN_VERSION" ]; then
    command -v npm >/dev/null || broken "npm not found; it installs kotlinc $KOTLIN_VERSION (apt-get install -y npm)"
    echo "installing kotlinc $KOTLIN_VERSION into $TOOLS" >&2
    npm install --prefix "$TOOLS" --no-audit --no-fund "kotlin-compiler@$KOTLIN_VERSION" >&2 ||
        broken "npm install kotlin-compiler@$KOTLIN_VERSION failed"
fi
KOTLINC=$KOTLIN_HOME/bin/kotlinc
chmod +x "$KOTLIN_HOME"/bin/* 2>/dev/null
[ -x "$KOTLINC" ] || broken "kotlinc missing at $KOTLINC"

if [ ! -f "$JUNIT" ] || [ ! -f "$GSON" ]; then
    echo "installing junit5 and libgoogle-gson-java" >&2
    { apt-get update -qq && apt-get install -y -qq junit5 libgoogle-gson-java; } >&2 ||
        broken "apt-get install junit5 libgoogle-gson-java failed (run as root)"
fi
flock -u 9
if [ "$TOOLS_ONLY" -eq 1 ]; then
    echo "core/test.sh: kotlinc $KOTLIN_VERSION, JUnit 5 and Gson ready ($(( SECONDS - START )) s)" >&2
    exit 0
fi

if [ -z "$BUNDLE" ]; then
    WORK=$(mktemp -d)
    echo "no bundle given: making one with the toolchain in $WORK" >&2
    [ -f "$REPO/.venv/bin/activate" ] || broken "no bundle given and no $REPO/.venv; pass BUNDLE_DIR REPORT_DIR or set up the venv"
    (
        cd "$REPO" && . .venv/bin/activate &&
            ctb-mobile train models/tiny.toml --epochs 1 --out "$WORK" &&
            ctb-mobile merge models/tiny.toml --from selected --out "$WORK" &&
            ctb-mobile export models/tiny.toml --target android --precision fp32 --out "$WORK" &&
            ctb-mobile verify "$WORK/bundles/android-fused-fp32" --recipe models/tiny.toml --out "$WORK"
    ) >&2 || broken "the toolchain could not make a bundle in $WORK"
    BUNDLE=$WORK/bundles/android-fused-fp32
    REPORT=${REPORT:-$WORK/bundles/android-fused-fp32.verify}
fi
[ -n "$REPORT" ] || REPORT=$BUNDLE.verify
[ -f "$BUNDLE/manifest.json" ] || broken "$BUNDLE is not a bundle (no manifest.json)"
[ -f "$REPORT/golden.json" ] || broken "$REPORT has no golden.json (run ctb-mobile verify)"

BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
echo "compiling core with kotlinc $KOTLIN_VERSION" >&2
# C1 only: a one-shot compiler run finishes sooner without the optimising JIT
JAVA_OPTS="-Xmx2g -Xss4m -XX:TieredStopAtLevel=1" "$KOTLINC" -jvm-target 17 -nowarn -cp "$GSON:$JUNIT" -d "$BUILD/classes" \
    "$CORE/src/main/kotlin" "$CORE/src/test/kotlin" >&2 || broken "compilation failed"

CTB_BUNDLE=$(cd "$BUNDLE" && pwd) CTB_REPORT=$(cd "$REPORT" && pwd) \
    java -jar "$JUNIT" --disable-banner --disable-ansi-colors --details=tree --fail-if-no-tests \
    --class-path "$BUILD/classes:$GSON:$KOTLIN_HOME/lib/kotlin-stdlib.jar" --scan-class-path 2>&1 | tee "$BUILD/junit.log"
LAUNCHER=${PIPESTATUS[0]}

count() {  # a number from the launcher's summary, e.g. "[        12 tests successful      ]"
    local n
    n=$(sed -n "s/^\[ *\([0-9]*\) $1 *\]$/\1/p" "$BUILD/junit.log" | head -1)
    echo "${n:-0}"
}
PASSED=$(count "tests successful")
FAILED=$(( $(count "tests failed") + $(count "containers failed") ))
echo "core/test.sh: $(( SECONDS - START )) s" >&2
echo "$PASSED passed, $FAILED failed"
[ "$LAUNCHER" -eq 0 ] && [ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
