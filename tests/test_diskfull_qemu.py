"""A results disk that fills during a run, with real QEMU under TCG (tests/fixtures/faults.toml:
two cells on one VM). The results folder is a small tmpfs; once the first cell's row is in
cells.parquet a ballast file takes every free block, so the second cell's raw captures hit
ENOSPC. The run must stop with one line on stderr and exit 1, leave no temp files, keep the
earlier tables readable and the manifest complete=false, stop everything it started; after
the ballast is removed `--resume` must finish the run."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
WL = REPO / "tests" / "fixtures" / "faults.toml"
FIRST, SECOND = "linux-deb.virtio-net.q1.p1.s1.tcp.m0", "linux-deb.virtio-net.q1.p2.s1.tcp.m0"
TMPFS_SIZE = "16m"      # room for the run to start and the first cell; the ballast fills the rest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for tmpfs mounts, namespaces and taps")


def _env() -> dict:
    env = {**os.environ, "XMITBENCH_ACCEL": "tcg", "XMITBENCH_SSH_TIMEOUT_S": "8"}
    env.pop("XMITBENCH_INJECT", None)
    return env


def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "run", *args]


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {l.split()[0] for l in out.splitlines() if l.strip()}


def _iperf3_servers() -> set[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {l.split()[0] for l in ps.splitlines() if "iperf3 -s" in l}


def _first_cell_recorded(results: Path) -> bool:
    for rd in (p for p in results.iterdir() if p.is_dir()):
        try:
            cells = pd.read_parquet(rd / "cells.parquet")
        except (OSError, ValueError):
            continue
        if ((cells.cell == FIRST) & (cells.status == "ok")).any():
            return True
    return False


def _fill(path: Path) -> int:
    """Write until the filesystem refuses: every free block taken. Returns the bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 64 << 10, 4 << 10, 512):
            buf = b"\0" * chunk
            while True:
                try:
                    n += f.write(buf)
                except OSError:
                    break
    return n


def _assert_nothing_left(rd: Path, iperf_before: set[str]) -> None:
    """Nothing this test's runs started is left (other runs may share the machine: only ours
    are looked at)."""
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert str(rd) not in ps, "a QEMU of this run is still running"
    ns = f"xb-{rd.name}"[:32]
    assert ns not in _netns(), f"namespace {ns} left"
    for pid in _iperf3_servers() - iperf_before:
        where = subprocess.run(["ip", "netns", "identify", pid], capture_output=True, text=True).stdout.strip()
        assert where and where != ns, f"iperf3 server {pid} left (namespace {where or 'none: orphaned'})"


@pytest.fixture
def tiny_fs(tmp_path):
    """A 160 KiB tmpfs: a run dir's empty tables fit, a few thousand metric rows do not."""
    d = tmp_path / "tiny"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


def _rows(n: int) -> list[dict]:
    return [{"cell": f"c{i}", "rep": 0, "metric": f"m{i}", "value": float(i), "queue": None, "cpu": None,
             "source": "x" * 40} for i in range(n)]


@needs_root
def test_full_disk_raises_one_error_and_leaves_no_temp_file(tiny_fs):
    from harness.errors import ResultsDiskFull
    from harness.results.rundir import RunDir
    rd = RunDir.create(tiny_fs)
    rd.flush()
    rd.add(metrics=_rows(20000))
    with pytest.raises(ResultsDiskFull) as ei:
        rd.flush()
    assert str(ei.value).startswith(f"results disk full: {rd.path}/metrics.")
    assert re.search(r"\(\d+ KiB free\)$", str(ei.value))
    assert not list(tiny_fs.rglob("*.tmp*"))
    with pytest.raises(ResultsDiskFull):
        rd.save_raw("c0", 0, "big.txt", "x" * 400_000)
    assert not list(tiny_fs.rglob("*.tmp*"))
    rd.mark_incomplete("results disk full")        # the manifest is small: it still fits
    man = json.loads((rd.path / "manifest.json").read_text())
    assert man["complete"] is False and man["incomplete_reason"] == "results disk full"
    assert man["table_rows"] == {"run_id": rd.run_id, "metrics": 0, "locks": 0, "cells": 0}


