"""What the last `mutmut run` found, per module: mutants killed, survived, timed out, not checked yet.

Reads mutmut's own records (mutants/**/*.py.meta); the survivors are listed by name, for `mutmut show NAME`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parent.parent / "mutants"


def main() -> int:
    total: Counter = Counter()
    survivors: list[str] = []
    for meta in sorted(ROOT.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(status_by_exit_code[code] for code in codes.values())
        total.update(counts)
        survivors += [key for key, code in codes.items() if status_by_exit_code[code] == "survived"]
        checked = sum(counts.values()) - counts["not checked"]
        killed = counts["killed"] + counts["timeout"]
        share = f"{100 * killed / checked:.1f}%" if checked else "-"
        module = meta.relative_to(ROOT).as_posix().removesuffix(".meta")
        print(f"{module:32} {len(codes):4} mutants  {killed:4} killed ({share} of {checked} checked)  "
              f"{counts['survived']:3} survived  {counts['not checked']:3} not checked")
    checked = sum(total.values()) - total["not checked"]
    killed = total["killed"] + total["timeout"]
    print(f"{'all':32} {sum(total.values()):4} mutants  {killed:4} killed "
          f"({100 * killed / max(checked, 1):.1f}% of {checked} checked)  {total['survived']:3} survived")
    print("\nsurvivors (mutmut show NAME):")
    for name in survivors:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
