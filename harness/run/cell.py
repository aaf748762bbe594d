"""One cell run on a booted VM: execute its procedure steps, keep every raw capture, and turn
the captures into metric, lock and validity records. The runner decides what a fault means;
this module only measures."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from harness.counters.counting import cpu_busy_share, queue_source, rows_frame, tx_for_conservation
from harness.counters.samples import delta
from harness.guests.base import sender_outputs
from harness.results.rundir import lock_row, metric_row, sample_row
from harness.parsers.peer import peer_metrics
from harness.run.bottleneck import decide, inputs_from_rows
from harness.run.procedure import peer_ip_for, ports_for, render
from harness.run.validity import (app_bytes_total, churn_recovery, conservation, host_thread_cpu, lock_crosscheck,
                                  lock_stats_check, queue_spread, sender_saturation)


class CellFailure(RuntimeError):
    pass


@dataclass
class Captures:
    """Everything a cell's steps captured, as text, before any parsing."""
    snapshots: dict[str, dict] = field(default_factory=dict)       # snapshot_before/after -> section texts
    host: dict[str, tuple] = field(default_factory=dict)           # host_before/after -> (tap, threads, peer)
    senders: dict[str, str] = field(default_factory=dict)          # sender script sections (iperf3_N, churn, ...)
    measured_s: float = 0.0
    started: float | None = None                                   # wall clock at the senders' start
    setup_s: float = 0.0
    t_collect: float = 0.0                                         # monotonic, when the senders returned


def execute(steps, guest, dp, host, machine, cell, boot: dict, run_id: str, vlan_id: int) -> Captures:
    """The procedure, executed: each guest step sends exactly step.command (set_queues only
    when the count differs)."""
    cap = Captures()
    t0 = time.monotonic()
    for step in steps:
        if step.action == "lock_install":
            guest.lock_stats_enable()
            boot["lock_tracing_installed_before"] = run_id
        elif step.action == "lock_pause":
            guest.lock_pause()
        elif step.action == "lock_continue":
            guest.lock_continue()
        elif step.action == "set_queues":
            guest.set_queues(cell.queues)
        elif step.action == "check_queues":
            if guest.tx_queue_count() != cell.queues:
                raise CellFailure(f"{boot['driver']} has {guest.tx_queue_count()} TX queues and cannot "
                                  f"change them at run time; cell wants {cell.queues}")
        elif step.action == "setup":
            guest.run(step.command)
        elif step.action == "stack":
            guest.setup_stack(cell.stack, vlan_id)
        elif step.action == "servers":
            dp.start_servers(ports_for(cell), bind=peer_ip_for(cell.stack))
        elif step.action == "lock_stat_clear":
            guest.run(step.command)
        elif step.action == "lock_stat_read":
            cap.snapshots["snapshot_after"]["lock_stat"] = guest.run(step.command, timeout=120)
        elif step.action in ("snapshot_before", "snapshot_after"):
            cap.snapshots[step.action] = guest.snapshot()
        elif step.action in ("host_before", "host_after"):
            cap.host[step.action] = (dp.tap_stats(), host.thread_stats(machine.pid), dp.peer_stats())
            if step.action == "host_after":
                dp.stop_servers()
        elif step.action == "senders":
            cap.setup_s = time.monotonic() - t0
            t_meas, cap.started = time.monotonic(), time.time()
            cap.senders = guest.run_senders(step.command, timeout=cell.duration_s + cell.warmup_s + 30)
            cap.measured_s = time.monotonic() - t_meas
            cap.t_collect = time.monotonic()
        else:
            raise ValueError(f"no runner action for step {step.action!r}")
    return cap


def save_captures(rd, cell, rep: int, attempt: int, cap: Captures, steps) -> None:
    def save(name: str, text: str) -> None:
        rd.save_raw(cell.cell_id, rep, name, text, attempt=attempt)

    for when in ("before", "after"):
        for name, text in cap.snapshots[f"snapshot_{when}"].items():
            save(f"{when}.{name}.txt", text)
    for name, text in cap.senders.items():
        save(f"{name}.json", text)
    save("peer_tap.json", json.dumps({"before": cap.host["host_before"][0], "after": cap.host["host_after"][0]}))
    save("commands.sh", render(steps))


