"""One vocabulary for contended locks across OSes: a native lock name (and the caller it was
contended in) -> the role the lock plays on the TX path, so a report can put FreeBSD
lockstat(1) rows and Linux lock:contention rows side by side.

Classes (LOCK_CLASSES):
* ``tx queue lock``  serialises one TX queue of the NIC driver. Linux: the per-queue
  ``netdev_queue._xmit_lock`` (lockdep classes ``_xmit_ETHER``, ``_xmit_<type>``) taken by
  HARD_TX_LOCK in ``sch_direct_xmit``, by ``netif_tx_lock``/``dev_watchdog`` and in virtio TX
  completion (``virtnet_poll_tx``). FreeBSD: the vtnet TX queue mutex "<ifname>-tx<N>"
  (if_vtnet.c vtnet_init_txq: "%s-tx%d").
* ``qdisc/ifq lock``  the software queue in front of the driver. Linux: the qdisc root lock
  and busylock (``__dev_queue_xmit``, ``__dev_xmit_skb``, ``net_tx_action``, ``qdisc_run``).
  FreeBSD: the legacy ifqueue ``if_snd`` (IFQ_LOCK).
* ``ring``  a ring of descriptors or mbufs with a lock of its own: FreeBSD ``buf_ring`` /
  ``drbr_*`` and iflib ``mp_ring``; Linux vmxnet3's ``vmxnet3_tx_queue.tx_lock`` (ring lock).
* ``socket``  the sending socket: Linux ``sock.sk_lock`` / ``bh_lock_sock`` (``lock_sock``,
  ``release_sock``, ``tcp_v4_rcv``); FreeBSD sockbuf ``so_snd``/``so_rcv`` and inpcb locks
  (``tcpinp``, ``udpinp``).
* ``other``  anything else (scheduler, RTNL, sleep pools, ...).

Names are matched as the parsers keep them: Linux ``LockRecord.lock`` is the name
``harness.parsers.linux.summarize_locks`` gave the address ("HARD_TX_LOCK (...)", "lock in
<fn>") and ``caller`` the first non-lock frame; FreeBSD's lock is lockstat's
``lock_object.lo_name`` and caller the function without offset. Pure.
"""
from __future__ import annotations

import re

TX_QUEUE, QDISC, RING, SOCKET, OTHER = "tx queue lock", "qdisc/ifq lock", "ring", "socket", "other"
LOCK_CLASSES = (TX_QUEUE, QDISC, RING, SOCKET, OTHER)

# The name decides first (a FreeBSD lock is known by its name, whoever contended it; a Linux
# name was already derived from its callers); qdisc before tx queue, since the Linux qdisc
# root lock's name mentions _xmit_lock (a device without a qdisc). A name that says nothing
# ("lock in <fn>") falls back to the contending function.
_CALLERS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^(sch_direct_xmit|netif_tx_lock(_bh)?|dev_watchdog|virtnet_poll_tx|__netif_tx_lock)$"), TX_QUEUE),
    (re.compile(r"^(__dev_queue_xmit|__dev_xmit_skb|net_tx_action|__?qdisc_run|qdisc_run_begin)$"), QDISC),
    (re.compile(r"^(vmxnet3_tq_xmit|buf_ring_\w+|drbr_\w+|ifmp_ring_\w+|mp_ring_\w+)$"), RING),
    (re.compile(r"^(lock_sock(_nested)?|release_sock|tcp_v4_rcv|sk_\w+|sbappend\w*|sosend\w*|soreceive\w*)$"), SOCKET),
]
_NAMES: list[tuple[re.Pattern, str]] = [
    # lock_stat names qdisc locks by their lockdep keys: "&sch->root_lock_key", "qdisc_tx_busylock"
    (re.compile(r"qdisc|busylock|root_lock_key|^if_snd$|\bifq\b|if send queue", re.I), QDISC),
    (re.compile(r"_xmit_|HARD_TX_LOCK|tx_global_lock|netif_tx_lock|^\S+-tx\d+$"), TX_QUEUE),
    (re.compile(r"buf_ring|br_lock|mp_ring|drbr|vmxnet3_tx_queue\.tx_lock", re.I), RING),
    # lock_stat: "sk_lock-AF_INET", "slock-AF_INET" (sock_lock_init's per-family classes)
    (re.compile(r"sk_lock|slock-AF_|bh_lock_sock|socket lock|^so_(snd|rcv)$|sockbuf|^(tcp|udp|raw)inp$"), SOCKET),
]


def lock_class(lock: str, caller: str = "") -> str:
    """One of LOCK_CLASSES for a native lock name and the function it was contended in."""
    for pattern, cls in _NAMES:
        if pattern.search(lock or ""):
            return cls
    fn = (caller or "").split("+", 1)[0]
    for pattern, cls in _CALLERS:
        if pattern.match(fn):
            return cls
    return OTHER
