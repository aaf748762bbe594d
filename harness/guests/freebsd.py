"""FreeBSD guest driver: the same contract as the Linux driver, FreeBSD's own tools.

Differences that live only here:
- TX queue counts are loader tunables (vtnet `hw.vtnet.mq_max_pairs`/`mq_disable`; iflib
  drivers `dev.<drv>.<unit>.iflib.override_ntxqs`/`override_nrxqs`/`override_qs_enable`), so
  they are written to /boot/loader.conf and the guest is rebooted: `boot_config_script`.
- Sender processes are pinned with `cpuset -l`.
- Lock contention comes from lockstat(1) run beside the senders for the measured interval,
  and vtnet buf_ring drops (no sysctl counts them) from a DTrace script on
  `vtnet_txq_mq_start` returning ENOBUFS; both print into the sender output.
"""
from __future__ import annotations

import re
import shlex

from harness.vm.faults import SERIAL_FAULTS
from harness.vm.machine import GUEST_DATA_IP, PEER_DATA_IP, PEER_DATA_MAC
from ..parsers import freebsd as F
from harness.counters.samples import Sample
from harness.vm.stacks import STACKS, VLAN_ID, VXLAN_PORT, VXLAN_VNI
from .contract import BootState, NicSupport
from .base import SECTION, GuestBase, as_stacked, parse_sections, split_sections

DEFAULT_TOOLS = {"iperf3": "/usr/local/bin/iperf3", "sysctl": "/sbin/sysctl", "netstat": "/usr/bin/netstat",
                 "ifconfig": "/sbin/ifconfig", "cpuset": "/usr/bin/cpuset", "vmstat": "/usr/bin/vmstat",
                 "lockstat": "/usr/sbin/lockstat", "dtrace": "/usr/sbin/dtrace"}


def queue_tunables(nic: str, unit: int, queues: int) -> dict[str, str]:
    """Loader tunables that give `queues` TX (and RX) queues to the data NIC."""
    drv = FreeBSDGuest.NIC_SUPPORT[nic].driver
    if drv == "vtnet":
        if queues == 1:
            return {"hw.vtnet.mq_disable": "1"}
        return {"hw.vtnet.mq_disable": "0", "hw.vtnet.mq_max_pairs": str(queues)}
    base = f"dev.{drv}.{unit}.iflib"
    return {f"{base}.override_qs_enable": "1", f"{base}.override_ntxqs": str(queues),
            f"{base}.override_nrxqs": str(queues)}


