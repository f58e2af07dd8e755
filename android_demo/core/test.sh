#!/usr/bin/env bash
# Builds and tests android_demo's JVM modules (core, backend-onnxruntime) with Maven, from Maven
# Central only (no Android SDK, no Gradle):
#
#   bash android_demo/core/test.sh BUNDLE REPORT [BUNDLE REPORT ...]   (or env CTB_BUNDLE, CTB_REPORT)
#   bash android_demo/core/test.sh                                    (makes tiny ONNX bundles first)
#   bash android_demo/core/test.sh --tools                            (resolve every Maven dependency
#                                                                      into ~/.m2, compile, and exit)
#
# Each BUNDLE is a bundle folder and REPORT its `ctb-mobile verify` report folder (golden.json, ...).
# The core's tests read the first pair (give a fused bundle first); the ONNX parity tests run every
# ONNX bundle given (fused / split, fp32 / int8; a split one also gets its branch replaced); an
# android (.pte) bundle may be given too: the JVM cannot run it, so only the core's tests use it, when
# it comes first. With no bundle given it makes the tiny recipe's ONNX fp32 bundles (fused and split)
# with the toolchain, from the repository root with .venv active. `--tools` can run early and in the
# background: Maven runs are serialised with a lock. Prints Surefire's summary ("Tests run: N,
# Failures: F, Errors: E, Skipped: S") and, last, "N passed, N failed" (a build that cannot run
# counts as one failure); the exit status is non-zero if anything failed or nothing ran.
set -uo pipefail

CORE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEMO=$(dirname "$CORE")
REPO=$(dirname "$DEMO")
TOOLS_ONLY=0
if [ "${1:-}" = "--tools" ]; then TOOLS_ONLY=1; shift; fi
START=$SECONDS

broken() {
    echo "core/test.sh: $1" >&2
    echo "0 passed, 1 failed"
    exit 1
}

command -v java >/dev/null || broken "java not found; install a JDK 17 (apt-get install -y openjdk-17-jdk-headless)"
command -v mvn >/dev/null || broken "mvn not found; install Maven 3.8+ (apt-get install -y maven)"
MVN=(mvn -B --no-transfer-progress -Dstyle.color=never -f "$DEMO/pom.xml")
exec 9>"$DEMO/.maven.lock"
flock 9 || broken "could not lock $DEMO/.maven.lock"

if [ "$TOOLS_ONLY" -eq 1 ]; then
    # compiles both modules, resolves the plugins and Surefire's JUnit provider (VersionsTest needs no
    # bundle), and writes the classpath predict.sh uses
    "${MVN[@]}" -q test dependency:build-classpath -Dmdep.includeScope=runtime -Dmdep.outputFile=target/classpath.txt \
        -Dtest=VersionsTest -Dsurefire.failIfNoSpecifiedTests=false >&2 ||
        broken "mvn could not resolve and build android_demo (Maven Central reachable? see the log above)"
    echo "core/test.sh: Maven dependencies in ~/.m2, android_demo compiled ($(( SECONDS - START )) s)" >&2
    exit 0
fi

PAIRS=()
if [ $# -gt 0 ]; then
    [ $(( $# % 2 )) -eq 0 ] || broken "give BUNDLE REPORT pairs; got $# paths"
    PAIRS=("$@")
elif [ -n "${CTB_BUNDLE:-}" ]; then
    PAIRS=("$CTB_BUNDLE" "${CTB_REPORT:-$CTB_BUNDLE.verify}")
else
    WORK=$(mktemp -d)
    echo "no bundle given: making the tiny recipe's ONNX fp32 bundles with the toolchain in $WORK" >&2
    [ -f "$REPO/.venv/bin/activate" ] || broken "no bundle given and no $REPO/.venv; pass BUNDLE REPORT or set up the venv"
    (
        cd "$REPO" && . .venv/bin/activate &&
            ctb-mobile train models/tiny.toml --epochs 1 --out "$WORK" &&
            ctb-mobile merge models/tiny.toml --from selected --out "$WORK" &&
            ctb-mobile export models/tiny.toml --target onnx --precision fp32 --out "$WORK" &&
            ctb-mobile export models/tiny.toml --target onnx --precision fp32 --layout split --out "$WORK" &&
            ctb-mobile verify "$WORK/bundles/onnx-fused-fp32" --recipe models/tiny.toml --out "$WORK" &&
            ctb-mobile verify "$WORK/bundles/onnx-split-fp32" --recipe models/tiny.toml --out "$WORK"
    ) >&2 || broken "the toolchain could not make a bundle in $WORK"
    PAIRS=("$WORK/bundles/onnx-fused-fp32" "$WORK/bundles/onnx-fused-fp32.verify"
        "$WORK/bundles/onnx-split-fp32" "$WORK/bundles/onnx-split-fp32.verify")
fi
LIST=""
for ((i = 0; i < ${#PAIRS[@]}; i += 2)); do
    b=${PAIRS[i]} r=${PAIRS[i + 1]}
    [ -f "$b/manifest.json" ] || broken "$b is not a bundle (no manifest.json)"
    [ -f "$r/golden.json" ] || broken "$r has no golden.json (run ctb-mobile verify on $b)"
    LIST="$LIST${LIST:+:}$(cd "$b" && pwd):$(cd "$r" && pwd)"
done

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
echo "building and testing android_demo with Maven (${#PAIRS[@]} paths: $(( ${#PAIRS[@]} / 2 )) bundles)" >&2
# every module's tests run even when one fails; the counts below decide the exit status
env -u CTB_BUNDLE -u CTB_REPORT CTB_BUNDLES="$LIST" "${MVN[@]}" clean test -Dmaven.test.failure.ignore=true 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >"$LOG"
MAVEN=${PIPESTATUS[0]}
# the tests' own lines (app parity, refused: ...) and Surefire's per-class and summary lines; not Maven's chatter
grep -v -E '^\[(INFO|WARNING)\]|^\s*$|^(SLF4J|WARNING: )|Tests run:|^See |^\[ERROR\] *$|There are test failures|^\[ERROR\] (Failures|Errors): *$' "$LOG"
grep -E '^\[(INFO|WARNING|ERROR)\] Tests run:' "$LOG" | grep -v -E 'Time elapsed' | sed 's/^\[[A-Z]*\] //'
[ "$MAVEN" -eq 0 ] || { tail -40 "$LOG" >&2; broken "mvn failed before the tests could finish (compilation? see above)"; }
read -r RUN FAILED_T ERRORS SKIPPED < <(grep -E '^\[(INFO|WARNING|ERROR)\] Tests run:' "$LOG" | grep -v 'Time elapsed' |
    sed -E 's/.*Tests run: ([0-9]+), Failures: ([0-9]+), Errors: ([0-9]+), Skipped: ([0-9]+).*/\1 \2 \3 \4/' |
    awk '{r+=$1; f+=$2; e+=$3; s+=$4} END {print r+0, f+0, e+0, s+0}')
echo "Tests run: $RUN, Failures: $FAILED_T, Errors: $ERRORS, Skipped: $SKIPPED (all modules)"
PASSED=$(( RUN - FAILED_T - ERRORS - SKIPPED ))
FAILED=$(( FAILED_T + ERRORS ))
echo "core/test.sh: $(( SECONDS - START )) s" >&2
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
