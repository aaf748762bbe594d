"""Known kernel mechanisms behind a counter that differs between kernels, with their sources.

A difference ``compare --by-kernel`` or the report finds is a number; this table says which
kernel change explains it, where one is known, and where to read it. An entry is keyed by
(metric, driver, kernel range): it applies when one kernel of a pair is below
``since`` and the other at or above it. Entries cite the code, not a guess: each names the
functions and the commit or patch it rests on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Mechanism:
    metrics: tuple[str, ...]      # wide-table metrics it explains
    driver: str                   # guest driver ("virtio_net"), "" = any
    since: tuple[int, int]        # first kernel (major, minor) with the behaviour
    title: str
    explanation: str
    sources: tuple[str, ...]


MECHANISMS: tuple[Mechanism, ...] = (
    Mechanism(
        metrics=("requeues_per_mpkt", "tx_requeues"),
        driver="virtio_net",
        since=(6, 11),
        title="virtio_net Byte Queue Limits (BQL) stop the TX queue before the ring is full",
        explanation=(
            "Since 6.11 virtio_net's start_xmit reports every skb to BQL (__netdev_tx_sent_queue) and "
            "completions give the bytes back (netdev_tx_completed_queue in __free_old_xmit). When the "
            "bytes in flight exceed the dynamic limit, BQL sets __QUEUE_STATE_STACK_XOFF on the TX queue. "
            "BQL also lets the qdisc dequeue a bulk of skbs up to the limit (try_bulk_dequeue_skb, "
            "qdisc_avail_bulklimit = dql_avail). An skb dequeued while the queue is frozen, or the rest "
            "of a bulk after the queue froze mid-list, comes back from sch_direct_xmit with "
            "NETDEV_TX_BUSY and goes to dev_requeue_skb, which counts qstats.requeues. In 6.1 "
            "virtio_net has no BQL: the only stop is the ring-full check in check_sq_full_and_disable "
            "(num_free < 2 + MAX_SKB_FRAGS), which a QEMU backend draining the ring rarely reaches, and "
            "with dql_avail 0 the qdisc never bulk-dequeues: so requeues stay at 0. The requeue is the "
            "stack's normal BQL back-pressure, not a driver error."),
        sources=(
            "[PATCH net-next v2] virtio_net: add support for Byte Queue Limits, Jiri Pirko, "
            "2024-06-12, Message-ID <20240612170851.1004604-1-jiri@resnulli.us> (merged for 6.11): "
            "drivers/net/virtio_net.c start_xmit kick = __netdev_tx_sent_queue(txq, skb->len, xmit_more); "
            "__free_old_xmit netdev_tx_completed_queue; virtnet_enable_queue_pair netdev_tx_reset_queue",
            "net/sched/sch_generic.c: sch_direct_xmit (ret = NETDEV_TX_BUSY unless the txq is not "
            "netif_xmit_frozen_or_stopped; !dev_xmit_complete(ret) -> dev_requeue_skb), "
            "__dev_requeue_skb (q->qstats.requeues++), try_bulk_dequeue_skb (qdisc_avail_bulklimit)",
            "include/linux/netdevice.h: netdev_tx_sent_queue (dql_avail < 0 -> set "
            "__QUEUE_STATE_STACK_XOFF), qdisc_avail_bulklimit",
            "The guests' own modules (nm -u): Debian 13's 6.12.118 virtio_net.ko imports dql_completed and "
            "dql_reset (BQL), Debian 12's 6.1.0-57 virtio_net.ko neither; both kernels CONFIG_BQL=y and "
            "default qdisc fq_codel (one fq_codel child per TX queue on both), so the qdisc is not the difference",
        ),
    ),
    Mechanism(
        metrics=("queue_share",),
        driver="virtio_net",
        since=(6, 9),
        title="virtio_net per-queue packets/bytes left ethtool -S",
        explanation=(
            "From 6.9 virtio_net names its per-queue ethtool strings '<tx|rx><N>_<stat>' "
            "(tx0_kicks, tx0_tx_timeouts, tx0_xdp_tx) and reports per-queue packets and bytes through "
            "the netdev netlink qstats instead of tx_queue_<N>_packets/bytes. xmitbench then takes the "
            "per-queue shares from the mq root's per-TX-queue child qdiscs (counting.queue_table, "
            "source 'tc -s -j qdisc'), which count GSO segments where the driver counted skbs."),
        sources=("Real 6.12.118 captures: tests/fixtures/linux-6.12/ (ethtool -S, tc -s -j qdisc)",
                 "net/sched/sch_mq.c mq_attach: one child qdisc per TX queue at parent <mq>:<N+1>"),
    ),
)

_VERSION = re.compile(r"^(\d+)\.(\d+)")


def kernel_version(kernel: str) -> tuple[int, int] | None:
    """'6.12.118+deb13-amd64' -> (6, 12); None when it is not a Linux release string."""
    m = _VERSION.match(str(kernel or ""))
    return (int(m[1]), int(m[2])) if m else None


def explain(metric: str, driver: str, kernel_a: str, kernel_b: str) -> list[Mechanism]:
    """Known mechanisms for `metric` differing between two kernels with `driver`: those whose
    `since` lies between them (one kernel before it, the other at or after it)."""
    va, vb = kernel_version(kernel_a), kernel_version(kernel_b)
    if va is None or vb is None:
        return []
    lo, hi = min(va, vb), max(va, vb)
    return [m for m in MECHANISMS
            if metric in m.metrics and (not m.driver or m.driver == driver) and lo < m.since <= hi]
