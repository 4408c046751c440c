"""Every library message in both layouts, laid out by headless Chromium at 320 and 600 px: nothing overflows
horizontally, Arabic sits right to left, the rest left to right; screenshots kept as artefacts.

One browser session for all pages (tests/cdp.py): each message is loaded once and measured at both widths.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.languages import direction
from engine.layout import Layout
from tests.cdp import Browser
from tests.library_cases import cases, message

pytestmark = pytest.mark.browser

ARTEFACTS = Path(__file__).parent / "artefacts" / "screenshots"
WIDTHS = (320, 600)
CASES = cases()

# After layout: the widest box past the viewport's right (or left) edge, and where the first paragraph's
# text sits inside its box. Hidden boxes (the preheader) have no width and are skipped.
PROBE = """(() => {
  const root = document.documentElement, width = root.clientWidth;
  let over = null;
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > width + 0.5 || r.left < -0.5)) {
      over = {tag: el.tagName, left: r.left, right: r.right, text: (el.textContent || '').trim().slice(0, 60)};
      break;
    }
  }
  const p = (document.querySelector('td.content') || document.querySelector('body > div[dir]')).querySelector('p');
  const range = document.createRange();
  range.selectNodeContents(p);
  const text = range.getBoundingClientRect(), box = p.getBoundingClientRect(), style = getComputedStyle(p);
  return {width, scrollWidth: root.scrollWidth, over, dir: root.dir, lang: root.lang,
          direction: style.direction, align: style.textAlign,
          rightGap: box.right - text.right, leftGap: text.left - box.left};
})()"""


def shot_name(case) -> str:
    return f"{case.layout}-{case.template.language}"


@pytest.fixture(scope="module")
def layouts():
    """Measure every message at both widths; screenshot one message per language per layout (the first
    file's opening) at 600 px, and the same at 320 px."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shots = {}
    for case in CASES:
        shots.setdefault(shot_name(case), case)
    wanted = {id(c) for c in shots.values()}
    found = []
    with Browser() as browser:
        for case in CASES:
            browser.load(message(case).html)
            measured = {}
            for width in WIDTHS:
                browser.viewport(width)
                measured[width] = browser.evaluate(PROBE)
                if id(case) in wanted:
                    browser.screenshot(ARTEFACTS / f"{shot_name(case)}-{width}.png")
            found.append(measured)
    return found


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.id for c in CASES])
def test_no_horizontal_overflow_and_the_languages_direction(layouts, index):
    case = CASES[index]
    lang = case.template.language
    rtl = direction(lang) == "rtl"
    for width, probe in layouts[index].items():
        assert probe["width"] == width
        assert probe["scrollWidth"] <= width and probe["over"] is None, (width, probe)
        assert probe["lang"] == lang and probe["dir"] == ("rtl" if rtl else "ltr")
        assert probe["direction"] == ("rtl" if rtl else "ltr")
        assert probe["align"] in (("right", "start") if rtl else ("left", "start")), probe
        # The first paragraph is the greeting, shorter than a line: its text hugs the start edge.
        near, far = (probe["rightGap"], probe["leftGap"]) if rtl else (probe["leftGap"], probe["rightGap"])
        assert abs(near) <= 2 and far > 20, (width, probe)


def test_screenshots_of_every_language_in_both_layouts_are_kept(layouts):
    languages = {c.template.language for c in CASES}
    for layout in Layout:
        for lang in languages:
            for width in WIDTHS:
                shot = ARTEFACTS / f"{layout.value}-{lang}-{width}.png"
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 3000, shot


def test_the_readme_shows_one_template_per_language_in_both_layouts():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for layout in Layout:
        for lang in sorted({c.template.language for c in CASES}):
            shot = f"docs/screenshots/{layout.value}-{lang}.png"
            assert f"]({shot})" in readme, shot
            assert (Path(__file__).parent.parent / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot
