#!/usr/bin/env python3
"""One line for a test run: passed, failed and skipped, from meson's JUnit logs.

  test_summary.py JUNIT_XML... [--extra-failures N] [--ci CI]

scripts/test.sh runs the integration suite and the others in two `meson test` runs,
each with a log of its own; the line counts them all, and a missing log is a failure.

Exit 1 when a test failed, or when under CI (CI not '', '0' or 'false') a test was
skipped: CI runs as root and must run everything. --extra-failures counts failures the
log does not hold (test.sh's libFuzzer runs)."""
import argparse
import sys
import xml.etree.ElementTree as ET


def count(path):
    tests = failed = skipped = 0
    for suite in ET.parse(path).getroot().iter('testsuite'):
        tests += int(suite.get('tests', 0))
        failed += int(suite.get('failures', 0)) + int(suite.get('errors', 0))
        skipped += int(suite.get('skipped', 0)) + int(suite.get('disabled', 0))
    return tests, failed, skipped


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('junit', nargs='+')
    parser.add_argument('--extra-failures', type=int, default=0)
    parser.add_argument('--ci', default='')
    parser.add_argument('--label', default='tests')
    args = parser.parse_args()
    tests = failed = skipped = 0
    for path in args.junit:
        try:
            counts = count(path)
        except (OSError, ET.ParseError) as error:
            print(f"{args.label}: no test log ({error}): the tests did not run")
            return 1
        tests, failed, skipped = tests + counts[0], failed + counts[1], skipped + counts[2]
    passed = tests - failed - skipped
    failed += args.extra_failures
    print(f"{args.label}: {passed} passed, {failed} failed, {skipped} skipped")
    if args.ci not in ('', '0', 'false') and skipped:
        print("CI runs every test: a skipped test fails the run", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
