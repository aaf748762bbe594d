"""The bottleneck verdict of one cell run: which resource limited it, named from measured
inputs, with every number used and every threshold stated beside it (``cells.validity
["bottleneck"]``). Pure: numbers in, a dict out. ``inputs_from_rows`` gathers the numbers from
the cell run's metric rows through ``harness.counters.counting``'s rules; ``decide`` judges them.

Verdicts
--------
* ``peer``         the receiving end: an iperf3 server's CPU near one full host CPU, or the
                   peer dropping what arrived (tap RX drops, UDP socket-buffer drops, TCP
                   receive-queue drops). Outside the path under test. The peer's TCP zero-window
                   advertisements are recorded but not judged: a smoke run (TCG, 2 TCP senders,
                   peer servers at 3 % of a host CPU) showed 23 of them in 3 s.
* ``host_io``      a QEMU thread that moves packets for the guest (main loop, ``IO ...``
                   iothread, ``vhost-<pid>`` worker) near one full host CPU. Outside the path.
* ``application``  sender vCPUs busy, mostly in user time (iperf3 itself). Outside the path.
* ``tx_lock``      contended-lock wait a large share of the senders' CPU time. Inside.
* ``tx_path``      sender vCPUs busy, mostly in kernel time (system + irq + softirq): the TX
                   path is the limit, which is what this tool studies. Inside.
* ``ring_link``    requeues or drops at the NIC/qdisc while the senders have idle CPU: the
                   ring or the (emulated) link is the limit. Inside.
* ``undetermined`` none of the above (e.g. a paced UDP sender, ``iperf3 -b``, with idle CPU).

Order of the checks (the first that holds wins) and why:
1. peer, 2. host_io — a limit outside the guest makes every guest-side figure a consequence of
   it (an idle sender, an overflowing qdisc), so these are judged first.
3. tx_lock before tx_path — lock spinning is kernel time, so a lock-bound sender is also
   kernel-busy; the more specific name wins.
4. application and tx_path split busy senders by where their time goes (user vs kernel).
5. ring_link only with idle sender CPU: requeues on a CPU-bound sender are a symptom of the
   TX path, not its limit.
"""
from __future__ import annotations

import re

from harness.counters.counting import cpu_split, driver_total, one, root_qdisc, tx_total

VERDICTS = ("tx_path", "tx_lock", "application", "host_io", "peer", "ring_link", "undetermined")

# Thresholds, each with why.
SENDER_BUSY = 0.90          # share of a sender vCPU's ticks busy while iperf3 ran: above it the vCPU is
                            # CPU-bound (the rest is tick granularity and iperf3's start and stop).
                            # The CPU snapshots bracket the whole sender command (SSH, start, JSON
                            # output): busy over that interval is scaled by measured_s / run_s
                            # (run_s = iperf3's -t + -O), capped at 1 ("sender_busy"; the unscaled
                            # share is "sender_busy_interval"). A smoke cell (2+1 s under TCG) read
                            # 0.89 unscaled over 3.49 s, i.e. 1.0 while iperf3 ran.
KERNEL_SHARE = 0.50         # share of the senders' busy time in kernel modes: kernel dominates
USER_SHARE = 0.50           # share of the senders' busy time in user mode: iperf3 itself dominates
LOCK_WAIT_SHARE = 0.20      # lock wait / sender CPU time: a fifth of the CPU spent waiting for locks
HOST_THREAD_BUSY = 0.90     # a QEMU I/O / vhost thread's CPU over the interval, of one host CPU
PEER_CPU_BUSY = 0.90        # an iperf3 server's CPU over the interval, of one host CPU
PEER_DROP_SHARE = 0.001     # peer drops per packet that reached the peer (0.1 %: a healthy peer drops none)
RING_EVENTS_PER_MPKT = 100.0  # qdisc requeues + qdisc/ring drops per million TX packets

THRESHOLDS = {"sender_busy": SENDER_BUSY, "kernel_share_of_busy": KERNEL_SHARE, "user_share_of_busy": USER_SHARE,
              "lock_wait_share": LOCK_WAIT_SHARE, "host_io_thread_busy": HOST_THREAD_BUSY,
              "peer_cpu_busy": PEER_CPU_BUSY, "peer_drop_share": PEER_DROP_SHARE,
              "ring_events_per_mpkt": RING_EVENTS_PER_MPKT}

HOST_CPU_SOURCE = "host /proc/<qemu>/task/*/stat"
VCPU_THREAD = re.compile(r"^CPU \d+/(TCG|KVM|HVF|WHPX|NVMM)$")
MAIN_LOOP_THREAD = "qemu-system-x86"     # the process name, 15 chars (comm); with vhost=off it moves the packets


def host_thread_kind(name: str, named: bool = True) -> str:
    """QEMU thread name -> "vcpu" | "io" (main loop, iothreads, vhost workers) | "other".
    Without debug-threads=on (``named`` False) every thread is called after the process: "unknown"."""
    if not named:
        return "unknown"
    if VCPU_THREAD.match(name):
        return "vcpu"
    if name.startswith(("IO ", "iothread", "vhost-")) or name == MAIN_LOOP_THREAD:
        return "io"
    return "other"


