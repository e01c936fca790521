"""Pages in a real headless Chromium (/usr/bin/chromium; bin/setup installs it): what a person
opening them would see loaded and drawn, and screenshots for docs/img.

Import as `from browser import rendered, screenshot` (tests/ is on sys.path under pytest;
docs/screenshots.py puts it there itself).
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--hide-scrollbars")
# Added to a copy of the page: after load (and the charts' drawing), it writes what it found into
# the DOM, which --dump-dom prints. vega draws a chart as a <canvas> or <svg> of class "marks".
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message)));
window.addEventListener('unhandledrejection', e => window.__errors.push(String(e.reason)));
window.addEventListener('load', () => setTimeout(() => {
  const found = {
    images: [...document.images].map(i => i.complete && i.naturalWidth > 0),
    charts: [...document.querySelectorAll('.marks')].filter(m => m.getBoundingClientRect().width > 0).length,
    errors: window.__errors,
  };
  const out = document.createElement('pre');
  out.id = 'prefine-probe';
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
}, 3000));
</script>"""


def chromium(page: Path, *args: str) -> str:
    """Open `page` in headless Chromium (a fresh profile, no network services, 10 s of virtual
    time for scripts and timers); its stdout."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args, page.as_uri()],
            capture_output=True, text=True, timeout=300,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def rendered(page: Path) -> dict:
    """What a copy of `page` with PROBE (beside it, so relative image paths hold) showed after
    loading: `images` (loaded or not, one per <img>), `charts` (vega charts drawn), `errors`."""
    probed = page.with_name(f"{page.stem}.probe.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    try:
        dom = chromium(probed, "--dump-dom")
    finally:
        probed.unlink()
    found = re.search(r'<pre id="prefine-probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe never ran: {dom[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def screenshot(page: Path, out: Path, width: int, height: int) -> None:
    """A PNG of `page` in a width x height window."""
    chromium(page, f"--window-size={width},{height}", f"--screenshot={out}")
    assert out.is_file(), out
