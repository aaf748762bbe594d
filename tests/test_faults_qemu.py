"""Fault injection with real QEMU under TCG. Two runs (plus resumes) cover every fault:

* tests/fixtures/faults_matrix.toml: one run, nine cells; each of six faults hits its own cell
  (one comma-separated XMITBENCH_INJECT), each cell must end `failed` with the fault's reason,
  the cells with no fault must still be measured, and the run ends with exit 1 after the whole
  matrix ran;
* tests/fixtures/faults_resume.toml: QEMU killed on a first attempt (retried), the harness
  SIGKILLed, a resume interrupted by SIGINT, a second resume that finishes.

Nothing a run started may be left behind. A harness start and a VM boot per fault (as the
tests had before: nine runs, 440 s in a full run) are shared here."""
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

from harness.errors import InputError
from harness.vm.faults import (
    Injection,
    Injector,
    parse_injection,
    parse_injections,
    scan_serial,
)

REPO = Path(__file__).resolve().parent.parent
MATRIX_WL = REPO / "tests" / "fixtures" / "faults_matrix.toml"
RESUME_WL = REPO / "tests" / "fixtures" / "faults_resume.toml"
FIRST, SECOND, THIRD = (f"linux-deb.virtio-net.q1.p{p}.s1.tcp.m0" for p in (1, 2, 3))


SIZES = (0, 65536, 131072, 196608, 262144, 327680, 393216, 458752, 524288)   # faults_matrix.toml's msg_size


def _m(n: int) -> str:
    """faults_matrix.toml's n-th cell (1-based, plan order)."""
    return f"linux-deb.virtio-net.q1.p1.s1.tcp.m{SIZES[n - 1]}"


# faults_matrix.toml, in run order: cell -> (fault or None, the text its failed row's reason holds).
# no-ssh goes first (it is a boot fault: it needs a boot for its cell); kill-iperf3 leaves the VM
# usable, so the cell after it runs on the same VM; panic, drop-ssh, kill-qemu and hang each make
# the runner boot a new VM for the next cell.
MATRIX = {
    _m(1): ("no-ssh", "boot failed: SSH"),
    _m(2): (None, None),
    _m(3): ("kill-iperf3", "iperf3"),
    _m(4): (None, None),
    _m(5): ("panic", "guest kernel panic"),
    _m(6): ("drop-ssh", "SSH"),
    _m(7): ("kill-qemu", "QEMU exited"),
    _m(8): ("hang", "cell timed out after 15 s"),
    _m(9): (None, None),
}
SERIAL_TAIL_FAULTS = ("panic", "kill-qemu", "hang", "drop-ssh")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and taps")


def _env(inject: str | None, **extra) -> dict:
    env = {**os.environ, "XMITBENCH_ACCEL": "tcg", "XMITBENCH_SSH_TIMEOUT_S": "8", **extra}
    env.pop("XMITBENCH_INJECT", None)
    if inject:
        env["XMITBENCH_INJECT"] = inject
    return env


def _run(results: Path, inject: str | None, *args, workload: Path = RESUME_WL, **extra):
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
    assert parse_injection("hang@a.r0") == Injection("hang", "a.r0", 1.0, None)
    with pytest.raises(InputError):
        parse_injection("explode@x")


def test_parse_injections_reads_every_entry_in_order():
    spec = "no-ssh@c1.r0@1.5, kill-iperf3@c3.r0@1.5,kill-qemu@c7.r0!1@2,hang@c8.r0"
    assert parse_injections(spec) == (
        Injection("no-ssh", "c1.r0", 1.5, None), Injection("kill-iperf3", "c3.r0", 1.5, None),
        Injection("kill-qemu", "c7.r0", 2.0, 1), Injection("hang", "c8.r0", 1.0, None))
    assert parse_injections(None) == () and parse_injections("") == ()


@pytest.mark.parametrize("spec,entry,why", [
    ("panic@c1.r0,explode@c2.r0", "entry 2 of 2", "unknown fault 'explode'"),
    ("panic@c1.r0@1@2", "entry 1 of 1", "wrong number of '@' fields"),
    ("panic", "entry 1 of 1", "wrong number of '@' fields"),
    ("panic@c1.r0!x@1", "entry 1 of 1", "attempt not a whole number"),
    ("panic@c1.r0!0", "entry 1 of 1", "attempt not a whole number"),
    ("panic@@1", "entry 1 of 1", "cell run id missing"),
    ("panic@c1.r0@soon", "entry 1 of 1", "seconds 'soon' not a number"),
    ("panic@c1.r0@-1", "entry 1 of 1", "negative"),
    ("panic@c1.r0,,hang@c2.r0", "entry 2 of 3", "empty entry"),
])
def test_a_bad_injection_entry_is_one_line_naming_it(spec, entry, why):
    with pytest.raises(InputError) as ei:
        parse_injections(spec)
    msg = str(ei.value)
    assert msg.startswith(f"XMITBENCH_INJECT: {entry}: ") and why in msg, msg
    assert "\n" not in msg and "<fault>@<cell-run>" in msg


def test_injector_picks_the_entries_of_a_cell_and_attempt():
    inj = Injector("no-ssh@c1.r0,kill-qemu@c2.r0!1@1.5,panic@c3.r0")
    assert inj.wants("no-ssh", "c1.r0", 1) and inj.wants("no-ssh", "c1.r0", 2)
    assert not inj.wants("no-ssh", "c2.r0", 1) and not inj.wants("panic", "c1.r0", 1)
    assert [i.fault for i in inj._for("c2.r0", 1)] == ["kill-qemu"]
    assert inj._for("c2.r0", 2) == []          # `!1`: the retry runs clean
    assert Injector("").injections == ()


