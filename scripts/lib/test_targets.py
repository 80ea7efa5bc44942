#!/usr/bin/env python3
"""The files ninja must build before the tests of some suites can run.

  test_targets.py BUILD_DIR SUITE...

Prints, one a line and relative to BUILD_DIR (as ninja names its targets), the outputs
of every target the tests of the named suites depend on (their executables and their
`depends:`, from `meson introspect`). scripts/test.sh builds the integration suite's
first and starts those tests, the longest, while the rest of the suite's binaries build
behind them on the core they leave idle."""
import json
import os
import subprocess
import sys


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    build, suites = sys.argv[1], set(sys.argv[2:])

    def introspect(what):
        return json.loads(subprocess.check_output(['meson', 'introspect', what, build]))

    tests = introspect('--tests')
    known = {suite.split(':', 1)[-1] for test in tests for suite in test['suite']}
    unknown = suites - known
    if unknown:
        print(f"test_targets: no such suite: {', '.join(sorted(unknown))} "
              f"(suites: {', '.join(sorted(known))})", file=sys.stderr)
        return 2
    targets = {target['id']: target for target in introspect('--targets')}
    outputs = set()
    for test in tests:
        if not any(suite.split(':', 1)[-1] in suites for suite in test['suite']):
            continue
        for target_id in test['depends']:
            for filename in targets[target_id]['filename']:
                outputs.add(os.path.relpath(filename, os.path.abspath(build)))
    print('\n'.join(sorted(outputs)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
