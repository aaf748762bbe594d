"""Fault injection with real QEMU under TCG: each fault hits the first of two cells
(tests/fixtures/faults.toml); that cell must end `failed` with the right reason, the other
must still be measured, and nothing this run started may be left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.vm.faults import parse_injection, scan_serial

REPO = Path(__file__).resolve().parent.parent
WL = REPO / "tests" / "fixtures" / "faults.toml"
FIRST, SECOND = "linux-deb.virtio-net.q1.p1.s1.tcp.m0", "linux-deb.virtio-net.q1.p2.s1.tcp.m0"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and taps")


def _env(inject: str | None, **extra) -> dict:
    env = {**os.environ, "XMITBENCH_ACCEL": "tcg", "XMITBENCH_SSH_TIMEOUT_S": "8", **extra}
    env.pop("XMITBENCH_INJECT", None)
    if inject:
        env["XMITBENCH_INJECT"] = inject
    return env


def _run(results: Path, inject: str | None, *args, workload: Path = WL, **extra):
    cmd = [sys.executable, "-m", "harness.cli", "run"]
    cmd += list(args) if args else [str(workload), "--results", str(results)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=_env(inject, **extra))


def _only_run(results: Path) -> Path:
    runs = [p for p in results.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _final(rd: Path) -> dict[str, pd.Series]:
    cells = pd.read_parquet(rd / "cells.parquet").sort_values("attempt")
    return {c: g.iloc[-1] for c, g in cells.groupby("cell")}


def _assert_nothing_left(rd: Path) -> None:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert str(rd) not in ps, "a QEMU of this run is still running"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"xb-{rd.name}"[:32] not in netns, "the run's namespace is still there"
    for line in ps.splitlines():
        if "iperf3 -s -1 -B 198.18.0.1" in line:
            pid = line.split()[0]
            ident = subprocess.run(["ip", "netns", "identify", pid], capture_output=True, text=True).stdout
            assert ident.strip(), f"orphaned iperf3 server: {line}"


# -- pure parts ----------------------------------------------------------------------------

def test_scan_serial_finds_kernel_faults():
    text = ("[    5.1] xmitbench: ready\n[   12.345678] sysrq: Trigger a crash\n"
            "[   12.345999] Kernel panic - not syncing: sysrq triggered crash\n"
            "[   13.0] NETDEV WATCHDOG: xb0 (e1000e): transmit queue 0 timed out\n"
            "[   14.0] WARNING: CPU: 1 PID: 0 at net/sched/sch_generic.c:525 dev_watchdog+0x207/0x210\n")
    kinds = [f.kind for f in scan_serial(text, "linux")]
    assert kinds == ["panic", "watchdog", "warning"]
    assert scan_serial("panic: page fault\nFatal trap 12: page fault while in kernel mode\n", "freebsd")[0].kind == "panic"
    assert scan_serial("all good\n", "linux") == []


def test_parse_injection():
    i = parse_injection("kill-qemu@a.b.r0!1@2.5")
    assert (i.fault, i.cell_run, i.attempt, i.after_s) == ("kill-qemu", "a.b.r0", 1, 2.5)
    with pytest.raises(ValueError):
        parse_injection("explode@x")


# -- real QEMU -------------------------------------------------------------------------------

@needs_root
@pytest.mark.qemu
@pytest.mark.parametrize("fault,reason", [
    ("kill-qemu", "QEMU exited"),
    ("panic", "guest kernel panic"),
    ("kill-iperf3", "iperf3"),
    ("drop-ssh", "SSH"),
    ("no-ssh", "boot failed: SSH"),
    ("hang", "cell timed out after 25 s"),
])
def test_fault_fails_one_cell_and_the_matrix_goes_on(tmp_path, fault, reason):
    p = _run(tmp_path, f"{fault}@{FIRST}.r0@1.5")
    rd = _only_run(tmp_path)
    final = _final(rd)
    assert final[FIRST].status == "failed", (p.stdout[-2000:], p.stderr[-2000:])
    assert reason in final[FIRST].reason, final[FIRST].reason
    assert final[SECOND].status == "ok", final[SECOND].reason
    assert p.returncode == 1          # a failed cell is a non-zero exit, after the whole matrix ran
    assert json.loads((rd / "manifest.json").read_text())["complete"] is True
    if fault in ("panic", "kill-qemu", "hang", "drop-ssh"):
        assert (rd / final[FIRST].raw_dir / "serial_tail.txt").exists()
    _assert_nothing_left(rd)


@needs_root
@pytest.mark.qemu
def test_failed_cell_is_retried_and_both_attempts_recorded(tmp_path):
    wl = tmp_path / "retry.toml"
    wl.write_text(WL.read_text().replace("retries = 0", "retries = 1"))
    p = _run(tmp_path / "results", f"kill-qemu@{FIRST}.r0!1@1.5", workload=wl)
    rd = _only_run(tmp_path / "results")
    cells = pd.read_parquet(rd / "cells.parquet")
    first = cells[cells.cell == FIRST].sort_values("attempt")
    assert list(first.status) == ["failed", "ok"] and list(first.attempt) == [1, 2]
    assert p.returncode == 0, p.stderr[-2000:]
    assert Path(rd / "raw" / FIRST / "r0.a2" / "iperf3_0.json").exists()
    _assert_nothing_left(rd)


@needs_root
@pytest.mark.qemu
def test_sigint_mid_cell_stops_everything_then_resume_finishes(tmp_path):
    p = _run(tmp_path, f"sigint@{FIRST}.r0@1.5")
    assert p.returncode == 130, p.stderr[-2000:]
    assert "interrupted (SIGINT)" in p.stderr
    rd = _only_run(tmp_path)
    man = json.loads((rd / "manifest.json").read_text())
    assert man["complete"] is False and man.get("interrupted") is True
    cells = pd.read_parquet(rd / "cells.parquet")
    assert list(cells[cells.cell == FIRST].reason) == ["interrupted (SIGINT)"]
    assert SECOND not in set(cells.cell)
    _assert_nothing_left(rd)

    p2 = _run(tmp_path, None, "--resume", str(rd))
    assert p2.returncode == 0, p2.stdout[-2000:] + p2.stderr[-2000:]
    final = _final(rd)
    assert final[FIRST].status == "ok" and final[FIRST].attempt == 2
    assert final[SECOND].status == "ok"
    assert json.loads((rd / "manifest.json").read_text())["complete"] is True
    # rows from before the resume still name their run (the analysis joins on run_id)
    for table in ("cells", "metrics"):
        assert set(pd.read_parquet(rd / f"{table}.parquet").run_id) == {rd.name}, table
    _assert_nothing_left(rd)


@needs_root
@pytest.mark.qemu
def test_sigkill_of_harness_leaves_only_a_stale_namespace_that_resume_removes(tmp_path):
    p = _run(tmp_path, f"sigkill-harness@{SECOND}.r0@1.5")
    assert p.returncode == -signal.SIGKILL
    rd = _only_run(tmp_path)
    time.sleep(1)  # PR_SET_PDEATHSIG delivery to QEMU and iperf3
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert str(rd) not in ps, "QEMU survived the harness"
    cells = pd.read_parquet(rd / "cells.parquet")      # complete tables for the finished cell
    assert list(cells.cell) == [FIRST] and list(cells.status) == ["ok"]
    for table in rd.glob("*.parquet"):                 # every table readable: never a partial file
        pd.read_parquet(table)

    p2 = _run(tmp_path, None, "--resume", str(rd))
    assert p2.returncode == 0, p2.stdout[-2000:] + p2.stderr[-2000:]
    assert f"xb-{rd.name}"[:32] in p2.stdout       # the stale namespace was removed by name
    final = _final(rd)
    assert final[FIRST].status == "ok" and final[FIRST].attempt == 1   # not re-run
    assert final[SECOND].status == "ok"
    _assert_nothing_left(rd)
