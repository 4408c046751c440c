"""Write the README's screenshots: one library template per language in both layouts, as Chromium lays
them out at 600 px (docs/screenshots/<layout>-<language>.png).

    .venv/bin/python -m tests.screenshots [directory]

The template is the first library file's opening message, rendered for the suite's contact of each language.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.cdp import Browser
from tests.library_cases import cases, message

DOCS = Path(__file__).parent.parent / "docs" / "screenshots"


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else DOCS
    target.mkdir(parents=True, exist_ok=True)
    chosen: dict[str, object] = {}
    for case in cases():
        if case.template.step == "opening":
            chosen.setdefault(f"{case.layout}-{case.template.language}", case)
    with Browser() as browser:
        for name, case in sorted(chosen.items()):
            browser.load(message(case).html)
            browser.viewport(600)
            browser.screenshot(target / f"{name}.png")
            print(target / f"{name}.png", f"({case.file})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
