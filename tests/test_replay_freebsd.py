"""A FreeBSD guest replayed through the whole pipeline (no QEMU, no network): the REAL runner,
procedure, FreeBSD driver, parsers, validity, run dir, analysis, summary and report, fed by
tests/replay_freebsd.py from outputs in FreeBSD's formats (tests/fixtures/freebsd/generate.py).

A test of xmitbench's pipeline, never a FreeBSD result: the run dir, the summary and the report
say so, and compare/nightly keep it apart from live runs.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from replay_freebsd import PANIC, REPLAY_OF, ReplayHost, all_of, lockstat_warns_once, panic_once

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = REPO / "tests" / "fixtures" / "workloads" / "freebsd-replay.toml"
LINUX = REPO / "tests" / "fixtures" / "runs" / "default-2rep"     # from real TCG boots of the Linux guest
RAN_OUT = "ran out of data records (use -n for more)"      # lockstat.c main
NOTE = "REPLAY of recorded FreeBSD outputs — a test of xmitbench's pipeline, not a FreeBSD result"
# wide-table columns that describe a row rather than measure it
NOT_METRICS = {"rep", "queues", "streams", "procs", "msg_size", "duration_s", "measured_s", "started", "valid",
               "traced", "replay", "conservation_ok", "queue_spread_ok", "saturated", "churn_all_recovered"}


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """One replayed run of the FreeBSD cells; the first q2/p4 cell's guest panics, and in the
    first q1/p1 cell lockstat warns that it ran out of data records."""
    from harness.run.runner import Runner
    from harness.run.workload import load_workload
    tmp = tmp_path_factory.mktemp("replay")
    mp = pytest.MonkeyPatch()
    mp.setenv("XMITBENCH_STATE", str(tmp / "state"))
    host = ReplayHost(on_senders=all_of(
        lockstat_warns_once(lambda vm, procs: vm.queues == 1 and len(procs) == 1, RAN_OUT),
        panic_once(lambda vm, procs: vm.queues == 2 and len(procs) == 4)))
    log = []
    try:
        rd = Runner(load_workload(WORKLOAD), tmp / "results", log=log.append, host=host).run()
    finally:
        mp.undo()
    return rd.path, host, log


@pytest.fixture(scope="module")
def both(replay):
    from harness.analysis.load import load_runs
    return load_runs([LINUX, replay[0]])


def test_run_dir_is_labelled_a_replay(replay):
    path, host, _ = replay
    man = json.loads((path / "manifest.json").read_text())
    assert man["host_kind"] == "replay"
    assert man["replay"] == REPLAY_OF
    cells = pd.read_parquet(path / "cells.parquet")
    assert set(cells.os) == {"freebsd"} and set(cells.kernel.dropna()) == {"14.3-RELEASE"}


def test_panic_fails_its_cell_and_the_matrix_goes_on(replay):
    path, host, log = replay
    cells = pd.read_parquet(path / "cells.parquet")
    failed = cells[cells.status == "failed"]
    assert len(failed) == 1, cells[["cell", "rep", "status", "reason"]]
    assert ".q2.p4." in failed.cell.iloc[0]
    assert "panic" in failed.reason.iloc[0] and PANIC[:40] in failed.reason.iloc[0]
    assert (cells.status == "ok").sum() == 7            # every other cell run was measured
    serial = "".join(p.read_text() for p in (path / "serial").glob("*.log"))
    assert PANIC in serial
    assert len(host.machines) >= 3                        # a fresh boot after the panic


def test_validity_checks_pass_for_real(replay):
    from harness.analysis.load import load_runs
    w = load_runs([replay[0]]).wide()
    assert len(w) == 7
    assert w.conservation_ok.all(), w[["cell", "conservation_ratio"]]
    assert ((w.conservation_ratio - 1).abs() < 0.03).all()
    assert not w.saturated.any()
    q2 = w[w.queues == 2]
    assert q2[q2.procs == 4].queue_spread_ok.all()
    # one TCP flow on two queues: vtnet picks the queue by flowid, the other stays idle (as on Linux)
    assert not q2[q2.procs == 1].queue_spread_ok.any()


def test_lockstat_warning_marks_that_cells_lock_numbers_incomplete(replay):
    """lockstat's stderr warning reaches the cell's locks rows (incomplete) and its validity
    (lock_stats, a named failed check); every other traced cell's lock numbers are complete."""
    from harness.run.validity import failed_checks
    path = replay[0]
    cells = pd.read_parquet(path / "cells.parquet")
    ok = cells[cells.status == "ok"].assign(v=lambda d: d.validity.map(json.loads))
    flagged = ok[ok.v.map(lambda v: v["lock_stats"]["ok"] is False)]
    assert len(flagged) == 1 and ".q1.p1." in flagged.cell.iloc[0]
    v = flagged.v.iloc[0]
    assert v["lock_stats"]["reasons"] == [f"lockstat: warning: {RAN_OUT}"]
    assert "lock_stats" in failed_checks(v) and not flagged.valid.iloc[0]
    assert all(x["lock_stats"] == {"ok": True, "reasons": []} for x in ok.v.drop(flagged.index))
    locks = pd.read_parquet(path / "locks.parquet")
    mine = (locks.cell == flagged.cell.iloc[0]) & (locks.rep == flagged.rep.iloc[0])
    assert mine.any() and (locks[mine].incomplete == f"lockstat: warning: {RAN_OUT}").all()
    assert locks[~mine].incomplete.isna().all()
    # one vocabulary: vtnet's TX queue mutexes and the socket buffer
    assert set(locks.lock_class) == {"tx queue lock", "socket"}
    assert (locks.holds == 0).all() and locks.hold_ns_total.isna().all()
    # each section's stated event count is recorded, and every row was printed (no -D)
    m = pd.read_parquet(path / "metrics.parquet")
    cov = m[m.metric == "lockstat_coverage"]
    assert len(cov) and (cov.value == 1.0).all()
    assert (m[m.metric == "lockstat_section_events"].value > 0).all()


