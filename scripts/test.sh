#!/usr/bin/env bash
# The README's test command: set-up, build, and every test (unit, golden, integration,
# fuzz corpus replay), then one summary line.
# CI (.ci/run) runs this, then scripts/sanitize.sh: the whole suite again under
# AddressSanitizer, LeakSanitizer and UBSan, and a short libFuzzer run per fuzz target
# (in a clang build of its own; FUZZ_SECONDS there).
# Needs root for the namespace, cgroup and BPF tests; under CI=true a skipped test fails
# the run, since CI runs as root and must run everything.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${MESHLANE_BUILD:-build}

# Each phase's wall time, for keeping the whole script under CI's budget (README, "Two
# commands").
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
# The integration suite's binaries first (the agent, its tools and their tests: about 60%
# of what the tests need), then that suite, the longest part of the run: it runs its tests
# one at a time (a few two at a time) and leaves part of CI's two cores idle. There, in
# the idle scheduling class (background_build, test_prep.sh), the other
# suites' binaries build behind it, then the rest of this build (perf/'s benchmarks). The
# unit, golden and fuzz-replay suites run when the integration suite is done and their
# binaries are. With the build in place every build step below finds nothing to do.
integration_targets=$(python3 scripts/lib/test_targets.py "$build" integration)
# shellcheck disable=SC2086  # one target a word
ninja -C "$build" $integration_targets
phase "build (the integration suite's binaries)"
rm -f "$build"/meson-logs/testlog*.junit.xml
# The exit status of their build, once it has one (in the build directory: nothing is
# left in /tmp when the run stops early).
other_suites_built=$build/meson-logs/other-suites-built
rm -f "$other_suites_built"
(
  built=0
  background_build "$build/meson-logs/background-build.log" ninja -j "$(nproc)" -C "$build" \
    meson-test-prereq || built=$?
  echo "$built" > "$other_suites_built"
  background_build "$build/meson-logs/background-build-rest.log" ninja -j "$(nproc)" -C "$build"
) &
rest_of_build=$!

status=0
run_suites() {  # the log's name, then meson test's suite options
  local logbase=$1; shift
  meson test -C "$build" --no-rebuild --print-errorlogs --num-processes "${MESHLANE_TEST_JOBS:-2}" \
    --timeout-multiplier "${MESHLANE_TIMEOUT_MULTIPLIER:-1}" --logbase "$logbase" "$@" || status=1
}
run_suites testlog-integration --suite integration
phase "integration tests"
# The subshell above writes the status when that build ends (a wait needs a child of
# this shell, and the build's is the subshell's); a subshell gone without writing it
# counts as a failed build.
while [ ! -s "$other_suites_built" ] && kill -0 "$rest_of_build" 2>/dev/null; do sleep 1; done
phase "the other suites' build (after the integration tests)"
if [ "$(cat "$other_suites_built" 2>/dev/null)" = 0 ]; then  # none, or empty: not 0
  run_suites testlog-other --no-suite integration
else
  echo "build: the unit, golden and fuzz-replay tests failed to build:"
  tail -30 "$build/meson-logs/background-build.log"
  status=1
fi
rm -f "$other_suites_built"
phase "unit, golden and fuzz-replay tests"

if ! wait "$rest_of_build"; then
  echo "build: the rest of the build (perf/'s benchmarks) failed:"; tail -30 "$build/meson-logs/background-build-rest.log"
  status=1
fi
phase "rest of the build (after the tests)"

# One line for the whole run.
python3 scripts/lib/test_summary.py "$build"/meson-logs/testlog-{integration,other}.junit.xml \
  --ci "${CI:-}" || status=1
exit $status
