"""Sharding on real runs: N=2 shards of a 2-boot-group workload, run one after another and
merged, equal an unsharded run of the same workload in cell set, schema and dtypes.

Kept small (4 boots of the initramfs guest, 1-s cells): two boot groups are the fewest that
split, and each group has a cell that is skipped (a queue count its NIC cannot take), so the
merge is also checked to record each skip exactly once."""
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

# e1000e: 1 TX queue (q2 skipped); vmxnet3 on 2 vCPUs: 2 (q1 skipped); one boot each
WL = workload_toml("shards", {"nic": ["e1000e", "vmxnet3"], "queues": [1, 2], "procs": [1]},
                   workload={"duration_s": 1})


def xb(*args):
    p = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                       cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def test_two_shards_merged_equal_an_unsharded_run(tmp_path):
    wl = tmp_path / "shards.toml"
    wl.write_text(WL)
    xb("run", str(wl), "--results", str(tmp_path / "whole"))
    whole = next((tmp_path / "whole").iterdir())
    for k in (1, 2):
        xb("run", str(wl), "--shard", f"{k}/2", "--results", str(tmp_path / f"s{k}"))
    shard_dirs = [str(next((tmp_path / f"s{k}").iterdir())) for k in (1, 2)]
    # each shard booted one of the two groups
    assert [len(json.loads((Path(d) / "manifest.json").read_text())["boots"]) for d in shard_dirs] == [1, 1]
    xb("merge", *shard_dirs, "--results", str(tmp_path / "merged"))
    merged = next((tmp_path / "merged").iterdir())

    for table in ("cells", "metrics", "locks"):
        a, b = pd.read_parquet(whole / f"{table}.parquet"), pd.read_parquet(merged / f"{table}.parquet")
        assert list(a.columns) == list(b.columns), table
        assert dict(a.dtypes.astype(str)) == dict(b.dtypes.astype(str)), table
    ca, cb = pd.read_parquet(whole / "cells.parquet"), pd.read_parquet(merged / "cells.parquet")
    key = lambda c: sorted(zip(c.cell, c.rep, c.status))
    assert key(ca) == key(cb)
    assert sorted(cb.status) == ["ok", "ok", "skipped", "skipped"]   # e1000e q1, vmxnet3 q2 ran
    ma, mb = pd.read_parquet(whole / "metrics.parquet"), pd.read_parquet(merged / "metrics.parquet")
    assert set(zip(ma.cell, ma.metric)) == set(zip(mb.cell, mb.metric))
    man = json.loads((merged / "manifest.json").read_text())
    assert man["complete"] is True and len(man["merged_from"]) == 2
    assert sorted(tuple(m["shard"]) for m in man["merged_from"]) == [(1, 2), (2, 2)]


def test_merge_refuses_shards_of_different_workloads(tmp_path):
    from harness.errors import InputError
    from harness.results.merge import merge
    runs = REPO / "tests" / "fixtures" / "runs"
    with pytest.raises(InputError, match="workload sha256"):
        merge([runs / "udp-base-a", runs / "default-2rep"], tmp_path)
