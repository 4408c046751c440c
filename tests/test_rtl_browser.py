"""The Arabic starter through the real layout, laid out by headless Chromium: text must sit right to left."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from engine.layout import build_email
from engine.rendering import render_context
from engine.starters import starter_templates

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARTEFACTS = Path(__file__).parent / "artefacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]

# Runs in the page after layout: where the first paragraph's text lines sit inside the content cell.
PROBE = """<script>
(function () {
  var cell = document.querySelector('td.content');
  var para = cell.querySelector('p');
  var range = document.createRange();
  range.selectNodeContents(para);
  var text = range.getBoundingClientRect();
  var box = cell.getBoundingClientRect();
  var style = getComputedStyle(cell);
  var inner = {left: box.left + parseFloat(style.paddingLeft), right: box.right - parseFloat(style.paddingRight)};
  var out = document.createElement('pre');
  out.id = 'rtl-probe';
  out.textContent = JSON.stringify({
    direction: getComputedStyle(para).direction, textAlign: getComputedStyle(para).textAlign,
    htmlDir: document.documentElement.dir, rightGap: inner.right - text.right,
    leftGap: text.left - inner.left, textWidth: text.width, cellWidth: inner.right - inner.left
  });
  document.body.appendChild(out);
})();
</script>"""


def chromium() -> str:
    path = shutil.which("chromium") or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if path is None:
        pytest.fail("headless Chromium not found at /usr/bin/chromium: run tests/system-deps.sh (as root)")
    return path


def run_chromium(args: list[str], user_dir: Path) -> str:
    """Run one headless Chromium command in its own process group; the group is killed if it hangs."""
    proc = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={user_dir}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("chromium did not finish within 90 s")
    assert proc.returncode == 0, err[-2000:]
    return out


@pytest.fixture(scope="module")
def arabic_email():
    starter = next(s for s in starter_templates() if s.language == "ar" and s.category is None)
    context = render_context({"first_name": "أمل", "company": "نور للاستشارات"})
    return build_email(starter.subject, starter.body_html, starter.body_text, context, language="ar",
                       unsubscribe_url="https://unsubscribe.example/u/1",
                       sender_address="١٢ شارع المثال، دبي", brand="Example FZ-LLC")


def test_arabic_layout_renders_right_to_left(arabic_email, tmp_path):
    page = tmp_path / "rtl-ar-probe.html"
    page.write_text(arabic_email.html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = run_chromium(["--window-size=800,900", "--dump-dom", page.as_uri()], tmp_path / "profile-dom")
    found = re.search(r'<pre id="rtl-probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe script did not run"
    probe = json.loads(found.group(1).replace("&quot;", '"'))
    assert probe["htmlDir"] == "rtl"
    assert probe["direction"] == "rtl"
    assert probe["textAlign"] in ("right", "start")
    assert probe["cellWidth"] > 400  # the 600 px container, minus padding
    # The first paragraph is a short greeting: its text hugs the right edge and leaves room on the left.
    assert abs(probe["rightGap"]) <= 2, probe
    assert probe["leftGap"] > 100, probe


def test_arabic_screenshot_saved(arabic_email, tmp_path):
    ARTEFACTS.mkdir(exist_ok=True)
    page = tmp_path / "rtl-ar.html"
    page.write_text(arabic_email.html, encoding="utf-8")
    shot = ARTEFACTS / "rtl-ar.png"
    shot.unlink(missing_ok=True)
    run_chromium(["--window-size=800,700", f"--screenshot={shot}", page.as_uri()], tmp_path / "profile-shot")
    assert shot.exists() and shot.stat().st_size > 5000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
