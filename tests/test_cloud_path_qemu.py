"""The cloud-image boot path with a real boot, no download: the Debian guest as a bootable
disk (hybrid ISO) that reads its SSH key from the NoCloud seed, named in a user catalog by
local path (+ sha256). Exercises: user catalog, checksum, per-boot qcow2 overlay (base never
written), seed ISO, boot from disk, root login with the per-run key, data NIC found by MAC.

One boot serves the whole path: the catalog entry without a checksum is refused (nothing
starts), then measured with `--allow-unverified`. A checksum changes nothing after the image
is obtained (the same BootImage boots), so the verified entry is checked where the checksum
acts, in the runner's own prepare step, without a second boot."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from harness.images.guestimage import build_disk_variant, build_linux_deb

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and taps")]


def _entry(name: str, disk: Path, digest: str | None) -> str:
    return (f'[[image]]\nname = "{name}"\nos = "linux"\nrelease = "6.1"\ndefault_user = "root"\n'
            f'path = "{disk}"\n' + (f'sha256 = "{digest}"\n' if digest else "") + 'format = "raw"\n')


def test_verified_disk_image_is_checked_and_recorded_as_verified(tmp_path, monkeypatch):
    """The catalog entry with a sha256 is verified by the step every run takes (prepare_images);
    its info is what the run manifest records under images.<name>."""
    from harness.images.catalog import cache_root
    from harness.run.boot import prepare_images
    from harness.run.host import Host
    disk = build_disk_variant(build_linux_deb(log=lambda *a: None))
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()
    good, bad = (f"xb-disk-{k}-{uuid.uuid4().hex[:8]}" for k in ("ok", "bad"))   # own cache dirs, removed
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(_entry(good, disk, digest) + _entry(bad, disk, "0" * 64))
    monkeypatch.setenv("XMITBENCH_CATALOG", str(catalog))
    try:
        images = prepare_images(Host(), [good, bad], None, False, lambda *a: None)
        assert images[good].verified is True and images[good].is_cloud
        assert images[good].info["verified"] is True and images[good].info["sha256"] == digest
        assert "sha256 mismatch" in str(images[bad]) and not hasattr(images[bad], "verified")
        assert hashlib.sha256(disk.read_bytes()).hexdigest() == digest
    finally:
        for name in (good, bad):
            shutil.rmtree(cache_root() / "images-cloud" / name, ignore_errors=True)


def test_unverified_image_refused_unless_flag_then_boots_through_overlay_and_seed(tmp_path):
    """A catalog image with no checksum: skipped with the reason by default; with
    `run --allow-unverified` it boots from disk (overlay + seed), is measured, and every cell
    row carries image_verified=false."""
    from harness.images.catalog import cache_root
    disk = build_disk_variant(build_linux_deb(log=lambda *a: None))
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()
    name = f"xb-nosum-{uuid.uuid4().hex[:8]}"          # its own cache dir, removed at the end
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(_entry(name, disk, None))
    wl = tmp_path / "nosum.toml"
    wl.write_text('[workload]\nname = "nosum"\nrepetitions = 1\nduration_s = 2\nwarmup_s = 0\nlock_stats = true\n'
                  f'[machine]\nvcpus = 2\nmemory_mib = 512\naccel = "tcg"\nimage = "{name}"\n'
                  '[matrix]\nnic = ["virtio-net"]\nqueues = [1, 2]\nprocs = [2]\n')
    env = {**os.environ, "XMITBENCH_CATALOG": str(catalog), "XMITBENCH_CLOUD_BOOT_TIMEOUT_S": "120"}

    def run(*flags):
        out = tmp_path / ("r" + "".join(flags))
        p = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(wl), "--results", str(out), *flags],
                           capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        rd = next(out.iterdir())
        return p.stdout, rd, pd.read_parquet(rd / "cells.parquet")

    try:
        _, rd, refused = run()
        assert list(refused.status) == ["skipped", "skipped"], refused.reason.tolist()
        assert all("refusing unverified image" in r for r in refused.reason)
        assert refused.image_verified.isna().all()
        assert json.loads((rd / "manifest.json").read_text())["boots"] == []     # nothing started

        out, rd, cells = run("--allow-unverified")
        assert list(cells.status) == ["ok", "ok"], cells.reason.tolist()
        assert cells.image_verified.tolist() == [False, False]
        assert "NOT checksum-verified" in out and "image_verified=false" in out
        man = json.loads((rd / "manifest.json").read_text())
        assert man["images"][name]["verified"] is False and man["images"][name]["sha256"] == digest
        argv = " ".join(man["boots"][0]["argv"])
        assert "-kernel" not in argv and "overlay.qcow2,if=virtio" in argv and "seed.iso" in argv
        serial = (rd / man["boots"][0]["serial_log"]).read_text(errors="replace")
        assert "xmitbench: NoCloud seed on" in serial
        assert hashlib.sha256(disk.read_bytes()).hexdigest() == digest      # the base was never written
        m = pd.read_parquet(rd / "metrics.parquet")
        q2 = m[(m.queues == 2) & (m.source == "ethtool -S") & (m.metric == "tx_packets") & m["queue"].notna()]
        assert set(q2.groupby("queue").value.sum().loc[lambda s: s > 0].index) == {0, 1}
    finally:
        shutil.rmtree(cache_root() / "images-cloud" / name, ignore_errors=True)
