#!/usr/bin/env bash
# The sanitizer pass (issue 14), run by CI after scripts/test.sh: the project built a
# second time, in build-asan, with AddressSanitizer (LeakSanitizer included) and
# UndefinedBehaviorSanitizer (still -Werror), and every meson test run there again: unit,
# golden, integration (the agents, meshctl and meshlane-cni the tests start are the
# instrumented ones) and the fuzz corpus replays. The build's default test setup
# ('sanitize', meson.build) stops the process at the first error, reports leaks at exit
# except tests/sanitizers/lsan.supp's (third-party ones, each with its reason) and
# triples the timeouts. Then the libFuzzer pass (scripts/lib/fuzz_pass.sh: every fuzz
# target built with clang, ASan and UBSan while the sanitizer tests run, then run for
# FUZZ_SECONDS, default 6, each). Then one summary line; under CI=true a skipped test
# fails it. Needs root, as scripts/test.sh does. It is a pass of its own, not part of
# test.sh, because it doubles the time and test.sh stays under 20 minutes on 2 cores.
#   FUZZ_SECONDS=0 scripts/sanitize.sh   without the libFuzzer runs
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
asan_build=${MESHLANE_ASAN_BUILD:-build-asan}

started=$(date +%s)
source scripts/lib/test_prep.sh
source scripts/lib/fuzz_pass.sh
prepare_test_machine
# -O1 and line tables only (-g1, no -g): a sanitized -O2 -g compile of the control
# library's largest files takes 2.4 times as long, and reports need only lines.
configure_build "$asan_build" -Db_sanitize=address,undefined -Dtests=enabled -Dperf=disabled \
  -Doptimization=1 -Ddebug=false -Dc_args=-g1 -Dcpp_args=-g1
ninja -C "$asan_build"
built=$(date +%s)
fuzz_build_start

status=0
rm -f "$asan_build"/meson-logs/testlog*.junit.xml
meson test -C "$asan_build" --setup sanitize --print-errorlogs --num-processes "${MESHLANE_TEST_JOBS:-2}" || status=$?
finished=$(date +%s)
fuzz_run_all
fuzzed=$(date +%s)
echo "sanitizer pass: build $((built - started)) s, tests $((finished - built)) s," \
  "libFuzzer $((fuzzed - finished)) s (its build beside the tests)"

python3 scripts/lib/test_summary.py "$asan_build/meson-logs/testlog-sanitize.junit.xml" \
  --label "sanitizer pass" --extra-failures "$fuzz_failed" --ci "${CI:-}" || status=1
exit $status
