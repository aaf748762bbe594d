"""Headless Chromium (Debian's ``chromium``) for the report: what a reader's browser shows.

``probe(html)`` loads a copy of the page with a small script that, after the load event, writes
every image's natural size and the findings section's box into the DOM, which ``--dump-dom``
prints; ``screenshot_findings(html, png)`` screenshots the page and crops it to the findings
section. Chromium runs with a throwaway profile, no network services and no sandbox (root).
"""
from __future__ import annotations

import html as htmllib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]
PROBE_BUDGET_MS = 10000          # virtual time the page gets to load and run the probe script
WIDTH = 1400                     # window width [px], the report's main column is 1250 px


class BrowserError(Exception):
    """Chromium missing, timed out or printed nothing usable (one-line message)."""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    exe = chromium()
    if not exe:
        raise BrowserError("chromium not installed (Debian package chromium)")
    with tempfile.TemporaryDirectory(prefix="xmitbench-chromium-") as prof:
        try:
            return subprocess.run([exe, *FLAGS, f"--user-data-dir={prof}", *args], capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"chromium did not finish within {timeout:.0f} s") from None


_PROBE_JS = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.images, function (im) {
    return {w: im.naturalWidth, h: im.naturalHeight, complete: im.complete, alt: (im.alt || '').slice(0, 80)};
  });
  var f = document.getElementById('xb-findings'), fb = null;
  if (f) { var r = f.getBoundingClientRect(), cs = getComputedStyle(f);
    fb = {top: r.top + window.scrollY, left: r.left, width: r.width, height: r.height, display: cs.display,
          visibility: cs.visibility, boxes: f.querySelectorAll('.xb-finding').length,
          empty_columns: f.querySelectorAll('.xb-empty-column').length, text: f.innerText.slice(0, 4000)}; }
  var pre = document.createElement('pre'); pre.id = 'xb-probe'; pre.style.display = 'none';
  pre.textContent = JSON.stringify({images: imgs, findings: fb, page_height: document.body.scrollHeight});
  document.body.appendChild(pre);
});
</script>"""


def probe(html_path: str | Path) -> dict:
    """{"images": [{w, h, complete, alt}], "findings": {top, height, display, boxes, ...} | None,
    "page_height"} as Chromium sees the page after its load event."""
    src = Path(html_path).read_text(encoding="utf-8")
    page = src.replace("</body>", _PROBE_JS + "</body>") if "</body>" in src else src + _PROBE_JS
    with tempfile.TemporaryDirectory(prefix="xmitbench-probe-") as d:
        p = Path(d) / "probe.html"
        p.write_text(page, encoding="utf-8")
        r = _run([f"--window-size={WIDTH},1000", f"--virtual-time-budget={PROBE_BUDGET_MS}", "--dump-dom",
                  p.as_uri()])
    m = re.search(r'<pre id="xb-probe"[^>]*>(.*?)</pre>', r.stdout, re.S)
    if not m:
        raise BrowserError(f"chromium printed no probe result for {html_path} (rc {r.returncode}; "
                           f"{(r.stderr.strip().splitlines() or [''])[-1][:200]})")
    return json.loads(htmllib.unescape(m.group(1)))


def screenshot(html_path: str | Path, png_path: str | Path, height: int) -> Path:
    png_path = Path(png_path)
    r = _run([f"--screenshot={png_path}", f"--window-size={WIDTH},{int(height)}", Path(html_path).resolve().as_uri()])
    if not png_path.exists() or png_path.stat().st_size == 0:
        raise BrowserError(f"chromium wrote no screenshot {png_path} (rc {r.returncode})")
    return png_path


def screenshot_findings(html_path: str | Path, png_path: str | Path, margin: int = 12) -> Path:
    """A PNG of the findings section of report.html (the page from its top to the section's end,
    cropped to the section)."""
    from PIL import Image
    info = probe(html_path)
    f = info.get("findings")
    if not f or not f.get("height"):
        raise BrowserError(f"{html_path}: no visible findings section (id xb-findings)")
    bottom = int(f["top"] + f["height"]) + margin
    screenshot(html_path, png_path, bottom)
    with Image.open(png_path) as im:
        im.crop((0, max(0, int(f["top"]) - margin), im.width, min(im.height, bottom))).save(png_path)
    return Path(png_path)


def findings_png_note(html_path: str | Path) -> str:
    """Write findings.png next to report.html when chromium is installed; the line to print
    either way (a missing browser is said, never silently skipped)."""
    if not chromium():
        return "findings.png not written: chromium not installed (Debian package chromium; `make setup` as root)"
    png = Path(html_path).with_name("findings.png")
    try:
        screenshot_findings(html_path, png)
    except BrowserError as e:
        return f"findings.png not written: {e}"
    return f"screenshot of the findings: {png}"
