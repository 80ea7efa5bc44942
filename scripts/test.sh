#!/usr/bin/env bash
# The README's test command: set-up, build, and every test (unit, golden, integration,
# fuzz corpus replay, a short libFuzzer run per target), then one summary line.
#   scripts/test.sh                 everything
#   FUZZ_SECONDS=0 scripts/test.sh  skip the libFuzzer runs (corpus replay still runs)
# CI (.ci/run) runs this, then scripts/sanitize.sh: the whole suite again under
# AddressSanitizer, LeakSanitizer and UBSan.
# Needs root for the namespace, cgroup and BPF tests; under CI=true a skipped test fails
# the run, since CI runs as root and must run everything.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${MESHLANE_BUILD:-build}
fuzz_build=${MESHLANE_FUZZ_BUILD:-build-fuzz}
fuzz_seconds=${FUZZ_SECONDS:-6}

# Each phase's wall time, for keeping the whole script under CI's budget (README, "Tests").
phase_started=$(date +%s)
phase() {
  local now; now=$(date +%s)
  echo "phase: $1 $((now - phase_started)) s"
  phase_started=$now
}

source scripts/lib/test_prep.sh
prepare_test_machine
# Line tables only (-g1, no full -g) for a new build directory: GCC's -g never changes
# the generated code, so the tests test the same binaries, and the larger files of the
# control library compile in 30% less time (control_requests.cpp 20 s -> 14 s). Stack
# traces keep their file and line; `meson configure build -Dc_args= -Dcpp_args=
# -Ddebug=true` restores full debug information for a debugger session.
configure_build "$build" -Ddebug=false -Dc_args=-g1 -Dcpp_args=-g1
phase "set-up"
# What the tests need first (everything but perf/'s benchmarks), then the rest of this
# build and the fuzz build in the background, in the idle scheduling class: the tests run
# one at a time and leave about one of CI's two cores idle, which is all those builds get
# (a test's process always takes the CPU before them). They are waited for after the tests.
ninja -C "$build" meson-test-prereq
phase "build"
background_build() {  # log, then the command
  local log=$1; shift
  chrt --idle 0 nice -n 19 "$@" > "$log" 2>&1
}
background_build "$build/meson-logs/background-build.log" ninja -j "$(nproc)" -C "$build" &
rest_of_build=$!
fuzz_failed=0
if [ "$fuzz_seconds" -gt 0 ]; then
  CC=clang CXX=clang++ configure_build "$fuzz_build" -Dfuzz=true -Dtests=enabled -Dperf=disabled \
    -Ddebug=false -Dc_args=-gline-tables-only -Dcpp_args=-gline-tables-only
  fuzz_targets=$(cd "$fuzz_build" && ninja -t targets all | awk -F: '$1 ~ /(^|\/)fuzz_[a-z0-9_]+$/ {print $1}')
  background_build "$fuzz_build/background-build.log" ninja -j "$(nproc)" -C "$fuzz_build" $fuzz_targets &
  fuzz_build_job=$!
fi

status=0
meson test -C "$build" --no-rebuild --print-errorlogs --num-processes "${MESHLANE_TEST_JOBS:-2}" \
  --timeout-multiplier "${MESHLANE_TIMEOUT_MULTIPLIER:-1}" || status=$?
phase "tests"

if ! wait "$rest_of_build"; then
  echo "build: perf/'s benchmarks failed to build:"; tail -30 "$build/meson-logs/background-build.log"
  status=1
fi
phase "rest of the build (after the tests)"

# libFuzzer: a short run of each target from its seed corpus, in a clang build of its own.
if [ "$fuzz_seconds" -gt 0 ]; then
  if ! wait "$fuzz_build_job"; then
    echo "fuzz: the fuzz build failed:"; tail -30 "$fuzz_build/background-build.log"
    status=1
  fi
  phase "fuzz build (after the tests)"
  # Two targets at a time (CI has 2 cores; each libFuzzer run is one process), each
  # writing its verdict to a file of its own; the loop below reads them in target order.
  fuzz_results=$(mktemp -d)
  fuzz_one() {
    local target=$1 name corpus
    name=$(basename "$target"); name=${name#fuzz_}
    corpus=$(mktemp -d)
    cp -r tests/fuzz/corpus/"$name"/. "$corpus"/
    if "$target" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 \
         -artifact_prefix="$fuzz_build/crash-$name-" "$corpus" > "$fuzz_build/fuzz-$name.log" 2>&1; then
      echo ok > "$fuzz_results/$name"
    else
      echo failed > "$fuzz_results/$name"
    fi
    rm -rf "$corpus"
  }
  running=0
  for target in $(printf "$fuzz_build/%s\n" $fuzz_targets); do
    [ -x "$target" ] || continue
    if [ "$running" -ge "${MESHLANE_FUZZ_JOBS:-2}" ]; then wait -n || true; running=$((running - 1)); fi
    echo "fuzz: $(basename "$target") for ${fuzz_seconds}s"
    fuzz_one "$target" &
    running=$((running + 1))
  done
  wait || true
  for target in $(printf "$fuzz_build/%s\n" $fuzz_targets); do
    [ -x "$target" ] || continue
    name=$(basename "$target"); name=${name#fuzz_}
    if [ "$(cat "$fuzz_results/$name" 2>/dev/null)" != ok ]; then
      echo "fuzz: $name FAILED, see $fuzz_build/fuzz-$name.log"
      tail -30 "$fuzz_build/fuzz-$name.log"
      fuzz_failed=$((fuzz_failed + 1))
    else
      echo -n "fuzz: $name "; grep -E '^#[0-9]+.*DONE' "$fuzz_build/fuzz-$name.log" | tail -1 || echo
    fi
  done
  rm -rf "$fuzz_results"
  phase "fuzz runs"
fi

# One line for the whole run: the tests, plus the libFuzzer runs that failed.
python3 scripts/lib/test_summary.py "$build/meson-logs/testlog.junit.xml" \
  --extra-failures "$fuzz_failed" --ci "${CI:-}" || status=1
exit $status
