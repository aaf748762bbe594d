"""Adaptive repetitions: `repetitions = "auto"` in a workload.

The rule (``decide``), evaluated for a traced cell after its planned minimum and after every
repetition since, from the cell's recorded rows alone (so a resumed run goes on counting from
what the run dir holds):

1. ``ci``     stop when at least AUTO_MIN_REPS valid repetitions have a 95 % Student-t CI
              half-width of their mean throughput at or below the target (% of the mean);
2. ``max``    stop when ``max_repetitions`` repetitions have run;
3. ``budget`` stop when the wall time spent on the cell plus one more repetition (the mean wall
              time of its measured attempts) would pass ``rep_budget_s``;
otherwise run one more repetition. The minimum always runs, whatever the budget says.

What counts: only measured attempts (status ok) whose ``valid`` is true; per repetition its
final word (the last measured attempt, as analysis's ``last_attempts`` picks it). A failed
repetition or an invalid one counts as run (towards ``max``) but adds no value to the CI.
Time spent: ``wall_s`` of the measured attempts plus ``duration_s`` for every failed attempt
(a failed attempt records no wall time; its iperf3 duration is a lower bound).

Extra repetitions run in rounds, repetition-major: every unfinished cell of the VM's group once,
in group order, then again, on the same VM after the planned runs, so slow drift in the VM's life
cannot line up with one configuration. Untraced probe-effect twins and workloads with a fixed
count are not extended; their stop reason is ``fixed``.

The stop reason is written to ``reps_stop`` of the cell's last row (other rows of the cell: null).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from harness.counters.confidence import t_ci_rel_pct
from harness.run.workload import AUTO_MIN_REPS, CellRun

# The target when the workload says ci_target_pct = "auto": TCG is noisy (emulated CPU, one host
# thread per vCPU on a shared machine); KVM repetitions of a fixed configuration agree closely.
CI_TARGET_PCT_BY_ACCEL = {"tcg": 10.0, "kvm": 3.0}
# plan's ETA for an auto cell: the minimum plus this many extra repetitions (within budget and max)
ALLOWANCE_REPS = 2
FIXED = "fixed"
THROUGHPUT = "throughput_bps"


@dataclass(frozen=True)
class Policy:
    auto: bool
    minimum: int
    maximum: int
    budget_s: float
    target_pct: float | None
    target_from: str        # "workload" | "auto (tcg)" | "auto (kvm)" | "" (fixed)

    def manifest(self) -> dict:
        if not self.auto:
            return {"mode": FIXED, "count": self.minimum}
        return {"mode": "auto", "min": self.minimum, "max": self.maximum, "budget_s_per_cell": self.budget_s,
                "ci_target_pct": self.target_pct, "ci_target_from": self.target_from,
                "ci": "95 % Student-t half-width of mean throughput, valid measured repetitions"}


def policy_for(wl, accel: str) -> Policy:
    """The workload's repetition policy with the CI target resolved for the accelerator used."""
    if not wl.repetitions_auto:
        return Policy(False, wl.repetitions, wl.repetitions, math.inf, None, "")
    if wl.ci_target_pct is not None:
        target, source = wl.ci_target_pct, "workload"
    else:
        target, source = CI_TARGET_PCT_BY_ACCEL.get(accel, CI_TARGET_PCT_BY_ACCEL["tcg"]), f"auto ({accel})"
    return Policy(True, wl.repetitions, wl.max_repetitions, float(wl.rep_budget_s), target, source)


def describe(wl) -> str:
    """How `plan` shows the workload's repetitions."""
    if not wl.repetitions_auto:
        return f"{wl.repetitions} per cell (fixed)"
    target = (f"{wl.ci_target_pct:g} %" if wl.ci_target_pct is not None else
              " / ".join(f"{v:g} % {k.upper()}" for k, v in sorted(CI_TARGET_PCT_BY_ACCEL.items(), reverse=True)))
    return (f"auto ({wl.repetitions}..{wl.max_repetitions}) per traced cell: until the 95 % CI of throughput "
            f"is within {target} of the mean or {wl.rep_budget_s} s per cell are spent; the ETA counts "
            f"{ALLOWANCE_REPS} extra repetitions per cell")


def allowance_s(wl, runs: Iterable[CellRun], overhead_s: float) -> float:
    """Seconds the plan's ETA adds for auto repetitions: ALLOWANCE_REPS more per traced cell,
    no more than max_repetitions or the per-cell budget leave room for."""
    if not wl.repetitions_auto:
        return 0.0
    total, seen = 0.0, set()
    for r in runs:
        c = r.cell
        if not c.traced or c.cell_id in seen:
            continue
        seen.add(c.cell_id)
        rep_s = c.duration_s + c.warmup_s + overhead_s
        extra = min(ALLOWANCE_REPS, wl.max_repetitions - wl.repetitions) * rep_s
        total += max(0.0, min(extra, wl.rep_budget_s - wl.repetitions * rep_s))
    return total


# ---------------------------------------------------------------------------------------------
# The rule


@dataclass(frozen=True)
class History:
    """One cell's repetitions so far, from its rows."""
    reps_run: int                  # repetitions with a row: 1 + the highest repetition index
    values: tuple[float, ...]      # throughput (bits/s) of the valid measured repetitions
    measured: int                  # repetitions with a measured (ok) attempt
    spent_s: float
    rep_s: float                   # mean wall time of a measured attempt (nan: none yet)
    unsettled: tuple[int, ...] = ()   # repetitions without a measured attempt and attempts left (resume)
    skipped: bool = False