@needs_root
def test_bad_injection_stops_the_run_before_anything_starts(tmp_path):
    """A bad XMITBENCH_INJECT is bad input: one line, exit 2, no run dir (nothing booted)."""
    p = _run(tmp_path, f"panic@{FIRST}.r0,explode@{SECOND}.r0")
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert p.stderr.strip() == p.stderr.strip().splitlines()[0]
    assert p.stderr.startswith("xmitbench: XMITBENCH_INJECT: entry 2 of 2: 'explode@"), p.stderr
    assert list(tmp_path.iterdir()) == []


# -- real QEMU -------------------------------------------------------------------------------

@needs_root
@pytest.mark.qemu
def test_each_fault_fails_its_cell_and_the_matrix_goes_on(tmp_path):
    inject = ",".join(f"{fault}@{cell}.r0@1.5" for cell, (fault, _) in MATRIX.items() if fault)
    p = _run(tmp_path, inject, workload=MATRIX_WL)
    rd = _only_run(tmp_path)
    out = (p.stdout[-3000:], p.stderr[-2000:])
    cells = pd.read_parquet(rd / "cells.parquet")
    assert list(cells.cell) == list(MATRIX), out        # every cell ran, once, in plan order (retries = 0)
    final = _final(rd)
    for cell, (fault, reason) in MATRIX.items():
        row = final[cell]
        if fault is None:
            assert row.status == "ok", (cell, row.reason, out)
            continue
        assert row.status == "failed", (cell, fault, out)
        assert reason in row.reason, (cell, fault, row.reason)
        if fault in SERIAL_TAIL_FAULTS:
            assert (rd / row.raw_dir / "serial_tail.txt").exists(), (cell, fault)
    assert p.returncode == 1, out     # a failed cell is a non-zero exit, after the whole matrix ran
    assert json.loads((rd / "manifest.json").read_text())["complete"] is True
    _assert_nothing_left(rd)


@needs_root
@pytest.mark.qemu
def test_retry_then_sigkill_then_sigint_then_resume_finishes(tmp_path):
    """faults_resume.toml (retries = 1), three harness runs on one run dir:
    1. QEMU killed in FIRST's attempt 1: the retry on a new VM is ok, both attempts recorded;
       then the harness is SIGKILLed in SECOND: QEMU dies with it, the tables stay readable,
       only the namespace is left;
    2. --resume removes that stale namespace by name, does not re-run FIRST, and a SIGINT in
       SECOND stops everything: exit 130, THIRD never started;
    3. --resume finishes: SECOND's attempt 2 and THIRD ok, exit 0 (FIRST's last attempt is ok)."""
    # 1. retry, then SIGKILL of the harness
    p = _run(tmp_path, f"kill-qemu@{FIRST}.r0!1@1.5,sigkill-harness@{SECOND}.r0@1.5")
    assert p.returncode == -signal.SIGKILL, p.stdout[-2000:] + p.stderr[-2000:]
    rd = _only_run(tmp_path)
    time.sleep(1)  # PR_SET_PDEATHSIG delivery to QEMU and iperf3
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert str(rd) not in ps, "QEMU survived the harness"
    cells = pd.read_parquet(rd / "cells.parquet")      # complete tables for the finished cell
    assert list(cells.cell) == [FIRST, FIRST], cells[["cell", "attempt", "status", "reason"]]
    assert list(cells.status) == ["failed", "ok"] and list(cells.attempt) == [1, 2]
    assert "QEMU exited" in cells.reason.iloc[0], cells.reason.iloc[0]
    assert (rd / "raw" / FIRST / "r0.a2" / "iperf3_0.json").exists()
    for table in rd.glob("*.parquet"):                 # every table readable: never a partial file
        pd.read_parquet(table)

    # 2. resume: stale namespace removed; SIGINT in SECOND
    p2 = _run(tmp_path, f"sigint@{SECOND}.r0@1.5", "--resume", str(rd))
    assert f"xb-{rd.name}"[:32] in p2.stdout, p2.stdout[-2000:]   # the stale namespace was removed by name
    assert p2.returncode == 130, p2.stdout[-2000:] + p2.stderr[-2000:]
    assert "interrupted (SIGINT)" in p2.stderr
    man = json.loads((rd / "manifest.json").read_text())
    assert man["complete"] is False and man.get("interrupted") is True
    cells = pd.read_parquet(rd / "cells.parquet")
    assert list(cells[cells.cell == FIRST].attempt) == [1, 2]             # not re-run
    assert list(cells[cells.cell == SECOND].reason) == ["interrupted (SIGINT)"]
    assert THIRD not in set(cells.cell)
    _assert_nothing_left(rd)

    # 3. resume finishes
    p3 = _run(tmp_path, None, "--resume", str(rd))
    assert p3.returncode == 0, p3.stdout[-2000:] + p3.stderr[-2000:]
    final = _final(rd)
    assert final[FIRST].status == "ok" and final[FIRST].attempt == 2      # not re-run
    assert final[SECOND].status == "ok" and final[SECOND].attempt == 2
    assert final[THIRD].status == "ok"
    assert json.loads((rd / "manifest.json").read_text())["complete"] is True
    # rows from before the resumes still name their run (the analysis joins on run_id)
    for table in ("cells", "metrics"):
        assert set(pd.read_parquet(rd / f"{table}.parquet").run_id) == {rd.name}, table
    _assert_nothing_left(rd)
