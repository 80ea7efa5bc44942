#!/usr/bin/python3
"""Scrapes a /metrics URL and parses it with python3-prometheus-client's text parser.

Prints one JSON object: {"content_type": ..., "samples": [[name, {labels}, value], ...],
"families": {family: type}}. Exits 1 (with the reason on stderr) when the body is not
valid Prometheus text format.
"""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
        content_type = response.headers.get("Content-Type", "")
        body = response.read().decode("utf-8")
    samples, families = [], {}
    try:
        for family in text_string_to_metric_families(body):
            families[family.name] = family.type
            for sample in family.samples:
                samples.append([sample.name, sample.labels, sample.value])
    except Exception as error:  # the parser raises ValueError and friends on bad text
        print(f"not valid Prometheus text: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"content_type": content_type, "samples": samples, "families": families}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