def test_report_puts_both_oses_locks_in_one_vocabulary(both):
    """The recorded Linux run (written before the lock_class column: derived on load) and the
    FreeBSD replay, side by side by lock role."""
    from harness.analysis import report as R
    t = R.lock_class_table(both).set_index(["os", "lock_class"])
    # from real TCG boots: qdisc root lock, socket locks, HARD_TX_LOCK, the rest
    assert set(t.loc["linux"].index) == {"qdisc/ifq lock", "socket", "tx queue lock", "other"}
    fb = t.loc["freebsd"]
    assert set(fb.index) == {"tx queue lock", "socket"}
    assert fb.loc["tx queue lock", "wait_ms"] > fb.loc["socket", "wait_ms"] > 0
    assert fb.incomplete.sum() >= 1          # the cell whose lockstat ran out of records
    from harness.counters.lockclass import LOCK_CLASSES
    assert (t.contentions >= 0).all() and set(t.reset_index().lock_class) <= set(LOCK_CLASSES)


def test_every_linux_metric_is_there_for_freebsd_or_has_a_no_such_counter_entry(both):
    from harness.guests.freebsd import FreeBSDGuest
    w = both.wide()
    lin, fbsd = w[w.os == "linux"], w[w.os == "freebsd"]
    assert len(lin) and len(fbsd)
    metrics = [c for c in w.columns if c not in NOT_METRICS and pd.api.types.is_numeric_dtype(w[c])]
    carried = [c for c in metrics if lin[c].notna().any()]
    missing = [c for c in carried if fbsd[c].isna().all() and c not in FreeBSDGuest.ABSENT_METRICS]
    assert not missing, f"Linux rows carry {missing}, FreeBSD rows do not and ABSENT_METRICS has no entry"
    wrong = [c for c in ("tx_requeues", "qdisc_drops", "qdisc_packets", "requeues_per_mpkt", "cpu_softirq_pct")
             if fbsd[c].notna().any()]
    assert not wrong, f"declared absent on FreeBSD but FreeBSD rows have values: {wrong}"
    # each entry names a metric the analysis knows
    assert set(FreeBSDGuest.ABSENT_METRICS) <= set(w.columns)


def test_cpu_cost_is_never_nan_and_freebsd_has_queue_shares(both):
    from harness.analysis.load import queue_table
    w = both.wide()
    fbsd = w[w.os == "freebsd"]
    for c in ("cpu_busy_pct", "cpu_pct_per_gbit", "throughput_bps", "tx_packets", "lock_wait_ns"):
        assert fbsd[c].notna().all(), c
    q = queue_table(both.metrics)
    q = q.merge(fbsd[["run_id", "cell", "rep", "queues"]], on=["run_id", "cell", "rep"])
    assert set(q[q.queues == 2].queue) == {0, 1}
    assert (q.groupby(["run_id", "cell", "rep"]).share.sum() - 1).abs().max() < 1e-9


def test_summary_says_replay(replay):
    from rich.console import Console
    from harness.analysis.summary import cell_table, render
    t = cell_table(replay[0])
    assert t.replay.all() and t.cpu_pct_per_gbit.notna().all()
    con = Console(file=io.StringIO(), width=250, record=True)
    render(replay[0], console=con)
    text = con.export_text()
    assert NOTE in text and "[REPLAY]" in text


def test_compare_and_nightly_keep_replay_apart(replay, tmp_path):
    from harness.analysis.compare import compare_runs
    from harness.analysis.load import load_runs
    from harness.analysis.nightly import run_is_green
    green, why = run_is_green(replay[0])
    assert not green and NOTE in why
    cmp = compare_runs(load_runs([replay[0]]), load_runs([replay[0]]))
    assert cmp.table.empty and any(NOTE in e for e in cmp.excluded)


def test_report_draws_linux_against_freebsd(both, replay, tmp_path):
    from harness.analysis import report as R
    ab = R.kernel_ab(both, "gbit_s")
    assert set(ab.baseline) == {"Linux 6.1.0-56-amd64"}
    assert set(ab.candidate) == {"FreeBSD 14.3-RELEASE (REPLAY, not a kernel result)"}
    assert (ab.n_base > 0).all() and (ab.n_cand > 0).all() and len(ab) >= 3
    absent = R.absent_metrics_table(both)
    assert {"tx_requeues", "cpu_softirq_pct"} <= set(absent[absent.os == "FreeBSD"].metric)
    assert R.check_figure(R.fig_kernel_vs_kernel(both)) == []
    out = R.build_report([LINUX, replay[0]], out=tmp_path / "report.html",
                         notebooks=[REPO / "analysis" / "compare_kernels.ipynb"])
    html = out.read_text()
    import html as H
    assert H.escape(NOTE) in html or NOTE in html
    assert "Kernel against kernel" in html and "no such counter on FreeBSD" in html
    assert "FreeBSD 14.3-RELEASE (REPLAY, not a kernel result)" in html


def test_nothing_started_nothing_left(replay):
    _, host, _ = replay
    assert all(m.stopped for m in host.machines) and all(m.pid is None for m in host.machines)
    (dp,) = host.dataplanes
    assert dp.calls[0] == ("create",) and dp.calls[-1] == ("stop_servers",) and ("destroy",) in dp.calls
    assert not dp.servers_running and not dp.created
    for m in host.machines:       # every command the driver sent had a recording
        assert m.vm.commands and not m.vm.unanswered
