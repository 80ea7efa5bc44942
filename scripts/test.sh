#!/usr/bin/env bash
# The README's test command: set-up, build, and every test (unit, golden, integration,
# fuzz corpus replay, a short libFuzzer run per target), then one summary line.
#   scripts/test.sh                 everything
#   FUZZ_SECONDS=0 scripts/test.sh  skip the libFuzzer runs (corpus replay still runs)
#   MESHLANE_SANITIZE=1 scripts/test.sh  also the sanitizer pass (ASan+LSan+UBSan build,
#                                        build-asan); not yet on under CI (see below)
# Needs root for the namespace, cgroup and BPF tests; under CI=true a skipped test fails
# the run, since CI runs as root and must run everything.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${MESHLANE_BUILD:-build}
fuzz_build=${MESHLANE_FUZZ_BUILD:-build-fuzz}
fuzz_seconds=${FUZZ_SECONDS:-10}

bash scripts/setup.sh
bash scripts/cleanup.sh >/dev/null  # leftovers of an interrupted earlier run, by prefix only
trap 'bash "$root/scripts/cleanup.sh" >/dev/null' EXIT

if [ -f "$build/build.ninja" ]; then
  meson setup --reconfigure "$build" >/dev/null
else
  meson setup "$build" >/dev/null
fi
ninja -C "$build"

status=0
meson test -C "$build" --print-errorlogs --num-processes "${MESHLANE_TEST_JOBS:-2}" \
  --timeout-multiplier "${MESHLANE_TIMEOUT_MULTIPLIER:-1}" || status=$?

# The sanitizer pass: the whole suite again in a build with AddressSanitizer (leaks
# included) and UndefinedBehaviorSanitizer, under meson's 'sanitize' test setup (errors
# stop the process, LSan suppressions of third-party leaks, timeouts x3; meson.build).
# With MESHLANE_SANITIZE=1 (it doubles the run's time). Not yet on by default under CI:
# the whole suite has not yet passed in this build from a fresh clone, nor been timed
# against CI's 90 minutes on 2 cores (README, "Sanitizers").
# The fuzz build below has its own sanitizers; this pass replays the corpora only.
sanitize=${MESHLANE_SANITIZE:-0}
asan_build=${MESHLANE_ASAN_BUILD:-build-asan}
asan_junit=""
if [ "$sanitize" = 1 ]; then
  started=$(date +%s)
  if [ -f "$asan_build/build.ninja" ]; then
    meson setup --reconfigure "$asan_build" >/dev/null
  else
    meson setup "$asan_build" -Db_sanitize=address,undefined -Dtests=enabled -Dperf=disabled >/dev/null
  fi
  ninja -C "$asan_build"
  built=$(date +%s)
  rm -f "$asan_build"/meson-logs/testlog*.junit.xml
  meson test -C "$asan_build" --setup sanitize --print-errorlogs --num-processes "${MESHLANE_TEST_JOBS:-2}" || status=$?
  finished=$(date +%s)
  asan_junit=$(ls "$asan_build"/meson-logs/testlog*.junit.xml 2>/dev/null | head -1)
  echo "sanitizer pass: build $((built - started)) s, tests $((finished - built)) s"
fi

# libFuzzer: a short run of each target from its seed corpus, in a clang build of its own.
fuzz_failed=0
if [ "$fuzz_seconds" -gt 0 ]; then
  if [ -f "$fuzz_build/build.ninja" ]; then
    meson setup --reconfigure "$fuzz_build" >/dev/null
  else
    CC=clang CXX=clang++ meson setup "$fuzz_build" -Dfuzz=true -Dtests=enabled -Dperf=disabled >/dev/null
  fi
  fuzz_targets=$(cd "$fuzz_build" && ninja -t targets all | awk -F: '$1 ~ /(^|\/)fuzz_[a-z0-9_]+$/ {print $1}')
  [ -z "$fuzz_targets" ] || ninja -C "$fuzz_build" $fuzz_targets
  for target in $(printf "$fuzz_build/%s\n" $fuzz_targets); do
    [ -x "$target" ] || continue
    name=$(basename "$target"); name=${name#fuzz_}
    corpus=$(mktemp -d)
    cp -r tests/fuzz/corpus/"$name"/. "$corpus"/
    echo "fuzz: $name for ${fuzz_seconds}s"
    if ! "$target" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 \
         -artifact_prefix="$fuzz_build/crash-$name-" "$corpus" > "$fuzz_build/fuzz-$name.log" 2>&1; then
      echo "fuzz: $name FAILED, see $fuzz_build/fuzz-$name.log"
      tail -30 "$fuzz_build/fuzz-$name.log"
      fuzz_failed=$((fuzz_failed + 1))
    else
      grep -E '^#[0-9]+.*DONE' "$fuzz_build/fuzz-$name.log" | tail -1 || true
    fi
    rm -rf "$corpus"
  done
fi

# One line for the whole run: the plain build's tests, the sanitizer pass's (when it ran,
# counted apart in the line before) and the fuzz runs that failed.
python3 - "$fuzz_failed" "${CI:-}" "$build/meson-logs/testlog.junit.xml" "$sanitize" "$asan_junit" <<'PY' || status=1
import sys, xml.etree.ElementTree as ET

def count(path):
    tests = failed = skipped = 0
    for suite in ET.parse(path).getroot().iter('testsuite'):
        tests += int(suite.get('tests', 0))
        failed += int(suite.get('failures', 0)) + int(suite.get('errors', 0))
        skipped += int(suite.get('skipped', 0)) + int(suite.get('disabled', 0))
    return tests, failed, skipped

tests, failed, skipped = count(sys.argv[3])
if sys.argv[4] == '1':
    if not sys.argv[5]:
        print("sanitizer pass: no test log (the pass did not run its tests)")
        tests, failed = tests + 1, failed + 1
    else:
        a_tests, a_failed, a_skipped = count(sys.argv[5])
        print(f"sanitizer pass: {a_tests - a_failed - a_skipped} passed, {a_failed} failed, {a_skipped} skipped")
        tests, failed, skipped = tests + a_tests, failed + a_failed, skipped + a_skipped
fuzz_failed = int(sys.argv[1])
failed += fuzz_failed
passed = tests - failed - skipped + fuzz_failed
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
ci = sys.argv[2] not in ('', '0', 'false')
if ci and skipped:
    print("CI runs every test: a skipped test fails the run", file=sys.stderr)
    sys.exit(1)
sys.exit(1 if failed else 0)
PY
exit $status
