"""Linux guest driver: every Linux-specific command the harness runs in a guest.

The contract (shared with the FreeBSD driver): set the TX queue count, start pinned
sender processes, snapshot counters as raw text, start/stop lock statistics, and turn
raw text into samples with pure parsers. Commands are built by pure methods so that
`xmitbench plan` can print exactly what a cell will run.
"""
from __future__ import annotations

import re
import shlex

from harness.vm.faults import SERIAL_FAULTS
from harness.vm.machine import GUEST_DATA_IP, PEER_DATA_IP, PEER_DATA_MAC, lock_visibility_method
from ..parsers import linux as P
from harness.counters.samples import Sample
from harness.vm.stacks import STACKS, VLAN_ID, VXLAN_PORT, VXLAN_VNI
from .contract import BootState, NicSupport
from .base import SECTION, GuestBase, as_stacked, parse_sections, split_sections  # noqa: F401 (re-exported)

IFACE = "xb0"


class LinuxGuest(GuestBase):
    os_name = "linux"
    # virtio_net: virtnet_set_channels (ethtool -L) up to the device's queues=. e1000e:
    # alloc_etherdev() -> one TX queue, no .set_channels. vmxnet3: no .set_channels; the count
    # is rounddown_pow_of_two(min(8, online CPUs)) at probe. igb: igb_set_channels, 8 on 82576.
    NIC_SUPPORT = {
        "virtio-net": NicSupport("virtio_net", 8, runtime_queue_change=True),
        "e1000e": NicSupport("e1000e", 1, runtime_queue_change=False),
        "vmxnet3": NicSupport("vmxnet3", 8, runtime_queue_change=False, pow2_fixed_at_probe=True),
        "igb": NicSupport("igb", 8, runtime_queue_change=True),
    }
    SERIAL_FAULTS = SERIAL_FAULTS["linux"]
    COUNTER_SOURCES = {"tx_queue": "ethtool -S", "interface": "ip -s -j link", "cpu": "/proc/stat"}
    # Analysis metrics a FreeBSD row carries and a Linux row cannot (see FreeBSDGuest.ABSENT_METRICS).
    ABSENT_METRICS = {
        "tx_drops_ring": "a Linux driver does not drop on a full ring: it stops the queue and returns "
                         "NETDEV_TX_BUSY, which the qdisc counts as tx_requeues",
        "tx_ring_stalls": "counted only where the driver exports it (vmxnet3 'ring full'); virtio_net "
                          "and e1000e stop the queue without a counter (tx_restarts counts the wake-ups)",
        "ring_stalls_per_mpkt": "from tx_ring_stalls",
    }
    BOOT_ID_COMMAND = "cat /proc/sys/kernel/random/boot_id"   # changes on every boot

    def __init__(self, shell, tools: dict[str, str], iface: str = IFACE, state: BootState | None = None):
        self.shell, self.tools, self.iface = shell, tools, iface
        self.state = state or BootState()

    @classmethod
    def for_plan(cls, nic: str, state: BootState, image: str | None = None) -> "LinuxGuest":
        from harness.images.guestimage import known_tools, release_of_image
        return cls(None, known_tools(release_of_image(image)), state=state)

    # -- pure command builders (also used by `plan`) ---------------------------------
    def snapshot_command(self, locks: bool | None = None) -> str:
        """The counters read before and after a cell (lock hists once tracing is installed)."""
        locks = self.state.measuring_locks if locks is None else locks
        t, i = self.tools, self.iface
        parts = {
            "ethtool_S": f"{t['ethtool']} -S {i}",
            "tc_qdisc": f"{t['tc']} -s -j qdisc show dev {i}",
            "ip_link": f"{t['ip']} -s -j link show dev {i}",
            "softnet_stat": "cat /proc/net/softnet_stat",
            "interrupts": "cat /proc/interrupts",
            "proc_stat": "cat /proc/stat",
        }
        if self.stack_dev:
            parts["stack_link"] = f"{t['ip']} -s -j link show dev {self.stack_dev}"
        if locks:
            parts.update({f"lock_{name}": f"cat /sys/kernel/tracing/{path}"
                          for name, path in P.LOCK_HIST_READ.items()})
        return "; ".join(f"echo '{SECTION}{k}'; {v} 2>&1" for k, v in parts.items())

    # stacked devices: the guest's device name per kind (addresses in harness/stacks.py)
    STACK_DEVS = {"vlan": "xb0.vlan", "gre": "xbgre", "vxlan": "xbvx"}

    def stack_command(self, stack: str, vlan_id: int = VLAN_ID) -> str | None:
        """Create the stacked device over the data NIC (vlan / gre / vxlan); all are LLTX on
        Linux, so the physical queue's _xmit_lock does the serialising."""
        if stack == "direct":
            return None
        ip, i = self.tools["ip"], self.iface
        dev, s = self.STACK_DEVS[stack], STACKS[stack]
        link = {"vlan": f"{ip} link add link {i} name {dev} type vlan id {vlan_id}",
                "gre": f"{ip} link add {dev} type gre local {GUEST_DATA_IP} remote {PEER_DATA_IP} ttl 64",
                "vxlan": f"{ip} link add {dev} type vxlan id {VXLAN_VNI} dstport {VXLAN_PORT} "
                         f"local {GUEST_DATA_IP} remote {PEER_DATA_IP} dev {i}"}[stack]
        # static neighbour on a VLAN: a VID-0 peer answers untagged on the lower device,
        # where ARP would not resolve for the VLAN device (see DataPlane.stack_peer)
        extra = (f" && {ip} neigh replace {s.peer_ip} lladdr {PEER_DATA_MAC} dev {dev} nud permanent"
                 if stack == "vlan" else "")
        return (f"[ -e /sys/class/net/{dev} ] || {{ {link} && {ip} addr add {s.guest_cidr} dev {dev} && "
                f"{ip} link set {dev} up{extra}; }}")

    def churn_command(self, churn: str, interval_s: int, count: int, queues: int) -> str | None:
        """A bounded reconfiguration loop run beside the senders; prints one uptime stamp per
        event so recovery can be timed against iperf3's intervals."""
        ip, et, i = self.tools["ip"], self.tools["ethtool"], self.iface
        action = {
            "link-flap": f"{ip} link set {i} down; sleep 0.2; {ip} link set {i} up",
            "mtu": f"{ip} link set {i} mtu $([ $((n % 2)) = 1 ] && echo 1400 || echo 1500)",
            "queues": f"{et} -L {i} combined $([ $((n % 2)) = 1 ] && echo 1 || echo {queues})",
        }.get(churn)
        if action is None:
            return None
        # end as the cell began: the queue count too, or ethtool -S would hide a queue's counters
        restore_queues = f"{et} -L {i} combined {queues} 2>/dev/null; " if churn == "queues" else ""
        return (f"( n=0; while [ $n -lt {count} ]; do n=$((n+1)); sleep {interval_s}; "
                f"echo \"churn $n $(cut -d' ' -f1 /proc/uptime)\" >> /tmp/xb/churn.txt; {action}; "
                f"done; {ip} link set {i} mtu 1500; {ip} link set {i} up; {restore_queues}) "
                f"> /tmp/xb/churn.err 2>&1 &")

    def set_queues_command(self, queues: int) -> str:
        return f"{self.tools['ethtool']} -L {self.iface} combined {queues}"

    def tx_queue_count_command(self) -> str:
        return f"ls -d /sys/class/net/{self.iface}/queues/tx-*"

    def sender_command(self, cpu: int, port: int, peer_ip: str, duration_s: int, warmup_s: int,
                       streams: int, proto: str, msg_size: int, udp_bitrate: str, out: str,
                       report_interval: float | None = None) -> str:
        args = [self.tools["iperf3"], "-c", peer_ip, "-p", str(port), "-t", str(duration_s),
                "-O", str(warmup_s), "-P", str(streams), "-J", "--connect-timeout", "5000"]
        if report_interval:
            args += ["-i", str(report_interval)]
        if proto == "udp":
            args += ["-u", "-b", udp_bitrate]
        if msg_size:
            args += ["-l", str(msg_size)]
        return f"taskset -c {cpu} {shlex.join(args)} > {out} 2>&1"

    def senders_script(self, ports: list[int], vcpus: int, peer_ip: str, duration_s: int, warmup_s: int,
                       streams: int, proto: str, msg_size: int, udp_bitrate: str = "0",
                       churn: str | None = None) -> str:
        """All sender processes start together, each pinned to vCPU i % vcpus; wait for all,
        then print each JSON between section markers. `churn` is a background loop to run
        beside them (its event stamps come back as the `churn` section)."""
        lines = ["rm -rf /tmp/xb && mkdir -p /tmp/xb", "echo \"start $(cut -d' ' -f1 /proc/uptime)\" > /tmp/xb/churn.txt"]
        if churn:
            lines.append(churn)
        for i, port in enumerate(ports):
            lines.append(self.sender_command(i % vcpus, port, peer_ip, duration_s, warmup_s, streams,
                                             proto, msg_size, udp_bitrate, f"/tmp/xb/s{i}.json",
                                             0.5 if churn else None) + " &")
        lines.append("wait")
        for i, _ in enumerate(ports):
            lines.append(f"echo '{SECTION}iperf3_{i}'; cat /tmp/xb/s{i}.json")
        if churn:
            lines.append(f"echo '{SECTION}churn'; cat /tmp/xb/churn.txt /tmp/xb/churn.err")
        return "\n".join(lines)

    # (source, native name of the wait total, of the contention count) of the per-cell lock totals
    LOCK_TOTALS = ("lock:contention hist", "xb_lock_wait.wait_ns", "xb_lock_wait.hitcount")

    @staticmethod
    def lock_method(accel: str) -> str:
        return lock_visibility_method(accel)

    def lock_start_script(self) -> str:
        required = [f"echo {shlex.quote(text)} >> /sys/kernel/tracing/{path}" for path, text in P.LOCK_HIST_SETUP]
        optional = [f"echo {shlex.quote(text)} >> /sys/kernel/tracing/{path} 2>/dev/null || true"
                    for path, text in P.LOCK_HIST_SETUP_OPTIONAL]
        return "set -e\n" + "\n".join(required + optional)

    def lock_pause_script(self) -> str:
        return "set -e\n" + "\n".join(f"echo {shlex.quote(text)} >> /sys/kernel/tracing/{path}"
                                        for path, text in P.lock_hist_pause())

    def lock_continue_script(self) -> str:
        return "set -e\n" + "\n".join(f"echo {shlex.quote(text)} >> /sys/kernel/tracing/{path}"
                                        for path, text in P.lock_hist_pause(cont=True))

    LOCK_STAT_METHOD = P.LOCK_STAT_METHOD

    def lock_stat_probe(self) -> bool:
        return self.run("[ -r /proc/lock_stat ] && echo yes || echo no").strip() == "yes"

    def lock_stat_clear_command(self) -> str:
        # kernel.lock_stat is 1 by default on a LOCK_STAT kernel; set it anyway, then clear
        return f"[ ! -e /proc/sys/kernel/lock_stat ] || echo 1 > /proc/sys/kernel/lock_stat; {P.LOCK_STAT_CLEAR}"

    def lock_stat_read_command(self) -> str:
        return "cat /proc/lock_stat"

    def tx_lock_counts(self, lock_rows: list[dict]) -> dict | None:
        ls = [r for r in lock_rows if r["method"] == P.LOCK_STAT_METHOD
              and P.tx_lock_role(r["lock"], r.get("contention_points")) == P.TX_QUEUE_LOCK]
        tp = [r for r in lock_rows if r["method"] != P.LOCK_STAT_METHOD
              and P.tracepoint_tx_lock_role(r["lock"]) == P.TX_QUEUE_LOCK]
        if not any(r["method"] == P.LOCK_STAT_METHOD for r in lock_rows) or \
                not any(r["method"] != P.LOCK_STAT_METHOD for r in lock_rows):
            return None
        return {"lock_stat_contentions": sum(r["contentions"] for r in ls),
                "lock_stat_acquisitions": sum(r["acquisitions"] or 0 for r in ls),
                "lock_stat_classes": sorted(r["lock"] for r in ls),
                "tracepoint_contentions": sum(r["contentions"] for r in tp),
                "tracepoint_locks": sorted({r["lock"] for r in tp})}

    def lock_stop_script(self) -> str:
        return "\n".join(f"echo {shlex.quote(text)} >> /sys/kernel/tracing/{path} 2>/dev/null"
                         for path, text in P.LOCK_HIST_TEARDOWN)

    # -- actions -----------------------------------------------------------------------

    def boot_config_script(self, nic: str, queues: int) -> str | None:
        """Linux changes TX queues at run time (ethtool -L): nothing to set before a reboot."""
        return None

    def setup_data_interface(self, mac: str, address: str) -> None:
        """Name the data NIC xb0 and address it (the initramfs guest's init already did)."""
        ip = self.tools["ip"]
        self.run(f"[ -e /sys/class/net/{self.iface} ] || {{ for d in /sys/class/net/*; do "
                 f"[ \"$(cat $d/address)\" = {mac} ] && {ip} link set ${{d##*/}} down && "
                 f"{ip} link set ${{d##*/}} name {self.iface}; done; "
                 f"{ip} addr add {address} dev {self.iface}; {ip} link set {self.iface} up; }}")


    def inspect_commands(self) -> dict[str, str]:
        """First contact: versions, the data NIC's driver and every counter it exports, what
        lock tracing this kernel offers (tracefs lock events, hist triggers, /proc/lock_stat),
        and the boot settings (kernel command line, the driver's module parameters)."""
        t, i = self.tools, self.iface
        tr = "/sys/kernel/tracing"
        mount_tr = f"[ -d {tr}/events ] || mount -t tracefs nodev {tr}; "
        return {
            "os_release": "cat /etc/os-release",
            "uname": "uname -a",
            "kernel_release": "uname -r",
            "nic_driver_info": f"{t['ethtool']} -i {i}",
            "nic_counters_ethtool_S": f"{t['ethtool']} -S {i}",
            "nic_channels": f"{t['ethtool']} -l {i}",
            "nic_features": f"{t['ethtool']} -k {i}",
            "nic_link_stats": f"{t['ip']} -s -s -j link show dev {i}",
            "nic_tx_queues": self.tx_queue_count_command(),
            "lock_tracefs_events": mount_tr + f"ls {tr}/events/lock/",
            "lock_contention_begin_format": mount_tr + f"cat {tr}/events/lock/contention_begin/format",
            "lock_hist_trigger_files": mount_tr + f"ls -l {tr}/events/lock/contention_begin/ | grep -E 'hist|trigger'",
            "lock_synthetic_events_file": mount_tr + f"ls -l {tr}/synthetic_events",
            "lock_proc_lock_stat": "ls -l /proc/lock_stat && head -5 /proc/lock_stat",
            "kernel_config_lock": "grep -E 'CONFIG_(LOCK_STAT|LOCKDEP|HIST_TRIGGERS|FTRACE|TRACEPOINTS)=' "
                                  "/boot/config-$(uname -r) 2>&1 || zcat /proc/config.gz | "
                                  "grep -E 'CONFIG_(LOCK_STAT|LOCKDEP|HIST_TRIGGERS)='",
            "boot_cmdline": "cat /proc/cmdline",
            "boot_module_parameters": f"d=$({t['ethtool']} -i {i} | sed -n 's/^driver: //p'); "
                                      "for f in /sys/module/$d/parameters/*; do echo \"$f: $(cat $f)\"; done",
            "first_boot_agent": "cloud-init status --wait --long",     # its final state, not "running"
        }

    def inspect_counters(self, raw: dict[str, str], driver: str) -> tuple[list, dict[str, str]]:
        from harness.counters.samples import ETHTOOL_S
        samples = P.parse_ethtool_stats(raw.get("nic_counters_ethtool_S", ""), driver)
        return samples, dict(ETHTOOL_S.get(driver, {}))

    def nic_driver(self) -> str:
        m = re.search(r"^driver:\s*(\S+)", self.run(f"{self.tools['ethtool']} -i {self.iface}"), re.M)
        return m.group(1) if m else "unknown"

    def tx_queue_count(self) -> int:
        """Real TX queues of the device, from sysfs (works for drivers without ethtool -l)."""
        out = self.run(self.tx_queue_count_command())
        return len(out.split())

    def set_queues(self, queues: int) -> None:
        if self.tx_queue_count() == queues:
            return
        self.run(self.set_queues_command(queues))
        got = self.tx_queue_count()
        if got != queues:
            raise RuntimeError(f"asked for {queues} TX queues, device has {got}")

    def snapshot(self) -> dict[str, str]:
        return split_sections(self.run(self.snapshot_command()))

    def lock_stats_enable(self) -> None:
        """Install the lock hist triggers once per boot; cells read them before and after."""
        self.run(self.lock_start_script())
        self.state.lock_tracing = True


    def parse_snapshot(self, raw: dict[str, str], driver: str | None = None) -> list[Sample]:
        parsers = {"ethtool_S": lambda t: P.parse_ethtool_stats(t, driver=driver),
                   "tc_qdisc": P.parse_tc_qdisc_json, "ip_link": P.parse_ip_link_json,
                   "softnet_stat": P.parse_softnet_stat, "interrupts": P.parse_proc_interrupts,
                   "proc_stat": P.parse_proc_stat_cpu,
                   "stack_link": lambda t: as_stacked(P.parse_ip_link_json(t), self.stack_dev or "stacked")}
        return parse_sections(raw, parsers)

    def parse_locks(self, before: dict[str, str], after: dict[str, str], method: str, senders=None):
        waits, stacks = P.lock_hist_delta(
            P.parse_lock_wait_hist(before.get("lock_wait", "")), P.parse_lock_wait_hist(after.get("lock_wait", "")),
            P.parse_lock_stack_hist(before.get("lock_stack", "")), P.parse_lock_stack_hist(after.get("lock_stack", "")))
        records = P.summarize_locks(waits, stacks, method=method) if "lock_wait" in after else []
        if after.get("lock_stat"):     # read after the cell, cleared before it: no delta
            records += P.lock_stat_records(P.parse_lock_stat(after["lock_stat"]))
        return records


    def interval_samples(self, senders: dict[str, str]) -> tuple[list[Sample], str | None]:
        return [], None
