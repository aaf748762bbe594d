"""`images inspect` without a guest: the drivers' inspect commands, the coverage table over
fixture counter outputs (Linux `ethtool -S`, FreeBSD `sysctl dev.vtnet.N`), the bundle written
by capture() from a scripted shell, and the seed the harness's own cloud image gets."""
import json
from pathlib import Path

import pycdlib
import yaml

from harness.guests.base import counter_coverage, counter_pattern
from harness.guests.freebsd import DEFAULT_TOOLS as FREEBSD_TOOLS
from harness.guests.freebsd import FreeBSDGuest
from harness.guests.linux import LinuxGuest
from harness.images.guestimage import DEFAULT_TOOLS as LINUX_TOOLS
from harness.run.inspect import capture, coverage_text

FIX = Path(__file__).parent / "fixtures"


def test_counter_pattern_puts_queue_index_aside():
    assert counter_pattern("tx_queue_12_packets") == "tx_queue_<N>_packets"
    assert counter_pattern("dev.vtnet.1.txq3.opackets") == "dev.vtnet.1.txq<N>.opackets"
    assert counter_pattern("dev.em.0.iflib.txq01.r_drops") == "dev.em.0.iflib.txq<N>.r_drops"
    assert counter_pattern("dev.em.0.queue_tx_1.packets") == "dev.em.0.queue_tx_<N>.packets"
    assert counter_pattern("tx0_kicks") == "tx<N>_kicks" and counter_pattern("rx12_drops") == "rx<N>_drops"
    assert counter_pattern("dev.vtnet.1.tx_defragged") == "dev.vtnet.1.tx_defragged"   # unit stays
    assert counter_pattern("tx_packets") == "tx_packets"


def _rows(guest, raw, driver):
    samples, expected = guest.inspect_counters(raw, driver)
    return {r["native"]: r for r in counter_coverage(samples, expected)}


def test_linux_coverage_virtio_net_fixture():
    # tests/fixtures/linux/ethtool_-S.virtio_net.txt: Linux 6.1 virtio_net, 2 queue pairs
    text = (FIX / "linux" / "ethtool_-S.virtio_net.txt").read_text()
    rows = _rows(LinuxGuest(None, LINUX_TOOLS), {"nic_counters_ethtool_S": text}, "virtio_net")
    assert rows["tx_queue_<N>_packets"] == {"native": "tx_queue_<N>_packets", "metric": "tx_packets",
                                            "status": "mapped", "queues": [0, 1]}
    assert rows["tx_queue_<N>_kicks"]["metric"] == "tx_kicks"
    assert rows["rx_queue_<N>_xdp_tx"]["status"] == "unmapped" and rows["rx_queue_<N>_xdp_tx"]["metric"] is None
    assert not [r for r in rows.values() if r["status"] == "missing"]


def test_linux_coverage_names_expected_counters_the_guest_did_not_print():
    text = "".join(line for line in (FIX / "linux" / "ethtool_-S.e1000e.txt").read_text().splitlines(True)
                   if "tx_restart_queue" not in line)
    rows = _rows(LinuxGuest(None, LINUX_TOOLS), {"nic_counters_ethtool_S": text}, "e1000e")
    assert rows["tx_restart_queue"] == {"native": "tx_restart_queue", "metric": "tx_restarts",
                                        "status": "missing", "queues": []}
    assert rows["tx_packets"]["status"] == "mapped"


def test_freebsd_coverage_vtnet_fixture():
    # tests/fixtures/freebsd/replay_q2_p1.after.sysctl_dev.txt: `sysctl dev.vtnet.1` (generate.py)
    text = (FIX / "freebsd" / "replay_q2_p1.after.sysctl_dev.txt").read_text()
    guest = FreeBSDGuest(None, FREEBSD_TOOLS, iface="vtnet1")
    rows = _rows(guest, {"nic_counters_sysctl_dev": text}, "vtnet")
    assert rows["dev.vtnet.1.txq<N>.opackets"]["status"] == "mapped"
    assert rows["dev.vtnet.1.txq<N>.opackets"]["metric"] == "tx_packets"
    assert rows["dev.vtnet.1.txq<N>.opackets"]["queues"] == [0, 1]
    assert any(r["status"] == "unmapped" for r in rows.values())


def test_inspect_commands_cover_versions_counters_locks_tunables():
    linux = LinuxGuest(None, LINUX_TOOLS).inspect_commands()
    bsd = FreeBSDGuest(None, FREEBSD_TOOLS, iface="vtnet1").inspect_commands()
    for cmds in (linux, bsd):
        assert {"os_release", "kernel_release", "nic_driver_info", "first_boot_agent"} <= set(cmds)
        assert any(k.startswith("lock_") for k in cmds) and any(k.startswith("boot_") for k in cmds)
    assert linux["nic_counters_ethtool_S"] == "/sbin/ethtool -S xb0"
    assert "events/lock/" in linux["lock_tracefs_events"] and "/proc/lock_stat" in linux["lock_proc_lock_stat"]
    assert bsd["nic_counters_sysctl_dev"] == "/sbin/sysctl dev.vtnet.1"
    assert bsd["nic_counters_sysctl_iflib"] == "/sbin/sysctl dev.vtnet.1.iflib"
    assert "fbt::vtnet_txq_mq_start:entry" in bsd["lock_dtrace_vtnet_tx"]
    assert "lockstat" in bsd["lock_dtrace_lockstat_probes"] and bsd["boot_kenv"] == "kenv"
    assert "hw.vtnet" in bsd["boot_hw_vtnet"]


