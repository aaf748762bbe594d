"""Per-cell validity checks: pure functions of parsed numbers, results go to `cells.validity`."""
from __future__ import annotations

import json

from harness.vm.stacks import STACKS

# Per-skb header bytes a Linux NIC counts on top of payload (skb->len of a GSO skb holds
# ONE header): Ethernet 14 + IPv4 20 + TCP 20+12 (timestamps) or UDP 8.
HEADER_BYTES = {"tcp": 14 + 20 + 32, "udp": 14 + 20 + 8}
# Extra bytes per packet on the physical NIC when traffic goes through a stacked device.
STACK_OVERHEAD = {"direct": 0, **{k: s.overhead for k, s in STACKS.items()}}
CONSERVATION_TOLERANCE = 0.03
QUEUE_SHARE_MIN = 0.05


def app_bytes_total(iperf3_json: str) -> int:
    """Payload the sender wrote during the whole run, warm-up (omitted) intervals included:
    the counter snapshots bracket the whole run, iperf3's `end` sums exclude the omit phase."""
    doc = json.loads(iperf3_json)
    return int(sum(iv["sum"]["bytes"] for iv in doc.get("intervals", [])))


def conservation(app_bytes: int, nic_bytes: float, nic_packets: float, proto: str, stack: str = "direct") -> dict:
    """Application payload vs bytes the NIC's TX counters saw, headers accounted per packet
    counted by the driver (an skb, so a TSO super-packet counts once)."""
    if app_bytes <= 0 or nic_bytes != nic_bytes:  # NaN
        return {"ok": False, "reason": "no application or NIC bytes", "app_bytes": app_bytes,
                "nic_bytes": nic_bytes}
    payload_on_wire = nic_bytes - nic_packets * (HEADER_BYTES.get(proto, 0) + STACK_OVERHEAD.get(stack, 0))
    ratio = payload_on_wire / app_bytes
    return {"ok": abs(ratio - 1) <= CONSERVATION_TOLERANCE, "app_bytes": app_bytes,
            "nic_bytes": nic_bytes, "nic_packets": nic_packets, "ratio": round(ratio, 4),
            "raw_ratio": round(nic_bytes / app_bytes, 4),
            "unexplained_bytes": round(app_bytes - payload_on_wire),
            "tolerance": CONSERVATION_TOLERANCE}


def queue_spread(per_queue_packets: dict[int, float], queues: int, required: bool = False,
                 source: str = "") -> dict:
    """Did traffic really use every configured TX queue? A reported property (one flow on one
    of two queues is the truth); it fails a cell only when the workload asks for spread
    (``require_queue_spread``), which ``required`` records. ``source``: where the per-queue
    counters came from (counting.queue_source). A configured queue without any counter is
    ``missing_queues`` with a ``reason`` (then ok is None: the spread is unknown, not idle)."""
    used = {q: v for q, v in per_queue_packets.items() if q < queues}
    missing = [q for q in range(queues) if q not in used]
    total = sum(used.values())
    shares = {str(q): round(v / total, 4) if total else 0.0 for q, v in sorted(used.items())}
    idle = [q for q in range(queues) if q not in missing and (total == 0 or used[q] / total < QUEUE_SHARE_MIN)]
    out = {"ok": not idle, "shares": shares, "idle_queues": idle, "min_share": QUEUE_SHARE_MIN,
           "required": required, "source": source}
    if missing:
        out.update(ok=None if not idle else False, missing_queues=missing,
                   reason=f"no per-queue TX counters for queue(s) {', '.join(map(str, missing))} "
                          f"(neither the driver's ethtool -S nor an mq child qdisc has them"
                          + (f"; found: {source}" if source else "") + ")")
    return out


def sender_saturation(cpu_busy_share: dict[int, float], pinned_cpus: list[int], threshold: float = 0.95) -> dict:
    """How busy the pinned sender CPUs were: reported, never a veto (a CPU-bound TX path is
    what this tool studies; the bottleneck verdict says where the time went)."""
    busy = {c: round(cpu_busy_share.get(c, 0.0), 3) for c in sorted(set(pinned_cpus))}
    return {"saturated": any(v >= threshold for v in busy.values()), "cpu_busy": busy,
            "threshold": threshold}


