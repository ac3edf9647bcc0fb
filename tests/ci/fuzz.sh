#!/bin/sh
# tests/ci/fuzz.sh [SECONDS] — every libFuzzer target for SECONDS (default
# 60) each, from the repo top:
#
#   tests/ci/fuzz.sh 60
#
# Configures build-fuzz with clang (-DFETCHD_FUZZ=ON, ASan + UBSan), builds
# the fuzz targets only, runs them through ctest (label "fuzz", two at a
# time: JOBS, default 2), prints each target's executions, and exits
# non-zero when any target found something (its reproducer is
# build-fuzz/fuzz/crash-<target>-*; tests/fuzz/README.md says how to replay
# and minimise it). Needs clang and libclang-rt-14-dev (deploy/install-deps.sh).
set -eu

cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-60}
JOBS=${JOBS:-2}
BUILD_DIR=${BUILD_DIR:-build-fuzz}
TARGETS="fuzz_url fuzz_jobspec fuzz_jsonr fuzz_response fuzz_control fuzz_config fuzz_state fuzz_metrics"

case "$SECONDS_EACH" in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS]" >&2
    exit 2
    ;;
esac

start=$(date +%s)
cmake -S . -B "$BUILD_DIR" -DCMAKE_C_COMPILER=clang -DFETCHD_FUZZ=ON \
    -DFETCHD_FUZZ_SECONDS="$SECONDS_EACH" -DFETCHD_WERROR=ON -DFETCHD_VALGRIND_TESTS=OFF
# shellcheck disable=SC2086 # one word per target
cmake --build "$BUILD_DIR" -j"$JOBS" --target $TARGETS
built=$(date +%s)

rm -f "$BUILD_DIR"/fuzz/crash-*
status=0
ctest --test-dir "$BUILD_DIR" -L fuzz --output-on-failure -j"$JOBS" >"$BUILD_DIR/fuzz.log" 2>&1 ||
    status=$?
end=$(date +%s)

# Executions per target, from libFuzzer's final stats in ctest's log.
log="$BUILD_DIR/Testing/Temporary/LastTest.log"
echo "target           executions"
awk '/^[0-9]+\/[0-9]+ Test: fuzz_/ { t = $3 }
     /stat::number_of_executed_units:/ { if (t != "") printf "%-16s %s\n", t, $2; t = "" }' "$log"
grep -E 'tests passed|tests failed|\*\*\*Failed|Timeout' "$BUILD_DIR/fuzz.log" || true
for f in "$BUILD_DIR"/fuzz/crash-*; do
    [ -e "$f" ] && echo "finding: $f"
done
# A finding must be replayable from the CI log alone (the machine that ran it
# is gone): the report of each failed target, and its input in base64.
if [ "$status" -ne 0 ]; then
    failed=$(sed -n 's/^ *[0-9]*\/[0-9]* Test *#[0-9]*: \(fuzz_[a-z]*\) .*\*\*\*.*/\1/p' "$BUILD_DIR/fuzz.log")
    for t in $failed; do
        echo "report of $t (libFuzzer's progress lines left out):"
        awk -v t="$t" '/^[0-9]+\/[0-9]+ Test(ing)?: / { on = ($3 == t) }
                       on && !/^#[0-9]+\t/ && !/NEW_FUNC/' "$log" | tail -n 100
    done
    for f in "$BUILD_DIR"/fuzz/crash-* "$BUILD_DIR"/fuzz/leak-* "$BUILD_DIR"/fuzz/oom-*; do
        [ -e "$f" ] || continue
        echo "input of $f ($(wc -c <"$f") bytes, the first 4096 in base64):"
        head -c 4096 "$f" | base64
    done
fi
echo "fuzz.sh: build $((built - start)) s, fuzzing $((end - built)) s, total $((end - start)) s"
exit "$status"