def _r(x, nd: int = 4):
    return None if x is None else round(float(x), nd)


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if x != x else x


def inputs_from_rows(frame, sender_cpus: list[int], iperf3: list, measured_s: float, run_s: float | None = None,
                     rate_limited: bool = False) -> dict:
    """The verdict's inputs for one cell run. ``frame``: ``counting.rows_frame`` of ALL its
    metric rows (snapshot deltas and the harness's own rows); ``iperf3``: the parsed sender
    results (``Iperf3Result``); ``measured_s``: wall seconds of the sender command; ``run_s``:
    seconds iperf3 itself ran (-t + -O)."""
    split = cpu_split(frame)
    cpus = {str(c): {k: _r(v) for k, v in split[c].items()} for c in sorted(set(sender_cpus)) if c in split}

    def rows(metric: str, source: str | None = None):
        d = frame[(frame.metric == metric) & frame["queue"].isna() & (frame.source == source if source else True)]
        return {str(n): float(v) for n, v in zip(d.native_name, d.value) if _num(v) is not None}

    secs = measured_s if measured_s and measured_s > 0 else None
    threads = rows("host_thread_cpu_s", HOST_CPU_SOURCE)
    named = any(VCPU_THREAD.match(n) for n in threads)
    host = {n: {"kind": host_thread_kind(n, named), "share": _r(s / secs) if secs else None}
            for n, s in sorted(threads.items())}
    peers = {n: _r(s / secs) if secs else None for n, s in sorted(rows("peer_server_cpu_s").items())}

    def total(metric: str) -> float | None:
        v = rows(metric)
        return sum(v.values()) if v else None

    def perf(attr: str) -> list:
        return [_r(getattr(r, attr, None), 2) for r in iperf3]
    lock = rows("lock_wait_ns")
    drops = [one(root_qdisc(frame, "qdisc_drops")), one(driver_total(frame, "tx_drops_ring"))]
    return {
        "sender_cpus": cpus,
        "iperf3_cpu_pct": {"host_total": perf("cpu_host_total"), "host_user": perf("cpu_host_user"),
                           "host_system": perf("cpu_host_system"), "remote_total": perf("cpu_remote_total"),
                           "remote_user": perf("cpu_remote_user"), "remote_system": perf("cpu_remote_system")},
        "host_threads": host,
        "peer_servers_cpu": peers,
        "peer_rx_packets": total("peer_rx_packets"), "peer_rx_dropped": total("peer_rx_dropped"),
        "peer_udp_rcvbuf_errors": total("peer_udp_rcvbuf_errors"),
        "peer_tcp_zero_window_adv": total("peer_tcp_zero_window_adv"),
        "peer_tcp_rcvq_drops": total("peer_tcp_rcvq_drops"),
        "tx_packets": _num(one(tx_total(frame, "tx_packets"))),
        "tx_requeues": _num(one(root_qdisc(frame, "tx_requeues"))),
        "tx_drops": sum(d for d in map(_num, drops) if d is not None) if any(_num(d) is not None for d in drops)
        else None,
        "lock_wait_ns": sum(lock.values()) if lock else None,
        "measured_s": _r(measured_s, 3),
        "run_s": _r(run_s, 3),
        "rate_limited": bool(rate_limited),
    }