@needs_root
def test_resume_drops_rows_of_a_flush_cut_short(tiny_fs):
    """metrics written, then the disk full before cells and the manifest: the resumed run dir
    must not keep those metric rows (the cell is re-run and would add them again)."""
    from harness.errors import ResultsDiskFull
    from harness.results.rundir import RunDir
    rd = RunDir.create(tiny_fs)
    rd.add(metrics=_rows(10))
    rd.flush()
    rd.add(metrics=_rows(300), cell={"cell": "c", "rep": 0, "attempt": 1, "status": "ok"})
    ballast = tiny_fs / "ballast"
    with open(ballast, "wb") as f:     # 40 KiB: the metrics and locks tables fit (4 KiB pages, each temp file beside its old one), cells not
        room = os.statvfs(tiny_fs).f_bavail * os.statvfs(tiny_fs).f_frsize
        f.write(b"\0" * max(0, room - 40 * 1024))
    with pytest.raises(ResultsDiskFull):
        rd.flush()
    assert len(pd.read_parquet(rd.path / "metrics.parquet")) == 310, "the metrics table was not rewritten"
    again = RunDir.open(rd.path)
    assert len(again.metrics) == 10 and again.cells == []


@needs_root
@pytest.mark.qemu
def test_results_disk_full_stops_in_one_line_then_resume_finishes(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(results)], check=True)
    ballast = results / "ballast"
    iperf_before = _iperf3_servers()
    proc = None
    try:
        proc = subprocess.Popen(_cmd(str(WL), "--results", str(results)), cwd=REPO, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while not _first_cell_recorded(results):
            assert proc.poll() is None, f"run ended before the first cell was recorded: {proc.communicate()}"
            assert time.monotonic() < deadline, "first cell not recorded in 600 s"
            time.sleep(0.1)
        filled = _fill(ballast)
        assert filled > 0
        out, err = proc.communicate(timeout=300)

        rd = next(p for p in results.iterdir() if p.is_dir())
        assert proc.returncode == 1, (out[-2000:], err[-2000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert re.fullmatch(
            rf"xmitbench: results disk full: {re.escape(str(rd))}/\S+ \(\d+ KiB free\); run dir "
            rf"{re.escape(str(rd))} is incomplete; free space and continue with: "
            rf"xmitbench run --resume {re.escape(str(rd))}", lines[0]), lines[0]
        print(f"stderr: {lines[0]}")
        assert not list(results.rglob("*.tmp*")), list(results.rglob("*.tmp*"))
        for table in ("metrics", "locks", "cells"):
            pd.read_parquet(rd / f"{table}.parquet")
            pd.read_csv(rd / f"{table}.csv")
        cells = pd.read_parquet(rd / "cells.parquet")
        assert list(cells.cell) == [FIRST] and list(cells.status) == ["ok"]   # no failed row for SECOND
        man = json.loads((rd / "manifest.json").read_text())
        assert man["complete"] is False
        _assert_nothing_left(rd, iperf_before)

        ballast.unlink()
        p2 = subprocess.run(_cmd("--resume", str(rd)), cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=600)
        assert p2.returncode == 0, p2.stdout[-2000:] + p2.stderr[-2000:]
        man = json.loads((rd / "manifest.json").read_text())
        assert man["complete"] is True and "incomplete_reason" not in man
        cells = pd.read_parquet(rd / "cells.parquet")
        final = {c: g.sort_values("attempt").iloc[-1] for c, g in cells.groupby("cell")}
        assert final[FIRST].status == "ok" and final[FIRST].attempt == 1      # not re-run
        assert final[SECOND].status == "ok"
        assert not list(results.rglob("*.tmp*"))
        _assert_nothing_left(rd, iperf_before)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if subprocess.run(["umount", str(results)]).returncode != 0:
            subprocess.run(["umount", "-l", str(results)])
