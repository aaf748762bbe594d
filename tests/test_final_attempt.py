"""A cell run re-run after an invalid attempt keeps both attempts' rows in its run dir; analysis
reads only the final attempt's rows (the throughput of one attempt, not the sum of two)."""
from __future__ import annotations

from pathlib import Path

from harness.analysis.load import load_runs, wide_table
from harness.results.rundir import RunDir, cell_context, cell_row, lock_row, metric_row
from harness.parsers.linux import LockRecord
from harness.run.workload import expand, parse_workload

WL = b"""[workload]
name = "twice"
repetitions = 1
duration_s = 2
[machine]
accel = "tcg"
[matrix]
nic = ["virtio-net"]
queues = [1]
procs = [1]
"""


def _run_dir(tmp_path: Path) -> Path:
    cell = expand(parse_workload(WL, "twice.toml")).runs[0].cell
    rd = RunDir.create(tmp_path, "r1")
    for attempt, gbps, valid in ((1, 1.0, False), (2, 3.0, True)):
        ctx = cell_context(cell, 0, kernel="6.1.0-test", driver="virtio_net", accel="tcg", attempt=attempt)
        rd.add(metrics=[metric_row(ctx, "throughput_bps", gbps * 1e9, "bit/s", "iperf3", "sum_sent.bits_per_second")],
               locks=[lock_row(ctx, LockRecord(lock="0xffff", caller="sch_direct_xmit", kind="spin",
                                               contentions=10 * attempt, wait_ns_total=100, wait_ns_max=50,
                                               method="tracepoint hist"))],
               cell=cell_row(cell, 0, "ok", "", group=0, accel="tcg", image_verified=True, valid=valid,
                             attempt=attempt, kernel="6.1.0-test", driver="virtio_net"))
    rd.flush()
    rd.write_manifest()
    return rd.path


def test_only_the_final_attempts_rows_count(tmp_path):
    runs = load_runs([_run_dir(tmp_path)])
    w = wide_table(runs)
    assert len(w) == 1
    assert w.throughput_bps.iloc[0] == 3.0e9          # attempt 2 alone; the sum would be 4e9
    assert runs.metrics.attempt.tolist() == [2]
    assert runs.locks.contentions.tolist() == [20]