def churn_recovery(churn_text: str, iperf3_jsons: list[str], threshold: float = 0.8) -> dict:
    """Time for the senders' summed throughput to come back to `threshold` of its pre-churn
    median after each reconfiguration event. Event stamps and iperf3 intervals are both
    relative to the sender script's start (iperf3 starts a few ms later: under the 0.5 s
    interval resolution)."""
    stamps = {}
    events = []
    for line in churn_text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "start":
            stamps["start"] = float(parts[1])
        elif len(parts) == 3 and parts[0] == "churn":
            events.append(float(parts[2]))
    if "start" not in stamps or not events:
        return {"events": 0, "survived": None, "reason": "no churn events recorded"}
    rel = [e - stamps["start"] for e in events]
    series: dict[int, list] = {}
    for text in iperf3_jsons:
        for k, iv in enumerate(json.loads(text).get("intervals", [])):
            s = iv["sum"]
            cur = series.setdefault(k, [s["start"], s["end"], 0.0, s.get("omitted", False)])
            cur[2] += s["bits_per_second"]
    ivs = [series[k] for k in sorted(series)]
    base = sorted(bps for st, en, bps, om in ivs if en <= rel[0] and not om)
    baseline = base[len(base) // 2] if base else None
    recoveries = []
    for t in rel:
        if baseline is None:
            recoveries.append(None)
            continue
        rec = next((en - t for st, en, bps, om in ivs if st >= t and bps >= threshold * baseline), None)
        recoveries.append(None if rec is None else round(rec, 2))
    done = [r for r in recoveries if r is not None]
    return {"events": len(rel), "event_times_s": [round(t, 2) for t in rel],
            "baseline_bps": baseline, "threshold": threshold, "recovery_s": recoveries,
            "recovery_s_max": max(done) if done else None,
            "all_recovered": len(done) == len(rel) and baseline is not None,
            "min_interval_bps_after_first": min((bps for st, en, bps, om in ivs if st >= rel[0]), default=None)}


def host_thread_cpu(stat_texts: dict[str, str], clk_tck: int = 100) -> dict[str, float]:
    """CPU seconds per QEMU thread name from /proc/<pid>/task/<tid>/stat texts (utime+stime),
    so a host-side bottleneck (a vCPU or the I/O thread pinned at 100 %) can be told apart from
    guest lock contention. Threads with the same name are added up."""
    out: dict[str, float] = {}
    for text in stat_texts.values():
        rp = text.rfind(")")
        if rp < 0:
            continue
        name = text[text.find("(") + 1:rp]
        fields = text[rp + 2:].split()
        utime, stime = int(fields[11]), int(fields[12])   # stat fields 14 and 15
        out[name] = out.get(name, 0.0) + (utime + stime) / clk_tck
    return out


def lock_stats_check(problems: list[str]) -> dict:
    """A traced cell's lock numbers: complete, or the named reasons they are not (lockstat's
    own warnings such as DTrace drops or "ran out of data records", a report that could not
    be read, rows that were not printed). Incomplete lock numbers undercount contention, so
    the cell fails the check ("lock_stats")."""
    return {"ok": not problems, "reasons": list(problems)}


# Checks a re-run can change (a transient loss, a recovery that came late). Queue spread and
# the bottleneck are properties of the configuration: a re-run would only repeat them.
RERUN_CHECKS = ("conservation", "churn")
# Bottleneck verdicts outside the path under test (harness.run.bottleneck.OUTSIDE_PATH; repeated
# here so that this module stays the one place deciding validity and imports nothing above it).
OUTSIDE_PATH = ("peer", "host_io", "application")


def failed_checks(v: dict) -> list[str]:
    """Names of the validity checks this cell run failed. Reported, not failed: emulation,
    sender saturation (older run dirs carry it), queue spread unless the workload required it,
    and a bottleneck inside the path under test (tx_path, tx_lock, ring_link, undetermined).
    Failed: conservation, a required queue spread, a bottleneck outside the path, churn not
    recovered, incomplete lock statistics (lock_stats)."""
    out = []
    if v.get("conservation", {}).get("ok") is False:
        out.append("conservation")
    qs = v.get("queue_spread", {})
    if qs.get("ok") is False and qs.get("required") is True:
        out.append("queue_spread")
    if qs.get("missing_queues") and qs.get("required") is True:     # spread required, not measurable
        out.append("queue_counters_missing")
    if (v.get("bottleneck") or {}).get("verdict") in OUTSIDE_PATH:
        out.append("bottleneck")
    if (v.get("lock_crosscheck") or {}).get("ok") is False:
        out.append("lock_crosscheck")
    if v.get("churn", {}).get("all_recovered") is False:
        out.append("churn")
    if v.get("lock_stats", {}).get("ok") is False:
        out.append("lock_stats")
    return out


def is_valid(v: dict) -> bool:
    """A cell to trust: bytes conserved, its bottleneck inside the path under test (a missing
    verdict, as in older run dirs, is not a failure), throughput back after every churn event,
    and every configured queue used where the workload requires it. Emulation and a CPU-bound
    sender are reported beside, not folded in."""
    return "conservation" in v and not failed_checks(v)


# Cross-check of the TX queue lock between Linux's two lock methods on a LOCK_STAT kernel.
# From the 6.1 source: spin_lock() is __raw_spin_lock() -> LOCK_CONTENDED(lock,
# do_raw_spin_trylock, do_raw_spin_lock) (include/linux/lockdep.h under CONFIG_LOCK_STAT):
# a failed trylock calls lock_contended() (lock_stat counts it; lockdep.c __lock_contended
# + the waittime at __lock_acquired), then do_raw_spin_lock() -> arch_spin_lock() ->
# queued_spin_lock(): a fast-path cmpxchg, else queued_spin_lock_slowpath(), which returns
# through the pending-bit path (the FIRST waiter spins on ->locked, no tracepoint) and only
# reaches trace_contention_begin() after `queue:`/`pv_queue:`, i.e. when a second waiter
# (or a pending hand-over in progress) is seen. So every tracepoint hit on a spinlock
# follows a lock_contended() on the same acquisition: tracepoint <= lock_stat, per lock,
# with no lower bound (two vCPUs give at most one waiter per lock from task context, which
# the pending path absorbs). lock_stat is cleared before the tracing snapshot and read
# after it, so its interval holds the tracepoint's. The check: tracepoint/lock_stat <=
# LOCK_CROSSCHECK_MAX_RATIO; lock_stat stops counting when lockdep turns itself off
# (debug_locks = 0 after a lockdep report), which is what makes it fail in practice.
LOCK_CROSSCHECK_MAX_RATIO = 1.0


def lock_crosscheck(counts: dict | None, max_ratio: float = LOCK_CROSSCHECK_MAX_RATIO) -> dict | None:
    """Both methods' TX-queue-lock contention counts of one cell run (GuestDriver.tx_lock_counts)
    -> a check entry, ok False with a named reason and both numbers when they disagree."""
    if counts is None:
        return None
    ls, tp, acq = counts["lock_stat_contentions"], counts["tracepoint_contentions"], counts["lock_stat_acquisitions"]
    out = {**counts, "max_ratio": max_ratio,
           "ratio": round(tp / ls, 4) if ls else None,
           "contention_ratio": round(ls / acq, 5) if acq else None}
    if not acq:
        out.update(ok=False, reason=f"lock_stat saw no TX queue lock acquisitions (tracepoint {tp} "
                                    "contentions): lock_stat off or lockdep disabled")
    elif tp > ls * max_ratio:
        out.update(ok=False, reason=f"tracepoint counts {tp} TX queue lock contentions, lock_stat {ls}: "
                                    f"more than {max_ratio:g}x (every slowpath entry follows a counted "
                                    "failed trylock; lockdep disabled mid-run?)")
    else:
        out["ok"] = True
    return out
