"""A/B comparison of two sets of runs, cell by cell (``xmitbench compare BASE CAND``).

Cells are matched by cell id (nic, queues, procs, streams, proto, msg_size); the
repetitions of each side (only status ok) are the samples. Cell runs that failed a validity
check (``valid`` false by ``harness.run.validity.is_valid``: bytes not conserved, a bottleneck
outside the path under test (peer, host I/O, application), no recovery after churn, an idle
queue where the workload requires spread) are left out and listed, unless ``include_invalid``.
A CPU-bound sender is not invalid: under TCG the valid cells are compared without the flag. Per cell and metric the table gives
both medians with bootstrap CIs, the relative delta with its bootstrap CI, the test used, p,
Cliff's delta, and a verdict (see ``stats.ab_test`` for the rules, including why fewer than 3
repetitions a side give "insufficient reps" rather than a p-value).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from harness.errors import InputError

from . import stats as S
from .load import WIDE_METRICS, Runs, replay_note

COMPARABLE = ("os", "kernel", "accel")


@dataclass
class Comparison:
    table: pd.DataFrame                  # one row per (cell, metric)
    only_base: list[str] = field(default_factory=list)
    only_cand: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)   # invalid cell runs left out, per side
    threshold: float = 0.05
    alpha: float = 0.05

    @property
    def regressions(self) -> pd.DataFrame:
        return self.table[self.table.verdict == "regression"]

    @property
    def regressed(self) -> bool:
        return not self.regressions.empty


def check_metric(metric: str, source: str = "--metric") -> str:
    if metric not in WIDE_METRICS:
        raise InputError(source, "", f"unknown metric {metric!r}; allowed: {', '.join(WIDE_METRICS)}")
    return metric


def compare_runs(base: Runs, cand: Runs, metrics: list[str] | tuple[str, ...] = ("throughput_bps",),
                 threshold: float = 0.05, alpha: float = 0.05, seed: int = S.DEFAULT_SEED,
                 match_on: str = "cell", include_invalid: bool = False) -> Comparison:
    """Per matching cell and metric: medians, CIs, delta, test, verdict."""
    return compare_frames(base.wide(), cand.wide(), metrics, threshold, alpha, seed, match_on, include_invalid)


def split_replay(w: pd.DataFrame, side: str) -> tuple[pd.DataFrame, list[str]]:
    """(live rows, a line saying how many replayed rows were left out). A replay of recorded
    guest outputs tests xmitbench's pipeline: it never counts as a run of that kernel."""
    if "replay" not in w or not w["replay"].fillna(False).astype(bool).any():
        return w, []
    rep = w["replay"].fillna(False).astype(bool)
    return w[~rep], [f"{side}: {int(rep.sum())} of {len(w)} cell runs left out: "
                     f"{replay_note(w.loc[rep, 'os'])}"]


def split_invalid(w: pd.DataFrame, side: str) -> tuple[pd.DataFrame, list[str]]:
    """(valid rows, one line per check saying how many cell runs it excluded on this side).
    Rows from run dirs without a validity flag count as valid."""
    if "valid" not in w or w.empty:
        return w, []
    bad = w["valid"].astype("boolean").fillna(True) == False  # noqa: E712 — nullable boolean
    if not bad.any():
        return w, []
    counts: dict[str, int] = {}
    for checks in (w.loc[bad, "failed_checks"] if "failed_checks" in w else [[]] * int(bad.sum())):
        for c in checks or ["unknown check"]:
            counts[c] = counts.get(c, 0) + 1
    why = ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))
    return w[~bad], [f"{side}: {int(bad.sum())} of {len(w)} cell runs invalid, left out ({why})"]


