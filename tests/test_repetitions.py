"""Adaptive repetitions (repetitions = "auto"): the stopping rule, the history it reads from
run-dir rows, the rounds the runner executes, plan/ETA and the summary. Pure: no QEMU."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from harness.counters.confidence import t_ci_rel_pct
from harness.run import repetitions as R
from harness.run.plan import plan
from harness.run.workload import AUTO_MIN_REPS, load_workload

ROOT = Path(__file__).resolve().parent.parent


def auto(target=10.0, budget=100.0, maximum=8) -> R.Policy:
    return R.Policy(True, AUTO_MIN_REPS, maximum, budget, target, "workload")


def hist(values, reps_run=None, spent=0.0, rep_s=10.0) -> R.History:
    return R.History(len(values) if reps_run is None else reps_run, tuple(values), len(values), spent, rep_s)


# ---------------------------------------------------------------------------------------------
# The rule

def test_ci_reached_stops_and_says_so():
    vals = [100.0, 101.0, 99.0]
    n, pct = t_ci_rel_pct(vals)
    assert n == 3 and pct < 10
    assert R.decide(auto(), hist(vals)) == f"ci {pct:.1f} % <= 10 % (n=3)"


def test_ci_not_reached_goes_on():
    vals = [100.0, 130.0, 80.0]
    assert t_ci_rel_pct(vals)[1] > 10
    assert R.decide(auto(), hist(vals)) is None


def test_minimum_always_runs():
    # two identical values: a CI of zero width, but fewer than the minimum
    assert R.decide(auto(), hist([100.0, 100.0])) is None
    # and the budget does not cut the minimum short either
    assert R.decide(auto(budget=10), hist([100.0, 100.0], spent=500)) is None


def test_student_t_not_normal():
    # 3 values with s/mean = 4 %: t(0.975, 2) = 4.303 -> half-width 9.9 %; a normal z (1.96) would say 4.5 %
    vals = [96.0, 100.0, 104.0]
    n, pct = t_ci_rel_pct(vals)
    assert pct == pytest.approx(4.303 * 4 / math.sqrt(3), rel=1e-3)
    assert R.decide(auto(target=9.0), hist(vals)) is None
    assert R.decide(auto(target=10.0), hist(vals)).startswith("ci 9.9 % <= 10 %")


def test_max_reps():
    vals = [100.0, 130.0, 80.0, 120.0, 90.0]
    reason = R.decide(auto(maximum=5), hist(vals))
    assert reason.startswith("max 5 reps (ci ") and "> 10 %" in reason
    assert R.decide(auto(maximum=6), hist(vals)) is None


def test_budget_counts_the_next_repetition():
    vals = [100.0, 130.0, 80.0]
    # 80 s spent, a repetition takes 15 s: 95 s would still fit into 100 s
    assert R.decide(auto(budget=100), hist(vals, spent=80, rep_s=15)) is None
    reason = R.decide(auto(budget=100), hist(vals, spent=86, rep_s=15))
    assert reason.startswith("budget 86 s spent of 100 s (ci ")


def test_ci_wins_over_max_and_budget():
    vals = [100.0, 100.5, 99.5]
    assert R.decide(auto(maximum=3, budget=10), hist(vals, spent=1000)).startswith("ci ")


def test_fixed_policy():
    assert R.decide(R.Policy(False, 2, 2, math.inf, None, ""), hist([1.0])) == "fixed"


# ---------------------------------------------------------------------------------------------
# History from rows: what counts

def row(rep, status="ok", valid=True, attempt=1, wall=12.0, cell="c", dur=10):
    return {"cell": cell, "rep": rep, "attempt": attempt, "status": status, "valid": valid if status == "ok" else None,
            "wall_s": wall if status == "ok" else None, "duration_s": dur}


def tput(rep, value, cell="c"):
    return {"cell": cell, "rep": rep, "metric": "throughput_bps", "source": "iperf3", "value": value, "queue": None}


def test_invalid_and_failed_runs_do_not_count():
    cells = [row(0), row(1, valid=False), row(2, status="failed"), row(2, status="failed", attempt=2),
             row(3, valid=None), row(4, valid=pd.NA), row(5)]
    metrics = [tput(0, 100.0), tput(1, 1.0), tput(3, 2.0), tput(4, 3.0), tput(5, 102.0)]
    h = R.history("c", cells, metrics, attempts_per_rep=2)
    assert h.values == (100.0, 102.0)          # only valid measured repetitions
    assert h.reps_run == 6 and h.measured == 5
    assert h.spent_s == 5 * 12.0 + 2 * 10      # failed attempts count their duration
    assert h.rep_s == 12.0 and h.unsettled == ()
    # two valid values only: however close, no CI stop (fewer than the minimum)
    assert R.decide(auto(), h) is None


def test_numpy_bools_from_parquet_count():
    import numpy as np
    cells = [row(i, valid=np.bool_(True)) for i in range(3)]
    h = R.history("c", cells, [tput(i, 100.0 + i) for i in range(3)], 2)
    assert len(h.values) == 3


def test_rerun_counts_its_final_measured_attempt():
    # attempt 1 measured but invalid (conservation), attempt 2 valid: the second value counts
    cells = [row(0, valid=False), row(0, attempt=2), row(1), row(2)]
    metrics = [tput(0, 5.0), tput(0, 100.0), tput(1, 101.0), tput(2, 99.0)]
    h = R.history("c", cells, metrics, 2)
    assert h.values == (100.0, 101.0, 99.0) and h.reps_run == 3


def test_unsettled_repetition_on_resume():
    # an interrupted repetition: one failed attempt of two allowed, nothing measured
    cells = [row(0), row(1), row(2), row(3, status="failed")]
    h = R.history("c", cells, [tput(i, 100.0) for i in range(3)], 2)
    assert h.unsettled == (3,) and h.reps_run == 4


def test_skipped_cell_is_not_extended():
    h = R.history("c", [row(0, status="skipped")], [], 2)
    assert h.skipped


# ---------------------------------------------------------------------------------------------
# The rounds the runner executes

class FakeRunDir:
    def __init__(self):
        self.cells, self.metrics, self.flushes = [], [], 0

    def flush(self):
        self.flushes += 1


def _wl(tmp_path, reps='"auto"', extra="", procs="[1, 4]"):
    f = tmp_path / "w.toml"
    f.write_text(f'[workload]\nname = "t"\nrepetitions = {reps}\nduration_s = 10\nwarmup_s = 1\n{extra}\n'
                 f'[matrix]\nnic = ["virtio-net"]\nprocs = {procs}\n')
    return load_workload(f)


def simulate(group, policy, series, fail=()):
    """Run the generator as the runner does: each yielded cell run records a row (throughput from
    ``series[cell]``, in order) before the next is asked for. Returns (rd, order of run ids)."""
    rd, order, taken = FakeRunDir(), [], {}
    for cr in R.group_runs(group, rd, policy, attempts_per_rep=1):
        order.append(cr.run_id)
        cid = cr.cell.cell_id
        if (cid, cr.rep) in fail:
            rd.cells.append(row(cr.rep, status="failed", cell=cid))
            continue
        i = taken.get(cid, 0)
        taken[cid] = i + 1
        rd.cells.append(row(cr.rep, cell=cid, wall=14.0))
        rd.metrics.append(tput(cr.rep, series[cid][i], cell=cid))
    return rd, order


def test_rounds_are_rep_major_and_stop_by_the_rule(tmp_path):
    wl = _wl(tmp_path, extra="max_repetitions = 6\nrep_budget_s = 1000")
    p = plan(wl)
    (group,) = p.groups
    a, b = sorted({r.cell.cell_id for r in group.runs})
    series = {a: [100.0, 101.0, 99.0],                         # tight: stops after the minimum
              b: [100.0, 140.0, 70.0, 120.0, 85.0, 110.0]}     # noisy: runs to the max
    rd, order = simulate(group, R.policy_for(wl, "tcg"), series)
    extra = order[len(group.runs):]
    assert [r.rsplit(".", 1)[1] for r in extra] == ["r3", "r4", "r5"]
    assert all(r.startswith(b) for r in extra)
    by_cell = lambda c: [r for r in rd.cells if r["cell"] == c]  # noqa: E731
    assert by_cell(a)[-1]["reps_stop"].startswith("ci ") and len(by_cell(a)) == 3
    assert by_cell(b)[-1]["reps_stop"].startswith("max 6 reps") and len(by_cell(b)) == 6
    # the reason sits on the last row only
    assert all(r.get("reps_stop") is None for c in (a, b) for r in by_cell(c)[:-1])


def test_rounds_interleave_cells(tmp_path):
    wl = _wl(tmp_path, extra="max_repetitions = 5\nrep_budget_s = 1000")
    (group,) = plan(wl).groups
    a, b = [r.cell.cell_id for r in group.runs[:2]]
    noisy = [100.0, 140.0, 70.0, 120.0, 85.0]
    _, order = simulate(group, R.policy_for(wl, "tcg"), {a: noisy, b: noisy})
    assert order[len(group.runs):] == [f"{a}.r3", f"{b}.r3", f"{a}.r4", f"{b}.r4"]


def test_budget_stops_extra_rounds(tmp_path):
    wl = _wl(tmp_path, procs="[1]", extra="rep_budget_s = 60")
    (group,) = plan(wl).groups
    (a,) = {r.cell.cell_id for r in group.runs}
    rd, order = simulate(group, R.policy_for(wl, "tcg"), {a: [100.0, 140.0, 70.0, 120.0, 85.0, 110.0]})
    # 14 s per repetition: 3 (42 s) + 1 (56 s); a fifth would end at 70 s > 60 s
    assert len(order) == 4
    assert rd.cells[-1]["reps_stop"].startswith("budget 56 s spent of 60 s")


def test_failed_extra_repetition_counts_as_run(tmp_path):
    wl = _wl(tmp_path, procs="[1]", extra="max_repetitions = 5\nrep_budget_s = 1000")
    (group,) = plan(wl).groups
    (a,) = {r.cell.cell_id for r in group.runs}
    rd, order = simulate(group, R.policy_for(wl, "tcg"), {a: [100.0, 140.0, 70.0, 120.0]}, fail={(a, 3)})
    assert [o.rsplit(".", 1)[1] for o in order] == ["r0", "r1", "r2", "r3", "r4"]
    assert rd.cells[-1]["reps_stop"].startswith("max 5 reps")


def test_fixed_repetitions_are_marked_and_not_extended(tmp_path):
    wl = _wl(tmp_path, reps="2")
    (group,) = plan(wl).groups
    series = {c: [100.0, 150.0] for c in {r.cell.cell_id for r in group.runs}}
    rd, order = simulate(group, R.policy_for(wl, "tcg"), series)
    assert len(order) == len(group.runs)
    assert [r["reps_stop"] for r in rd.cells] == [None, None, "fixed", "fixed"]


def test_resume_counts_from_recorded_rows(tmp_path):
    """A resumed auto cell continues from its rows: the planned runs it already has are skipped
    by the runner (done), the unsettled one is retried, then the rule goes on from n=4."""
    wl = _wl(tmp_path, procs="[1]", extra="max_repetitions = 6\nrep_budget_s = 1000")
    (group,) = plan(wl).groups
    (a,) = {r.cell.cell_id for r in group.runs}
    rd = FakeRunDir()
    rd.cells = [row(i, cell=a) for i in range(4)] + [row(4, status="failed", cell=a)]
    rd.metrics = [tput(i, v, cell=a) for i, v in enumerate([100.0, 140.0, 70.0, 120.0])]
    done = {(a, i) for i in range(4)}
    order = []
    for cr in R.group_runs(group, rd, R.policy_for(wl, "tcg"), attempts_per_rep=2):
        if (cr.cell.cell_id, cr.rep) in done:
            continue
        order.append(cr.rep)
        rd.cells.append(row(cr.rep, cell=a, attempt=2 if cr.rep == 4 else 1))
        rd.metrics.append(tput(cr.rep, 90.0, cell=a))
    assert order == [4, 5]
    assert rd.cells[-1]["reps_stop"].startswith("max 6 reps")


def test_untraced_twins_stay_fixed(tmp_path):
    wl = _wl(tmp_path, procs="[1]", extra="lock_stats = true\nprobe_effect = true\nmax_repetitions = 4")
    (group,) = plan(wl).groups
    cells = {r.cell.cell_id for r in group.runs}
    series = {c: [100.0, 140.0, 70.0, 120.0] for c in cells}
    rd, order = simulate(group, R.policy_for(wl, "tcg"), series)
    twin = next(c for c in cells if c.endswith(".untraced"))
    assert [r["reps_stop"] for r in rd.cells if r["cell"] == twin] == ["fixed"]
    assert sum(o.startswith(twin) for o in order) == 1


# ---------------------------------------------------------------------------------------------
# Policy, plan, manifest

def test_target_resolved_by_accel(tmp_path):
    wl = _wl(tmp_path)
    assert (R.policy_for(wl, "tcg").target_pct, R.policy_for(wl, "kvm").target_pct) == (10.0, 3.0)
    assert R.policy_for(wl, "kvm").manifest()["ci_target_from"] == "auto (kvm)"
    wl = _wl(tmp_path, extra="ci_target_pct = 2.5")
    assert R.policy_for(wl, "tcg").manifest()["ci_target_pct"] == 2.5
    assert R.policy_for(_wl(tmp_path, reps="4"), "tcg").manifest() == {"mode": "fixed", "count": 4}


def test_eta_minimum_plus_allowance(tmp_path):
    wl = _wl(tmp_path, extra="rep_budget_s = 50")
    p = plan(wl)
    # per cell: min(2 extra reps = 28 s, budget left after the minimum = 50 - 42 = 8 s)
    assert p.eta_s == sum(g.est_s() for g in p.groups) + 2 * 8
    fixed = plan(_wl(tmp_path, reps="3"))
    assert fixed.eta_s == sum(g.est_s() for g in fixed.groups)
    assert R.describe(wl).startswith("auto (3..10) per traced cell")


def test_extra_cost():
    cells = [row(i) for i in range(5)] + [row(5, status="failed")]
    assert R.extra_cost(cells, auto()) == {"extra_repetitions": 3, "extra_repetitions_s": 24.0}
    assert R.extra_cost(cells, R.Policy(False, 6, 6, math.inf, None, ""))["extra_repetitions"] == 0


def test_shipped_workloads():
    assert load_workload(ROOT / "workloads" / "default.toml").repetitions_auto
    for small in ("smoke.toml",):
        w = load_workload(ROOT / "workloads" / small)
        assert not w.repetitions_auto and w.repetitions == 1


def test_old_cells_table_loads_without_reps_stop():
    from harness.analysis.load import _normalise_cells
    c = _normalise_cells(pd.DataFrame([{"cell": "c", "rep": 0, "status": "ok", "valid": True}]))
    assert c["reps_stop"].isna().all()


def test_summary_and_report_show_n_and_stop_reason_old_and_new_run_dirs(tmp_path):
    """A run dir with reps_stop next to one from before the column: both load (old -> NA), and
    the summary and the report's repetitions table show n and the reason per cell."""
    import io
    import shutil

    from rich.console import Console

    from harness.analysis import report
    from harness.analysis.load import load_runs
    from harness.analysis.summary import cell_table, render
    fixtures = ROOT / "tests" / "fixtures" / "runs"
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(fixtures / "default-2rep", old)
    shutil.copytree(fixtures / "default-2rep", new)
    man = (new / "manifest.json").read_text()
    (new / "manifest.json").write_text(man.replace('"run_id": "', '"run_id": "new-', 1))
    cells = pd.read_parquet(new / "cells.parquet")
    cells["reps_stop"] = None
    last = cells.groupby("cell").tail(1).index
    cells.loc[last, "reps_stop"] = "budget 84 s spent of 90 s (2 valid)"
    cells.to_parquet(new / "cells.parquet", index=False)

    runs = load_runs([old, new])
    assert runs.cells.loc[runs.cells.run_id.str.startswith("new-"), "reps_stop"].notna().sum() == len(last)
    assert runs.cells.loc[~runs.cells.run_id.str.startswith("new-"), "reps_stop"].isna().all()
    t = report.repetitions_table(runs)
    assert set(t.loc[t.run_id.str.startswith("new-"), "stop"]) == {"budget 84 s spent of 90 s (2 valid)"}
    assert set(t.loc[~t.run_id.str.startswith("new-"), "stop"]) == {"-"}
    assert (t.reps >= t.measured).all() and (t.measured >= t.valid).all() and (t.reps == 2).all()

    assert set(cell_table(new)["stop"]) == {"budget 84 s spent of 90 s (2 valid)"}
    assert cell_table(old)["stop"].isna().all()
    out = io.StringIO()
    render(new, Console(file=out, width=400))
    assert "budget" in out.getvalue() and "reps stop" in out.getvalue()   # short in the terminal table
