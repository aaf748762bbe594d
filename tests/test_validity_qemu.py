"""The validity checks catch what they exist for, on a real guest under TCG:
- conservation: a 10 % netem loss added inside the guest shows up as ~10 % of the
  application's bytes missing from the NIC's TX counters;
- queue spread: XPS forcing every CPU onto TX queue 0 leaves queue 1 idle in a 2-queue cell.
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

BASE = """[workload]
name = "{name}"
repetitions = 1
duration_s = 3
warmup_s = 0
retries = 2
udp_bitrate = "100M"
[machine]
vcpus = 2
memory_mib = 512
accel = "tcg"
[matrix]
nic = ["virtio-net"]
queues = [2]
procs = [2]
proto = ["{proto}"]
msg_size = [{size}]
[setup]
linux = [{setup}]
"""


def _run(tmp_path: Path, name: str, proto: str, size: int, setup: list[str]) -> dict:
    wl = tmp_path / f"{name}.toml"
    wl.write_text(BASE.format(name=name, proto=proto, size=size, setup=", ".join(json.dumps(c) for c in setup)))
    results = tmp_path / "results"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(wl), "--results", str(results)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    cells = pd.read_parquet(next(results.iterdir()) / "cells.parquet").sort_values("attempt")
    ok = cells[cells.status == "ok"]  # under TCG an iperf3 run occasionally fails; the retry is recorded
    assert len(ok), cells.reason.tolist()
    final = ok.iloc[-1]
    return {"validity": json.loads(final.validity), "valid": bool(final.valid), "cells": cells}


def test_conservation_flags_injected_loss(tmp_path):
    # 10 % loss on the measured datagrams only (UDP with IPv4 total length 1024..2047: the 1400 B
    # payloads): iperf3's TCP control connection and its 4-byte UDP connect handshake stay clean
    # (a lost handshake datagram fails the whole attempt with "unable to read from stream socket")
    tc = "/sbin/tc"
    r = _run(tmp_path, "loss", "udp", 1400, [
        f"{tc} qdisc replace dev xb0 root handle 1: prio bands 3 priomap 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
        f"{tc} qdisc replace dev xb0 parent 1:3 handle 30: netem loss 10%",
        f"{tc} filter replace dev xb0 parent 1: protocol ip prio 1 u32 match ip protocol 17 0xff match u16 0x0400 0xfc00 at 2 flowid 1:3"])
    cons = r["validity"]["conservation"]
    assert cons["ok"] is False and r["valid"] is False
    # about 10 % of the application's bytes never left the NIC
    assert 0.05 < 1 - cons["ratio"] < 0.15, cons
    # a failed conservation check may be transient, so the cell was re-run within the retry
    # budget (retries = 2): every measured attempt invalid, each after the first saying why it ran
    c = r["cells"]
    ok = c[c.status == "ok"]
    assert len(ok) >= 2 and not ok.valid.any(), c[["attempt", "status", "valid", "reason"]]
    assert all(x.startswith("re-run: attempt ") and x.endswith("failed conservation") for x in ok.reason.iloc[1:])
    assert c.attempt.max() == 3


def test_spread_flags_traffic_forced_onto_one_queue(tmp_path):
    xps = ["echo 3 > /sys/class/net/xb0/queues/tx-0/xps_cpus", "echo 0 > /sys/class/net/xb0/queues/tx-1/xps_cpus"]
    r = _run(tmp_path, "onequeue", "tcp", 0, xps)
    spread = r["validity"]["queue_spread"]
    assert spread["ok"] is False and spread["idle_queues"] == [1], spread
    assert r["validity"]["conservation"]["ok"] is True      # nothing lost, only badly spread
    # a configuration property, not a transient: no re-run for it
    assert (r["cells"].status == "ok").sum() == 1