def decide(policy: Policy, h: History) -> str | None:
    """None: run another repetition; otherwise why the cell stops (the cell row's reps_stop)."""
    if not policy.auto:
        return FIXED
    if h.reps_run < policy.minimum:
        return None
    n, pct = t_ci_rel_pct(h.values)
    if n >= AUTO_MIN_REPS and pct <= policy.target_pct:
        return f"ci {pct:.1f} % <= {policy.target_pct:g} % (n={n})"
    if h.reps_run >= policy.maximum:
        return f"max {policy.maximum} reps" + (f" (ci {pct:.1f} % > {policy.target_pct:g} %, n={n})"
                                               if n >= AUTO_MIN_REPS else f" ({n} valid)")
    next_s = 0.0 if math.isnan(h.rep_s) else h.rep_s
    if h.spent_s + next_s > policy.budget_s:
        return (f"budget {h.spent_s:.0f} s spent of {policy.budget_s:g} s"
                + (f" (ci {pct:.1f} % > {policy.target_pct:g} %, n={n})" if n >= AUTO_MIN_REPS else f" ({n} valid)"))
    return None


def _valid(v) -> bool:
    """cells.valid: True counts; False, None and NA do not."""
    return v is True or (isinstance(v, np.bool_) and bool(v))


def history(cell_id: str, cells: list[dict], metrics: list[dict], attempts_per_rep: int) -> History:
    """The cell's History from run-dir rows (RunDir.cells / RunDir.metrics, in the order added).
    Metric rows carry no attempt number: the k-th throughput row of a repetition belongs to its
    k-th measured attempt (both are added together, one cell run at a time)."""
    rows = [r for r in cells if r.get("cell") == cell_id and _int(r.get("rep")) >= 0]
    if any(r.get("status") == "skipped" for r in rows):
        return History(0, (), 0, 0.0, math.nan, (), skipped=True)
    rows = [r for r in rows if r.get("status") in ("ok", "failed")]
    tput: dict[int, list[float]] = {}
    for m in metrics:
        if m.get("cell") == cell_id and m.get("metric") == THROUGHPUT and m.get("source") == "iperf3":
            tput.setdefault(_int(m.get("rep")), []).append(float(m["value"]))
    values, spent, walls, unsettled = [], 0.0, [], []
    reps = sorted({_int(r["rep"]) for r in rows})
    measured = 0
    for rep in reps:
        mine = [r for r in rows if _int(r["rep"]) == rep]
        ok = [r for r in mine if r["status"] == "ok"]
        for r in mine:
            if r["status"] == "ok" and _num(r.get("wall_s")) is not None:
                spent += _num(r["wall_s"])
                walls.append(_num(r["wall_s"]))
            elif r["status"] == "failed":
                spent += _num(r.get("duration_s")) or 0.0
        if not ok:
            if max(_int(r.get("attempt")) for r in mine) < attempts_per_rep:
                unsettled.append(rep)
            continue
        measured += 1
        vals = tput.get(rep, [])
        final = max(range(len(ok)), key=lambda i: _int(ok[i].get("attempt")))
        if len(vals) == len(ok) and _valid(ok[final].get("valid")):
            values.append(vals[final])
    return History(reps[-1] + 1 if reps else 0, tuple(values), measured, spent,
                   sum(walls) / len(walls) if walls else math.nan, tuple(unsettled))


def _int(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return -1


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


# ---------------------------------------------------------------------------------------------
# The runner's side


def mark(rd, cell_id: str, reason: str) -> None:
    """The stop reason on the cell's last row (and on no other row of it)."""
    rows = [r for r in rd.cells if r.get("cell") == cell_id]
    for r in rows:
        r["reps_stop"] = None
    if rows:
        rows[-1]["reps_stop"] = reason


def group_runs(group, rd, policy: Policy, attempts_per_rep: int) -> Iterator[CellRun]:
    """The cell runs of one boot group in execution order: the planned ones, then (auto) rounds of
    one more repetition of every unfinished traced cell. Lazy: each round is decided after the
    previous runs are recorded in ``rd``."""
    yield from group.runs
    cells = list({cr.cell.cell_id: cr.cell for cr in group.runs}.values())
    active = []
    for cell in cells:
        if policy.auto and cell.traced:
            active.append(cell)
        elif not history(cell.cell_id, rd.cells, (), attempts_per_rep).skipped:
            mark(rd, cell.cell_id, FIXED)
    rd.flush()
    tried: set[tuple[str, int]] = set()
    while active:
        nxt, changed = [], False
        for cell in active:
            h = history(cell.cell_id, rd.cells, rd.metrics, attempts_per_rep)
            if h.skipped:
                continue
            retry = [rep for rep in h.unsettled if (cell.cell_id, rep) not in tried]
            reason = None if retry else decide(policy, h)
            rep = retry[0] if retry else h.reps_run
            if reason is None and (cell.cell_id, rep) in tried:   # the runner recorded nothing for it
                reason = f"stopped: repetition {rep} left no row"
            if reason is not None:
                mark(rd, cell.cell_id, reason)
                changed = True
                continue
            tried.add((cell.cell_id, rep))
            nxt.append(CellRun(cell, rep))
        if changed:
            rd.flush()
        yield from nxt
        active = [cr.cell for cr in nxt]


def extra_cost(cells: list[dict], policy: Policy) -> dict:
    """The manifest's benchmarks entry: repetitions beyond the planned minimum and their wall time
    (measured attempts' wall_s; failed attempts record none)."""
    extra = [r for r in cells if policy.auto and r.get("status") in ("ok", "failed")
             and _int(r.get("rep")) >= policy.minimum]
    return {"extra_repetitions": len({(r["cell"], _int(r["rep"])) for r in extra}),
            "extra_repetitions_s": round(sum(_num(r.get("wall_s")) or 0.0 for r in extra), 2)}
