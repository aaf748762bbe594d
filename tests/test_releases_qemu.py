"""Real QEMU: build the Debian 13 guest (Linux 6.12, merged /usr, packages through the private
trixie apt state on a Debian 12 host), boot it with the system QEMU and measure a 2-queue
virtio-net cell whose per-queue shares come from where 6.12 keeps them (the mq child qdiscs).

Needs root (namespaces, taps), QEMU and deb.debian.org (the first build fetches ~30 trixie
packages); without them the tests are reported as skipped with the reason, never as passed.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and taps")]

WORKLOAD = """
[workload]
name = "releases-6.12"
description = "the Debian 13 guest: virtio-net, 2 TX queues, 2 TCP senders, one short run"
repetitions = 1
duration_s = 2
warmup_s = 1
warmup_after_boot = false
lock_stats = true

[machine]
vcpus = 2
memory_mib = 512
accel = "auto"
image = "linux-deb-13"
pin_vcpus = true

[matrix]
nic = ["virtio-net"]
queues = [2]
procs = [2]
streams = [1]
proto = ["tcp"]
msg_size = [0]
"""


@pytest.fixture(scope="module")
def run_612(tmp_path_factory, prebuilt):
    tmp = tmp_path_factory.mktemp("releases")
    wl = tmp / "releases-6.12.toml"
    wl.write_text(WORKLOAD)
    results = tmp / "results"
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(wl), "--results", str(results)],
                          capture_output=True, text=True, timeout=1500, cwd=REPO,
                          env={**os.environ, "XMITBENCH_ACCEL": os.environ.get("XMITBENCH_ACCEL", "tcg")})
    if proc.returncode != 0 and "apt-get update for Debian 13" in proc.stdout + proc.stderr:
        pytest.skip("deb.debian.org unreachable: " + (proc.stdout + proc.stderr).strip().splitlines()[-1][:200])
    runs = list(results.iterdir()) if results.exists() else []
    return {"proc": proc, "run_dir": runs[0] if runs else None, "workload": wl, "results": results}


def test_the_6_12_guest_builds_boots_and_measures(run_612):
    proc, rd = run_612["proc"], run_612["run_dir"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cells = pd.read_parquet(rd / "cells.parquet")
    assert list(cells.status) == ["ok"], cells[["cell", "status", "reason"]].to_string()
    assert cells.cell.iloc[0].startswith("linux-deb-13.virtio-net.q2")
    man = json.loads((rd / "manifest.json").read_text())
    img = man["images"]["linux-deb-13"]
    assert img["debian_release"] == "13" and img["kernel_release"].startswith("6.12.")
    # the kernel release is on every row
    m = pd.read_parquet(rd / "metrics.parquet")
    assert m.kernel.str.startswith("6.12.").all() and cells.kernel.str.startswith("6.12.").all()
    # merged /usr: the tools the guest ran are the ones the build found under /usr
    from harness.images.guestimage import cache_root
    built = json.loads((cache_root() / "images" / f"linux-deb-13-{img['key']}" / "image.json").read_text())
    assert built["merged_usr"] is True and built["tools"]["tc"] == "/usr/sbin/tc"
    commands = next((rd / "raw").glob("*/r0/commands.sh")).read_text()
    assert "/usr/sbin/ethtool -S xb0" in commands and "/usr/sbin/tc -s -j qdisc show dev xb0" in commands


def test_both_queues_have_shares_from_the_mq_children(run_612):
    from harness.counters.counting import queue_table
    rd = run_612["run_dir"]
    assert rd is not None, run_612["proc"].stderr[-2000:]
    m = pd.read_parquet(rd / "metrics.parquet")
    # 6.12 virtio_net: ethtool -S has no per-queue packets (tx0_kicks etc. only)
    eth = m[(m.source == "ethtool -S") & m["queue"].notna()]
    assert not eth[eth.metric == "tx_packets"].size and set(eth.native_name) >= {"tx0_kicks", "tx1_kicks"}
    q = queue_table(m)
    assert list(q.queue) == [0, 1]
    assert (q.tx_packets > 0).all(), q.to_string()
    assert set(q.source) == {"tc -s -j qdisc"}
    assert q.share.sum() == pytest.approx(1.0)
    v = json.loads(pd.read_parquet(rd / "cells.parquet").validity.iloc[0])
    qs = v["queue_spread"]
    assert qs["source"] == "tc -s -j qdisc" and "missing_queues" not in qs and set(qs["shares"]) == {"0", "1"}


def test_plan_renders_the_6_12_commands_the_run_recorded(run_612):
    """One procedure: plan shows the 13 guest's /usr tool paths exactly as the run ran them."""
    rd = run_612["run_dir"]
    plan = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(run_612["workload"])],
                          capture_output=True, text=True, timeout=120, cwd=REPO, check=True).stdout
    for f in sorted((rd / "raw").glob("*/r*/commands.sh")):
        run_id = f"{f.parent.parent.name}.{f.parent.name}"
        assert re.search(rf"^-- {re.escape(run_id)}[^\n]*\n{re.escape(f.read_text())}", plan, re.M), run_id


def test_nothing_left_running(run_612):
    out = subprocess.run(["pgrep", "-af", str(run_612["results"])], capture_output=True, text=True).stdout
    assert [l for l in out.splitlines() if "pgrep" not in l] == []
