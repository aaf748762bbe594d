"""report.html as a reader's browser shows it: headless Chromium (Debian's ``chromium``).

The report of a real run of the default matrix (tests/fixtures/runs/default-3procs) and of a synthetic run 3x the
default matrix (tests/bigmatrix.py) are built with ``xmitbench report --screenshot``; Chromium
loads each page, a probe script records every image's natural size and the findings section's
box after the load event (harness.analysis.browser.probe), and a PNG of the findings section is
written into the run dir. Without chromium the tests are skipped with the reason when not root
(``make test`` installs it as root), and fail as root.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

import bigmatrix
from harness.analysis import browser
from analysis_helpers import cli

RUNS = Path(__file__).parent / "fixtures" / "runs"
DEFAULT = RUNS / "default-2rep"        # the big matrix's source rows
REAL_DEFAULT = RUNS / "default-3procs"  # workloads/default.toml as it is: procs 1, 2, 4


@pytest.fixture(autouse=True)
def need_chromium():
    if browser.chromium():
        return
    if os.geteuid() == 0:
        pytest.fail("chromium is not installed; `make test` installs it as root (Makefile SYSTEM_PACKAGES)")
    pytest.skip("chromium (Debian package) not installed and not root: "
                "run `sudo apt-get install chromium` to run the browser tests")


def _check_page(html: Path) -> dict:
    src = html.read_text(encoding="utf-8")
    n_img = len(re.findall(r"<img\b", src))
    info = browser.probe(html)
    imgs = info["images"]
    assert len(imgs) == n_img >= 8, f"{len(imgs)} images in the DOM, {n_img} <img> in the file"
    bad = [i for i in imgs if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert bad == [], f"images that did not load: {bad[:3]}"
    f = info["findings"]
    assert f is not None, "no element with id xb-findings"
    assert f["display"] != "none" and f["visibility"] == "visible" and f["height"] > 200 and f["width"] > 800
    # first on the page: above every figure
    assert "Findings" in f["text"] and f["top"] < 800
    return info


def test_default_report_in_chromium(tmp_path, capsys):
    run = shutil.copytree(REAL_DEFAULT, tmp_path / "default-3procs")
    assert cli("report", str(run), "--screenshot") == 0
    out = capsys.readouterr().out
    assert f"screenshot of the findings: {run / 'findings.png'}" in out
    info = _check_page(run / "report.html")
    f = info["findings"]
    assert f["boxes"] >= 10 and f["empty_columns"] == 1          # FreeBSD: not in this run's matrix
    assert "not in this run's matrix" in f["text"] and "at most 1 TX queue" in f["text"]
    src = (run / "report.html").read_text(encoding="utf-8")
    assert 'data-fig="usl_fit"' in src and "not drawn: every configuration has fewer than 3" not in src
    from PIL import Image
    with Image.open(run / "findings.png") as im:
        assert im.width == browser.WIDTH and abs(im.height - f["height"]) <= 30
        # not a blank page: the red TCG banner and the finding boxes' colours are there
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert len(colours) > 50


def test_big_matrix_report_in_chromium(tmp_path):
    """3x the default matrix: every figure loads; the page screenshot is kept in the run dir."""
    run = bigmatrix.write_matrix(DEFAULT, tmp_path / "big", **bigmatrix.BIG)
    assert cli("report", str(run), "--screenshot") == 0
    info = _check_page(run / "report.html")
    src = (run / "report.html").read_text(encoding="utf-8")
    assert 'data-fig="usl_fit"' in src and "Figure usl_fit not drawn" not in src
    png = browser.screenshot(run / "report.html", run / "page.png", info["page_height"])
    assert png.stat().st_size > 100_000


def test_probe_reports_a_broken_image_and_a_missing_findings_section(tmp_path):
    """The probe can fail: an image that does not decode has natural size 0, and a page without
    the findings section says so."""
    import base64
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (7, 5), "red").save(buf, format="PNG")
    good = base64.b64encode(buf.getvalue()).decode()
    page = tmp_path / "p.html"
    page.write_text(f'<html><body><img src="data:image/png;base64,{good}">'
                    f'<img src="data:image/png;base64,AAAAnotapng"></body></html>')
    info = browser.probe(page)
    assert [(i["w"], i["h"]) for i in info["images"]] == [(7, 5), (0, 0)]
    assert info["findings"] is None
    with pytest.raises(browser.BrowserError, match="no visible findings section"):
        browser.screenshot_findings(page, tmp_path / "f.png")