def compare_frames(wb: pd.DataFrame, wc: pd.DataFrame, metrics: list[str] | tuple[str, ...] = ("throughput_bps",),
                   threshold: float = 0.05, alpha: float = 0.05, seed: int = S.DEFAULT_SEED,
                   match_on: str = "cell", include_invalid: bool = False,
                   include_replay: bool = False) -> Comparison:
    """compare_runs over two wide tables (rows with status ok). Replayed rows are left out
    (and listed) unless ``include_replay``, which only the report's pipeline view sets, with
    the replay label on every row it draws."""
    for m in metrics:
        check_metric(m)
    excluded: list[str] = []
    if not include_replay:
        wb, rb = split_replay(wb, "base")
        wc, rc = split_replay(wc, "candidate")
        excluded += rb + rc
    if not include_invalid:
        wb, eb = split_invalid(wb, "base")
        wc, ec = split_invalid(wc, "candidate")
        excluded += eb + ec
    bcells, ccells = set(wb[match_on]), set(wc[match_on])
    common = sorted(bcells & ccells)
    warnings = []
    for col in COMPARABLE:
        vb, vc = sorted(set(wb[col].dropna().astype(str))), sorted(set(wc[col].dropna().astype(str)))
        if vb != vc:
            warnings.append(f"{col} differs: base {', '.join(vb) or '-'} vs candidate {', '.join(vc) or '-'}")
    if "tcg" in set(wb.accel.astype(str)) | set(wc.accel.astype(str)):
        warnings.append("accel=tcg: software-emulated CPU, these are not kernel results")
    rows = []
    for cell in common:
        b, c = wb[wb[match_on] == cell], wc[wc[match_on] == cell]
        for m in metrics:
            higher = WIDE_METRICS[m][1]
            r = S.ab_test(b[m].tolist(), c[m].tolist(), higher_is_better=higher, threshold=threshold,
                          alpha=alpha, seed=seed)
            sb, sc = S.summarize(b[m].tolist(), seed=seed), S.summarize(c[m].tolist(), seed=seed)
            rows.append({"cell": cell, "metric": m, "unit": WIDE_METRICS[m][0],
                         "n_base": r.n_base, "n_cand": r.n_cand,
                         "base_median": r.median_base, "base_ci_lo": sb.ci_lo, "base_ci_hi": sb.ci_hi,
                         "cand_median": r.median_cand, "cand_ci_lo": sc.ci_lo, "cand_ci_hi": sc.ci_hi,
                         "delta_pct": r.delta_rel * 100, "delta_ci_lo_pct": r.ci_lo * 100,
                         "delta_ci_hi_pct": r.ci_hi * 100, "test": r.test, "p_value": r.p_value,
                         "cliffs_delta": r.cliffs_delta, "hedges_g": r.hedges_g,
                         "significant": r.significant, "verdict": r.verdict, "note": r.note})
    table = pd.DataFrame(rows, columns=["cell", "metric", "unit", "n_base", "n_cand", "base_median", "base_ci_lo",
                                        "base_ci_hi", "cand_median", "cand_ci_lo", "cand_ci_hi", "delta_pct",
                                        "delta_ci_lo_pct", "delta_ci_hi_pct", "test", "p_value", "cliffs_delta",
                                        "hedges_g", "significant", "verdict", "note"])
    return Comparison(table, sorted(bcells - ccells), sorted(ccells - bcells), warnings, excluded, threshold, alpha)


def _fmt(v: float, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "bit/s":
        return f"{v / 1e9:.3f}G"
    if abs(v) >= 1e6:
        return f"{v:.3g}"
    return f"{v:.4g}"


def format_table(cmp: Comparison) -> str:
    """Plain-text table for the terminal (one line per cell and metric)."""
    t = cmp.table
    head = ["cell", "metric", "n", "base median [95% CI]", "cand median [95% CI]", "delta [95% CI]",
            "test", "p", "cliff", "verdict"]
    lines = []
    for _, r in t.iterrows():
        u = r.unit

        def ci(med, lo, hi):
            return f"{_fmt(med, u)} [{_fmt(lo, u)}, {_fmt(hi, u)}]" if not math.isnan(lo) else _fmt(med, u)
        delta = "-" if math.isnan(r.delta_pct) else f"{r.delta_pct:+.1f}%"
        if not math.isnan(r.delta_ci_lo_pct):
            delta += f" [{r.delta_ci_lo_pct:+.1f}, {r.delta_ci_hi_pct:+.1f}]"
        lines.append([r.cell, r.metric, f"{r.n_base}/{r.n_cand}",
                      ci(r.base_median, r.base_ci_lo, r.base_ci_hi), ci(r.cand_median, r.cand_ci_lo, r.cand_ci_hi),
                      delta, r.test, "-" if math.isnan(r.p_value) else f"{r.p_value:.3g}",
                      "-" if math.isnan(r.cliffs_delta) else f"{r.cliffs_delta:+.2f}", r.verdict])
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in lines]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Kernel against kernel (one or more run dirs holding cells of two or more guest kernels)
# ---------------------------------------------------------------------------------------
KERNEL_METRICS = ("throughput_bps", "requeues_per_mpkt", "lock_wait_ns_per_pkt", "cpu_pct_per_gbit")
CONFIG_COLS = ("nic", "queues", "procs", "streams", "proto", "msg_size", "stack", "churn", "traced")


