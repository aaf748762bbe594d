"""The guest-driver contract: Linux and FreeBSD drivers answer the same questions the same
way. Pure parts only (command builders and parsers on captured text); the Linux driver's
actions are exercised against a real guest in the QEMU tests."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.guests import driver_class
from harness.guests.freebsd import FreeBSDGuest, queue_tunables
from harness.guests.linux import SECTION, LinuxGuest, split_sections
from harness.counters.samples import delta

FIX = Path(__file__).parent / "fixtures"


def fb(name: str) -> str:
    """A FreeBSD fixture's output without its header (see tests/fixtures/freebsd/generate.py)."""
    return "".join(l for l in (FIX / "freebsd" / name).read_text().splitlines(keepends=True)
                   if not l.startswith("#@ "))
IPERF = (FIX / "linux" / "guest" / "virtio_net_q2" / "iperf3_-J.tcp.json").read_text()


def linux():
    g = LinuxGuest(None, {"ip": "/bin/ip", "tc": "/sbin/tc", "ethtool": "/sbin/ethtool", "iperf3": "/usr/bin/iperf3"})
    raw = lambda n: {"ethtool_S": (FIX / "linux/guest/virtio_net_q2" / n).read_text()}
    return g, raw("ethtool_-S.before.txt"), raw("ethtool_-S.txt")


def freebsd():
    g = FreeBSDGuest(None, iface="vtnet0")
    raw = lambda w: {"sysctl_dev": fb(f"sysctl_dev.vtnet.0.{w}.txt"),
                     "netstat_i": fb(f"netstat_--libxo_json_-i_-d_-b_-I_vtnet0.{w}.json")}
    return g, raw("before"), raw("after")


DRIVERS = {"linux": linux, "freebsd": freebsd}


def tx_per_queue(samples):
    """Per-queue TX packets and bytes by harness.counters.counting's rule (the runner's and analysis')."""
    from harness.counters.counting import queue_table, rows_frame
    q = queue_table(rows_frame(samples))
    return ({int(r.queue): r.tx_packets for r in q.itertuples()},
            {int(r.queue): r.tx_bytes for r in q.itertuples()})
PIN = {"linux": r"taskset -c (\d+) ", "freebsd": r"cpuset -l (\d+) "}


@pytest.mark.parametrize("os_name", DRIVERS)
def test_driver_class_by_os(os_name):
    assert driver_class(os_name).os_name == os_name


@pytest.mark.parametrize("os_name", DRIVERS)
def test_senders_are_pinned_processes_one_port_each(os_name):
    g, _, _ = DRIVERS[os_name]()
    script = g.senders_script([5201, 5202, 5203], 2, "198.18.0.1", 10, 1, 2, "udp", 64, "0")
    senders = [l for l in script.splitlines() if "iperf3" in l and " -c " in l]
    assert len(senders) == 3
    assert [int(re.search(PIN[os_name], l).group(1)) for l in senders] == [0, 1, 0]
    for port, line in zip((5201, 5202, 5203), senders):
        assert f"-p {port}" in line and "-c 198.18.0.1" in line and "-u -b 0" in line and "-l 64" in line
        assert "-P 2" in line and "-t 10" in line and "-O 1" in line and line.endswith("&")
    assert script.count(f"{SECTION}iperf3_") == 3


def test_sender_outputs_in_process_order_past_ten():
    from harness.guests.base import sender_outputs
    raw = {f"iperf3_{i}": str(i) for i in range(12)}
    raw["churn"] = "x"
    assert sender_outputs(raw) == [str(i) for i in range(12)]     # not iperf3_0, _1, _10, _11, _2 ...


@pytest.mark.parametrize("os_name", DRIVERS)
def test_sender_output_parses(os_name):
    g, _, _ = DRIVERS[os_name]()
    raw = split_sections(f"{SECTION}iperf3_0\n{IPERF}\n{SECTION}iperf3_1\n{IPERF}\n")
    res = g.parse_senders(raw)
    assert len(res) == 2 and all(r.error is None and r.sent_bytes > 0 for r in res)


@pytest.mark.parametrize("os_name", DRIVERS)
def test_per_queue_tx_counters_from_snapshots(os_name):
    g, before, after = DRIVERS[os_name]()
    samples = delta(g.parse_snapshot(before), g.parse_snapshot(after))
    per_q_pkts, per_q_bytes = tx_per_queue(samples)
    assert set(per_q_pkts) == {0, 1} and set(per_q_bytes) == {0, 1}
    assert all(v > 0 for v in per_q_pkts.values()) and all(v > 0 for v in per_q_bytes.values())
    for s in samples:      # every sample keeps the tool's own name beside the common one
        assert s.source and s.native_name


