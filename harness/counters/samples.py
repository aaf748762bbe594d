"""One data model for every counter the harness collects, and the common vocabulary.

A Sample is one number read from one tool. ``native_name`` is the name the tool prints
(kept so a reader can always go back to the source); ``metric`` is the common vocabulary
name shared by Linux and FreeBSD when one applies, else the native name.

Conventions
-----------
* ``queue`` is the TX/RX queue index for per-queue counters, or the CPU index for per-CPU
  files (/proc/stat, /proc/net/softnet_stat). A Sample with ``queue=None`` of the same metric
  is the interface (or all-CPU) total: never add the per-queue rows to it.
* ``cpu`` is set only where a value is per CPU *and* per queue (/proc/interrupts: one row per
  queue vector, one column per CPU), so the pair stays unique.
* ``kind="counter"`` is monotonic (take after - before); ``kind="gauge"`` is a level read at
  one instant (backlog, qlen) or an already-final result (iperf3), so take the after value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Sample:
    source: str        # the command/file the value came from, e.g. "ethtool -S"
    native_name: str   # as the tool prints it (see each parser for composite names)
    metric: str        # common vocabulary name when one applies, else the native name
    value: float
    unit: str          # "packets", "bytes", "count", "ns", "jiffies" (USER_HZ), "bits/s", "s", "%"
    queue: int | None = None   # TX/RX queue index, or CPU index for per-CPU files
    kind: str = "counter"      # "counter" (delta) or "gauge" (after value)
    cpu: int | None = None     # CPU index when the row is also per queue (/proc/interrupts)

    @property
    def key(self) -> tuple:
        return (self.source, self.native_name, self.queue, self.cpu)


def delta(before: list[Sample], after: list[Sample]) -> list[Sample]:
    """Change between two snapshots, matched by (source, native_name, queue, cpu).

    * counter: after - before. A counter that went backwards (32-bit wrap, driver reset,
      qdisc replaced, interface re-created) gives NaN, never a negative or a guessed value:
      the interval is unknowable from two readings.
    * gauge: the after value.
    * present only in ``after``: a counter counts from 0 (the object appeared during the
      interval, e.g. a queue enabled by ``ethtool -L`` or a lock first seen), so its delta is
      its after value.
    * present only in ``before``: dropped (the object vanished; nothing to report).
    Order follows ``after``.
    """
    old = {s.key: s for s in before}
    out = []
    for s in after:
        if s.kind != "counter":
            out.append(s)
            continue
        prev = old.get(s.key)
        base = prev.value if prev is not None else 0.0
        d = s.value - base
        out.append(replace(s, value=d if d >= 0 else math.nan))
    return out


# ---------------------------------------------------------------------------------------
# Common vocabulary: metric -> unit. Parsers use it to label mapped samples.
# ---------------------------------------------------------------------------------------
METRIC_UNITS = {
    "tx_packets": "packets", "tx_bytes": "bytes",
    "rx_packets": "packets", "rx_bytes": "bytes",
    "tx_drops": "packets",        # interface-level tx dropped
    "tx_errors": "packets",
    "tx_drops_ring": "packets",   # driver dropped because the ring was full (FreeBSD r_drops,
                                  # br_drops); Linux drivers return NETDEV_TX_BUSY instead
    "tx_requeues": "count",       # qdisc requeues (NETDEV_TX_BUSY or stopped queue)
    "tx_restarts": "count",       # driver woke a queue it had stopped for lack of descriptors
    "tx_ring_stalls": "count",    # driver found the ring full and stopped the queue
    "tx_kicks": "count",          # virtio notifications to the device
    "qdisc_bytes": "bytes", "qdisc_packets": "packets",
    "qdisc_drops": "packets", "qdisc_overlimits": "count",
    "qdisc_backlog_bytes": "bytes", "qdisc_qlen": "packets",
    "softnet_processed": "packets", "softnet_dropped": "packets",
    "softnet_time_squeeze": "count",
    "irq_count": "count",
    "cpu_user": "jiffies", "cpu_nice": "jiffies", "cpu_system": "jiffies",
    "cpu_idle": "jiffies", "cpu_iowait": "jiffies", "cpu_irq": "jiffies",
    "cpu_softirq": "jiffies", "cpu_steal": "jiffies",
    "lock_contentions": "count", "lock_wait_ns": "ns", "lock_wait_ns_max": "ns",
}

# ---------------------------------------------------------------------------------------
# Native name -> metric, one table per source. Names not listed keep metric = native name.
# ---------------------------------------------------------------------------------------

# `ethtool -S`, per driver (Linux 6.1 get_strings/get_ethtool_stats of each driver).
# "<N>" stands for the queue index; it becomes Sample.queue.
ETHTOOL_S: dict[str, dict[str, str]] = {
    # drivers/net/virtio_net.c: virtnet_{rq,sq}_stats_desc, no per-queue drop counter on TX
    "virtio_net": {
        "tx_queue_<N>_packets": "tx_packets",
        "tx_queue_<N>_bytes": "tx_bytes",
        "tx_queue_<N>_kicks": "tx_kicks",
        "rx_queue_<N>_packets": "rx_packets",
        "rx_queue_<N>_bytes": "rx_bytes",
        # 6.9+ (virtnet_stats_sprintf, "tx%u_%s"): no per-queue packets/bytes any more (they
        # moved to netdev qstats); counting.queue_table takes them from the mq child qdiscs.
        "tx<N>_kicks": "tx_kicks",
    },
    # drivers/net/ethernet/intel/e1000e/ethtool.c: e1000_gstrings_stats (one TX queue)
    "e1000e": {
        "tx_packets": "tx_packets", "tx_bytes": "tx_bytes",
        "rx_packets": "rx_packets", "rx_bytes": "rx_bytes",
        "tx_dropped": "tx_drops", "tx_errors": "tx_errors",
        "tx_restart_queue": "tx_restarts",   # adapter->restart_queue: netif_wake/start after stop
    },
    # drivers/net/ethernet/intel/igb/igb_ethtool.c: global + tx_queue_%u_{packets,bytes,restart}
    "igb": {
        "tx_packets": "tx_packets", "tx_bytes": "tx_bytes",
        "rx_packets": "rx_packets", "rx_bytes": "rx_bytes",
        "tx_dropped": "tx_drops", "tx_errors": "tx_errors",
        "tx_queue_<N>_packets": "tx_packets",
        "tx_queue_<N>_bytes": "tx_bytes",
        "tx_queue_<N>_restart": "tx_restarts",  # ring->tx_stats.restart_queue
        "rx_queue_<N>_packets": "rx_packets",
        "rx_queue_<N>_bytes": "rx_bytes",
    },
    # drivers/net/vmxnet3/vmxnet3_ethtool.c: nested "Tx Queue#"/"Rx Queue#" blocks; names are
    # the stripped strings, drop-reason sub-items are qualified (see parse_ethtool_stats).
    # "pkts tx"/"bytes tx" are derived by the parser: ucast + mcast + bcast, as the driver's
    # own vmxnet3_get_stats64 sums them.
    "vmxnet3": {
        "ucast+mcast+bcast pkts tx": "tx_packets",
        "ucast+mcast+bcast bytes tx": "tx_bytes",
        "ucast+mcast+bcast pkts rx": "rx_packets",
        "ucast+mcast+bcast bytes rx": "rx_bytes",
        "pkts tx err": "tx_errors",
        "drv dropped tx total": "tx_drops",    # = netdev tx_dropped in vmxnet3_get_stats64
        # tx_ring_full++ when the ring lacks descriptors: the driver stops the queue and
        # returns NETDEV_TX_BUSY (a stall, not a drop and not a restart).
        "ring full": "tx_ring_stalls",
    },
    # drivers/net/veth.c: only XDP counters per queue
    "veth": {},
}
# ethtool -S values that are attributes, not counters
ETHTOOL_S_GAUGES = {"peer_ifindex"}

# `ip -s [-s] -j link show`: stats64.{rx,tx}.<field>, native name "<dir>.<field>"
IP_LINK = {
    "tx.packets": "tx_packets", "tx.bytes": "tx_bytes",
    "tx.dropped": "tx_drops", "tx.errors": "tx_errors",
    "rx.packets": "rx_packets", "rx.bytes": "rx_bytes",
}

# `tc -s -j qdisc show`: per-qdisc fields; backlog and qlen are gauges
TC_QDISC = {
    "bytes": "qdisc_bytes", "packets": "qdisc_packets",
    "drops": "qdisc_drops", "overlimits": "qdisc_overlimits",
    "requeues": "tx_requeues",
    "backlog": "qdisc_backlog_bytes", "qlen": "qdisc_qlen",
}
TC_QDISC_GAUGES = {"backlog", "qlen"}

# /proc/net/softnet_stat columns by position (net/core/net-procfs.c softnet_seq_show).
# None = a column printed as constant 0 (kept for position only).
SOFTNET_COLUMNS = [
    "processed", "dropped", "time_squeeze", None, None, None, None, None,
    "cpu_collision", "received_rps", "flow_limit_count",
    "backlog_len", "cpu_index",            # 13 columns since 5.10 (6.1 prints 13)
    "input_qlen", "process_qlen",          # 15 columns in later kernels
]
SOFTNET_STAT = {
    "processed": "softnet_processed",
    "dropped": "softnet_dropped",
    "time_squeeze": "softnet_time_squeeze",
}
SOFTNET_GAUGES = {"backlog_len", "input_qlen", "process_qlen"}

# /proc/stat "cpu" lines, by position (fs/proc/stat.c). guest/guest_nice are already
# included in user/nice, so they keep their native names.
PROC_STAT_COLUMNS = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
                     "guest", "guest_nice"]
PROC_STAT_CPU = {
    "user": "cpu_user", "nice": "cpu_nice", "system": "cpu_system", "idle": "cpu_idle",
    "iowait": "cpu_iowait", "irq": "cpu_irq", "softirq": "cpu_softirq", "steal": "cpu_steal",
}

# /proc/interrupts: every row is metric irq_count (native name = the action name column)
PROC_INTERRUPTS = "irq_count"

# lock contention (ftrace hist triggers): LockRecord fields -> metric
LOCK_HIST = {
    "contentions": "lock_contentions",
    "wait_ns_total": "lock_wait_ns",
    "wait_ns_max": "lock_wait_ns_max",
}

# iperf3 -J: result field -> metric (all gauges: the run's final numbers)
IPERF3 = {
    "sent_bytes": ("iperf_sent_bytes", "bytes"),
    "received_bytes": ("iperf_received_bytes", "bytes"),
    "sent_bps": ("iperf_sent_bps", "bits/s"),
    "received_bps": ("iperf_received_bps", "bits/s"),
    "retransmits": ("iperf_retransmits", "count"),
    "lost_packets": ("iperf_lost_packets", "packets"),
    "packets": ("iperf_packets", "packets"),
    "lost_percent": ("iperf_lost_percent", "%"),
    "duration_s": ("iperf_duration", "s"),
    "cpu_host_total": ("iperf_cpu_host_total", "%"),
    "cpu_host_user": ("iperf_cpu_host_user", "%"),
    "cpu_host_system": ("iperf_cpu_host_system", "%"),
    "cpu_remote_total": ("iperf_cpu_remote_total", "%"),
    "cpu_remote_user": ("iperf_cpu_remote_user", "%"),
    "cpu_remote_system": ("iperf_cpu_remote_system", "%"),
}


def unit_for(metric: str, native_name: str) -> str:
    """Unit of a mapped metric, else a guess from the native name."""
    if metric in METRIC_UNITS:
        return METRIC_UNITS[metric]
    n = native_name.lower()
    if "byte" in n:
        return "bytes"
    if "packet" in n or "pkts" in n:
        return "packets"
    return "count"