def with_config_id(w: pd.DataFrame) -> pd.DataFrame:
    """A ``config`` column: the cell without its image, so one configuration on two kernels
    matches ("virtio-net.q2.p4.s1.tcp.m0.direct.none.True")."""
    w = w.copy()
    prefix = {"queues": "q", "procs": "p", "streams": "s", "msg_size": "m"}     # as in cell ids
    w["config"] = [".".join(f"{prefix.get(c, '')}{r[c]}" for c in CONFIG_COLS if c in w)
                   for _, r in w.iterrows()] if len(w) else []
    return w


def kernel_order(kernels) -> list[str]:
    """Kernel release strings oldest first (6.1 before 6.12: by version, not by text)."""
    from .mechanisms import kernel_version
    return sorted(set(map(str, kernels)), key=lambda k: (kernel_version(k) or (999, 999), k))


@dataclass
class KernelComparison:
    base_kernel: str
    cand_kernel: str
    comparison: Comparison
    mechanisms: list[tuple[str, str, object]]     # (config, metric, mechanisms.Mechanism)


def compare_kernels(runs: Runs, metrics=KERNEL_METRICS, threshold: float = 0.05, alpha: float = 0.05,
                    seed: int = S.DEFAULT_SEED, include_invalid: bool = False) -> list[KernelComparison]:
    """Every guest kernel of the runs against the oldest one, configuration by configuration
    (same NIC, queues, senders ...): per cell and metric the medians with CIs, the delta with
    its CI and the significance test of ``stats.ab_test``. Where a metric differs (significantly,
    or zero on one kernel and not on the other) and ``mechanisms`` knows why, the mechanism."""
    from .mechanisms import explain
    w = with_config_id(runs.wide())
    if "replay" in w:
        w = w[~w["replay"].fillna(False).astype(bool)]
    kernels = kernel_order(w.kernel.dropna()) if len(w) else []
    out = []
    for cand in kernels[1:]:
        base = kernels[0]
        cmp = compare_frames(w[w.kernel.astype(str) == base], w[w.kernel.astype(str) == cand], metrics,
                             threshold, alpha, seed, match_on="config", include_invalid=include_invalid)
        cmp.warnings = [x for x in cmp.warnings if not x.startswith("kernel differs")]
        found = []
        for _, r in cmp.table.iterrows():
            zero_vs_not = (r.base_median == 0) != (r.cand_median == 0)
            if not (r.significant or zero_vs_not):
                continue
            drivers = set(w.loc[w.config == r.cell, "driver"].dropna().astype(str))
            for d in sorted(drivers):
                found += [(r.cell, r.metric, m) for m in explain(r.metric, d, base, cand)]
        out.append(KernelComparison(base, cand, cmp, found))
    return out


def nonzero_reps(values) -> str:
    """'2/3 reps non-zero': for event counters that are 0 on one kernel (a test at n=3 has
    little power, but 0 in every repetition against non-zero in most is itself a finding)."""
    v = [x for x in values if x == x]
    return f"{sum(1 for x in v if x != 0)}/{len(v)} reps non-zero"


def holds_across_reps(r) -> str:
    """Does a difference hold across repetitions? 'yes' when the test over the repetitions is
    significant (p < alpha), noting when the two medians' 95 % CIs still overlap; 'no' when it
    is not; 'untested' below the repetitions a test needs."""
    if not r.n_base or not r.n_cand:
        return "no counter on " + ("either kernel" if not r.n_base and not r.n_cand else
                                   "the base kernel" if not r.n_base else "the candidate kernel")
    if r.test == "none":
        return "untested (n<3 a side)"
    apart = (not math.isnan(r.base_ci_hi) and not math.isnan(r.cand_ci_lo)
             and (r.cand_ci_lo > r.base_ci_hi or r.base_ci_lo > r.cand_ci_hi))
    if r.significant:
        return "yes" + ("" if apart else " (CIs overlap)")
    return "no"