class _ScriptedShell:
    """Answers each inspect command from fixture text; one command fails."""
    def __init__(self, answers):
        self.answers = answers

    def run(self, cmd, timeout=60.0, check=True):
        for needle, out in self.answers.items():
            if needle in cmd:
                return 0, out, ""
        return 127, "", "sh: not found\n"


def test_capture_writes_fixture_shaped_bundle(tmp_path):
    ethtool = (FIX / "linux" / "ethtool_-S.virtio_net.txt").read_text()
    guest = LinuxGuest(_ScriptedShell({"ethtool -S": ethtool, "uname -r": "6.1.0-57-amd64\n"}), LINUX_TOOLS)
    index = capture(guest, "virtio_net", tmp_path / "inspect")
    assert (tmp_path / "inspect" / "nic_counters_ethtool_S.txt").read_text() == ethtool   # as printed
    assert index["commands"]["kernel_release"] == {"command": "uname -r", "exit_status": 0,
                                                   "file": "kernel_release.txt"}
    assert index["commands"]["first_boot_agent"]["exit_status"] == 127
    assert "sh: not found" in (tmp_path / "inspect" / "first_boot_agent.txt").read_text()
    assert index["coverage_counts"]["mapped"] > 0 and index["coverage_counts"]["unmapped"] > 0
    json.dumps(index)
    text = (tmp_path / "inspect" / "coverage.txt").read_text()
    assert text == coverage_text(index["coverage"], "virtio_net")
    assert text.splitlines()[0].startswith("native counters of driver virtio_net: ")
    assert any(line.startswith("mapped    tx_queue_<N>_packets") and "tx_packets" in line for line in text.splitlines())


def _iso_files(path: Path) -> dict[str, str]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = {}
        for c in iso.list_children(rr_path="/"):
            name = c.rock_ridge.name().decode() if c.rock_ridge else ""
            if name not in ("", ".", ".."):
                import io
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
                out[name] = buf.getvalue().decode()
        return out
    finally:
        iso.close()


def test_seed_of_the_built_cloud_image_asks_no_packages_and_dhcp_on_the_management_nic(tmp_path):
    from harness.images.bootimage import BootImage, seed_for
    from harness.vm.machine import MGMT_MAC
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB1s2c3r4e5t6k7e8y9x0 xb"
    own = BootImage("debian-cloud", "linux", disk=tmp_path / "d.qcow2", packages_on_first_boot=False)
    catalog = BootImage("debian-12", "linux", disk=tmp_path / "d.qcow2", seed_user="debian")
    assert own.guest_egress is False and catalog.guest_egress is True
    files = _iso_files(seed_for(own, key, tmp_path / "own.iso"))
    user = yaml.safe_load(files["user-data"])
    assert "packages" not in user and "package_update" not in user
    assert user["ssh_authorized_keys"] == [key] and user["disable_root"] is False
    net = yaml.safe_load(files["network-config"])
    assert net["config"] == [{"type": "physical", "name": "mgmt0", "mac_address": MGMT_MAC,
                              "subnets": [{"type": "dhcp"}]}]
    theirs = yaml.safe_load(_iso_files(seed_for(catalog, key, tmp_path / "cat.iso"))["user-data"])
    assert theirs["packages"] == ["iperf3", "ethtool", "iproute2"] and theirs["users"][0]["name"] == "debian"


def test_a_captured_bundle_is_a_fixture_as_it_is():
    """tests/fixtures/inspect/debian-cloud.virtio-net: `xmitbench images inspect debian-cloud`
    captured under TCG (index.json names the run and date), copied in unchanged. The parsers
    read its raw files and give back the coverage the capture recorded."""
    bundle = FIX / "inspect" / "debian-cloud.virtio-net"
    index = json.loads((bundle / "index.json").read_text())
    raw = {name: (bundle / e["file"]).read_text() for name, e in index["commands"].items()}
    guest = LinuxGuest(None, LINUX_TOOLS)
    assert set(raw) == set(guest.inspect_commands())
    samples, expected = guest.inspect_counters(raw, index["driver"])
    assert counter_coverage(samples, expected) == index["coverage"]
    assert (bundle / "coverage.txt").read_text() == coverage_text(index["coverage"], index["driver"])
    assert "status: done" in raw["first_boot_agent"] and "contention_begin" in raw["lock_tracefs_events"]
