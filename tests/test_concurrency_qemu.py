"""Two runs at once on one host: each gets its own namespace, tap, SSH port and iperf3
servers; both finish, and each run's peer saw exactly its own guest's traffic."""
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

def WL(name: str) -> str:
    return workload_toml(name, {"nic": ["virtio-net"], "queues": [1], "procs": [1]},
                         {"duration_s": 3}, {"vcpus": 1})


def test_two_runs_at_once_do_not_cross_talk(tmp_path):
    procs = []
    for name in ("left", "right"):
        wl = tmp_path / f"{name}.toml"
        wl.write_text(WL(name))
        procs.append(subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(wl), "--results",
                                       str(tmp_path / name)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, cwd=REPO))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    netns, ports = set(), set()
    for name in ("left", "right"):
        rd = next((tmp_path / name).iterdir())
        m = pd.read_parquet(rd / "metrics.parquet")
        nic_tx = m[(m.source == "ethtool -S") & (m.metric == "tx_bytes") & m["queue"].notna()].value.sum()
        peer_rx = m[m.metric == "peer_rx_bytes"].value.sum()
        # its own traffic, all of it: the guest and the tap are read a moment apart, so a
        # stray control packet (ARP, IPv6 ND) may fall between the readings; another run's
        # traffic would double the count
        assert nic_tx > 1e6 and abs(peer_rx - nic_tx) <= 2000, (name, nic_tx, peer_rx)
        man = json.loads((rd / "manifest.json").read_text())
        ports.add(next(a for a in man["boots"][0]["argv"] if a.startswith("user,")))
        netns.add(rd.name)
    assert len(ports) == 2 and len(netns) == 2
