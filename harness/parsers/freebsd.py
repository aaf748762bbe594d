"""Pure parsers for FreeBSD guest counters: captured text in, Samples (or records) out.

No I/O here. FreeBSD images cannot be booted on the build machines, so every format below
was read from FreeBSD's own source (freebsd/freebsd-src); each parser names the function
that prints what it reads, and tests/fixtures/freebsd/ reproduces those formats
(tests/fixtures/freebsd/generate.py writes them from the same printf/libxo formats).

Native names are kept whole; ``metric`` is the common vocabulary of harness.counters.samples when
one applies, else a FreeBSD-specific name documented in the tables below (never a Linux
name that means something else).
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass

from harness.counters import samples as S
from harness.parsers.linux import LockRecord
from harness.counters.samples import Sample

__all__ = [
    "parse_netstat_interface_json", "parse_netstat_stats_json", "parse_sysctl",
    "parse_ring_state", "parse_vmstat_i", "virtio_msix_roles", "parse_cp_times",
    "parse_lockstat", "LockstatRecord", "LockstatReport", "LockstatSection", "lockstat_to_lock_records",
    "lockstat_samples", "lockstat_section_samples", "lockstat_event_type",
    "VTNET_BUFRING_DROPS_D", "vtnet_bufring_drops_d", "parse_dtrace_bufring_drops",
]


def _unit(metric: str, native: str, default: str | None = None) -> str:
    if metric in S.METRIC_UNITS:
        return S.METRIC_UNITS[metric]
    return default or S.unit_for(metric, native)


# =======================================================================================
# Name -> (metric, unit) tables, one per source. Names not listed keep metric = native
# name (unit guessed by samples.unit_for). "<N>" stands for the queue index.
# =======================================================================================

# `netstat --libxo json -i -d -b -I <if>`: keys of one "interface" instance
# (usr.bin/netstat/if.c intpr: show_stat(..., "<key>", ...) in this order: received-packets,
# received-errors, dropped-packets (if_iqdrops), [-b] received-bytes, sent-packets,
# send-errors, [-b] sent-bytes, collisions, [-d] dropped-packets AGAIN (if_oqdrops)).
# libxo writes both "dropped-packets" keys into the same object; the second one is given
# the native name "dropped-packets[2]" here (the 2nd occurrence of the key).
NETSTAT_I: dict[str, tuple[str, str]] = {
    "received-packets": ("rx_packets", "packets"),
    "received-errors": ("rx_errors", "packets"),
    "dropped-packets": ("rx_drops", "packets"),          # ifi_iqdrops
    "received-bytes": ("rx_bytes", "bytes"),
    "sent-packets": ("tx_packets", "packets"),
    "send-errors": ("tx_errors", "packets"),
    "sent-bytes": ("tx_bytes", "bytes"),
    "collisions": ("collisions", "count"),
    "dropped-packets[2]": ("tx_drops", "packets"),       # ifi_oqdrops (-d)
    "mtu": ("mtu", "bytes"),
}
NETSTAT_I_GAUGES = {"mtu"}

# `netstat --libxo json -s [-f inet]`: native name "<container>.<key>" (nested containers
# joined with "."), keys from usr.bin/netstat/inet.c tcp_stats / udp_stats / ip_stats.
# Only the output side relevant to TX is mapped; every other key keeps its native name.
NETSTAT_S: dict[str, tuple[str, str]] = {
    "tcp.sent-packets": ("tcp_sent_packets", "packets"),                  # tcps_sndtotal
    "tcp.sent-data-packets": ("tcp_sent_data_packets", "packets"),        # tcps_sndpack
    "tcp.sent-data-bytes": ("tcp_sent_data_bytes", "bytes"),              # tcps_sndbyte
    "tcp.sent-retransmitted-packets": ("tcp_retransmitted_packets", "packets"),
    "tcp.sent-retransmitted-bytes": ("tcp_retransmitted_bytes", "bytes"),
    "tcp.sent-unnecessary-retransmitted-packets": ("tcp_retransmitted_unnecessary",
                                                   "packets"),
    "tcp.retransmit-timeouts": ("tcp_retransmit_timeouts", "count"),      # tcps_rexmttimeo
    "tcp.sack.segment-retransmits": ("tcp_sack_retransmits", "packets"),
    "udp.output-packets": ("udp_sent_datagrams", "packets"),              # udps_opackets
    "ip.sent-packets": ("ip_sent_packets", "packets"),                    # ips_localout
    # ips_odropped, printed "output packets dropped due to no bufs, etc."
    "ip.discard-no-mbufs": ("ip_out_drops_nobufs", "packets"),
    "ip.discard-no-route": ("ip_out_drops_noroute", "packets"),           # ips_noroute
    "ip.sent-fragments": ("ip_out_fragmented", "packets"),                # ips_fragmented
    "ip.fragments-created": ("ip_out_fragments", "packets"),              # ips_ofragments
}
# inet.c tcp_stats: the "TCP connection count by state" container holds current counts
NETSTAT_S_GAUGE_PREFIXES = ("tcp.TCP connection count by state.",)

# `sysctl dev.vtnet.<unit>` per TX queue, native "dev.vtnet.<unit>.txq<N>.<leaf>"
# (sys/dev/virtio/network/if_vtnet.c vtnet_setup_txq_sysctl, node name "txq%d").
# vtxs_opackets/obytes/omcasts are counted in vtnet_txq_eof, i.e. when the host has
# completed the descriptor, not when the packet was queued.
# "rescheduled" (vtxs_rescheduled) is NOT a queue restart: vtnet never stops a queue in
# multiqueue mode (a full virtqueue just leaves mbufs in the buf_ring, drbr_putback). It
# counts vtnet_txq_mq_start_locked giving up after VTNET_NOTIFY_RETRIES passes in which
# vtnet_txq_notify found freshly completed descriptors, and deferring to the queue's
# taskqueue. Its own metric, so it is never compared with Linux tx_restarts.
SYSCTL_VTNET_TXQ: dict[str, tuple[str, str]] = {
    "opackets": ("tx_packets", "packets"),
    "obytes": ("tx_bytes", "bytes"),
    "omcasts": ("tx_mcast_packets", "packets"),
    "csum": ("tx_csum_offloaded", "packets"),
    "tso": ("tx_tso_offloaded", "packets"),
    "rescheduled": ("tx_task_rescheduled", "count"),
}
# vtnet_setup_rxq_sysctl, node "rxq%d"
SYSCTL_VTNET_RXQ: dict[str, tuple[str, str]] = {
    "ipackets": ("rx_packets", "packets"),
    "ibytes": ("rx_bytes", "bytes"),
    "iqdrops": ("rx_drops", "packets"),
    "ierrors": ("rx_errors", "packets"),
}
# vtnet_setup_stat_sysctl, interface level "dev.vtnet.<unit>.<leaf>". All "aborted
# transmit" counters are packets the driver freed (dropped) before the virtqueue.
# Caveat from the source: tx_csum_offloaded, tx_tso_offloaded and tx_task_rescheduled (and
# the rx_* twins) are copied from the per-queue stats ONCE, when the sysctl tree is built
# at attach (vtnet_accum_stats is called there and in vtnet_get_counter only, the latter
# into locals), so they stay at their attach value: use the txqN.* rows instead.
SYSCTL_VTNET: dict[str, tuple[str, str]] = {
    "tx_defragged": ("tx_defragged", "packets"),
    "tx_defrag_failed": ("tx_drops_defrag_failed", "packets"),
    "tx_csum_unknown_ethtype": ("tx_drops_csum_unknown_ethtype", "packets"),
    "tx_csum_proto_mismatch": ("tx_drops_csum_proto_mismatch", "packets"),
    "tx_tso_not_tcp": ("tx_drops_tso_not_tcp", "packets"),
    "tx_tso_without_csum": ("tx_drops_tso_without_csum", "packets"),
    "tx_csum_offloaded": ("tx_csum_offloaded_at_attach", "packets"),
    "tx_tso_offloaded": ("tx_tso_offloaded_at_attach", "packets"),
    "tx_task_rescheduled": ("tx_task_rescheduled_at_attach", "count"),
    "mbuf_alloc_failed": ("rx_mbuf_alloc_failed", "count"),
}

# `sysctl dev.<drv>.<unit>.iflib` per TX queue, native
# "dev.<drv>.<unit>.iflib.txq<NN>.<leaf>" (sys/net/iflib.c iflib_add_device_sysctl_post:
# node "txq%d", "txq%02d" when isc_ntxqsets > 10, "txq%03d" when > 100; the r_* leaves are
# the txq's ifmp_ring counters, sys/net/mp_ring.c).
#  r_enqueues: items (one mbuf chain = one packet, TSO super-frames count once) accepted
#     by ifmp_ring_enqueue from iflib_if_transmit; NOT packets put on the wire.
#  r_drops: ifmp_ring_enqueue found no space: the mbuf is freed and if_transmit returns
#     ENOBUFS; no ifnet counter is bumped, so this is the only record of these drops.
#  r_stalls: the consumer (iflib_txq_drain) made no progress (descriptor ring full) and
#     left the ring STALLED.
#  r_restarts: a STALLED ring was drained again (ifmp_ring_check_drainage).
#  r_starts: a producer found the ring IDLE and became the consumer.
#  r_abdications: the consumer handed the rest to the txq task (tx_abdicate or budget).
SYSCTL_IFLIB_TXQ: dict[str, tuple[str, str]] = {
    "r_enqueues": ("tx_ring_enqueues", "packets"),
    "r_drops": ("tx_drops_ring", "packets"),
    "r_stalls": ("tx_ring_stalls", "count"),
    "r_restarts": ("tx_restarts", "count"),
    "r_starts": ("tx_ring_starts", "count"),
    "r_abdications": ("tx_ring_abdications", "count"),
    "no_desc_avail": ("tx_no_desc_avail", "count"),
    "mbuf_defrag": ("tx_defragged", "packets"),
    "mbuf_defrag_failed": ("tx_drops_defrag_failed", "packets"),
    "txq_processed": ("tx_descs_processed", "count"),
    "txq_cleaned": ("tx_descs_cleaned", "count"),
    "ring_state": ("tx_ring_state", "state"),
}
# Leaves that are levels or settings, not counters (the rest of a sysctl tree is read as
# counters; a setting that did not change has delta 0 either way).
SYSCTL_GAUGE_LEAVES = {
    # iflib
    "txq_pidx", "txq_cidx", "txq_cidx_processed", "txq_in_use", "ring_state",
    "pidx", "cidx", "credits", "buf_size", "rxq_cq_cidx",
    "override_ntxqs", "override_nrxqs", "override_qs_enable", "disable_msix",
    "rx_budget", "tx_abdicate", "core_offset", "separate_txrx",
    "override_ntxds", "override_nrxds",   # strings of numbers ("1024,1024")
    # vtnet
    "max_vq_pairs", "req_vq_pairs", "act_vq_pairs",
    # em/igb (if_em.c em_add_hw_stats): register reads
    "txd_head", "txd_tail", "rxd_head", "rxd_tail", "device_control", "rx_control",
    "fc_high_water", "fc_low_water", "interrupt_rate",
    # generic device
    "%domain",
}

# sys/net/iflib.c mp_ring_state_handler: ring_states[] indexed by the ring's flags word
MP_RING_STATES = {"IDLE": 0, "BUSY": 1, "STALLED": 2, "ABDICATED": 3}

# `sysctl -n kern.cp_times`: CPUSTATES longs per CPU in sys/sys/resource.h order
# (CP_USER 0, CP_NICE 1, CP_SYS 2, CP_INTR 3, CP_IDLE 4), stathz ticks.
CP_TIMES_COLUMNS = ["user", "nice", "sys", "intr", "idle"]
CP_TIMES: dict[str, str] = {
    "user": "cpu_user", "nice": "cpu_nice", "sys": "cpu_system",
    "intr": "cpu_irq",      # FreeBSD has no softirq state: ithreads and swi run in CP_INTR
    "idle": "cpu_idle",
}

# `vmstat -i`: every row is metric irq_count (native name = the interrupt name)
VMSTAT_I = "irq_count"

# lockstat: cddl/contrib/opensolaris/cmd/lockstat/lockstat.c g_event_info[] (index = the
# event number printed by -p; the text is the section title of the normal report).
LOCKSTAT_EVENTS = {
    0: "Adaptive mutex spin", 1: "Adaptive mutex block", 2: "Spin lock spin",
    3: "Thread lock spin", 4: "R/W writer blocked by writer",
    5: "R/W writer blocked by readers", 6: "R/W reader blocked by writer",
    7: "R/W reader blocked by write wanted", 8: "R/W writer spin on writer",
    9: "R/W writer spin on readers", 10: "R/W reader spin on writer",
    11: "R/W reader spin on write wanted", 12: "SX exclusive block",
    13: "SX shared block", 14: "SX exclusive spin", 15: "SX shared spin",
    32: "Adaptive mutex hold", 33: "Spin lock hold", 34: "R/W writer hold",
    35: "R/W reader hold", 36: "SX shared hold", 37: "SX exclusive hold",
    56: "Profiling interrupt", 60: "Recursive lock entry detected",
    61: "Lockstat enter failure", 62: "Lockstat exit failure",
    63: "Lockstat record failure",
}
# LockRecord fields -> metric (as samples.LOCK_HIST for Linux)
LOCKSTAT = {"contentions": "lock_contentions", "wait_ns_total": "lock_wait_ns"}
# ... of a hold section (-H): how long the lock was HELD, not waited for
LOCKSTAT_HOLD = {"holds": "lock_holds", "hold_ns_total": "lock_hold_ns"}
# per section (lockstat_section_samples), FreeBSD-only names: "lockstat_section_events" (the
# count its title states, count) and "lockstat_coverage" (printed rows' events / that, ratio)
LOCKSTAT_METHOD = "lockstat(1): DTrace lockstat provider, contention events (-C)"

# DTrace script below: tagged printa lines -> (native, metric, unit)
DTRACE_BUFRING = {
    "xb_vtnet_mq_start_calls": ("fbt::vtnet_txq_mq_start:entry", "tx_if_transmit_calls",
                                "packets"),
    "xb_vtnet_bufring_drops": ("fbt::vtnet_txq_mq_start:return arg1 == ENOBUFS",
                               "tx_drops_ring", "packets"),
}


# =======================================================================================
# netstat --libxo json -i -d -b -I <if>
# =======================================================================================
class _Pairs(list):
    """A JSON object kept as its (key, value) pairs, duplicates and order included."""


def _loads_pairs(text: str):
    return json.loads(text, object_pairs_hook=_Pairs)


def _get(obj, key, default=None):
    for k, v in obj:
        if k == key:
            return v
    return default


def parse_netstat_interface_json(text: str, ifname: str) -> list[Sample]:
    """`netstat --libxo json -i -d -b -I <if>` (usr.bin/netstat/main.c opens container
    "statistics"; if.c intpr opens list "interface" and one instance per address of the
    interface: the AF_LINK row ``"network":"<Link#N>"`` plus one per inet/inet6 address).

    Only the Link row is used: its counters are the interface's if_data, while an inet row
    carries the per-address counters and omits errors/drops (show_stat prints those only
    for the link layer, as decoration that libxo leaves out of JSON).

    With -d the instance holds two "dropped-packets" keys, first ifi_iqdrops (input) then
    ifi_oqdrops (output); json.loads would keep only the last, so the object is read as a
    list of pairs: the first is native "dropped-packets" -> rx_drops, the second native
    "dropped-packets[2]" -> tx_drops. Without -d the single key is rx_drops. Note that
    neither vtnet's buf_ring drops nor iflib's mp_ring drops reach if_oqdrops (drbr_enqueue
    bumps it only under ALTQ; iflib_if_transmit frees the mbuf and returns ENOBUFS).
    Raises ValueError when the interface has no Link row.
    """
    root = _loads_pairs(text)
    rows = _get(_get(root, "statistics", _Pairs()), "interface", [])
    link = [r for r in rows if _get(r, "name") == ifname
            and str(_get(r, "network", "")).startswith("<Link#")]
    if len(link) != 1:
        raise ValueError(f"netstat -i: expected one <Link#> row for {ifname}, got {len(link)}")
    out = []
    seen: dict[str, int] = defaultdict(int)
    for key, value in link[0]:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue                      # name, flags ("0x..."), network, address
        seen[key] += 1
        native = key if seen[key] == 1 else f"{key}[{seen[key]}]"
        metric, unit = NETSTAT_I.get(native, (native, None))
        kind = "gauge" if native in NETSTAT_I_GAUGES else "counter"
        out.append(Sample("netstat -i", native, metric, float(value),
                          unit or _unit(metric, native), None, kind))
    return out


# =======================================================================================
# netstat --libxo json -s
# =======================================================================================
def _flatten(obj, prefix: str, out: list[tuple[str, object]]):
    """(dotted path, leaf value) of every leaf; a repeated key gets "[2]", "[3]"..."""
    if isinstance(obj, _Pairs):
        seen: dict[str, int] = defaultdict(int)
        for key, value in obj:
            seen[key] += 1
            name = key if seen[key] == 1 else f"{key}[{seen[key]}]"
            if isinstance(value, (_Pairs, list)):
                _flatten(value, f"{prefix}{name}.", out)
            else:
                out.append((f"{prefix}{name}", value))
    else:
        # a list of instances (icmp "output-histogram": [{"name":..., "count":...}]):
        # an instance is named by its "name" key, else by its position
        for i, inst in enumerate(obj):
            if isinstance(inst, _Pairs):
                _flatten(inst, f"{prefix}{_get(inst, 'name', i)}.", out)
            elif isinstance(inst, list):
                _flatten(inst, f"{prefix}{i}.", out)
            else:
                out.append((f"{prefix}{i}", inst))


def parse_netstat_stats_json(text: str) -> list[Sample]:
    """`netstat --libxo json -s` (or `-s -f inet`, which leaves out the ip6/icmp6/rip6
    containers): main.c opens container "statistics", then each protocol's *_stats()
    (usr.bin/netstat/inet.c) opens a container named after it ("tcp", "udp", "ip", "icmp",
    "igmp", "arp", ...; protocols whose stats sysctl is absent print nothing). tcp_stats
    nests "syncache", "hostcache", "sack", "ecn", "tcp-signature", "pmtud" and
    "TCP connection count by state".

    Every numeric leaf becomes a Sample with native name "<container>.<key>" (nested
    containers joined by "."; list instances named by their "name" key, e.g.
    "icmp.output-histogram.destination unreachable.count"). All are counters except the
    TCP connection counts by state (gauges). Mapped names: NETSTAT_S.
    """
    root = _loads_pairs(text)
    stats = _get(root, "statistics")
    if stats is None:
        raise ValueError("netstat -s: no 'statistics' container")
    leaves: list[tuple[str, object]] = []
    _flatten(stats, "", leaves)
    out = []
    for native, value in leaves:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue                      # e.g. icmp "icmp-address-responses":"disabled"
        metric, unit = NETSTAT_S.get(native, (native, None))
        kind = "gauge" if native.startswith(NETSTAT_S_GAUGE_PREFIXES) else "counter"
        out.append(Sample("netstat -s", native, metric, float(value),
                          unit or _unit(metric, native), None, kind))
    return out


# =======================================================================================
# sysctl dev.vtnet.N dev.em.N.iflib ...
# =======================================================================================
_VTNET_Q = re.compile(r"^dev\.vtnet\.\d+\.(txq|rxq)(\d+)\.([^.]+)$")
_VTNET_TOP = re.compile(r"^dev\.vtnet\.\d+\.([^.]+)$")
_IFLIB_Q = re.compile(r"^dev\.[a-z][a-z0-9_]*\.\d+\.iflib\.(txq|rxq)(\d+)\.(.+)$")
_OTHER_Q = re.compile(r"\.queue_(tx|rx)_(\d+)\.")        # em/igb em_add_hw_stats nodes
_INT = re.compile(r"^-?\d+$")
_RING_STATE = re.compile(r"pidx_head: (-?\d+) pidx_tail: (-?\d+) cidx: (-?\d+) state: (\w+)")


def parse_ring_state(value: str) -> dict[str, object] | None:
    """iflib txq ``ring_state`` string (sys/net/iflib.c mp_ring_state_handler:
    "pidx_head: %04hd pidx_tail: %04hd cidx: %04hd state: %s", %hd of uint16 indexes, so
    an index above 32767 prints negative and is taken modulo 65536 here).
    -> {"pidx_head", "pidx_tail", "cidx", "state", "state_code"} or None."""
    m = _RING_STATE.search(value)
    if not m:
        return None
    head, tail, cidx = (int(x) % 65536 for x in m.groups()[:3])
    return {"pidx_head": head, "pidx_tail": tail, "cidx": cidx, "state": m[4],
            "state_code": MP_RING_STATES.get(m[4])}


def parse_sysctl(text: str) -> list[Sample]:
    """Plain `sysctl <node> ...` output (sbin/sysctl/sysctl.c show_var: "name: value", one
    line per leaf as sysctl_all walks the tree; numbers printed %jd/%ju; strings verbatim,
    possibly empty). Non-numeric values are skipped except iflib ``ring_state``.

    Queue index (Sample.queue) from the node name: vtnet ``txq<N>``/``rxq<N>``, iflib
    ``iflib.txq<NN>``/``iflib.rxq<NN>`` (zero-padded past 10 queues, read as an int), em/
    igb ``queue_tx_<N>``/``queue_rx_<N>``. Tables: SYSCTL_VTNET_TXQ / _RXQ (vtnet queues),
    SYSCTL_VTNET (vtnet interface level), SYSCTL_IFLIB_TXQ (iflib TX queues). RX-queue
    leaves of iflib and all other names keep metric = native name. Leaves listed in
    SYSCTL_GAUGE_LEAVES are gauges, the rest counters.

    ``ring_state`` becomes a gauge whose value is the state code (IDLE 0, BUSY 1,
    STALLED 2, ABDICATED 3, NaN for UNKNOWN); parse_ring_state gives the indexes.
    """
    out = []
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        name = name.strip()
        if not sep or not name or " " in name:
            continue
        value = value.strip()
        leaf = name.rsplit(".", 1)[-1]
        queue = None
        metric, unit = name, None
        m = _VTNET_Q.match(name)
        if m:
            queue = int(m[2])
            table = SYSCTL_VTNET_TXQ if m[1] == "txq" else SYSCTL_VTNET_RXQ
            metric, unit = table.get(m[3], (name, None))
        elif (m := _IFLIB_Q.match(name)):
            queue = int(m[2])
            if m[1] == "txq":
                metric, unit = SYSCTL_IFLIB_TXQ.get(m[3], (name, None))
        elif (m := _VTNET_TOP.match(name)):
            metric, unit = SYSCTL_VTNET.get(m[1], (name, None))
        elif (m := _OTHER_Q.search(name)):
            queue = int(m[2])

        if leaf == "ring_state":
            state = parse_ring_state(value)
            if state is None:
                continue
            code = state["state_code"]
            out.append(Sample("sysctl", name, metric, math.nan if code is None else float(code),
                              unit or "state", queue, "gauge"))
            continue
        if not _INT.match(value):
            continue
        kind = "gauge" if leaf in SYSCTL_GAUGE_LEAVES else "counter"
        out.append(Sample("sysctl", name, metric, float(int(value)),
                          unit or _unit(metric, name), queue, kind))
    return out


# =======================================================================================
# vmstat -i
# =======================================================================================
_VMSTAT_ROW = re.compile(r"^(?P<name>.*?\S)\s+(?P<total>\d+)\s+(?P<rate>\d+)\s*$")
_IRQ_QUEUE = re.compile(r":[rt]xq(\d+)$")
_IRQ_NUM = re.compile(r"^irq(\d+):")


def parse_vmstat_i(text: str) -> list[Sample]:
    """`vmstat -i` / `vmstat -ia` (usr.bin/vmstat/vmstat.c dointr/print_intrcnts: header
    "%-*s %20s %10s", rows "%-*s %20lu %10lu", then "Total"). Names come from hw.intrnames,
    which x86 fills with intrcnt_setname "%-*s" of MAXCOMLEN (19): every name is padded or
    cut to 19 characters ("irq264: virtio_pci10" would print as "irq264: virtio_pci1").
    A name is the interrupt event's "irq<N>:" plus its handlers (kern_intr.c
    intr_event_update), a handler being the device nameunit plus ":<descr>" when the driver
    called bus_describe_intr.

    Samples: native name = the stripped name, metric irq_count (counter). The "rate"
    column (average since boot, or over the -w interval) is also kept, as a gauge of
    source "vmstat -i rate"; the Total row is native "Total". queue is set for iflib
    queue vectors ("em0:rxq1", "vmx0:rxq0" from iflib_irq_alloc_generic; their "txqN" are
    softirqs with no interrupt row). virtio_pci registers every MSI-X vector without a
    description, all rows named "irq<N>: virtio_pci<M>": see virtio_msix_roles.
    """
    out = []
    for line in text.splitlines():
        m = _VMSTAT_ROW.match(line)
        if not m:
            continue                      # header ("interrupt  total  rate") or blank
        name = m["name"].strip()
        q = _IRQ_QUEUE.search(name)
        queue = int(q[1]) if q else None
        out.append(Sample("vmstat -i", name, VMSTAT_I, float(m["total"]), "count", queue))
        out.append(Sample("vmstat -i rate", name, "irq_rate", float(m["rate"]), "1/s",
                          queue, "gauge"))
    return out


def virtio_msix_roles(samples: list[Sample], device: str) -> dict[str, tuple[str, int | None]]:
    """Role of each MSI-X vector of one virtio_pci device in `vmstat -ia` rows, by IRQ
    order: {native name: ("config", None) | ("rx", q) | ("tx", q)}.

    From the source: vtpci_alloc_intr_resources allocates rid 1 for the config-change
    interrupt and rids 2.. for the virtqueues that have a handler, in virtqueue order;
    vtnet_alloc_virtqueues lists rx0, tx0, rx1, tx1, ... (the control virtqueue and unused
    pairs have no handler). Only valid with per-VQ MSI-X (not shared MSI-X, MSI or INTx),
    with every vector of the device present (use `vmstat -ia`: -i hides zero rows, and the
    config vector is usually 0), and assuming IRQ numbers were handed out in rid order
    (msi.c allocates them one by one at pci_alloc_msix). Returns {} when the row count
    does not fit 1 + 2*pairs.
    """
    rows = sorted({s.native_name for s in samples if s.source == "vmstat -i"
                   and s.native_name.endswith(f" {device}") and _IRQ_NUM.match(s.native_name)},
                  key=lambda n: int(_IRQ_NUM.match(n)[1]))
    if len(rows) < 3 or len(rows) % 2 == 0:
        return {}
    roles: dict[str, tuple[str, int | None]] = {rows[0]: ("config", None)}
    for i, name in enumerate(rows[1:]):
        roles[name] = ("rx" if i % 2 == 0 else "tx", i // 2)
    return roles


# =======================================================================================
# sysctl -n kern.cp_times
# =======================================================================================
def parse_cp_times(text: str, ncpu: int | None = None) -> list[Sample]:
    """`sysctl -n kern.cp_times` (sys/kern/kern_clock.c sysctl_kern_cp_times: CPUSTATES
    longs for each CPU 0..mp_maxid, zeros for absent CPUs; sysctl prints them " "-separated).
    A leading "kern.cp_times: " (no -n) is accepted. Per CPU (queue = CPU index) and the
    all-CPU sum (queue None), native names user/nice/sys/intr/idle, unit "ticks" (stathz
    ticks, not USER_HZ jiffies). ``ncpu`` keeps only the first ncpu CPUs (drops absent
    ones past mp_ncpus); ValueError when fewer are present or the count is not a multiple
    of 5.
    """
    body = text.split(":", 1)[1] if ":" in text else text
    values = [int(v) for v in body.split()]
    n = len(CP_TIMES_COLUMNS)
    if not values or len(values) % n:
        raise ValueError(f"kern.cp_times: {len(values)} values, not a multiple of {n}")
    cpus = len(values) // n
    if ncpu is not None:
        if ncpu > cpus:
            raise ValueError(f"kern.cp_times: {cpus} CPUs, expected {ncpu}")
        cpus = ncpu
    out = []
    totals = [0] * n
    for cpu in range(cpus):
        for i, name in enumerate(CP_TIMES_COLUMNS):
            v = values[cpu * n + i]
            totals[i] += v
            out.append(Sample("kern.cp_times", name, CP_TIMES[name], float(v), "ticks", cpu))
    for i, name in enumerate(CP_TIMES_COLUMNS):
        out.append(Sample("kern.cp_times", name, CP_TIMES[name], float(totals[i]), "ticks"))
    return out


# =======================================================================================
# lockstat
# =======================================================================================
def lockstat_event_type(event: int) -> str:
    """g_event_info[event].ev_type: 'C' contention (0-31), 'H' hold (32-55), 'I' profiling
    interrupt (56-59), 'E' error (60-63)."""
    return "C" if event < 32 else "H" if event < 56 else "I" if event < 60 else "E"


# what an event type's nsec column measures; only C is a lock wait and only H a hold
LOCKSTAT_QUANTITY = {"C": "wait", "H": "hold", "I": "interrupt", "E": "error"}
_EVENT_OF_TITLE = {desc: ev for ev, desc in LOCKSTAT_EVENTS.items()}
_UNKNOWN_TITLE = re.compile(r"^Unknown event \(type (\d+)\)$")


def _event_of_title(title: str) -> int | None:
    if title in _EVENT_OF_TITLE:
        return _EVENT_OF_TITLE[title]
    m = _UNKNOWN_TITLE.match(title)
    return int(m[1]) if m else None


@dataclass(frozen=True)
class LockstatRecord:
    """One lockstat row. ``nsec`` is what the report prints: the AVERAGE event duration,
    ls_time / ls_count in integer division (report_stats); ``total_ns`` is ls_time itself
    when known (-p prints it), else count * nsec (low by less than count ns). ``rcnt`` is
    ls_refcnt / ls_count: lsrec_fill never sets ls_refcnt, so it prints as 0.00.
    ``event`` is the event number (-p only)."""
    section: str              # event description, e.g. "Adaptive mutex spin"
    event: int | None
    count: int
    nsec: int | None          # average ns per event (None with -b)
    total_ns: int | None
    lock: str
    caller: str               # as printed: "vtnet_txq_tq_deferred+0x2d"
    rcnt: float

    @property
    def quantity(self) -> str:
        """"wait" (contention events), "hold" (-H: time the lock was held, not waited for),
        "interrupt", "error", or "unknown" for a title lockstat.c does not print."""
        ev = self.event if self.event is not None else _event_of_title(self.section)
        return LOCKSTAT_QUANTITY[lockstat_event_type(ev)] if ev is not None else "unknown"


@dataclass
class LockstatSection:
    """One event type's report: the header's event count covers EVERY record of that type
    (main: ev_count[] summed over all records before report_stats prints any), the rows
    only those printed (-D n prints the top n)."""
    title: str
    events: int
    seconds: float
    rows: int = 0             # rows printed under the title
    printed: int = 0          # their counts, summed

    @property
    def coverage(self) -> float | None:
        """Printed rows' events / the section's events (1.0: nothing was cut)."""
        return self.printed / self.events if self.events else None


@dataclass
class LockstatReport:
    """What one lockstat capture says, and what makes its numbers incomplete."""
    records: list[LockstatRecord]
    sections: list[LockstatSection]
    warnings: list[str]       # lockstat's own "lockstat: warning: ..." lines (stderr)
    errors: list[str]         # what could not be read as a report (see parse_lockstat)

    def problems(self) -> list[str]:
        """Why the lock numbers of this capture are incomplete (empty: complete). Each reason
        is one line that names its cause; they reach the locks rows and cells.validity."""
        out = list(self.warnings) + list(self.errors)
        for s in self.sections:
            cov = s.coverage
            if cov is not None and s.printed != s.events:
                out.append(f"lockstat {s.title}: printed rows hold {s.printed} of the section's {s.events} "
                           f"events ({cov:.0%}); the rest were not printed (-D)")
        others = sorted({r.section for r in self.records if r.quantity not in ("wait", "hold")})
        for title in others:
            out.append(f"lockstat {title}: events that are neither lock waits nor holds, not counted")
        return out


_LS_SECTION = re.compile(
    r"^(?P<desc>.+): (?P<events>\d+) events in (?P<secs>[\d.]+) seconds \((?P<rate>\d+) events/sec\)$")
# -D 0: "%20llu %s" = the section's count and title only, no rows
_LS_TOTAL_ONLY = re.compile(r"^\s*(?P<events>\d+) (?P<desc>\S.*)$")
# report_stats: "%5llu " count, "%3.0f%% " percent, "%3.0f%% " cumulative (or "---- " with
# -g), "%4.2f %8s " rcnt and avg, "%-22s " lock, "%-24s\n" caller. Lock names (FreeBSD:
# stringof(lo_name)) may contain spaces; callers (symbol+0xoff or 0xaddr) do not.
_LS_ROW = re.compile(
    r"^\s*(?P<count>\d+)\s+(?P<pct>\d+)%\s+(?:(?P<cuml>\d+)%|----)\s+(?P<rcnt>\d+\.\d+)"
    r" (?P<nsec>[ \d]{8,}?) (?P<rest>.*\S)\s*$")
_LS_P_FLOAT = re.compile(r"^\d+\.\d{6}$")
# report_stats' own layout lines: the 79 dashes and the column header ("Count"/"ops/s" -R,
# "indv"/"genr" -g)
_LS_LAYOUT = re.compile(r"^-{79}$|^\s*(Count|ops/s) (indv|genr) cuml rcnt ")


def parse_lockstat(text: str) -> LockstatReport:
    """`lockstat [-p] <command>` reports (cddl/contrib/opensolaris/cmd/lockstat/lockstat.c
    report_stats), FreeBSD's version: the lock column is the lock's name
    (dprog_addevent aggregates on stringof(args[0]->lock_object.lo_name), e.g. "vtnet0-tx0"
    from if_vtnet.c vtnet_init_txq "%s-tx%d"), the caller is format_symbol() of the PC.

    Normal form: per event type "\\n<Event>: <n> events in <s> seconds (<r> events/sec)\\n\\n",
    a header "Count indv cuml rcnt     nsec Lock ... Caller", a line of 79 dashes, rows, and
    79 dashes. With -h/-s every row gets its own dashes and header and is followed by a time
    histogram and stack lines; those lines are skipped. -R (ops/s instead of counts) and -b
    (no nsec) are read as rows (-b rows have no nsec).

    -p form: rows "%u %u %s %s %f %llu" = event number, count, lock, caller, rcnt, and
    ls_time, the TOTAL duration (not the average); more fields follow with -h/-s and are
    ignored. The section is LOCKSTAT_EVENTS[event]; -p prints no section header.

    Every row is kept; each section keeps the header's event count, so a report cut by -D
    shows its coverage (LockstatSection.coverage). The capture holds lockstat's stderr too
    (2>&1): "lockstat: warning: ..." lines (main/drophandler: DTrace drops, "ran out of data
    records (use -n for more)", the command's exit code or signal) are kept as warnings,
    other "lockstat: ..." lines (fail/dfail: lockstat exited 2) as errors. Before the first
    section title every line must be a -p row: a report row there (its title is missing) or
    any other text (e.g. a shell error) is an error, never read as "no contention".
    """
    records: list[LockstatRecord] = []
    sections: list[LockstatSection] = []
    warnings: list[str] = []
    errors: list[str] = []
    orphan_rows, stray = 0, []
    section: LockstatSection | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("lockstat: "):
            (warnings if line.startswith("lockstat: warning: ") else errors).append(line.strip())
            continue
        m = _LS_SECTION.match(line)
        if m:
            section = LockstatSection(m["desc"], int(m["events"]), float(m["secs"]))
            sections.append(section)
            continue
        m = _LS_ROW.match(line)
        if m:
            if section is None:
                orphan_rows += 1
                continue
            lock, caller = m["rest"].rsplit(None, 1) if " " in m["rest"] else ("", m["rest"])
            count = int(m["count"])
            nsec_s = m["nsec"].strip()
            nsec = int(nsec_s) if nsec_s else None
            records.append(LockstatRecord(section.title, None, count, nsec,
                                          count * nsec if nsec is not None else None,
                                          lock.rstrip(), caller, float(m["rcnt"])))
            section.rows += 1
            section.printed += count
            continue
        rec = _parse_lockstat_p(line)
        if rec is not None:
            records.append(rec)
            continue
        m = _LS_TOTAL_ONLY.match(line)
        if m and _event_of_title(m["desc"].strip()) is not None:
            sections.append(LockstatSection(m["desc"].strip(), int(m["events"]), 0.0))
            continue
        if section is None and not _LS_LAYOUT.match(line):
            stray.append(line.strip())
    if orphan_rows:
        errors.append(f"lockstat: {orphan_rows} row(s) before any section title, not counted "
                      "(the report's start is missing)")
    if stray:
        errors.append(f"lockstat: {len(stray)} line(s) that are not lockstat's report before any "
                      f"section title, first: {stray[0][:120]!r}")
    return LockstatReport(records, sections, warnings, errors)


def _parse_lockstat_p(line: str) -> LockstatRecord | None:
    f = line.split(" ")
    if len(f) < 5 or not f[0].isdigit() or not f[1].isdigit():
        return None
    # lock names may contain spaces: rcnt ("%f", 6 decimals) follows the caller
    idx = next((i for i in range(4, len(f)) if _LS_P_FLOAT.match(f[i])), None)
    if idx is None:
        return None
    event, count = int(f[0]), int(f[1])
    lock, caller = " ".join(f[2:idx - 1]), f[idx - 1]
    total = int(f[idx + 1]) if len(f) > idx + 1 and f[idx + 1].isdigit() else None
    nsec = total // count if total is not None and count else None
    return LockstatRecord(LOCKSTAT_EVENTS.get(event, f"Unknown event (type {event})"), event, count, nsec,
                          total, lock, caller, float(f[idx]))


def _caller_function(caller: str) -> str:
    """"vtnet_txq_tq_deferred+0x2d" -> "vtnet_txq_tq_deferred"; "0xffff..." kept."""
    return caller.split("+", 1)[0]


def lockstat_to_lock_records(records: list[LockstatRecord],
                             method: str = LOCKSTAT_METHOD) -> list[LockRecord]:
    """LockstatRecords as the LockRecord shape Linux uses (harness.parsers.linux):
    lock = lock name, caller = function without offset, kind = lockstat event
    ("Adaptive mutex spin", ...). A contention section (a wait) gives contentions = count and
    wait_ns_total = total ns (exact with -p, count x average otherwise); a hold section (-H)
    gives holds = count and hold_ns_total, with no contention and no wait. wait_ns_max None
    (lockstat has no maximum; -h gives a histogram). Interrupt and error sections are not
    lock numbers (LockstatReport.problems names them). Rows that only differ by caller
    offset (or by stack, with -s) are added up. Busiest first.
    Spin and block events of one lock stay separate kinds: an adaptive mutex waiter may
    spin and then block, so the two counts can overlap in time but are distinct events.
    """
    merged: dict[tuple[str, str, str], list] = {}
    for r in records:
        q = r.quantity
        if q not in ("wait", "hold"):
            continue
        key = (r.lock, _caller_function(r.caller), r.section)
        acc = merged.setdefault(key, [q, 0, 0])
        acc[1] += r.count
        acc[2] += r.total_ns or 0
    out = [LockRecord(lock, caller, kind, c, w, None, method) if q == "wait" else
           LockRecord(lock, caller, kind, 0, 0, None, method, holds=c, hold_ns_total=w)
           for (lock, caller, kind), (q, c, w) in merged.items()]
    return sorted(out, key=lambda r: (-r.wait_ns_total, -r.contentions, -(r.hold_ns_total or 0), r.lock))


def lockstat_section_samples(report: LockstatReport) -> list[Sample]:
    """Per section of a lockstat report: the event count its title states (every record of
    that event type, printed or not) and the share of it the printed rows hold, so the run
    dir shows how much of each section the lock rows cover. Gauges over the interval."""
    out = []
    for sec in report.sections:
        out.append(Sample("lockstat", f"{sec.title}: events", "lockstat_section_events", float(sec.events),
                          "count", kind="gauge"))
        if sec.coverage is not None:
            out.append(Sample("lockstat", f"{sec.title}: printed rows' events / events", "lockstat_coverage",
                              sec.coverage, "ratio", kind="gauge"))
    return out


def lockstat_samples(records: list[LockRecord]) -> list[Sample]:
    """LockRecords as Samples, native name "<lock> | <caller> | <kind>: <field>". lockstat
    reports one interval, so values are final (gauges), like iperf3 results. Hold rows give
    lock_holds / lock_hold_ns, never lock_wait_ns."""
    out = []
    for r in records:
        fields = LOCKSTAT if r.holds == 0 and r.hold_ns_total is None else LOCKSTAT_HOLD
        for field, metric in fields.items():
            out.append(Sample("lockstat", f"{r.lock} | {r.caller} | {r.kind}: {field}",
                              metric, float(getattr(r, field) or 0), S.METRIC_UNITS[metric],
                              kind="gauge"))
    return out


# =======================================================================================
# DTrace: vtnet buf_ring drops
# =======================================================================================
# vtnet_txq_mq_start (if_vtnet.c, the ifnet's if_transmit) returns the error of
# drbr_enqueue, i.e. buf_ring_enqueue's ENOBUFS when the ring is full (sys/sys/buf_ring.h:
# br_drops++ and ENOBUFS; drbr_enqueue frees the mbuf), from both the trylock path
# (vtnet_txq_mq_start_locked) and the contended path (drbr_enqueue + defer to the taskq).
# ENOBUFS is 55 in sys/sys/errno.h. FreeBSD fbt return probes pass the return value in
# arg1 (arg0 is the offset of the return instruction). Sums initialised to 0 in BEGIN so
# printa prints a line even when nothing happened; printa'd aggregations are not printed
# again at exit (libdtrace DTRACE_AGD_PRINTED). Stop with SIGINT/SIGTERM (dtrace then runs
# END) or use vtnet_bufring_drops_d(seconds).
VTNET_BUFRING_DROPS_D = """\
#pragma D option quiet

BEGIN
{
	@calls = sum(0);
	@drops = sum(0);
}

fbt::vtnet_txq_mq_start:entry
{
	@calls = sum(1);
}

fbt::vtnet_txq_mq_start:return
/arg1 == 55/
{
	@drops = sum(1);
}

END
{
	printa("xb_vtnet_mq_start_calls %@u\\n", @calls);
	printa("xb_vtnet_bufring_drops %@u\\n", @drops);
}
"""


def vtnet_bufring_drops_d(seconds: int | None = None) -> str:
    """The D script, with ``tick-<seconds>s { exit(0); }`` appended when given."""
    if seconds is None:
        return VTNET_BUFRING_DROPS_D
    return VTNET_BUFRING_DROPS_D + f"\ntick-{int(seconds)}s\n{{\n\texit(0);\n}}\n"


_DTRACE_LINE = re.compile(r"^(xb_[a-z_]+) (\d+)$")
_DTRACE_DROPS = re.compile(r"^dtrace: (\d+ [^\n]*drops?[^\n]*)$", re.M)


def parse_dtrace_bufring_drops(text: str) -> tuple[list[Sample], str | None]:
    """Output (stdout and stderr together) of `dtrace -s` VTNET_BUFRING_DROPS_D.

    -> (samples, reason). Samples: native "fbt::vtnet_txq_mq_start:entry" metric
    tx_if_transmit_calls (packets offered to vtnet's if_transmit) and native
    "fbt::vtnet_txq_mq_start:return arg1 == ENOBUFS" metric tx_drops_ring (buf_ring full:
    the packet was freed), both gauges (the aggregation covers exactly the traced interval).

    reason is None on success, else why the numbers are missing or incomplete:
    * the probe does not exist ("probe description fbt::vtnet_txq_mq_start:entry does not
      match any probes", libdtrace dt_cc.c). vtnet_txq_mq_start is a static function and
      static functions may be inlined, leaving no fbt probe. This one has its address
      taken (vtnet_setup_interface: ifp->if_transmit = vtnet_txq_mq_start), so an
      out-of-line copy should exist, and the script probes it rather than the static
      vtnet_txq_mq_start_locked, which is the likely one to be inlined. It can still be
      missing: a kernel built with VTNET_LEGACY_TX has no vtnet_txq_mq_start, fbt only
      sees functions in the kernel/module symbol table, and a return probe is missing
      where the compiler turned the return into a tail call. Returns no samples.
    * dtrace itself failed (module not loaded, not root, ...): no samples, its message.
    * "dtrace: N aggregation drops" and the like: samples kept (then lower bounds), the
      warning as reason.
    """
    if "does not match any probes" in text:
        line = next(ln for ln in text.splitlines() if "does not match any probes" in ln)
        return [], line.strip()
    found: dict[str, int] = {}
    for line in text.splitlines():
        m = _DTRACE_LINE.match(line.strip())
        if m and m[1] in DTRACE_BUFRING:
            found[m[1]] = int(m[2])
    if not found:
        err = next((ln.strip() for ln in text.splitlines() if ln.startswith("dtrace:")), None)
        return [], err or "no xb_vtnet_* lines in dtrace output"
    out = []
    for tag, value in found.items():
        native, metric, unit = DTRACE_BUFRING[tag]
        out.append(Sample("dtrace vtnet_txq_mq_start", native, metric, float(value), unit,
                          kind="gauge"))
    missing = [t for t in DTRACE_BUFRING if t not in found]
    drops = _DTRACE_DROPS.findall(text)
    reason = None
    if missing:
        reason = "missing: " + ", ".join(missing)
    if drops:
        reason = "; ".join(([reason] if reason else []) + drops)
    return out, reason
