"""The harness's own Debian 12 cloud image (mmdebstrap, images/cloudimage.py) booted exactly as
a catalog cloud image boots: per-boot qcow2 overlay, NoCloud seed ISO, its own boot loader,
real cloud-init and systemd, SSH as root. No package installs, so no guest egress.

The image is built once and cached in ~/.cache/xmitbench (a cold build takes minutes; see
image.json build_s); these tests use the cache when it is there."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.images.aptstate import file_sha256

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and taps")]


@pytest.fixture(scope="module")
def cloud_image(prebuilt):
    from harness.images.cloudimage import build_debian_cloud
    disk, manifest = build_debian_cloud(log=lambda *a: None)
    return disk, manifest


def _cli(*args, env=None, timeout=1500):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def cloud_run(cloud_image, tmp_path_factory):
    """ONE boot of the cloud image (74-102 s to SSH under TCG, cloud-init runs) serves both the
    measurement and the inspect bundle: the workload asks for the bundle (`inspect = true`),
    which the run captures as the boot's last step, as `images inspect` does."""
    disk, built = cloud_image
    tmp = tmp_path_factory.mktemp("cloud")
    before = file_sha256(disk)
    wl = tmp / "cloud.toml"
    wl.write_text('[workload]\nname = "cloud"\nrepetitions = 1\nduration_s = 2\nwarmup_s = 0\nlock_stats = true\n'
                  'inspect = true\n'
                  '[machine]\nvcpus = 2\nmemory_mib = 1024\naccel = "tcg"\nimage = "debian-cloud"\n'
                  '[matrix]\nnic = ["virtio-net"]\nqueues = [1, 2]\nprocs = [2]\n')
    p = _cli("run", str(wl), "--results", str(tmp / "r"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return next((tmp / "r").iterdir()), p.stdout, before


def test_debian_cloud_image_boots_with_real_cloud_init_and_measures_two_cells(cloud_image, cloud_run):
    disk, built = cloud_image
    rd, _, before = cloud_run
    assert before == built["sha256"]                       # the recorded sha256 is the file's
    cells = pd.read_parquet(rd / "cells.parquet")
    # both cells measured; a cell judged invalid (e.g. conservation on a slow, loaded boot that
    # moved little data) is re-run within the retry budget, which adds a row, not a failure
    assert cells.cell.nunique() == 2 and set(cells.status) == {"ok"}, cells.reason.tolist()
    man = json.loads((rd / "manifest.json").read_text())
    info = man["images"]["debian-cloud"]
    assert info["image_kind"] == "local cloud image (mmdebstrap, Debian 12)"
    assert info["sha256"] == before and info["build_s"] > 0 and info["cloud_init"]
    assert len(man["boots"]) == 1                          # measured and inspected on one boot
    boot = man["boots"][0]
    argv = " ".join(boot["argv"])
    # booted from disk by its own boot loader, through an overlay, with a seed; no egress
    assert "-kernel" not in argv and "overlay.qcow2,if=virtio" in argv and "seed.iso" in argv
    assert "restrict=on" in argv and boot["guest_egress"] is False
    assert boot["boot_to_ssh_s"] > 0 and "first_boot_over_ssh" not in boot
    serial = (rd / boot["serial_log"]).read_text(errors="replace")
    assert "SYSLINUX" in serial                                   # its boot loader ran
    # real cloud-init: its local and network stages both ran before sshd let us in
    assert "Cloud-init v." in serial and "running 'init-local'" in serial and "running 'init'" in serial
    m = pd.read_parquet(rd / "metrics.parquet")
    q2 = m[(m.queues == 2) & (m.source == "ethtool -S") & (m.metric == "tx_packets") & m["queue"].notna()]
    assert set(q2.groupby("queue").value.sum().loc[lambda s: s > 0].index) == {0, 1}
    assert file_sha256(disk) == before                                # the cached base was never written


def _check_bundle(bundle: Path, image: str) -> dict:
    index = json.loads((bundle / "index.json").read_text())
    assert index["image"] == image and index["driver"] == "virtio_net"
    for name, entry in index["commands"].items():
        assert (bundle / entry["file"]).exists(), name
    # the raw outputs are what the parsers read: fixture-ready
    assert "NIC statistics:" in (bundle / "nic_counters_ethtool_S.txt").read_text()
    assert index["kernel"] in (bundle / "kernel_release.txt").read_text()
    assert "contention_begin" in (bundle / "lock_tracefs_events.txt").read_text()
    rows = {r["native"]: r for r in index["coverage"]}
    assert rows["tx_queue_<N>_packets"]["status"] == "mapped" and rows["tx_queue_<N>_packets"]["metric"] == "tx_packets"
    assert any(r["status"] == "unmapped" for r in index["coverage"])      # e.g. tx_queue_<N>_xdp_tx
    text = (bundle / "coverage.txt").read_text()
    assert "mapped" in text and "tx_queue_<N>_packets" in text
    return index


def test_images_inspect_initramfs_guest(tmp_path):
    p = _cli("images", "inspect", "linux-deb", "--results", str(tmp_path / "r"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "native counters of driver virtio_net" in p.stdout
    rd = next((tmp_path / "r").iterdir())
    index = _check_bundle(rd / "inspect", "linux-deb")
    assert index["commands"]["first_boot_agent"]["exit_status"] != 0      # no cloud-init in the ramdisk


def test_run_with_inspect_writes_the_cloud_image_bundle(cloud_image, cloud_run):
    """`inspect = true`: the run's one boot also wrote the `images inspect` bundle of
    debian-cloud on virtio-net (same capture, same files), listed in the manifest."""
    disk, built = cloud_image
    rd, stdout, _ = cloud_run
    bundle = rd / "inspect" / "debian-cloud.virtio-net"
    index = _check_bundle(bundle, "debian-cloud")
    man = json.loads((rd / "manifest.json").read_text())
    assert man["inspect"]["debian-cloud.virtio-net"]["dir"] == "inspect/debian-cloud.virtio-net"
    assert man["inspect"]["debian-cloud.virtio-net"]["coverage_counts"] == index["coverage_counts"]
    assert index["kernel"] == man["boots"][0]["kernel"] and index["nic"] == "virtio-net"
    assert man["boots"][0]["inspect_s"] > 0          # timed apart: boot_to_ssh_s leaves it out
    assert "inspect bundle inspect/debian-cloud.virtio-net" in stdout
    assert 'VERSION_ID="12"' in (bundle / "os_release.txt").read_text()
    agent = (bundle / "first_boot_agent.txt").read_text()
    assert "status: done" in agent, agent                              # `cloud-init status` over SSH
    assert index["commands"]["first_boot_agent"]["exit_status"] == 0
    assert file_sha256(disk) == built["sha256"]
