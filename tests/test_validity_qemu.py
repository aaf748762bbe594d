"""The validity checks catch what they exist for, on a real guest under TCG:
- conservation: a 10 % netem loss added inside the guest shows up as ~10 % of the
  application's bytes missing from the NIC's TX counters;
- queue spread: XPS forcing every CPU onto TX queue 0 leaves queue 1 idle in a 2-queue cell
  (reported; it fails a cell only with workload.require_queue_spread);
- bottleneck: peer iperf3 servers throttled on purpose make the verdict "peer" and the cell invalid.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from qemu_helpers import workload_toml

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and taps")]

# One run, two cells on one VM (virtio-net, 2 queues, 2 senders), both impaired by the guest
# setup before each cell:
# - 10 % netem loss on the measured UDP datagrams only (UDP with IPv4 total length 1024..2047:
#   the 1400 B payloads): iperf3's TCP control connection and its 4-byte UDP connect handshake
#   stay clean (a lost handshake datagram fails the whole attempt with "unable to read from
#   stream socket"), and so does the TCP cell, whose protocol is 6;
# - XPS sending every CPU's traffic to TX queue 0, so queue 1 stays idle.
# The UDP cell is what the conservation test reads, the TCP cell what the spread test reads.
TC = "/sbin/tc"
IMPAIRED_SETUP = [
    f"{TC} qdisc replace dev xb0 root handle 1: prio bands 3 priomap 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
    f"{TC} qdisc replace dev xb0 parent 1:3 handle 30: netem loss 10%",
    f"{TC} filter replace dev xb0 parent 1: protocol ip prio 1 u32 match ip protocol 17 0xff match u16 0x0400 0xfc00 at 2 flowid 1:3",
    "echo 3 > /sys/class/net/xb0/queues/tx-0/xps_cpus", "echo 0 > /sys/class/net/xb0/queues/tx-1/xps_cpus"]
RETRIES = 1
IMPAIRED = workload_toml("impaired", {"nic": ["virtio-net"], "queues": [2], "procs": [2], "proto": ["udp", "tcp"],
                                      "msg_size": [1400]},
                         {"retries": RETRIES, "udp_bitrate": "100M"}, setup={"linux": IMPAIRED_SETUP})
LOSSY_UDP, ONE_QUEUE_TCP = "linux-deb.virtio-net.q2.p2.s1.udp.m1400", "linux-deb.virtio-net.q2.p2.s1.tcp.m1400"


@pytest.fixture(scope="module")
def impaired_cells(tmp_path_factory) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("impaired")
    wl = tmp / "impaired.toml"
    wl.write_text(IMPAIRED)
    results = tmp / "results"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(wl), "--results", str(results)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return pd.read_parquet(next(results.iterdir()) / "cells.parquet").sort_values("attempt")


def _final(cells: pd.DataFrame, cell: str) -> dict:
    c = cells[cells.cell == cell]
    ok = c[c.status == "ok"]  # under TCG an iperf3 run occasionally fails; the retry is recorded
    assert len(ok), c[["attempt", "status", "reason"]]
    final = ok.iloc[-1]
    return {"validity": json.loads(final.validity), "valid": bool(final.valid), "cells": c}


def test_conservation_flags_injected_loss(impaired_cells):
    r = _final(impaired_cells, LOSSY_UDP)
    cons = r["validity"]["conservation"]
    assert cons["ok"] is False and r["valid"] is False
    # about 10 % of the application's bytes never left the NIC
    assert 0.05 < 1 - cons["ratio"] < 0.15, cons
    # a failed conservation check may be transient, so the cell was re-run within the retry
    # budget: every measured attempt invalid, each after the first saying why it ran, and no
    # attempt beyond the budget
    c = r["cells"]
    ok = c[c.status == "ok"]
    assert len(ok) >= 2 and not ok.valid.any(), c[["attempt", "status", "valid", "reason"]]
    assert all(x.startswith("re-run: attempt ") and x.endswith("failed conservation") for x in ok.reason.iloc[1:])
    assert c.attempt.max() == 1 + RETRIES


def test_spread_flags_traffic_forced_onto_one_queue(impaired_cells):
    r = _final(impaired_cells, ONE_QUEUE_TCP)
    spread = r["validity"]["queue_spread"]
    assert spread["ok"] is False and spread["idle_queues"] == [1], spread
    assert r["validity"]["conservation"]["ok"] is True      # nothing lost, only badly spread
    # reported, not failed: the workload did not ask for spread (require_queue_spread unset)
    from harness.run.validity import failed_checks
    assert spread["required"] is False and "queue_spread" not in failed_checks(r["validity"])
    # a configuration property, not a transient: no re-run for it (the retry budget was there)
    assert (r["cells"].status == "ok").sum() == 1


PEER = workload_toml("peerlimit", {"nic": ["virtio-net"], "queues": [1], "procs": [1, 2], "proto": ["udp"],
                                   "msg_size": [1400]}, {"retries": 0})


def test_bottleneck_names_a_throttled_peer(tmp_path):
    """The peer made the limit on purpose: the peer iperf3 servers of one cell get 10 % of the
    time (SIGSTOP/SIGCONT, the peer-throttle fault), so their sockets overflow. That cell's
    verdict is "peer" and it is invalid; its twin on the same VM, unthrottled, is not "peer"."""
    from harness.run.bottleneck import PEER_DROP_SHARE
    from harness.run.validity import failed_checks
    wl = tmp_path / "peerlimit.toml"
    wl.write_text(PEER)
    results = tmp_path / "results"
    throttled = "linux-deb.virtio-net.q1.p1.s1.udp.m1400"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(wl), "--results", str(results)],
                       capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={**os.environ, "XMITBENCH_INJECT": f"peer-throttle@{throttled}.r0@0.2"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rd = next(results.iterdir())
    cells = pd.read_parquet(rd / "cells.parquet")
    ok = cells[cells.status == "ok"].set_index("cell")
    assert set(ok.index) == {throttled, "linux-deb.virtio-net.q1.p2.s1.udp.m1400"}, cells[["cell", "status", "reason"]]
    v = json.loads(ok.loc[throttled].validity)
    b = v["bottleneck"]
    assert b["verdict"] == "peer", b
    assert ok.loc[throttled].valid == False and "bottleneck" in failed_checks(v)  # noqa: E712
    d = b["inputs"]["derived"]
    assert d["peer_drop_share"] >= PEER_DROP_SHARE and b["inputs"]["peer_udp_rcvbuf_errors"] > 0, b
    assert v["conservation"]["ok"] is True      # the guest sent every byte; the peer dropped them
    twin = json.loads(ok.loc["linux-deb.virtio-net.q1.p2.s1.udp.m1400"].validity)["bottleneck"]
    assert twin["verdict"] != "peer", twin
    # the peer servers' CPU and drops are metric rows beside the host thread CPU
    m = pd.read_parquet(rd / "metrics.parquet")
    assert {"peer_server_cpu_s", "peer_udp_rcvbuf_errors"} <= set(m[m.cell == throttled].metric)
    # nothing left behind: no stopped peer server, no namespace of this run
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert rd.name not in ns
    ps = subprocess.run(["ps", "-eo", "stat=,comm="], capture_output=True, text=True).stdout.splitlines()
    stopped = [l for l in ps if l.split()[-1] == "iperf3" and l.split()[0].startswith("T")]
    assert not stopped, stopped


ONE_QUEUE = workload_toml("onequeue", {"nic": ["e1000e"], "queues": [1], "procs": [4]},
                          {"duration_s": 4, "retries": 1, "lock_stats": True})


def test_many_senders_on_one_queue_are_bottlenecked_in_the_tx_path(tmp_path):
    """Four pinned TCP senders into e1000e's single TX queue: the limit is inside the path under
    test (the senders' kernel time, or the TX lock), so the verdict names it and the cell is
    valid."""
    wl = tmp_path / "onequeue.toml"
    wl.write_text(ONE_QUEUE)
    results = tmp_path / "results"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(wl), "--results", str(results)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rd = next(results.iterdir())
    cells = pd.read_parquet(rd / "cells.parquet")
    ok = cells[(cells.status == "ok") & (cells.cell == "linux-deb.e1000e.q1.p4.s1.tcp.m0")]
    assert len(ok) >= 1, cells[["cell", "status", "reason"]]
    b = json.loads(ok.validity.iloc[-1])["bottleneck"]
    assert b["verdict"] in ("tx_path", "tx_lock"), b
    assert ok.valid.iloc[-1] == True, b  # noqa: E712
