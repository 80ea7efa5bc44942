#!/usr/bin/env python3
"""The source tree's layering (issue 14, README "Layout"), checked over the project's
own #include "..." graph, transitively:

  * control/ depends on nothing above it: no file under control/ but the agent's
    composition root (control/agent/) reaches a header of dataplane/ or ebpf/;
  * the data plane and the eBPF loader read the config and the compiled tables the
    control module derives (control/dataplane_config.h, control/snapshot.h), never the
    desired-state document's schema or its readers: no file under dataplane/ or ebpf/
    reaches one of SCHEMA below. (The egress sections' value types, egress_spec.h, which
    the snapshot carries, are apart from their readers, egress_document.h.)

Run from anywhere: python3 tests/layout_test.py [source root]. Prints every offending
chain (file -> ... -> header) and exits 1 when there is one.
"""
import os
import re
import sys

SCHEMA = {
    "control/desired_state.h",  # the document's types and parser
    "control/document_reader.h",
    "control/document_sections.h",
    "control/document_tape.h",
    "control/egress_document.h",  # the egress sections' readers
    "control/state_delta.h",  # the delta form of the document
    "control/state_index.h",
    "control/policy_evaluator.h",  # evaluates the document's policy_spec
    "control/policy_compiler.h",
    "control/table_compiler.h",
}
SOURCE_SUFFIXES = (".h", ".hpp", ".cpp", ".c")
INCLUDE = re.compile(r'^\s*#\s*include\s+(?:"([^"]+)"|<((?:control|dataplane|ebpf)/[^>]+)>)', re.MULTILINE)
# Chains that must exist: if include parsing or path resolution broke, every search above
# would find nothing and the test would pass without checking anything.
KNOWN_CHAINS = [
    ("dataplane/worker_pool.cpp", "control/dataplane_config.h"),
    ("dataplane/pipeline.cpp", "control/snapshot.h"),
    ("dataplane/pipeline.cpp", "control/egress_spec.h"),  # the value types, through the snapshot
    ("control/desired_state.cpp", "control/egress_document.h"),
    ("control/table_publisher.h", "control/desired_state.h"),
    ("control/agent/meshlaned.cpp", "dataplane/dataplane.h"),
    ("control/agent/meshlaned.cpp", "ebpf/fast_path.h"),
]


def project_files(root):
    for top in ("control", "dataplane", "ebpf"):
        for folder, _, names in os.walk(os.path.join(root, top)):
            for name in names:
                if name.endswith(SOURCE_SUFFIXES):
                    yield os.path.relpath(os.path.join(folder, name), root)


def include_graph(root):
    graph = {}
    for path in project_files(root):
        with open(os.path.join(root, path), encoding="utf-8", errors="replace") as f:
            text = f.read()
        here = os.path.dirname(path)
        edges = []
        for quoted, angled in INCLUDE.findall(text):
            name = quoted or angled
            # Quoted includes are project paths from the root (the project's style), or
            # relative to the including file (the eBPF programs' headers).
            for candidate in (name, os.path.normpath(os.path.join(here, name))):
                if os.path.isfile(os.path.join(root, candidate)):
                    edges.append(candidate)
                    break
        graph[path] = edges
    return graph


def chain_to(graph, start, wanted):
    """A shortest include chain from start to a file for which wanted(file) holds."""
    previous = {start: None}
    queue = [start]
    while queue:
        current = queue.pop(0)
        for nxt in graph.get(current, ()):
            if nxt in previous:
                continue
            previous[nxt] = current
            if wanted(nxt):
                chain = [nxt]
                while previous[chain[-1]] is not None:
                    chain.append(previous[chain[-1]])
                return list(reversed(chain))
            queue.append(nxt)
    return None


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    graph = include_graph(root)
    failures = []
    checked = {"control": 0, "dataplane+ebpf": 0}
    for path in sorted(graph):
        if path.startswith("control/") and not path.startswith("control/agent/"):
            checked["control"] += 1
            chain = chain_to(graph, path, lambda f: f.startswith(("dataplane/", "ebpf/")))
            if chain:
                failures.append("control/ reaches the data plane: " + " -> ".join(chain))
        if path.startswith(("dataplane/", "ebpf/")):
            checked["dataplane+ebpf"] += 1
            chain = chain_to(graph, path, lambda f: f in SCHEMA)
            if chain:
                failures.append("the data plane reaches the document's schema: " + " -> ".join(chain))
    for start, end in KNOWN_CHAINS:
        if not chain_to(graph, start, lambda f, end=end: f == end):
            failures.append("no include chain %s -> %s: is the include graph read right?" % (start, end))
    edges = sum(len(v) for v in graph.values())
    if edges < 200:
        failures.append("only %d include edges found: is the include graph read right?" % edges)
    for name in SCHEMA:
        if name not in graph:
            failures.append(name + ": listed in SCHEMA but not in the tree (update the list)")
    if checked["control"] < 20 or checked["dataplane+ebpf"] < 20:
        failures.append("too few files found under %s: %s" % (root, checked))
    for failure in failures:
        print(failure)
    print("checked %d control/ files and %d dataplane/ and ebpf/ files: %d problems"
          % (checked["control"], checked["dataplane+ebpf"], len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
