#!/usr/bin/env bash
# Two or more builds of the pipeline benchmark measured against each other in one sitting
# (DESIGN.md, "Performance method": ratios measured in one run), the way the pipeline and
# policy figures in perf/pipeline_results.md are taken:
#   - each revision built on its own (a git worktree, `-Dtests=disabled -Dperf=enabled`,
#     only perf/bench_pipeline), so that nothing but the code differs;
#   - the builds alternated round by round (A B A B ...), each run one process with its
#     repetitions interleaved in random order, so that a machine whose speed drifts (a VM
#     whose host is busy: this project's 2-vCPU AMD EPYC guest has whole processes 30-40%
#     slower now and then) gives every build the same mix of moments;
#   - per run and path, the minimum over the repetitions (the repetition that lost least
#     to other work) divided by the same run's minimum of its baseline: the same path with
#     `/policies:0` for a `BM_policy_*` path with policies, else `BM_io_floor` when the
#     filter runs it; and the minimum cycles themselves.
# Prints, per path, each build's ratios run by run and its cycles' range, and how the
# builds' median ratios compare; a run in which the path, its baseline or the I/O floor
# is far above the build's lowest (a slow process, or a slow stretch of one) is marked `*`
# and left out of the medians.
#
#   perf/ab_builds.sh [-r ROUNDS] [-p REPETITIONS] [-f FILTER] [-o DIR] REV_A REV_B [REV ...]
#     REV: anything `git rev-parse` takes; for uncommitted work, `$(git stash create)` (a
#     commit of the tracked files' changes, nothing stashed).
#     -r rounds (default 3), -p repetitions a run (default 3),
#     -f Google Benchmark filter (default: the I/O floor, the one-flow service path and
#        the new-UDP-flow policy paths), -o where the JSON goes (default
#        perf/results/ab-<UTC date>; only the iteration rows are kept).
#   perf/ab_builds.sh -R DIR   the report again from a sitting's JSON in DIR
# An A/A run (the same revision twice) shows what this machine's noise alone moves
# (perf/pipeline_results.md, "fifty-third session").
#
# Builds take 4-5 minutes a revision on 2 cores. Cleans up its worktrees and temporary
# directory also on failure; uses the hugepages the benchmark finds (perf/README).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

rounds=3
repetitions=3
filter='BM_io_floor|BM_pipeline_service_flow_hit_geneve$|BM_policy_(receive|send)_new_flow/policies:(0|100)$'
out=""
reread=""
while getopts "r:p:f:o:R:" option; do
  case $option in
    r) rounds=$OPTARG ;;
    p) repetitions=$OPTARG ;;
    f) filter=$OPTARG ;;
    o) out=$OPTARG ;;
    R) reread=$OPTARG ;;
    *) sed -n '2,30p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