def test_freebsd_per_queue_values_are_deltas():
    g, before, after = freebsd()
    per_q_pkts, per_q_bytes = tx_per_queue(delta(g.parse_snapshot(before), g.parse_snapshot(after)))
    assert per_q_pkts == {0: 912741 - 1204, 1: 887203 - 311}
    assert per_q_bytes == {0: 1378201866 - 161890, 1: 1332078646 - 40212}


@pytest.mark.parametrize("os_name", DRIVERS)
def test_lock_records_carry_the_method(os_name):
    g, _, _ = DRIVERS[os_name]()
    if os_name == "linux":
        wait = (FIX / "linux/guest/e1000e/hist_xb_lock_wait.txt").read_text()
        stack = (FIX / "linux/guest/e1000e/hist_contention_begin.txt").read_text()
        recs = g.parse_locks({"lock_wait": "", "lock_stack": ""}, {"lock_wait": wait, "lock_stack": stack}, "m")
        assert all(r.method == "m" for r in recs)
    else:
        recs = g.parse_locks({}, {}, "m", {"lockstat": fb("lockstat_sleep_10.txt")})
        assert all(r.method.startswith("lockstat") for r in recs)
    assert recs and all(r.contentions > 0 and r.wait_ns_total >= 0 for r in recs)


def test_queue_changes_linux_at_run_time_freebsd_by_loader_tunable():
    lg, _, _ = linux()
    assert lg.boot_config_script("virtio-net", 2) is None
    assert lg.set_queues_command(2) == "/sbin/ethtool -L xb0 combined 2"
    fg, _, _ = freebsd()
    script = fg.boot_config_script("virtio-net", 2)
    assert 'hw.vtnet.mq_max_pairs=\\"2\\"' in script or 'hw.vtnet.mq_max_pairs="2"' in script
    assert queue_tunables("virtio-net", 0, 1) == {"hw.vtnet.mq_disable": "1"}
    assert queue_tunables("e1000e", 0, 2) == {"dev.em.0.iflib.override_qs_enable": "1",
                                              "dev.em.0.iflib.override_ntxqs": "2",
                                              "dev.em.0.iflib.override_nrxqs": "2"}


def test_freebsd_lock_tracing_runs_beside_the_senders():
    g, _, _ = freebsd()
    g.state.lock_tracing = True
    script = g.senders_script([5201], 2, "198.18.0.1", 10, 1, 1, "tcp", 0)
    assert "lockstat -C -s 8 sleep 11 > /tmp/xb/lockstat.txt 2>&1 &" in script     # every row (no -D)
    assert "fbt::vtnet_txq_mq_start:return" in script and "tick-11s" in script
    assert f"{SECTION}lockstat" in script and f"{SECTION}dtrace_bufring" in script


class RecordingShell:
    """Stands in for SSH in pure tests: records each command, answers nothing."""
    def __init__(self):
        self.commands: list[str] = []

    def run(self, cmd, timeout=30.0, check=True):
        self.commands.append(cmd)
        return 0, "", ""


@pytest.mark.parametrize("os_name", DRIVERS)
@pytest.mark.parametrize("stack, vid", [("vlan", 100), ("vlan", 0), ("vxlan", 100)])
def test_stacked_device_setup_and_its_counters(os_name, stack, vid):
    from harness.vm.machine import PEER_DATA_MAC
    from harness.vm.stacks import STACKS, VXLAN_PORT, VXLAN_VNI
    g, _, _ = DRIVERS[os_name]()
    g.shell = RecordingShell()
    assert g.setup_stack("direct", vid) is None and g.stack_dev is None and g.shell.commands == []
    cmd = g.setup_stack(stack, vid)
    assert g.shell.commands == [cmd] and g.stack_dev == g.STACK_DEVS[stack]
    assert STACKS[stack].guest_cidr in cmd and g.stack_dev in cmd
    if stack == "vlan" or os_name == "linux":   # FreeBSD's unicast vxlan routes to its remote, no vxlandev
        assert re.search(rf"\b{g.iface}\b", cmd)
    if stack == "vlan":   # the VID the peer chose, and a static neighbour (a VID-0 peer answers untagged)
        assert re.search(rf"\bvlan (id )?{vid}\b", cmd) and PEER_DATA_MAC in cmd and STACKS["vlan"].peer_ip in cmd
    else:
        assert str(VXLAN_VNI) in cmd and str(VXLAN_PORT) in cmd and "198.18.0.1" in cmd and "198.18.0.2" in cmd
    # the snapshot now reads the stacked device too, and its counters stay apart from the NIC's
    snap = g.snapshot_command()
    assert snap.count(g.stack_dev) == 1
    if os_name == "linux":
        text = (FIX / "linux/guest/virtio_net_q2/ip_-s_-j_link_show.json").read_text()
        raw = {"stack_link": text, "ip_link": text}
    else:
        text = fb("netstat_--libxo_json_-i_-d_-b_-I_vtnet0.after.json")
        raw = {"netstat_stack": text.replace('"vtnet0"', f'"{g.stack_dev}"'),
               "netstat_i": text.replace('"vtnet0"', f'"{g.iface}"')}
    samples = g.parse_snapshot(raw)
    stacked = [s for s in samples if s.metric.startswith("stack_")]
    nic = [s for s in samples if not s.metric.startswith("stack_")]
    assert stacked and nic and len(stacked) == len(nic)
    assert {s.source for s in stacked} == {f"{nic[0].source} ({g.stack_dev})"}
    assert "stack_tx_packets" in {s.metric for s in stacked}
    assert not {s.key for s in stacked} & {s.key for s in nic}


