"""repetitions = "auto" on a real guest under TCG: one short cell with a target it cannot reach
(0.1 %), so it stops on the per-cell budget or the max. The cell row says why, and the number of
repetitions run is exactly what the rule gives when replayed over the recorded rows."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from qemu_helpers import workload_toml

from harness.run import repetitions as R
from harness.run.workload import AUTO_MIN_REPS

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and taps")]

# max one above the minimum: the rule is replayed over an extra repetition (when the budget
# allows one) without paying for more
BUDGET_S, MAX_REPS = 40, AUTO_MIN_REPS + 1
WORKLOAD = workload_toml("auto-reps", {"nic": ["virtio-net"], "queues": [1], "procs": [1]},
                         {"repetitions": "auto", "ci_target_pct": 0.1, "rep_budget_s": BUDGET_S,
                          "max_repetitions": MAX_REPS, "retries": 1})


def test_auto_repetitions_stop_on_budget_or_max(tmp_path):
    wl = tmp_path / "auto.toml"
    wl.write_text(WORKLOAD)
    results = tmp_path / "results"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(wl), "--results", str(results)],
                       capture_output=True, text=True, timeout=900, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rd = next(results.iterdir())
    man = json.loads((rd / "manifest.json").read_text())
    cells = pd.read_parquet(rd / "cells.parquet")
    metrics = pd.read_parquet(rd / "metrics.parquet")
    (cell,) = cells.cell.unique()
    reps = sorted(cells.rep.unique())
    n = len(reps)
    assert reps == list(range(n)) and AUTO_MIN_REPS <= n <= MAX_REPS

    # the stop reason: on the cell's last row, and only there
    stops = cells.reps_stop
    assert stops.iloc[:-1].isna().all() and stops.iloc[-1:].notna().all(), stops.tolist()
    reason = stops.iloc[-1]
    assert reason.startswith(("budget ", f"max {MAX_REPS} reps")), reason   # 0.1 % cannot be reached

    # replayed over the rows as they were after each repetition, the rule said "more" every time
    # until the last one, and then exactly the recorded reason
    policy = R.policy_for(type("W", (), {"repetitions_auto": True, "repetitions": AUTO_MIN_REPS,
                                         "ci_target_pct": 0.1, "rep_budget_s": BUDGET_S,
                                         "max_repetitions": MAX_REPS})(), "tcg")
    rows = cells.astype(object).where(cells.notna(), None).to_dict("records")
    mrows = metrics.astype(object).where(metrics.notna(), None).to_dict("records")
    for k in range(AUTO_MIN_REPS, n + 1):
        h = R.history(cell, [r for r in rows if r["rep"] < k], [m for m in mrows if m["rep"] < k], 2)
        assert h.reps_run == k
        assert R.decide(policy, h) == (reason if k == n else None), (k, h)

    # independently of history(): the budget arithmetic from the raw columns
    ok = cells[cells.status == "ok"]
    spent = ok.wall_s.sum() + cells[cells.status == "failed"].duration_s.sum()
    if reason.startswith("budget "):
        assert spent + ok.wall_s.mean() > BUDGET_S
    else:
        assert n == MAX_REPS
    # the extra repetitions ran after the planned minimum, in order, on the one VM
    started = ok.sort_values("rep").started.tolist()
    assert started == sorted(started)
    assert len(man["boots"]) == 1 or (cells.status == "failed").any()

    assert man["repetitions"]["mode"] == "auto" and man["repetitions"]["ci_target_pct"] == 0.1
    assert man["benchmarks"]["extra_repetitions"] == n - AUTO_MIN_REPS
    assert (man["benchmarks"]["extra_repetitions_s"] > 0) == (n > AUTO_MIN_REPS)
    assert reason.split()[0] in p.stdout     # the end-of-run summary shows it, shortened
    print(f"{n} repetitions, stopped: {reason}; valid {int(ok.valid.fillna(False).sum())}/{len(ok)}; "
          f"extra {man['benchmarks']['extra_repetitions_s']} s")