report() {  # DIR_WITH_RUNS OUT_DIR ROUNDS LABEL...
  python3 - "$@" <<'PY'
import collections, json, os, re, statistics, sys
work, out, rounds, labels = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
runs = {}  # (label, round) -> {name: min cycles}
for label in labels:
    for r in range(1, rounds + 1):
        doc = json.load(open(os.path.join(work, f"{label}.r{r}.json")))
        rows = [b for b in doc["benchmarks"] if b.get("run_type", "iteration") == "iteration" and "cycles_per_packet" in b]
        mins = collections.defaultdict(lambda: float("inf"))
        for b in rows:
            mins[b["run_name"]] = min(mins[b["run_name"]], b["cycles_per_packet"])
        runs[(label, r)] = dict(mins)
        kept = {"context": {k: doc["context"].get(k) for k in ("date", "num_cpus", "mhz_per_cpu")},
                "cpu": cpu, "benchmarks": [{k: b[k] for k in ("run_name", "repetition_index", "cycles_per_packet")
                                            if k in b} for b in rows]}
        json.dump(kept, open(os.path.join(out, f"{label}.r{r}.json"), "w"), indent=1)

def baseline(name, mins):
    m = re.match(r"(BM_policy_\w+)/policies:(\d+)$", name)
    if m:
        return (None, None) if m.group(2) == "0" else (m.group(1) + "/policies:0", mins.get(m.group(1) + "/policies:0"))
    if name == "BM_io_floor":
        return (None, None)
    return ("BM_io_floor", mins.get("BM_io_floor"))

# A slow process, or a slow stretch of one: the path itself, its baseline or the I/O
# floor more than 1.3x the lowest this build measured of it in the sitting (a build's own
# lowest, so that a real change between builds is not taken for one). Its ratios are
# marked and left out of the medians.
lowest = collections.defaultdict(dict)
for (label, _), mins in runs.items():
    for n, v in mins.items():
        lowest[label][n] = min(lowest[label].get(n, float("inf")), v)
def slow(label, name, mins):
    base_name, _ = baseline(name, mins)
    return any(n in mins and mins[n] > 1.3 * lowest[label][n] for n in ("BM_io_floor", base_name, name) if n)

lines = [f"CPU: {cpu}; {len(labels)} builds, {rounds} rounds alternated; ratio = a run's minimum / the same run's "
         f"minimum of the baseline; * a slow process or stretch (the path, its baseline or the I/O "
         f"floor > 1.3x the build's lowest), left out of the medians"]
names = sorted({n for m in runs.values() for n in m})
medians = collections.defaultdict(dict)
for name in names:
    base_name, _ = baseline(name, {})
    lines.append(f"\n{name}" + (f"  (x {base_name})" if base_name else ""))
    for label in labels:
        ratios, cycles = [], []
        for r in range(1, rounds + 1):
            mins = runs[(label, r)]
            if name not in mins:
                continue
            cycles.append(mins[name])
            _, base = baseline(name, mins)
            if base:
                ratios.append((mins[name] / base, slow(label, name, mins)))
        if not cycles:
            continue
        text = " / ".join(f"{v:.2f}{'*' if s else ''}" for v, s in ratios) if ratios else "-"
        quiet = [v for v, s in ratios if not s]
        if quiet:
            medians[name][label] = statistics.median(quiet)
        lines.append(f"  {label:12} {text:36} cycles {min(cycles):.1f}-{max(cycles):.1f}")
    if len(medians[name]) > 1:
        first = medians[name][labels[0]] if labels[0] in medians[name] else None
        if first:
            lines.append("  median ratio vs " + labels[0] + ": " +
                         ", ".join(f"{l} {medians[name][l] / first:.3f}" for l in labels[1:] if l in medians[name]))
report = "\n".join(lines)
print(report)
open(os.path.join(out, "summary.txt"), "w").write(report + "\n")
PY
}
if [ -n "$reread" ]; then
  shopt -s nullglob
  firsts=("$reread"/*.r1.json)
  [ ${#firsts[@]} -ge 1 ] || { echo "ab_builds.sh: no <label>.r1.json in $reread" >&2; exit 2; }
  labels=()
  for f in "${firsts[@]}"; do labels+=("$(basename "$f" .r1.json)"); done
  rounds=$(find "$reread" -maxdepth 1 -name "${labels[0]}.r*.json" | wc -l)
  report "$reread" "$reread" "$rounds" "${labels[@]}"
  exit 0
fi
if [ $# -lt 2 ]; then
  echo "ab_builds.sh: give at least two revisions (see the usage at the top of $0)" >&2
  exit 2
fi
for value in "$rounds" "$repetitions"; do
  if ! [[ $value =~ ^[1-9][0-9]*$ ]]; then
    echo "ab_builds.sh: -r and -p take a positive count, got '$value'" >&2
    exit 2
  fi
done
revisions=()
labels=()
for rev in "$@"; do
  if ! commit=$(git rev-parse --verify --quiet "$rev^{commit}"); then
    echo "ab_builds.sh: not a revision: $rev" >&2
    exit 2
  fi
  revisions+=("$commit")
  labels+=("${#labels[@]}-${commit:0:7}")  # the position keeps an A/A pair apart
done
out=${out:-perf/results/ab-$(date -u +%Y-%m-%dT%H%M%SZ)}
mkdir -p "$out"

work=$(mktemp -d /tmp/meshlane-ab.XXXXXX)
worktrees=()
cleanup() {
  for tree in "${worktrees[@]}"; do git -C "$root" worktree remove --force "$tree" >/dev/null 2>&1 || true; done
  git -C "$root" worktree prune >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

for i in "${!revisions[@]}"; do
  tree=$work/tree-$i
  git worktree add --detach "$tree" "${revisions[$i]}" >/dev/null 2>&1
  worktrees+=("$tree")
  echo "building ${labels[$i]} ..."
  (cd "$tree" && meson setup build -Dtests=disabled -Dperf=enabled >"$work/setup-$i.log" 2>&1 &&
    ninja -C build perf/bench_pipeline >"$work/build-$i.log" 2>&1) || {
    echo "ab_builds.sh: building ${labels[$i]} failed:" >&2
    tail -20 "$work/build-$i.log" "$work/setup-$i.log" 2>/dev/null >&2
    exit 1
  }
  cp "$tree/build/perf/bench_pipeline" "$work/bench-$i"
  git worktree remove --force "$tree" >/dev/null 2>&1
done

for round in $(seq 1 "$rounds"); do
  for i in "${!revisions[@]}"; do
    echo "round $round/$rounds: ${labels[$i]}"
    "$work/bench-$i" --benchmark_filter="$filter" --benchmark_repetitions="$repetitions" \
      --benchmark_enable_random_interleaving=true --benchmark_out="$work/${labels[$i]}.r$round.json" \
      --benchmark_out_format=json >/dev/null 2>"$work/run.err" || {
      echo "ab_builds.sh: the benchmark of ${labels[$i]} failed:" >&2
      tail -5 "$work/run.err" >&2
      exit 1
    }
  done
done

report "$work" "$out" "$rounds" "${labels[@]}"
echo "JSON and summary: $out"