@pytest.mark.parametrize("os_name", DRIVERS)
def test_lock_totals_keep_each_kernels_native_names(os_name):
    g, _, _ = DRIVERS[os_name]()
    source, wait_native, count_native = g.LOCK_TOTALS
    assert (source == "lockstat") == (os_name == "freebsd") and wait_native != count_native
    assert ("lockstat" in g.lock_method("tcg")) == (os_name == "freebsd")


class RebootingShell(RecordingShell):
    """Answers the boot-id command with `ids` in turn; `None` = the connection drops."""
    def __init__(self, ids):
        super().__init__()
        self.ids, self.connects, self.detached = list(ids), 0, []

    def run(self, cmd, timeout=30.0, check=True):
        self.commands.append(cmd)
        i = self.ids.pop(0)
        if i is None:
            raise OSError("connection reset")
        return 0, i + "\n", ""

    def run_detached(self, cmd):
        self.detached.append(cmd)

    def connect(self, timeout=30.0):
        self.connects += 1
        return 0.0

    def close(self):
        pass


@pytest.mark.parametrize("os_name", DRIVERS)
def test_reboot_waits_for_a_new_boot_not_the_dying_one(os_name):
    g, _, _ = DRIVERS[os_name]()
    # old boot id; sshd of the dying system still answers once; then drops; then the new boot
    g.shell = RebootingShell(["old", "old", None, "new"])
    g.reboot(timeout=60, poll_s=0, sleep=lambda s: None)
    assert g.shell.detached == ["shutdown -r now"] and g.shell.connects == 3
    assert set(g.shell.commands) == {g.BOOT_ID_COMMAND}
    g.shell = RebootingShell(["old"] + ["old"] * 1000)
    with pytest.raises(RuntimeError, match="did not come back from its reboot"):
        g.reboot(timeout=0.05, poll_s=0.01, sleep=lambda s: __import__("time").sleep(s))


@pytest.mark.parametrize("nic, iface, tree", [("virtio-net", "vtnet1", "dev.vtnet.1"), ("e1000e", "em0", "dev.em.0"),
                                              ("igb", "igb0", "dev.igb.0"), ("vmxnet3", "vmx0", "dev.vmx.0")])
def test_freebsd_interface_naming_snapshot_and_tunables_per_driver(nic, iface, tree):
    # the management NIC is virtio (vtnet0): a vtnet data NIC is unit 1, the others unit 0
    assert FreeBSDGuest.expected_iface(nic) == iface
    g = FreeBSDGuest(None, iface=iface)
    snap = g.snapshot_command()
    assert f"-I {iface}" in snap and f"sysctl {tree}" in snap and "kern.cp_times" in snap
    t = queue_tunables(nic, int(iface[-1]), 2)
    if nic == "virtio-net":
        assert t == {"hw.vtnet.mq_disable": "0", "hw.vtnet.mq_max_pairs": "2"}
    else:   # iflib drivers: per-unit overrides
        assert t == {f"{tree}.iflib.override_qs_enable": "1", f"{tree}.iflib.override_ntxqs": "2",
                     f"{tree}.iflib.override_nrxqs": "2"}
    script = g.boot_config_script(nic, 2)
    assert all(f'{k}="{v}"' in script for k, v in t.items()) and "/boot/loader.conf" in script
