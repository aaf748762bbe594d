"""Real QEMU, real Debian guest kernel, real iperf3 through the harness namespace (TCG here).

These tests boot the guest built from Debian packages. They need root (namespaces, taps)
and QEMU; without them they are reported as skipped with the reason, never as passed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and taps")]


def _ours(pattern: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if "pgrep" not in l]


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [l.split()[0] for l in out.splitlines() if l.startswith("xb-")]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One real run of workloads/smoke.toml (virtio-net, 1 and 2 queues, 2 senders)."""
    results = tmp_path_factory.mktemp("results")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(REPO / "workloads/smoke.toml"),
                           "--results", str(results)], capture_output=True, text=True, timeout=900,
                          cwd=REPO, env={**os.environ, "XMITBENCH_ACCEL": os.environ.get("XMITBENCH_ACCEL", "tcg")})
    runs = list(results.iterdir())
    return {"proc": proc, "run_dir": runs[0] if runs else None}


def test_smoke_run_measures_real_guest(smoke_run):
    proc, rd = smoke_run["proc"], smoke_run["run_dir"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cells = pd.read_parquet(rd / "cells.parquet")
    warm = cells[cells.status == "warmup"]
    measured = cells[cells.status != "warmup"]
    assert (measured.status == "ok").all(), cells[["cell", "status", "reason"]].to_string()
    # every boot first ran its first cell's configuration as a warm-up, left out of the statistics
    first = measured.sort_values("started").cell.iloc[0]
    assert list(warm.cell) == [first + ".warmup"] and warm.started.iloc[0] < measured.started.min()
    from harness.analysis.load import load_runs
    assert not (load_runs([rd]).wide().cell.str.endswith(".warmup")).any()
    assert set(cells.queues) == {1, 2}
    man = json.loads((rd / "manifest.json").read_text())
    assert man["complete"] is True
    assert man["guest_image"]["kernel_release"].endswith("-amd64")
    assert man["benchmarks"]["boot_to_ssh_s"], "boot time not recorded"
    pins = man["boots"][0]["vcpu_pinning"]          # smoke.toml pins vCPUs (QMP query-cpus-fast)
    assert [p["vcpu"] for p in pins] == [0, 1] and all(p["thread_id"] > 0 for p in pins)
    # host CPU per named QEMU thread: the vCPU threads are there
    threads = set(pd.read_parquet(rd / "metrics.parquet").query("metric == 'host_thread_cpu_s'").native_name)
    assert {"CPU 0/TCG", "CPU 1/TCG"} <= threads or {"CPU 0/KVM", "CPU 1/KVM"} <= threads
    m = pd.read_parquet(rd / "metrics.parquet")
    assert set(m.accel) == {man["accel"]}
    assert m.kernel.str.endswith("-amd64").all()
    # every row traces back to a source and a native counter name
    assert m.source.notna().all() and m.native_name.notna().all()


def test_multiqueue_cell_uses_every_queue_and_bytes_conserve(smoke_run):
    rd = smoke_run["run_dir"]
    m = pd.read_parquet(rd / "metrics.parquet")
    eth = m[(m.source == "ethtool -S") & (m.metric == "tx_packets") & m["queue"].notna()]
    q2 = eth[eth.queues == 2]
    assert not q2.empty
    for (cell, rep), d in q2.groupby(["cell", "rep"]):
        per_q = d.groupby("queue")["value"].sum()
        assert set(per_q.index) == {0, 1}, per_q
        assert (per_q > 0).all(), f"{cell} r{rep}: a TX queue sent nothing: {per_q.to_dict()}"
    cells = pd.read_parquet(rd / "cells.parquet")
    for _, c in cells.iterrows():
        v = json.loads(c.validity)
        cons = v["conservation"]
        # per-queue NIC TX bytes minus per-packet headers vs iperf3 payload (incl. warm-up)
        assert abs(cons["ratio"] - 1) < 0.03, cons


def test_every_measured_cell_has_a_bottleneck_verdict(smoke_run):
    from harness.run.bottleneck import VERDICTS
    from harness.run.validity import is_valid
    rd = smoke_run["run_dir"]
    cells = pd.read_parquet(rd / "cells.parquet")
    ok = cells[cells.status == "ok"]
    assert len(ok)
    m = pd.read_parquet(rd / "metrics.parquet")
    for _, c in ok.iterrows():
        v = json.loads(c.validity)
        b = v["bottleneck"]
        assert b["verdict"] in VERDICTS and b["reason"], b
        assert b["thresholds"] and b["inputs"]["sender_cpus"], b    # the numbers it was judged on
        assert bool(c.valid) == is_valid(v)                          # one rule decided it
        # the peer servers' CPU was measured, one row per sender process
        peer = m[(m.cell == c.cell) & (m.rep == c.rep) & (m.metric == "peer_server_cpu_s")]
        assert len(peer) >= c.procs and (peer.value >= 0).all(), peer


def test_lock_contention_rows_name_a_method(smoke_run):
    rd = smoke_run["run_dir"]
    locks = pd.read_parquet(rd / "locks.parquet")
    man = json.loads((rd / "manifest.json").read_text())
    if not locks.empty:
        from harness.counters.lockclass import LOCK_CLASSES
        assert (locks.method == man["lock_method"]).all()
        assert (locks.wait_ns_total >= 0).all()
        assert set(locks.lock_class) <= set(LOCK_CLASSES) and locks.incomplete.isna().all()
    for c in pd.read_parquet(rd / "cells.parquet").query("status == 'ok' and traced").itertuples():
        assert json.loads(c.validity)["lock_stats"] == {"ok": True, "reasons": []}    # Linux: nothing lost
    lw = pd.read_parquet(rd / "metrics.parquet").query("metric == 'lock_wait_ns'")
    assert len(lw) == len(pd.read_parquet(rd / "cells.parquet").query("status == 'ok'"))


def test_raw_captures_kept(smoke_run):
    rd = smoke_run["run_dir"]
    raw = list((rd / "raw").rglob("iperf3_0.json"))
    assert raw and json.loads(raw[0].read_text())["end"]["sum_sent"]["bytes"] > 0
    assert list((rd / "serial").glob("*.log"))


def test_plan_prints_what_the_run_recorded_as_commands_sh(smoke_run):
    """One procedure: each cell's commands.sh is, byte for byte, the block `plan` prints for it."""
    import re
    rd = smoke_run["run_dir"]
    plan = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(REPO / "workloads/smoke.toml")],
                          capture_output=True, text=True, timeout=120, cwd=REPO, check=True).stdout
    recorded = sorted((rd / "raw").glob("*/r*/commands.sh"))
    assert recorded
    for f in recorded:
        run_id = f"{f.parent.parent.name}.{f.parent.name}"
        assert re.search(rf"^-- {re.escape(run_id)}[^\n]*\n{re.escape(f.read_text())}", plan, re.M), run_id


