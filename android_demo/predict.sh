#!/usr/bin/env bash
# The JVM stack on a bundle, from the command line, as a Kotlin or Java service would call it:
#
#   bash android_demo/predict.sh BUNDLE TEXT...
#
# prints one JSON line per text on stdout, the same as `ctb-mobile predict BUNDLE TEXT...`
# (ctbmobile.onnxruntime.PredictKt: MultiTaskRunner + OnnxRuntimeBackend; ONNX bundles). Builds
# core and backend-onnxruntime with Maven first when a source or pom is newer than the last build
# (Maven's output goes to stderr). Errors: one line on stderr, exit status 2.
set -uo pipefail
DEMO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CP_FILE=$DEMO/backend-onnxruntime/target/classpath.txt
if [ $# -lt 2 ]; then echo "predict: usage: predict.sh BUNDLE TEXT..." >&2; exit 2; fi
command -v java >/dev/null || { echo "predict: java not found; install a JDK 17" >&2; exit 2; }

if [ ! -f "$CP_FILE" ] || [ -n "$(find "$DEMO/pom.xml" "$DEMO/core" "$DEMO/backend-onnxruntime" \( -name '*.kt' -o -name pom.xml \) -newer "$CP_FILE" -print -quit)" ]; then
    command -v mvn >/dev/null || { echo "predict: mvn not found; install Maven 3.8+ to build the JVM stack" >&2; exit 2; }
    exec 9>"$DEMO/.maven.lock"
    flock 9
    mvn -B -q --no-transfer-progress -Dstyle.color=never -f "$DEMO/pom.xml" test-compile dependency:build-classpath \
        -Dmdep.includeScope=runtime -Dmdep.outputFile=target/classpath.txt >&2 ||
        { echo "predict: the Maven build of android_demo failed (see above)" >&2; exit 2; }
    flock -u 9
fi
# the JVM decodes the arguments by the locale's charset: make it UTF-8
case "$(locale charmap 2>/dev/null)" in UTF-8) ;; *) export LC_ALL=C.UTF-8 ;; esac
exec java -cp "$DEMO/backend-onnxruntime/target/classes:$(cat "$CP_FILE")" ctbmobile.onnxruntime.PredictKt "$@"