def decide(inp: dict) -> dict:
    """The verdict from ``inputs_from_rows``' dict: {"verdict", "reason", "inputs", "thresholds"}.
    ``inputs`` holds the given numbers plus the derived ones the rules compared."""
    d: dict = {}
    cpus = inp.get("sender_cpus") or {}
    if cpus:
        n = len(cpus)
        busy = sum(c["busy"] for c in cpus.values()) / n
        run_s, meas = inp.get("run_s"), inp.get("measured_s")
        scale = meas / run_s if run_s and meas and meas > run_s else 1.0
        d["sender_busy_interval"] = _r(busy)
        d["sender_busy"] = _r(min(1.0, busy * scale))
        d["sender_busy_min"] = _r(min(1.0, min(c["busy"] for c in cpus.values()) * scale))
        b = sum(c["busy"] for c in cpus.values())
        d["kernel_share_of_busy"] = _r(sum(c["kernel"] for c in cpus.values()) / b) if b else None
        d["user_share_of_busy"] = _r(sum(c["user"] for c in cpus.values()) / b) if b else None
        d["steal_share"] = _r(sum(c.get("steal", 0.0) for c in cpus.values()) / n)
    perf = inp.get("iperf3_cpu_pct") or {}
    hu = [x for x in perf.get("host_user", []) if x is not None]
    ht = [x for x in perf.get("host_total", []) if x is not None]
    if hu and ht and sum(ht) > 0:   # iperf3's own rusage: a second opinion on user vs kernel
        d["iperf3_user_share"] = _r(sum(hu) / sum(ht))
    secs = inp.get("measured_s")
    io = {n: t["share"] for n, t in (inp.get("host_threads") or {}).items() if t["kind"] == "io" and t["share"] is not None}
    if io:
        name = max(io, key=io.get)
        d["host_io_thread"], d["host_io_thread_busy"] = name, io[name]
    peer_cpu = [v for v in (inp.get("peer_servers_cpu") or {}).values() if v is not None]
    remote = [x / 100 for x in perf.get("remote_total", []) if x is not None]
    if peer_cpu or remote:
        d["peer_cpu_busy"] = _r(max(peer_cpu + remote))
    peer_drops = [inp.get(k) for k in ("peer_rx_dropped", "peer_udp_rcvbuf_errors", "peer_tcp_rcvq_drops")]
    if any(x is not None for x in peer_drops):
        dropped = sum(x for x in peer_drops if x is not None)
        d["peer_drops"] = dropped
        rx = inp.get("peer_rx_packets")
        d["peer_drop_share"] = _r(dropped / rx, 6) if rx else (1.0 if dropped else 0.0)
    zw = inp.get("peer_tcp_zero_window_adv")
    if zw is not None and secs:     # reported, not judged (see the module doc)
        d["peer_zero_window_per_s"] = _r(zw / secs, 3)
    lock = inp.get("lock_wait_ns")
    if lock is not None and cpus and secs:
        cpu_ns = sum(c["busy"] for c in cpus.values()) * secs * 1e9
        d["lock_wait_share"] = _r(lock / cpu_ns) if cpu_ns else None
    pk = inp.get("tx_packets")
    ev = [x for x in (inp.get("tx_requeues"), inp.get("tx_drops")) if x is not None]
    if pk and ev:
        d["ring_events_per_mpkt"] = _r(sum(ev) / pk * 1e6, 2)

    def out(verdict: str, reason: str) -> dict:
        return {"verdict": verdict, "reason": reason, "inputs": {**inp, "derived": d}, "thresholds": dict(THRESHOLDS)}

    def ge(key: str, limit: float) -> bool:
        return d.get(key) is not None and d[key] >= limit

    if ge("peer_cpu_busy", PEER_CPU_BUSY):
        return out("peer", f"a peer iperf3 server used {d['peer_cpu_busy']:.0%} of one host CPU "
                           f"(>= {PEER_CPU_BUSY:.0%})")
    if ge("peer_drop_share", PEER_DROP_SHARE):
        return out("peer", f"the peer dropped {d['peer_drops']:.0f} packets ({d['peer_drop_share']:.2%} of those "
                           f"that reached it, >= {PEER_DROP_SHARE:.1%})")
    if ge("host_io_thread_busy", HOST_THREAD_BUSY):
        return out("host_io", f"QEMU thread {d['host_io_thread']!r} used {d['host_io_thread_busy']:.0%} of one host "
                              f"CPU (>= {HOST_THREAD_BUSY:.0%})")
    if ge("lock_wait_share", LOCK_WAIT_SHARE):
        return out("tx_lock", f"lock wait was {d['lock_wait_share']:.0%} of the senders' CPU time "
                              f"(>= {LOCK_WAIT_SHARE:.0%})")
    busy = ge("sender_busy", SENDER_BUSY)
    if busy and ge("user_share_of_busy", USER_SHARE):
        return out("application", f"sender vCPUs {d['sender_busy']:.0%} busy, {d['user_share_of_busy']:.0%} of it "
                                  f"user time (>= {USER_SHARE:.0%}): iperf3 itself is the limit")
    if busy and ge("kernel_share_of_busy", KERNEL_SHARE):
        return out("tx_path", f"sender vCPUs {d['sender_busy']:.0%} busy (>= {SENDER_BUSY:.0%}), "
                              f"{d['kernel_share_of_busy']:.0%} of it kernel time (>= {KERNEL_SHARE:.0%})")
    if not busy and d.get("sender_busy") is not None and ge("ring_events_per_mpkt", RING_EVENTS_PER_MPKT):
        return out("ring_link", f"{d['ring_events_per_mpkt']:.0f} requeues+drops per Mpkt "
                                f"(>= {RING_EVENTS_PER_MPKT:.0f}) with sender vCPUs {d['sender_busy']:.0%} busy")
    if d.get("sender_busy") is None:
        return out("undetermined", "no per-CPU time for the sender vCPUs")
    if not busy and inp.get("rate_limited"):
        return out("undetermined", f"sender paced by iperf3 -b: vCPUs {d['sender_busy']:.0%} busy, no resource "
                                   f"at its limit")
    if busy:
        return out("undetermined", f"sender vCPUs {d['sender_busy']:.0%} busy, but neither kernel nor user time "
                                   f"dominates (steal {d.get('steal_share', 0):.0%})")
    return out("undetermined", f"sender vCPUs {d['sender_busy']:.0%} busy (< {SENDER_BUSY:.0%}), no ring events, "
                               f"peer and host threads below their limits")
