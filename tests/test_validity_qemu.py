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
retries = 0
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
    cells = pd.read_parquet(next(results.iterdir()) / "cells.parquet")
    assert list(cells.status) == ["ok"], cells.reason.tolist()
    return {"validity": json.loads(cells.validity[0]), "valid": bool(cells.valid[0])}


def test_conservation_flags_injected_loss(tmp_path):
    r = _run(tmp_path, "loss", "udp", 1400, ["/sbin/tc qdisc replace dev xb0 root netem loss 10%"])
    cons = r["validity"]["conservation"]
    assert cons["ok"] is False and r["valid"] is False
    # about 10 % of the application's bytes never left the NIC
    assert 0.05 < 1 - cons["ratio"] < 0.15, cons


def test_spread_flags_traffic_forced_onto_one_queue(tmp_path):
    xps = ["echo 3 > /sys/class/net/xb0/queues/tx-0/xps_cpus", "echo 0 > /sys/class/net/xb0/queues/tx-1/xps_cpus"]
    r = _run(tmp_path, "onequeue", "tcp", 0, xps)
    spread = r["validity"]["queue_spread"]
    assert spread["ok"] is False and spread["idle_queues"] == [1], spread
    assert r["validity"]["conservation"]["ok"] is True      # nothing lost, only badly spread