def test_nothing_left_running(smoke_run):
    rd = smoke_run["run_dir"]
    assert not [l for l in _ours("qemu-system-x86_64") if str(rd) in l]
    # A server of ours left behind would live in a namespace that no longer has a name;
    # servers of other runs still running on this host are in their own named namespaces.
    orphans = []
    for line in _ours("iperf3 -s -1 -B 198.18.0.1"):
        pid = line.split()[0]
        ident = subprocess.run(["ip", "netns", "identify", pid], capture_output=True, text=True).stdout.strip()
        if not ident:
            orphans.append(line)
    assert not orphans
    assert f"xb-{rd.name}"[:32] not in _netns()


def test_freebsd_image_unreachable_is_a_skip_and_linux_is_measured(tmp_path):
    """A workload naming a FreeBSD image and the Linux guest: Linux cells measured, FreeBSD
    cells skipped with "image unreachable: <url>", never passed or dropped. The image
    mirror is pointed at a port on 127.0.0.1 where nothing listens."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    wl = tmp_path / "mixed.toml"
    wl.write_text('[workload]\nname = "mixed"\nrepetitions = 1\nduration_s = 2\nwarmup_s = 0\n'
                  '[machine]\nvcpus = 2\nmemory_mib = 512\naccel = "tcg"\n'
                  '[matrix]\nimage = ["linux-deb", "freebsd-14.3"]\nnic = ["virtio-net"]\nqueues = [1]\nprocs = [1]\n')
    results = tmp_path / "results"
    env = {**os.environ, "XMITBENCH_IMAGE_BASE_URL": f"http://127.0.0.1:{dead}/"}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(wl), "--results", str(results)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rd = next(results.iterdir())
    cells = pd.read_parquet(rd / "cells.parquet").set_index("cell")
    assert cells.loc["linux-deb.virtio-net.q1.p1.s1.tcp.m0", "status"] == "ok"
    fb = cells.loc["freebsd-14.3.virtio-net.q1.p1.s1.tcp.m0"]
    assert fb.status == "skipped" and fb.os == "freebsd"
    assert fb.reason.startswith(f"image unreachable: http://127.0.0.1:{dead}/FreeBSD-14.3-RELEASE-amd64")
    assert "skipped freebsd-14.3" in proc.stdout
