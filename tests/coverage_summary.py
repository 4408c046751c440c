"""The figures at the end of a test run: line and branch coverage of engine, api, workers and pmta.

With --min-lines, a line coverage below it fails the run (tests/run.sh asks for it on a full run only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import coverage


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--min-lines", type=float, default=0.0)
    args = parser.parse_args()
    cov = coverage.Coverage()
    cov.load()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "coverage.json"
        cov.json_report(outfile=str(out))
        totals = json.loads(out.read_text())["totals"]
    lines = 100 * totals["covered_lines"] / max(totals["num_statements"], 1)
    branches = 100 * totals["covered_branches"] / max(totals["num_branches"], 1)
    print(f"coverage: lines {lines:.1f}% ({totals['covered_lines']}/{totals['num_statements']}), "
          f"branches {branches:.1f}% ({totals['covered_branches']}/{totals['num_branches']})")
    if lines < args.min_lines:
        print(f"coverage: lines below {args.min_lines:.0f}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