def measure(guest, cap: Captures, ctx: dict, cell, driver: str, lock_method: str | None):
    """(metric rows, lock rows, samples, sender results, interval note, lock problems) from the
    captures. `lock_method` None: the cell is not traced (no lock rows, lock problems None);
    else lock problems lists why its lock numbers are incomplete (guest.lock_problems)."""
    results = guest.parse_senders(cap.senders)
    errors = [r.error for r in results if r.error]
    missing = cell.procs - len(results)
    if errors or missing:
        raise CellFailure("iperf3 failed: " + "; ".join(errors or [f"{missing} sender(s) gave no JSON"]))
    before, after = cap.snapshots["snapshot_before"], cap.snapshots["snapshot_after"]
    samples = delta(guest.parse_snapshot(before, driver), guest.parse_snapshot(after, driver))
    interval, interval_note = guest.interval_samples(cap.senders)   # measured over the interval itself
    samples += interval
    rows = [sample_row(ctx, s) for s in samples]

    def add(metric: str, value: float, unit: str, source: str, native_name: str) -> None:
        rows.append(metric_row(ctx, metric, value, unit, source, native_name))

    add("throughput_bps", sum(r.sent_bps for r in results), "bits/s", "iperf3", "end.sum_sent.bits_per_second")
    add("app_bytes", sum(r.sent_bytes for r in results), "bytes", "iperf3", "end.sum_sent.bytes")
    if cell.proto == "tcp":
        add("tcp_retransmits", sum(r.retransmits or 0 for r in results), "count", "iperf3",
            "end.sum_sent.retransmits")
    for i, r in enumerate(results):
        add(f"sender{i}_bps", r.sent_bps, "bits/s", "iperf3", "end.sum_sent.bits_per_second")
    (tap_before, threads_before, peer_before), (tap_after, threads_after, peer_after) = (
        cap.host["host_before"], cap.host["host_after"])
    if tap_before and tap_after:
        for k in ("bytes", "packets", "dropped"):
            add(f"peer_rx_{k}", tap_after["stats64"]["rx"][k] - tap_before["stats64"]["rx"][k],
                "count" if k == "dropped" else k, "peer ip -s -j link (tap)", f"stats64.rx.{k}")
    cpu_b, cpu_a = host_thread_cpu(threads_before), host_thread_cpu(threads_after)
    for name in sorted(cpu_a):
        add("host_thread_cpu_s", cpu_a[name] - cpu_b.get(name, 0.0), "s", "host /proc/<qemu>/task/*/stat", name)
    for peer_row in peer_metrics(peer_before, peer_after):     # peer server CPU, peer-side drops
        add(*peer_row)
    lock_rows, lock_problems = [], None
    if lock_method is not None:
        lock_problems = guest.lock_problems(before, after, cap.senders)
        incomplete = "; ".join(lock_problems) or None
        lock_rows = [lock_row(ctx, rec, incomplete)
                     for rec in guest.parse_locks(before, after, lock_method, cap.senders)]
        src, wait_native, count_native = guest.LOCK_TOTALS
        # the per-cell totals stay the tracing method's; lock_stat rows (a LOCK_STAT kernel) sit
        # beside them in the locks table and are compared in validity (lock_crosscheck)
        traced_rows = [r for r in lock_rows if r["method"] != guest.LOCK_STAT_METHOD]
        add("lock_wait_ns", sum(r["wait_ns_total"] for r in traced_rows), "ns", src, wait_native)
        add("lock_contentions", sum(r["contentions"] for r in traced_rows), "count", src, count_native)
    return rows, lock_rows, samples, results, interval_note, lock_problems


def validity(cell, samples, senders: dict[str, str], rows, results, measured_s: float, *, accel: str, vcpus: int,
             require_queue_spread: bool, interval_note: str | None, peer_detail: str,
             lock_problems: list[str] | None = None, lock_counts: dict | None = None) -> dict:
    """The cell's checks (harness.run.validity) on the counting rules' totals; informational
    entries (how the peer ended a stack, the interval probe) are kept beside them."""
    frame = rows_frame(samples)
    per_q_pkts, nic_pkts, nic_bytes = tx_for_conservation(frame)
    app = sum(app_bytes_total(text) for text in sender_outputs(senders))
    busy = cpu_busy_share(frame)
    pinned = [i % vcpus for i in range(cell.procs)]
    v = {"conservation": conservation(app, nic_bytes, nic_pkts, cell.proto, cell.stack),
         "emulated": accel == "tcg",
         "sender_saturation": sender_saturation(busy, pinned),      # reported, not a veto
         "bottleneck": decide(inputs_from_rows(rows_frame(rows), pinned, results, measured_s,
                                               cell.duration_s + cell.warmup_s,
                                               rate_limited=cell.proto == "udp" and cell.udp_bitrate != "0"))}
    if cell.queues > 1:
        v["queue_spread"] = queue_spread(per_q_pkts, cell.queues, require_queue_spread, queue_source(frame))
    if cell.churn != "none":
        v["churn"] = churn_recovery(senders.get("churn", ""), sender_outputs(senders))
    if lock_problems is not None:      # a traced cell: are its lock numbers whole?
        v["lock_stats"] = lock_stats_check(lock_problems)
    if interval_note:
        v["interval_probe"] = interval_note
    check = lock_crosscheck(lock_counts)     # only when both lock methods ran (LOCK_STAT kernel)
    if check is not None:
        v["lock_crosscheck"] = check
    if peer_detail:     # not a check: how the peer terminated the stack, kept beside them
        v["stack_peer"] = peer_detail
    return v