class FreeBSDGuest(GuestBase):
    os_name = "freebsd"
    # Queue counts are loader tunables for every driver here (vtnet hw.vtnet.mq_max_pairs,
    # iflib override_ntxqs): never at run time. em_set_num_queues gives 82574 two queues,
    # 82576 (igb) eight; VMXNET3_MAX_TX_QUEUES is 8.
    NIC_SUPPORT = {
        "virtio-net": NicSupport("vtnet", 8, runtime_queue_change=False),
        "e1000e": NicSupport("em", 2, runtime_queue_change=False),
        "vmxnet3": NicSupport("vmx", 8, runtime_queue_change=False),
        "igb": NicSupport("igb", 8, runtime_queue_change=False),
    }
    SERIAL_FAULTS = SERIAL_FAULTS["freebsd"]
    COUNTER_SOURCES = {"tx_queue": "sysctl", "interface": "netstat -i", "cpu": "kern.cp_times"}
    # Analysis metrics (harness.analysis.load wide table) a Linux row carries and a FreeBSD row
    # cannot: why, from FreeBSD's source. Rendered in the report's kernel-against-kernel section.
    ABSENT_METRICS = {
        "tx_requeues": "no qdisc: if_transmit hands the mbuf straight to the driver (vtnet buf_ring, "
                       "iflib mp_ring); nothing is requeued. A full ring drops instead: tx_drops_ring",
        "requeues_per_mpkt": "from tx_requeues (no qdisc on FreeBSD)",
        "qdisc_drops": "no qdisc (ALTQ aside): ring-full drops are tx_drops_ring (vtnet buf_ring br_drops "
                       "by DTrace on vtnet_txq_mq_start, iflib r_drops)",
        "qdisc_packets": "no qdisc: packets the NIC sent are tx_packets (sysctl dev.<drv>.N.txqM)",
        "tx_restarts": "vtnet never stops a TX queue (a full virtqueue leaves mbufs in the buf_ring; "
                       "txqN.rescheduled counts taskqueue deferrals: metric tx_task_rescheduled); "
                       "iflib drivers (em, igb, vmx) do report r_restarts as tx_restarts",
        "restarts_per_mpkt": "from tx_restarts (none on vtnet)",
        "cpu_softirq_pct": "no softirq CPU state: interrupt and software-interrupt threads count in "
                           "CP_INTR (kern.cp_times), i.e. cpu_irq_pct",
    }

    def __init__(self, shell, tools: dict[str, str] | None = None, iface: str = "vtnet1",
                 state: BootState | None = None):
        self.shell, self.tools, self.iface = shell, {**DEFAULT_TOOLS, **(tools or {})}, iface
        self.state = state or BootState()

    @classmethod
    def for_plan(cls, nic: str, state: BootState, image: str | None = None) -> "FreeBSDGuest":
        return cls(None, None, iface=cls.expected_iface(nic), state=state)

    @staticmethod
    def expected_iface(nic: str) -> str:
        """The data NIC's name when the management NIC is virtio (vtnet0): a guess for `plan`;
        at run time the data NIC is found by its MAC."""
        drv = FreeBSDGuest.NIC_SUPPORT[nic].driver
        return f"{drv}1" if drv == "vtnet" else f"{drv}0"

    # -- pure command builders ------------------------------------------------------------
    @property
    def _drv_unit(self) -> tuple[str, int]:
        m = re.match(r"([a-z]+)(\d+)$", self.iface)
        return (m.group(1), int(m.group(2))) if m else (self.iface, 0)

    def inspect_commands(self) -> dict[str, str]:
        """First contact: versions, the data NIC's driver and its whole sysctl tree (iflib
        nodes included), the lock tools (lockstat, the DTrace providers the harness uses, the
        vtnet transmit function for fbt) and the loader tunables present (kenv, hw.vtnet,
        iflib overrides, loader.conf)."""
        t, i = self.tools, self.iface
        drv, unit = self._drv_unit
        dt = t["dtrace"]
        return {
            "os_release": "freebsd-version -kru; cat /etc/os-release 2>/dev/null",
            "uname": "uname -a",
            "kernel_release": "uname -r",
            "nic_driver_info": f"{t['sysctl']} dev.{drv}.{unit}.%desc dev.{drv}.{unit}.%driver "
                               f"dev.{drv}.{unit}.%pnpinfo; {t['ifconfig']} -m {i}",
            "nic_counters_sysctl_dev": f"{t['sysctl']} dev.{drv}.{unit}",
            "nic_counters_sysctl_iflib": f"{t['sysctl']} dev.{drv}.{unit}.iflib",
            "nic_tx_queues": self.tx_queue_count_command(),
            "lock_lockstat": f"ls -l {t['lockstat']}; kldload -n dtraceall; kldstat | grep -i dtrace",
            "lock_dtrace_providers": f"kldload -n dtraceall; {dt} -l | awk 'NR > 1 {{print $2}}' | sort | uniq -c",
            "lock_dtrace_lockstat_probes": f"kldload -n dtraceall; {dt} -l -P lockstat",
            # one dtrace -l per probe: a description that matches nothing fails the whole call
            "lock_dtrace_vtnet_tx": "kldload -n dtraceall; " + "; ".join(
                f"{dt} -l -n '{probe}'" for probe in ("fbt::vtnet_txq_mq_start:entry", "fbt::vtnet_txq_mq_start:return",
                                                      "fbt::iflib_if_transmit:entry")),
            "boot_kenv": "kenv",
            "boot_hw_vtnet": f"{t['sysctl']} hw.vtnet",
            "boot_iflib_overrides": f"{t['sysctl']} dev.{drv}.{unit}.iflib | grep override",
            "boot_loader_conf": "cat /boot/loader.conf",
            "first_boot_agent": "ls -l /usr/libexec/nuageinit /var/log/nuageinit* 2>&1; "
                                "tail -20 /var/log/nuageinit.log 2>/dev/null",
        }

    def inspect_counters(self, raw: dict[str, str], driver: str) -> tuple[list, dict[str, str]]:
        """The dev.<drv>.<unit> tree (it includes .iflib) and what the parser maps of it."""
        _, unit = self._drv_unit
        samples = F.parse_sysctl(raw.get("nic_counters_sysctl_dev", ""))
        expected: dict[str, str] = {}
        if driver == "vtnet":
            expected.update({f"dev.vtnet.{unit}.txq<N>.{k}": m for k, (m, _) in F.SYSCTL_VTNET_TXQ.items()})
            expected.update({f"dev.vtnet.{unit}.rxq<N>.{k}": m for k, (m, _) in F.SYSCTL_VTNET_RXQ.items()})
            expected.update({f"dev.vtnet.{unit}.{k}": m for k, (m, _) in F.SYSCTL_VTNET.items()})
        else:      # iflib drivers (em, igb, vmx)
            expected.update({f"dev.{driver}.{unit}.iflib.txq<N>.{k}": m for k, (m, _) in F.SYSCTL_IFLIB_TXQ.items()})
        return samples, expected

    def boot_config_script(self, nic: str, queues: int) -> str:
        """Write the queue tunables to loader.conf (idempotent); the caller then reboots."""
        _, unit = self._drv_unit
        lines = [f'{k}="{v}"' for k, v in queue_tunables(nic, unit, queues).items()]
        return ("sed -i '' '/# xmitbench$/d' /boot/loader.conf 2>/dev/null; "
                + "; ".join(f"echo {shlex.quote(l + ' # xmitbench')} >> /boot/loader.conf" for l in lines))

    # stacked devices: the guest's device name per kind (addresses in harness/stacks.py).
    # gre(4) is left out: it needs a tunnel route setup that differs from Linux's (see workload.py)
    STACK_DEVS = {"vlan": "vlan1", "vxlan": "vxlan1"}

    def stack_command(self, stack: str, vlan_id: int = VLAN_ID) -> str | None:
        if stack == "direct":
            return None
        if stack not in self.STACK_DEVS:
            raise RuntimeError(f"stack {stack} is not set up on FreeBSD guests")
        dev, s, ifc = self.STACK_DEVS[stack], STACKS[stack], self.tools["ifconfig"]
        create = {"vlan": f"{ifc} {dev} create vlan {vlan_id} vlandev {self.iface}",
                  "vxlan": f"{ifc} {dev} create vxlanid {VXLAN_VNI} vxlanlocal {GUEST_DATA_IP} "
                           f"vxlanremote {PEER_DATA_IP} vxlanlocalport {VXLAN_PORT} vxlanremoteport {VXLAN_PORT}"}[stack]
        # static ARP on a VLAN, as on Linux: a VID-0 peer answers untagged on the lower device
        arp = f" && arp -S {s.peer_ip} {PEER_DATA_MAC}" if stack == "vlan" else ""
        return f"{ifc} {dev} >/dev/null 2>&1 || {{ {create} && {ifc} {dev} inet {s.guest_cidr} up{arp}; }}"

    def churn_command(self, churn: str, interval_s: int, count: int, queues: int) -> str | None:
        ifc, i = self.tools["ifconfig"], self.iface
        action = {"link-flap": f"{ifc} {i} down; sleep 0.2; {ifc} {i} up",
                  "mtu": f"{ifc} {i} mtu $([ $((n % 2)) = 1 ] && echo 1400 || echo 1500)"}.get(churn)
        if action is None:
            return None
        return (f"( n=0; while [ $n -lt {count} ]; do n=$((n+1)); sleep {interval_s}; "
                f"echo \"churn $n $(date +%s)\" >> /tmp/xb/churn.txt; "
                f"{action}; done; {ifc} {i} mtu 1500 up ) > /tmp/xb/churn.err 2>&1 &")

    def tx_queue_count_command(self) -> str:
        drv, unit = self._drv_unit
        return f"{self.tools['sysctl']} -N dev.{drv}.{unit}"     # txqN nodes, one per TX queue

    def set_queues_command(self, queues: int) -> str:
        return f"# loader tunables + reboot (see boot_config_script); then verify {queues} TX queues"

    def snapshot_command(self, locks: bool | None = None) -> str:
        """lockstat runs beside the senders (senders_script), so `locks` changes nothing here."""
        t, i = self.tools, self.iface
        drv, unit = self._drv_unit
        parts = {
            "netstat_i": f"{t['netstat']} --libxo json -i -d -b -I {i}",
            "netstat_s": f"{t['netstat']} --libxo json -s -f inet",
            "sysctl_dev": f"{t['sysctl']} dev.{drv}.{unit}",
            "vmstat_i": f"{t['vmstat']} -ia",
            "cp_times": f"{t['sysctl']} -n kern.cp_times",
        }
        if self.stack_dev:
            parts["netstat_stack"] = f"{t['netstat']} --libxo json -i -d -b -I {self.stack_dev}"
        return "; ".join(f"echo '{SECTION}{k}'; {v} 2>&1" for k, v in parts.items())

    def senders_script(self, ports: list[int], vcpus: int, peer_ip: str, duration_s: int, warmup_s: int,
                       streams: int, proto: str, msg_size: int, udp_bitrate: str = "0",
                       churn: str | None = None) -> str:
        t = self.tools
        lines = ["rm -rf /tmp/xb && mkdir -p /tmp/xb", "echo \"start $(date +%s)\" > /tmp/xb/churn.txt"]
        if churn:
            lines.append(churn)
        if self.state.measuring_locks:
            span = duration_s + warmup_s
            # lockstat and the buf_ring probe cover the senders' lifetime; both end by themselves
            # every row (no -D: the section totals count all events, a cut would hide some);
            # stderr into the same file: lockstat prints its warnings (DTrace drops, "ran
            # out of data records") before the report, and parse_lockstat reads them
            lines.append(f"{t['lockstat']} -C -s 8 sleep {span} > /tmp/xb/lockstat.txt 2>&1 &")
            if self._drv_unit[0] == "vtnet":
                # a whole D program (pragma, BEGIN/END) goes in a file for -s, not in -n
                lines.append(f"cat > /tmp/xb/bufring.d <<'XB_D_EOF'\n{F.vtnet_bufring_drops_d(span)}XB_D_EOF")
                lines.append(f"{t['dtrace']} -q -s /tmp/xb/bufring.d > /tmp/xb/dtrace_bufring.txt 2>&1 &")
        for i, port in enumerate(ports):
            args = [t["iperf3"], "-c", peer_ip, "-p", str(port), "-t", str(duration_s), "-O", str(warmup_s),
                    "-P", str(streams), "-J", "--connect-timeout", "5000"]
            if proto == "udp":
                args += ["-u", "-b", udp_bitrate]
            if msg_size:
                args += ["-l", str(msg_size)]
            if churn:
                args += ["-i", "0.5"]
            lines.append(f"{t['cpuset']} -l {i % vcpus} {shlex.join(args)} > /tmp/xb/s{i}.json 2>&1 &")
        lines.append("wait")
        for i, _ in enumerate(ports):
            lines.append(f"echo '{SECTION}iperf3_{i}'; cat /tmp/xb/s{i}.json")
        if churn:
            lines.append(f"echo '{SECTION}churn'; cat /tmp/xb/churn.txt /tmp/xb/churn.err")
        if self.state.measuring_locks:
            lines.append(f"echo '{SECTION}lockstat'; cat /tmp/xb/lockstat.txt")
            lines.append(f"echo '{SECTION}dtrace_bufring'; cat /tmp/xb/dtrace_bufring.txt 2>/dev/null")
        return "\n".join(lines)

    BOOT_ID_COMMAND = "sysctl -n kern.boottime"   # "{ sec = ..., usec = ... } <date>": new each boot

    # lockstat(1) rows: Count per (lock, caller) and its mean nsec; totals are sums of Count*nsec
    LOCK_TOTALS = ("lockstat", "sum(Count*nsec)", "sum(Count)")

    @staticmethod
    def lock_method(accel: str) -> str:
        return F.LOCKSTAT_METHOD

    def lock_start_script(self) -> str:
        return "kldload -n dtraceall"

    def lock_pause_script(self) -> None:
        return None     # lockstat and DTrace run inside a traced cell's sender script only

    def lock_continue_script(self) -> None:
        return None

    # -- actions ----------------------------------------------------------------------------

    def setup_data_interface(self, mac: str, address: str) -> None:
        out = self.run(f"{self.tools['ifconfig']} -a ether")
        name = None
        for block in re.split(r"\n(?=\S)", out):
            if mac.lower() in block.lower():
                name = block.split(":", 1)[0]
        if name is None:
            raise RuntimeError(f"no interface with MAC {mac}")
        self.iface = name
        self.run(f"{self.tools['ifconfig']} {name} inet {address} up")


    def nic_driver(self) -> str:
        return self._drv_unit[0]

    def tx_queue_count(self) -> int:
        out = self.run(self.tx_queue_count_command(), check=False)
        found = {int(m.group(1)) for m in re.finditer(r"\.txq(\d+)\.", out)}
        return len(found) or 1

    def set_queues(self, queues: int) -> None:
        got = self.tx_queue_count()
        if got != queues:
            raise RuntimeError(f"{self.iface} has {got} TX queues; FreeBSD sets them by loader tunable at boot")

    def snapshot(self) -> dict[str, str]:
        return split_sections(self.run(self.snapshot_command()))

    def lock_stats_enable(self) -> None:
        self.run(self.lock_start_script(), check=False)
        self.state.lock_tracing = True


    def parse_snapshot(self, raw: dict[str, str], driver: str | None = None) -> list[Sample]:
        parsers = {"netstat_i": lambda t: F.parse_netstat_interface_json(t, self.iface),
                   "netstat_s": F.parse_netstat_stats_json, "sysctl_dev": F.parse_sysctl,
                   "vmstat_i": F.parse_vmstat_i, "cp_times": F.parse_cp_times,
                   "netstat_stack": lambda t: as_stacked(F.parse_netstat_interface_json(t, self.stack_dev),
                                                         self.stack_dev or "stacked")}
        return parse_sections(raw, parsers)

    def parse_locks(self, before: dict[str, str], after: dict[str, str], method: str, senders: dict[str, str] | None = None):
        text = (senders or {}).get("lockstat", "")
        return F.lockstat_to_lock_records(F.parse_lockstat(text).records) if text.strip() else []

    def lock_problems(self, before: dict[str, str], after: dict[str, str], senders=None) -> list[str]:
        """lockstat's warnings, a report it could not read, or rows it did not print. An empty
        capture is complete: lockstat prints nothing when it recorded no event (main exits 0
        before report_stats)."""
        if "lockstat" not in (senders or {}):
            return ["lockstat: no lockstat section in the sender output"]
        return F.parse_lockstat(senders["lockstat"]).problems()

    def interval_samples(self, senders: dict[str, str]) -> tuple[list[Sample], str | None]:
        """Samples measured over the interval itself (not before/after deltas): buf_ring drops,
        and each lockstat section's stated event count and how much of it the rows cover."""
        text = senders.get("dtrace_bufring", "")
        samples, note = F.parse_dtrace_bufring_drops(text) if text.strip() else ([], None)
        if senders.get("lockstat", "").strip():
            samples = samples + F.lockstat_section_samples(F.parse_lockstat(senders["lockstat"]))
        return samples, note
