"""The LOCK_STAT kernel, really: built from Debian's linux-source-6.1 (on a fresh machine this
test builds it, a few minutes; otherwise the cached build), booted under QEMU with the stock
userland, 4 senders on one virtio-net TX queue. The per-queue xmit lock class shows
acquisitions and contentions in /proc/lock_stat, both lock methods' rows sit in the locks
table, and the cross-check of their TX queue lock counts holds. The same cell on the stock
kernel gives the lockdep overhead (printed, never asserted).

Run it alone and under the heavy-job lock: flock /tmp/xmitbench-heavy.lock pytest tests/test_lockstat_qemu.py
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and taps")]

WORKLOAD = """[workload]
name = "lockstat-test"
repetitions = 1
duration_s = 6
warmup_s = 1
lock_stats = true
[machine]
vcpus = 2
memory_mib = 1024
accel = "tcg"
image = "linux-lockstat"
[matrix]
image = ["linux-lockstat", "linux-deb"]
nic = ["virtio-net"]
queues = [1]
procs = [4]
"""


@pytest.fixture(scope="module")
def lockstat_run(tmp_path_factory, prebuilt):
    d = tmp_path_factory.mktemp("lockstat")
    (d / "w.toml").write_text(WORKLOAD)
    results = d / "results"
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(d / "w.toml"), "--results", str(results)],
                          capture_output=True, text=True, timeout=3600, cwd=REPO)
    runs = list(results.iterdir()) if results.exists() else []
    return {"proc": proc, "run_dir": runs[0] if runs else None}


def test_lockstat_kernel_counts_the_per_queue_xmit_lock(lockstat_run):
    proc, rd = lockstat_run["proc"], lockstat_run["run_dir"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from harness.parsers.linux import TX_QUEUE_LOCK, tx_lock_role
    cells = pd.read_parquet(rd / "cells.parquet")
    assert (cells.status == "ok").all(), cells[["cell", "status", "reason"]].to_string()
    man = json.loads((rd / "manifest.json").read_text())
    info = man["images"]["linux-lockstat"]
    assert "xmitbench-lockstat" in info["kernel_release"]
    print(f"\nkernel build (benchmark): {info['kernel_build']['build_s']} s, -j{info['kernel_build']['jobs']}")
    assert [b for b in man["boots"] if b["image"] == "linux-lockstat"][0]["lock_stat"] == "lock_stat"
    locks = pd.read_parquet(rd / "locks.parquet")
    ls = locks[locks.method == "lock_stat"]
    assert set(ls.cell) == {c for c in cells.cell if c.startswith("linux-lockstat.")}
    assert (ls.kernel_sha256 == info["bzImage_sha256"]).all()
    xmit = ls[[tx_lock_role(l, p) == TX_QUEUE_LOCK for l, p in zip(ls.lock, ls.contention_points)]]
    print(xmit[["lock", "caller", "acquisitions", "contentions", "contention_ratio", "wait_ns_total"]].to_string())
    assert xmit.lock.str.startswith("_xmit_ETHER").all() and len(xmit)
    assert xmit.acquisitions.sum() > 0
    assert xmit.contentions.sum() > 0, "4 senders on one TX queue: the _xmit_lock class was never contended"
    # the stock kernel's cell has no lock_stat rows, only the tracing method's
    stock = locks[locks.cell.str.startswith("linux-deb.")]
    assert not (stock.method == "lock_stat").any()


def test_cross_check_of_both_methods_holds(lockstat_run):
    rd = lockstat_run["run_dir"]
    assert rd is not None
    cells = pd.read_parquet(rd / "cells.parquet")
    row = cells[cells.cell.str.startswith("linux-lockstat.")].iloc[0]
    v = json.loads(row.validity) if isinstance(row.validity, str) else row.validity
    check = v["lock_crosscheck"]
    print(f"\ncross-check: lock_stat {check['lock_stat_contentions']} contentions of "
          f"{check['lock_stat_acquisitions']} acquisitions ({check['lock_stat_classes']}), tracepoint "
          f"{check['tracepoint_contentions']} ({check['tracepoint_locks']}), ratio {check['ratio']}")
    assert check["ok"] is True, check
    assert check["tracepoint_contentions"] <= check["lock_stat_contentions"]
    stock = cells[cells.cell.str.startswith("linux-deb.")].iloc[0]
    sv = json.loads(stock.validity) if isinstance(stock.validity, str) else stock.validity
    assert "lock_crosscheck" not in sv          # one method only on the stock kernel


def test_report_section_shows_both_methods_and_the_overhead(lockstat_run):
    from harness.analysis.load import load_runs
    from harness.analysis.lockstat import lockdep_overhead, tx_locks_side_by_side
    runs = load_runs([lockstat_run["run_dir"]])
    t = tx_locks_side_by_side(runs)
    q = t[t.role == "tx queue lock (_xmit_lock)"]
    assert len(q) == 1 and q.acquisitions.iloc[0] > 0 and q.crosscheck.iloc[0] == "ok"
    print("\n" + t.drop(columns=["run_id"]).to_string())
    o = lockdep_overhead(runs)
    assert len(o) == 1 and o.gbit_s_stock.iloc[0] > 0 and o.gbit_s_lockstat.iloc[0] > 0
    print(o.to_string())


def test_nothing_left_running(lockstat_run):
    rd = lockstat_run["run_dir"]
    out = subprocess.run(["pgrep", "-af", "qemu-system-x86_64"], capture_output=True, text=True).stdout
    assert not [l for l in out.splitlines() if str(rd) in l]
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"xb-{rd.name}"[:32] not in ns


def test_machine_kernel_boots_the_users_bzimage(tmp_path):
    """[machine] kernel = <bzImage> (no modules dir: drivers built in) replaces linux-deb's
    kernel; every row names the booted release and the bzImage's SHA-256."""
    import hashlib
    from harness.images.kernelbuild import build_lockstat_kernel
    k = build_lockstat_kernel()                  # the cached build (the module fixture made it)
    (tmp_path / "w.toml").write_text(f"""[workload]
name = "own-kernel"
repetitions = 1
duration_s = 2
warmup_s = 0
[machine]
vcpus = 2
memory_mib = 1024
accel = "tcg"
image = "linux-deb"
kernel = "{k.bzimage}"
[matrix]
nic = ["virtio-net"]
queues = [1]
procs = [1]
""")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(tmp_path / "w.toml"), "--results",
                           str(tmp_path / "results")], capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rd = next((tmp_path / "results").iterdir())
    sha = hashlib.sha256(k.bzimage.read_bytes()).hexdigest()
    for table in ("cells", "metrics"):
        t = pd.read_parquet(rd / f"{table}.parquet")
        assert set(t.kernel) == {k.release} and set(t.kernel_sha256) == {sha}, table
    man = json.loads((rd / "manifest.json").read_text())
    assert man["images"]["linux-deb"]["kernel_release"] == k.release
