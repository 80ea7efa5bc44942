# shellcheck shell=bash
# The libFuzzer pass, sourced by scripts/sanitize.sh (after scripts/lib/test_prep.sh):
# every fuzz target of tests/fuzz built with clang in a build of its own (every library a
# target links instrumented for coverage, ASan and UBSan; meson.build), then run for
# FUZZ_SECONDS from a copy of its seed corpus, two at a time. scripts/test.sh replays the
# corpora in the plain build; the libFuzzer runs live in the sanitizer pass because their
# build is a sanitizer build (about 580 s of CPU on 2 cores), which test.sh's 20 minutes
# cannot hold beside its own build.
#   fuzz_build_start   configure and start the build in the idle scheduling class, in the
#                      background (the sanitizer tests run meanwhile, mostly one at a time)
#   fuzz_run_all       wait for it, run every target; sets fuzz_failed (0 when all passed)
fuzz_build=${MESHLANE_FUZZ_BUILD:-build-fuzz}
fuzz_seconds=${FUZZ_SECONDS:-6}
fuzz_failed=0

fuzz_build_start() {
  [ "$fuzz_seconds" -gt 0 ] || return 0
  CC=clang CXX=clang++ configure_build "$fuzz_build" -Dfuzz=true -Dtests=enabled -Dperf=disabled \
    -Ddebug=false -Dc_args=-gline-tables-only -Dcpp_args=-gline-tables-only
  fuzz_targets=$(cd "$fuzz_build" && ninja -t targets all | awk -F: '$1 ~ /(^|\/)fuzz_[a-z0-9_]+$/ {print $1}')
  # shellcheck disable=SC2086  # one target a word
  background_build "$fuzz_build/background-build.log" ninja -j "$(nproc)" -C "$fuzz_build" $fuzz_targets &
  fuzz_build_job=$!
}

# One target's run from a copy of its seed corpus; its verdict (ok, failed) in RESULTS/NAME.
fuzz_one() {  # target, results directory
  local target=$1 results=$2 name corpus
  name=$(basename "$target"); name=${name#fuzz_}
  corpus=$(mktemp -d)
  cp -r tests/fuzz/corpus/"$name"/. "$corpus"/
  if "$target" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 \
       -artifact_prefix="$fuzz_build/crash-$name-" "$corpus" > "$fuzz_build/fuzz-$name.log" 2>&1; then
    echo ok > "$results/$name"
  else
    echo failed > "$results/$name"
  fi
  rm -rf "$corpus"
}

fuzz_run_all() {
  [ "$fuzz_seconds" -gt 0 ] || return 0
  if ! wait "$fuzz_build_job"; then
    echo "fuzz: the fuzz build failed:"; tail -30 "$fuzz_build/background-build.log"
    fuzz_failed=1
    return 0
  fi
  # Two targets at a time (CI has 2 cores; each libFuzzer run is one process), each
  # writing its verdict to a file of its own; the loop below reads them in target order.
  local fuzz_results running=0 target name
  fuzz_results=$(mktemp -d)
  # shellcheck disable=SC2086  # one target a word
  for target in $(printf "$fuzz_build/%s\n" $fuzz_targets); do
    [ -x "$target" ] || continue
    if [ "$running" -ge "${MESHLANE_FUZZ_JOBS:-2}" ]; then wait -n || true; running=$((running - 1)); fi
    echo "fuzz: $(basename "$target") for ${fuzz_seconds}s"
    fuzz_one "$target" "$fuzz_results" &
    running=$((running + 1))
  done
  wait || true
  # shellcheck disable=SC2086  # one target a word
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
}
