"""The cloud-image boot path with a real boot, no download: the Debian guest as a bootable
disk (hybrid ISO) that reads its SSH key from the NoCloud seed, named in a user catalog by
local path + sha256. Exercises: user catalog, checksum, per-boot qcow2 overlay (base never
written), seed ISO, boot from disk, root login with the per-run key, data NIC found by MAC."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.images.guestimage import build_disk_variant, build_linux_deb

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and taps")]


def test_disk_image_boots_through_overlay_and_seed(tmp_path):
    disk = build_disk_variant(build_linux_deb(log=lambda *a: None))
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(f'[[image]]\nname = "xb-disk"\nos = "linux"\nrelease = "6.1"\ndefault_user = "root"\n'
                       f'path = "{disk}"\nsha256 = "{digest}"\nformat = "raw"\n')
    wl = tmp_path / "disk.toml"
    wl.write_text('[workload]\nname = "disk"\nrepetitions = 1\nduration_s = 2\nwarmup_s = 0\nlock_stats = true\n'
                  '[machine]\nvcpus = 2\nmemory_mib = 512\naccel = "tcg"\nimage = "xb-disk"\n'
                  '[matrix]\nnic = ["virtio-net"]\nqueues = [1, 2]\nprocs = [2]\n')
    env = {**os.environ, "XMITBENCH_CATALOG": str(catalog), "XMITBENCH_CLOUD_BOOT_TIMEOUT_S": "120"}
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(wl), "--results", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rd = next((tmp_path / "r").iterdir())
    cells = pd.read_parquet(rd / "cells.parquet")
    assert list(cells.status) == ["ok", "ok"], cells.reason.tolist()
    man = json.loads((rd / "manifest.json").read_text())
    argv = " ".join(man["boots"][0]["argv"])
    assert "-kernel" not in argv and "overlay.qcow2,if=virtio" in argv and "seed.iso" in argv
    assert man["images"]["xb-disk"]["verified"] is True and man["images"]["xb-disk"]["sha256"]
    serial = (rd / man["boots"][0]["serial_log"]).read_text(errors="replace")
    assert "xmitbench: NoCloud seed on" in serial
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == digest      # the base was never written
    m = pd.read_parquet(rd / "metrics.parquet")
    q2 = m[(m.queues == 2) & (m.source == "ethtool -S") & (m.metric == "tx_packets") & m["queue"].notna()]
    assert set(q2.groupby("queue").value.sum().loc[lambda s: s > 0].index) == {0, 1}


def test_unverified_image_refused_unless_flag_then_every_row_says_so(tmp_path):
    """A catalog image with no checksum: skipped with the reason by default; with
    `run --allow-unverified` it is measured and every cell row carries image_verified=false."""
    import shutil
    import uuid
    from harness.images.catalog import cache_root
    disk = build_disk_variant(build_linux_deb(log=lambda *a: None))
    name = f"xb-nosum-{uuid.uuid4().hex[:8]}"          # its own cache dir, removed at the end
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(f'[[image]]\nname = "{name}"\nos = "linux"\nrelease = "6.1"\ndefault_user = "root"\n'
                       f'path = "{disk}"\nformat = "raw"\n')
    wl = tmp_path / "nosum.toml"
    wl.write_text('[workload]\nname = "nosum"\nrepetitions = 1\nduration_s = 1\nwarmup_s = 0\n'
                  f'[machine]\nvcpus = 2\nmemory_mib = 512\naccel = "tcg"\nimage = "{name}"\n'
                  '[matrix]\nnic = ["virtio-net"]\nqueues = [1]\nprocs = [1]\n')
    env = {**os.environ, "XMITBENCH_CATALOG": str(catalog), "XMITBENCH_CLOUD_BOOT_TIMEOUT_S": "120"}

    def run(*flags):
        out = tmp_path / ("r" + "".join(flags))
        p = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(wl), "--results", str(out), *flags],
                           capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        return p.stdout, pd.read_parquet(next(out.iterdir()) / "cells.parquet")

    try:
        _, refused = run()
        assert list(refused.status) == ["skipped"] and "refusing unverified image" in refused.reason.iloc[0]
        assert refused.image_verified.isna().all()
        out, cells = run("--allow-unverified")
        assert list(cells.status) == ["ok"], cells.reason.tolist()
        assert cells.image_verified.tolist() == [False]
        assert "NOT checksum-verified" in out and "image_verified=false" in out
    finally:
        shutil.rmtree(cache_root() / "images-cloud" / name, ignore_errors=True)
