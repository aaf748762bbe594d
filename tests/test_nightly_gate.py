"""The nightly gate on real run dirs (tests/fixtures/runs: TCG runs of the same UDP cells,
5 repetitions each; udp-slow has every sender capped at 50 Mbit/s):
a slower candidate fails the gate and is not promoted; a run of the same configuration passes
and becomes the baseline; a failed cell is never promoted."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "tests" / "fixtures" / "runs"


def nightly(run_dir: Path, baseline: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", "nightly", "--run-dir", str(run_dir),
                           "--baseline-dir", str(baseline)], capture_output=True, text=True, cwd=REPO,
                          timeout=600, env={"PATH": "/usr/bin:/bin", "GITHUB_STEP_SUMMARY": str(baseline / "summary.md")})


def copy(name: str, tmp: Path) -> Path:
    dest = tmp / name
    shutil.copytree(RUNS / name, dest)
    return dest


def test_first_night_promotes_then_same_config_passes_and_slower_fails(tmp_path):
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    first = nightly(copy("udp-base-a", tmp_path), baseline)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "no baseline yet" in first.stdout
    promoted = baseline / "udp-ab" / "run"
    assert json.loads((promoted / "manifest.json").read_text())["run_id"] == \
        json.loads((RUNS / "udp-base-a" / "manifest.json").read_text())["run_id"]

    same = nightly(copy("udp-base-b", tmp_path), baseline)
    assert same.returncode == 0, same.stdout[-3000:]
    assert "nightly verdict: green" in same.stdout

    base_before = (promoted / "manifest.json").read_text()
    slow = nightly(copy("udp-slow", tmp_path), baseline)
    assert slow.returncode == 1, slow.stdout[-3000:]
    assert "REGRESSION" in slow.stdout
    assert (promoted / "manifest.json").read_text() == base_before      # a red night never promotes
    summary = (baseline / "summary.md").read_text()
    assert "## xmitbench nightly: REGRESSION" in summary and "TCG" in summary
    history = [json.loads(l) for l in (baseline / "udp-ab" / "history.jsonl").read_text().splitlines()]
    assert [h["verdict"].split()[0] for h in history] == ["green", "green", "REGRESSION"]


def test_failed_cell_is_not_green(tmp_path):
    run = copy("udp-base-b", tmp_path)
    cells = pd.read_parquet(run / "cells.parquet")
    cells.loc[0, "status"] = "failed"
    cells.to_parquet(run / "cells.parquet", index=False)
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    p = nightly(run, baseline)
    assert p.returncode == 1 and "FAILED CELLS" in p.stdout
    assert not (baseline / "udp-ab" / "run").exists()
