"""igb (82576, QEMU's ixgbe-class model, QEMU >= 8.0) for real: 1 and 2 TX queues, 4 senders.

On Debian 12 (QEMU 7.2) the run itself fetches Debian 13's QEMU into the cache (a fresh machine;
CI has the Debian registry) or uses the cached one; on Debian 13 the system QEMU has igb. When
the registry is unreachable the igb cells come back skipped with the reason, and this test is
reported as skipped with that reason, never as passed.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.images.aptstate import host_release

REPO = Path(__file__).resolve().parent.parent

WORKLOAD = """
[workload]
name = "igb-test"
description = "igb, 1 and 2 TX queues, 4 TCP senders, one short run each"
repetitions = 1
duration_s = 3
warmup_s = 1
lock_stats = true

[machine]
vcpus = 2
memory_mib = 512
accel = "auto"
image = "linux-deb"

[matrix]
nic = ["igb"]
queues = [1, 2]
procs = [4]
proto = ["tcp"]

# igb sets no XPS map (virtio_net does): without one each TCP socket's queue is its random
# txhash, and 4 flows all land on one of 2 queues 1 time in 8. Steer TX queue i to vCPU i, as
# virtio_net does, so senders pinned to vCPUs 0 and 1 use both queues every time.
[setup]
linux = ["for q in /sys/class/net/xb0/queues/tx-*; do echo $((1 << ${q##*tx-})) > $q/xps_cpus; done"]
"""


def _system_has_igb() -> bool:
    from harness.vm.qemu import system_qemu
    return "igb" in system_qemu().devices()


@pytest.fixture(scope="module")
def igb_run(tmp_path_factory, prebuilt):
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces and taps")
    d = tmp_path_factory.mktemp("igb")
    wl = d / "igb.toml"
    wl.write_text(WORKLOAD)
    results = d / "results"
    env = {k: v for k, v in os.environ.items() if k != "XMITBENCH_QEMU"}   # the run's own choice
    env["XMITBENCH_ACCEL"] = os.environ.get("XMITBENCH_ACCEL", "tcg")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(wl), "--results", str(results)],
                          capture_output=True, text=True, timeout=1800, cwd=REPO, env=env)
    runs = list(results.iterdir()) if results.exists() else []
    assert runs, proc.stdout[-3000:] + proc.stderr[-3000:]
    rd = runs[0]
    cells = pd.read_parquet(rd / "cells.parquet")
    skipped = cells[cells.status == "skipped"]
    if len(skipped) == len(cells) and skipped.reason.str.contains("qemu fetch failed").all():
        pytest.skip(f"igb cells skipped by the run: {skipped.reason.iloc[0]}")
    return {"proc": proc, "rd": rd, "cells": cells,
            "manifest": json.loads((rd / "manifest.json").read_text()),
            "metrics": pd.read_parquet(rd / "metrics.parquet")}


@pytest.mark.qemu
def test_igb_cells_run_on_a_qemu_that_has_igb(igb_run):
    proc, cells, man = igb_run["proc"], igb_run["cells"], igb_run["manifest"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    measured = cells[cells.status != "warmup"]
    assert (measured.status == "ok").all(), measured[["cell", "status", "reason"]].to_string()
    assert sorted(measured.queues) == [1, 2] and set(measured.procs) == {4}
    q = man["qemu"]
    assert int(q["version"].split(".")[0]) >= 8, q
    if _system_has_igb():           # Debian 13: the system QEMU
        assert q["obtained"] == "system", q
    else:                           # Debian 12: Debian 13's, fetched by this run or cached by an earlier one
        assert q["obtained"].startswith("fetched Debian 13 qemu-system-x86 "), q
        assert Path(q["binary"]).is_file() and (Path(q["binary"]).parent / "fetch.json").is_file()


@pytest.mark.qemu
def test_igb_both_queues_carry_packets_and_bytes_conserve(igb_run):
    m, cells = igb_run["metrics"], igb_run["cells"]
    eth = m[(m.source == "ethtool -S") & m["queue"].notna()]
    tx = eth[eth.metric == "tx_packets"]
    per_q = tx[tx.queues == 2].groupby("queue")["value"].sum()
    assert set(per_q.index) == {0, 1}, per_q
    assert (per_q > 0).all(), f"a TX queue sent nothing: {per_q.to_dict()}"
    assert set(tx[tx.queues == 1]["queue"]) == {0}
    for _, c in cells[cells.status == "ok"].iterrows():
        v = json.loads(c.validity)
        assert abs(v["conservation"]["ratio"] - 1) < 0.03, v["conservation"]
        if c.queues == 2:
            assert v["queue_spread"]["idle_queues"] == [], v["queue_spread"]


@pytest.mark.qemu
def test_igb_restart_and_requeue_counters_present(igb_run):
    m = igb_run["metrics"]
    # igb's per-queue restart counters (tx_queue_N_restart), one per queue the cell ran with
    restarts = m[(m.source == "ethtool -S") & (m.metric == "tx_restarts")]
    assert set(restarts[restarts.queues == 2]["queue"]) == {0, 1}, restarts
    assert set(restarts.native_name) <= {"tx_queue_0_restart", "tx_queue_1_restart"}
    assert (restarts.value >= 0).all()
    requeues = m[m.metric == "tx_requeues"]
    assert len(requeues) and (requeues.value >= 0).all()
    from harness.analysis.load import load_runs
    w = load_runs([igb_run["rd"]]).wide()
    assert w.restarts_per_mpkt.notna().all() and w.requeues_per_mpkt.notna().all(), \
        w[["cell", "restarts_per_mpkt", "requeues_per_mpkt"]]


def test_unreachable_registry_skips_igb_with_one_line_reason(tmp_path, monkeypatch):
    """No registry and no cached QEMU: the choice names why, the igb cells are skipped with it, and
    `xmitbench qemu fetch` says it in one line (exit 1). Nothing else is touched: a fresh cache."""
    if _system_has_igb():
        pytest.skip("the system QEMU has igb: nothing is fetched on this host")
    if host_release() == "13":
        pytest.skip("Debian 13 uses the host's apt state, whose mirror this test cannot redirect")
    with socket.socket() as s:      # a port on 127.0.0.1 where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"XMITBENCH_CACHE": str(tmp_path / "cache"),
           "XMITBENCH_DEBIAN_MIRROR": f"http://127.0.0.1:{port}/debian",
           "XMITBENCH_DEBIAN_SECURITY_MIRROR": f"http://127.0.0.1:{port}/debian-security"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("XMITBENCH_QEMU", raising=False)
    from harness.images.hostqemu import choose_qemu
    from harness.run.plan import plan
    from harness.run.workload import load_workload
    from harness.vm.nics import qemu_supported_devices
    choice = choose_qemu({"igb", "virtio-net-pci"}, fetch=True, log=lambda *a: None)
    assert choice.binary.obtained == "system"
    assert choice.unavailable.startswith("xmitbench qemu fetch failed: apt-get update for Debian 13")
    assert "\n" not in choice.unavailable
    wl_path = tmp_path / "igb.toml"
    wl_path.write_text(WORKLOAD)
    p = plan(load_workload(wl_path), qemu_supported_devices(choice.binary.device_help()),
             qemu_unavailable=choice.unavailable)
    assert not p.runs and {s.cell.queues for s in p.skipped} == {1, 2}
    assert all(s.reason == f"QEMU has no device igb (needs QEMU >= 8.0); {choice.unavailable}" for s in p.skipped)
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "qemu", "fetch"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, **env})
    assert proc.returncode == 1
    assert proc.stderr.startswith("xmitbench: qemu fetch failed: apt-get update for Debian 13")
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "cache" / "qemu").exists() or not list((tmp_path / "cache" / "qemu").glob("*/fetch.json"))


def test_igb_queue_cap_follows_vcpus_up_to_eight(tmp_path):
    """1 and 2 queues on 2 vCPUs; on a larger guest up to igb's 8 (82576), never more than vCPUs."""
    from harness.errors import InputError
    from harness.run.plan import plan
    from harness.run.workload import load_workload

    def wl(vcpus: int, queues: list[int]):
        p = tmp_path / f"igb{vcpus}.toml"
        p.write_text(WORKLOAD.replace("vcpus = 2", f"vcpus = {vcpus}").replace("queues = [1, 2]", f"queues = {queues}"))
        return load_workload(p)
    p = plan(wl(8, [1, 2, 4, 8]), None)
    assert [(g.boot_key.queues, sorted(r.cell.queues for r in g.runs)) for g in p.groups] == [(8, [1, 2, 4, 8])]
    p = plan(wl(16, [8, 16]), None)
    assert [s.reason for s in p.skipped] == ["igb has at most 8 TX queues on linux (igb driver)"]
    with pytest.raises(InputError, match="matrix.queues"):
        wl(2, [1, 4])       # more queues than vCPUs is bad input


def test_plan_shows_freebsd_igb_loader_tunables(tmp_path):
    """FreeBSD's igb (iflib, if_em.c) takes its queue counts as loader tunables, printed by plan."""
    p = tmp_path / "fb-igb.toml"
    p.write_text(WORKLOAD.replace('image = "linux-deb"', 'image = "freebsd-14.3"'))
    out = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(p)], capture_output=True, text=True,
                         timeout=120, cwd=REPO, check=True).stdout
    for q in (1, 2):
        assert (f"dev.igb.0.iflib.override_ntxqs=\"{q}\"" in out and f"dev.igb.0.iflib.override_nrxqs=\"{q}\"" in out
                and f"check {q} TX queues" in out), out[-2000:]
    assert "dev.igb.0.iflib.override_qs_enable=\"1\"" in out and "\nskipped " not in out
