"""Figures and tables of analysis/race_reproducers.ipynb: the race-reproducer workloads
(bufring-race, lltx-stacking, control-churn), the probe effect of lock tracing, and the host's
view of QEMU's threads.

Every section has an ``applies_*`` test (which cells of the loaded runs it is about) and the
notebook shows a section only when that test finds cells; ``overview`` says which did not and
why. Figures go through ``report.show`` like every other figure (title, unit, caption).

Which cells a section is about:
* bufring-race: runs of a workload named ``bufring*``, or UDP cells with datagrams <= 128 B
  (small datagrams make the per-packet enqueue path, the one the buf_ring race is in, the
  bottleneck).
* lltx-stacking: runs of a workload named ``lltx*``, or any cell with a stacked device (vlan/vxlan/gre).
* control-churn: cells with ``churn`` other than none, and the churn=none cells of the same runs
  (the baseline they are compared with).
* probe effect: a traced cell and its ``.untraced`` twin (``workload.probe_effect = true``).
* host-side view: any cell with ``host_thread_cpu_s`` rows.
"""
from __future__ import annotations

import html
import math
from typing import Sequence

import numpy as np
import pandas as pd

from harness.run.workload import WARMUP_SUFFIX

from . import stats as S
from .load import KEY, UNTRACED_SUFFIX, Runs, churn_events, host_cpu_table, wait_lock_rows
from .report import _all_zero_note, _errbars, _html, _label, _short, label_cols, note

SMALL_UDP_BYTES = 128
STACK_ORDER = ("direct", "vlan", "vxlan", "gre")
CHURN_ORDER = ("none", "link-flap", "mtu", "queues")
KIND_ORDER = ("vCPU", "I/O", "main loop + other", "all threads (unnamed)")
KIND_COLOR = {"vCPU": "C0", "I/O": "C2", "main loop + other": "C7", "all threads (unnamed)": "C5"}


# ---------------------------------------------------------------------------------------
# Which cells, and the section headings
# ---------------------------------------------------------------------------------------
def _all(runs: Runs) -> pd.DataFrame:
    """Every cell run (last attempt), any status, with the wide-table numbers of the ok ones."""
    return runs.wide(only_ok=False)


def _workload_is(w: pd.DataFrame, prefix: str) -> pd.Series:
    return w.workload.astype(str).str.lower().str.startswith(prefix)


def bufring_cells(runs: Runs) -> pd.DataFrame:
    w = _all(runs)
    small_udp = (w.proto.astype(str) == "udp") & (pd.to_numeric(w.msg_size, errors="coerce") <= SMALL_UDP_BYTES)
    return w[_workload_is(w, "bufring") | small_udp].reset_index(drop=True)


def lltx_cells(runs: Runs) -> pd.DataFrame:
    w = _all(runs)
    stacked_runs = set(w.loc[w["stack"].astype(str) != "direct", "run_id"])
    sel = _workload_is(w, "lltx") | w.run_id.isin(stacked_runs)
    return w[sel & (w.churn.astype(str) == "none")].reset_index(drop=True)


def churn_cells(runs: Runs) -> pd.DataFrame:
    w = _all(runs)
    churn_runs = set(w.loc[w.churn.astype(str) != "none", "run_id"])
    return w[w.run_id.isin(churn_runs)].reset_index(drop=True)


def probe_pairs(runs: Runs) -> pd.DataFrame:
    """Rows of traced cells that have an untraced twin in the same run, and the twins."""
    w = _all(runs)
    un = w[~w.traced.astype(bool)]
    if un.empty:
        return w.iloc[0:0]
    twins = {(r, c[: -len(UNTRACED_SUFFIX)]) for r, c in zip(un.run_id, un.cell.astype(str))
             if c.endswith(UNTRACED_SUFFIX)}
    base = [(r, c) in twins for r, c in zip(w.run_id, w.cell.astype(str))]
    return pd.concat([w[base], un]).reset_index(drop=True)


def applicable(runs: Runs) -> dict[str, str]:
    """section -> "" when it applies to these runs, else why not."""
    h = host_cpu_table(runs.metrics, runs.cells)
    return {
        "bufring-race": "" if len(bufring_cells(runs)) else
        f"no bufring-race cells (workload bufring*, or UDP datagrams <= {SMALL_UDP_BYTES} B)",
        "lltx-stacking": "" if len(lltx_cells(runs)) else "no lltx-stacking cells (workload lltx*, or a stacked device)",
        "control-churn": "" if len(churn_cells(runs)) else "no cell with churn other than none",
        "probe effect": "" if len(probe_pairs(runs)) else
        "no traced cell with an .untraced twin (set probe_effect = true in the workload)",
        "host-side view": "" if len(h) else "no host_thread_cpu_s rows (run dirs from before that metric)",
        "order effect": "" if "status" in runs.cells and (runs.cells.status == "warmup").any() else
        "no warm-up runs (run dirs from before every boot ran one)",
    }


def overview(runs: Runs) -> None:
    a = applicable(runs)
    shown = [k for k, v in a.items() if not v]
    absent = [f"{k} ({v})" for k, v in a.items() if v]
    note("Sections for these runs: " + (", ".join(shown) or "none") + "."
         + (" Not shown: " + "; ".join(absent) + "." if absent else ""))


def heading(title: str, text: str = "") -> None:
    """A section heading written from a code cell (so it appears only with its section)."""
    _html(f"<h3>{html.escape(title)}</h3>" + (f"<p>{html.escape(text)}</p>" if text else ""))


# ---------------------------------------------------------------------------------------
# Small shared pieces
# ---------------------------------------------------------------------------------------
def _figure(nrows: int, ncols: int, w: float, h: float):
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(nrows, ncols, figsize=(w, h), squeeze=False)
    for a in axes.ravel():
        a.grid(True, axis="y", alpha=0.3)
    return fig, list(axes.ravel())


def _num(v: float) -> str:
    """3 significant digits without an exponent for the numbers these tables hold."""
    if pd.isna(v):
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _med_range(s: pd.Series, fmt: str | None = None) -> str:
    """``median (min to max)`` over repetitions; just the value when they agree or n = 1."""
    f = fmt.format if fmt else _num
    v = pd.to_numeric(s, errors="coerce").dropna()
    if v.empty:
        return "-"
    if len(v) == 1 or v.min() == v.max():
        return f(v.median())
    return f"{f(v.median())} ({f(v.min())} to {f(v.max())})"


def measured_only(w: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """Rows of the groups (by ``cols``) with at least one ok repetition."""
    if w.empty:
        return w
    keys = w[w.status == "ok"][list(cols)].drop_duplicates()
    return w.merge(keys, on=list(cols), how="inner")


def not_measured(w: pd.DataFrame, cols: Sequence[str]) -> str:
    """"Not measured: <configs> (<status>: <reason>); ..." for groups without an ok repetition."""
    if w.empty:
        return ""
    okk = set(map(tuple, w[w.status == "ok"][list(cols)].astype(str).to_numpy()))
    miss = w[[tuple(r) not in okk for r in w[list(cols)].astype(str).to_numpy()]]
    if miss.empty:
        return ""
    parts = []
    for (status, reason), g in miss.groupby([miss.status.astype(str), miss.reason.fillna("").astype(str)], sort=True):
        cfgs = sorted({_label(r, list(cols)) for _, r in g.iterrows()})
        parts.append(f"{', '.join(cfgs)} ({status}: {_short(reason, 160) or 'no reason recorded'})")
    return "Not measured: " + "; ".join(parts) + "."


def _status_word(g: pd.DataFrame) -> str:
    st = set(g.status.astype(str))
    return "failed" if "failed" in st else "skipped" if "skipped" in st else "no data"


def _reasons(g: pd.DataFrame, n: int = 140) -> str:
    rs = sorted(set(g.reason.dropna().astype(str)) - {""})
    return _short("; ".join(rs), n) if rs else ""


def _grouped_panel(ax, w: pd.DataFrame, group_cols: Sequence[str], series_col: str, series_vals: Sequence,
                   metric: str, title: str, ylabel: str, scale: float = 1.0, series_label=str,
                   colors: dict | None = None) -> list[float]:
    """Bars of the median over ok repetitions per (group, series value), 95% bootstrap CI
    whiskers, one dot per repetition. A (group, series) combination whose runs were all
    skipped/failed is marked with that word, one whose driver has no such counter with "n/a".
    Returns the plotted values (for the all-zero note)."""
    import matplotlib.transforms as mt
    groups = w[list(group_cols)].drop_duplicates().sort_values(list(group_cols)).reset_index(drop=True)
    k = len(series_vals)
    width = 0.8 / max(k, 1)
    tr = mt.blended_transform_factory(ax.transData, ax.transAxes)
    vals: list[float] = []
    drawn = set()
    for gi, (_, g) in enumerate(groups.iterrows()):
        sel = (w[list(group_cols)] == g.values).all(axis=1)
        for si, sv in enumerate(series_vals):
            rows = w[sel & (w[series_col].astype(str) == str(sv))]
            if rows.empty:
                continue
            x = gi + (si - (k - 1) / 2) * width
            ok = rows[rows.status == "ok"]
            y = pd.to_numeric(ok[metric], errors="coerce").dropna() * scale if len(ok) else pd.Series(dtype=float)
            color = (colors or {}).get(sv, f"C{si % 10}")
            if y.empty:
                word = "n/a" if len(ok) else _status_word(rows)
                ax.text(x, 0.03, word, transform=tr, rotation=90, ha="center", va="bottom", fontsize=8,
                        color="#666")
                continue
            s = S.summarize(y.tolist())
            err = _errbars(pd.DataFrame({"median": [s.median], "ci_lo": [s.ci_lo], "ci_hi": [s.ci_hi]}))
            lab = series_label(sv) if sv not in drawn else None
            drawn.add(sv)
            ax.bar([x], [s.median], width * 0.92, yerr=err, capsize=3, color=color, alpha=0.85, label=lab)
            ax.scatter(np.full(len(y), x) + np.linspace(-width * 0.25, width * 0.25, len(y)), y, s=10,
                       color="k", zorder=3)
            vals += [s.median, *y.tolist()]
    ax.set_xticks(np.arange(len(groups)), [_label(r, list(group_cols), multiline=True) for _, r in groups.iterrows()],
                  fontsize=8)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    fin = [v for v in vals if np.isfinite(v)]
    top, bottom = max(fin + [0.0]), min(fin + [0.0])
    pad = 0.15 * max(abs(top), abs(bottom)) or 1.0
    ax.set_ylim(bottom - pad if bottom < 0 else 0, top + pad if top > 0 else pad)
    if bottom < 0:
        ax.axhline(0, color="k", lw=0.8)
    if drawn:
        ax.legend(fontsize=7)
    _all_zero_note(ax, vals)
    return vals


# ---------------------------------------------------------------------------------------
# bufring-race
# ---------------------------------------------------------------------------------------
BUFRING_METRICS = [
    ("requeues_per_mpkt", "qdisc requeues", "requeues per million TX packets [1/Mpkt]"),
    ("drops_per_mpkt", "drops: root qdisc + driver ring", "drops per million TX packets [1/Mpkt]"),
    ("restarts_per_mpkt", "TX queue restarts (stopped, woken)", "restarts per million TX packets [1/Mpkt]"),
    ("ring_stalls_per_mpkt", "TX ring full", "ring-full events per million TX packets [1/Mpkt]"),
    ("ring_drops_per_mpkt", "ring drops (FreeBSD buf_ring / mp_ring)", "ring drops per million TX packets [1/Mpkt]"),
    ("unexplained_pct", "conservation: unexplained bytes", "unexplained / application bytes [%]"),
    ("silent_pct", "unexplained after counted drops (silent loss)", "silent loss / application bytes [%]"),
]


def _bufring_frame(runs: Runs) -> pd.DataFrame:
    w = bufring_cells(runs).copy()
    if w.empty:
        return w
    w["ring_drops_per_mpkt"] = S.per_million(w.tx_drops_ring, w.tx_packets)
    w["tx_mpps"] = S.per_packet(w.tx_packets, w.measured_s) / 1e6
    # for UDP every counted drop is one datagram of msg_size payload: what is left unexplained
    # after them was lost where no counter looks (the buf_ring race's signature)
    dropped = w[["qdisc_drops", "tx_drops_ring"]].sum(axis=1, min_count=1)
    udp = w.proto.astype(str) == "udp"
    silent = w.unexplained_bytes - dropped.fillna(0) * pd.to_numeric(w.msg_size, errors="coerce")
    w["silent_pct"] = np.where(udp, S.per_packet(silent, w.conservation_app_bytes) * 100, np.nan)
    return w


def bufring_table(runs: Runs) -> pd.DataFrame:
    """Per OS, NIC and TX queue count: medians (min to max) over the ok repetitions."""
    w = _bufring_frame(runs)
    if w.empty:
        return pd.DataFrame()
    w = measured_only(w, ["os", "nic", "queues"])
    by = [c for c in ["workload", "os", "kernel", "nic", "queues", "procs", "msg_size"] if c in w]
    w = w.assign(kernel=w.groupby(["os"])["kernel"].transform(lambda k: k.ffill().bfill()))
    rows = []
    for keys, g in w.groupby(by, sort=True, dropna=False):
        ok = g[g.status == "ok"]
        row = {**dict(zip(by, keys)), "reps ok": f"{len(ok)}/{len(g)}"}
        if ok.empty:
            row["note"] = f"{_status_word(g)}: {_reasons(g, 90)}"
            rows.append(row)
            continue
        row.update({
            "TX [Mpps]": _med_range(ok.tx_mpps, "{:.3g}"),
            "qdisc drops [packets]": _med_range(ok.qdisc_drops),
            "drops [1/Mpkt]": _med_range(ok.drops_per_mpkt),
            "requeues [1/Mpkt]": _med_range(ok.requeues_per_mpkt),
            "restarts [1/Mpkt]": _med_range(ok.restarts_per_mpkt),
            "ring full [1/Mpkt]": _med_range(ok.ring_stalls_per_mpkt),
            "ring drops (buf_ring/mp_ring) [packets]": _med_range(ok.tx_drops_ring),
            "unexplained [% of app bytes]": _med_range(ok.unexplained_pct, "{:+.3f}"),
            "silent after counted drops [%]": _med_range(ok.silent_pct, "{:+.3f}"),
            "note": "",
        })
        rows.append(row)
    out = pd.DataFrame(rows)
    if "note" in out and out["note"].fillna("").eq("").all():
        out = out.drop(columns="note")
    # a column that is "-" in every row is a counter no driver here has: leave it out
    return out[[c for c in out.columns if not (out[c].astype(str).isin(["-", "nan", ""]).all() and c != "reps ok")]]


def bufring_not_measured(runs: Runs) -> str:
    return not_measured(bufring_cells(runs), ["os", "nic", "queues"])


def fig_bufring(runs: Runs):
    """Single vs multi queue side by side, per NIC: one panel per counter that exists."""
    w = _bufring_frame(runs)
    if w.empty or (w.status == "ok").sum() == 0:
        return None
    ok = w[w.status == "ok"]
    grp = [c for c in ["workload", "os", "kernel", "nic"] if c == "nic" or ok[c].astype(str).nunique() > 1]
    w = measured_only(w, [c for c in grp if c != "kernel"])
    panels = [m for m in BUFRING_METRICS if pd.to_numeric(ok[m[0]], errors="coerce").notna().any()]
    if not panels:
        return None
    ncols = 1 if len(panels) == 1 else 2 if len(panels) <= 4 else 3
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(nrows, ncols, 11 if ncols < 3 else 13, 3.6 * nrows)
    queues = sorted(int(q) for q in w.queues.dropna().unique())
    grp = [c for c in grp if c != "kernel"]
    colors = {q: ("C1" if q == 1 else f"C{(i + 2) % 10}") for i, q in enumerate(queues)}
    for ax, (m, title, ylabel) in zip(axes, panels):
        _grouped_panel(ax, w, grp, "queues", queues, m, title, ylabel,
                       series_label=lambda q: f"{q} TX queue" + ("s" if int(q) > 1 else ""), colors=colors)
        ax.set_xlabel("NIC (bars: TX queues; dots: repetitions; whiskers: 95% bootstrap CI)", fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    procs = sorted(int(p) for p in w.procs.dropna().unique())
    fig.suptitle(f"bufring-race: {', '.join(map(str, procs))} pinned UDP senders into one TX queue vs several",
                 fontsize=11)
    fig.tight_layout()
    return fig


def bufring_missing(runs: Runs) -> str:
    """Which counters no driver in these cells has (said once instead of empty panels)."""
    w = _bufring_frame(runs)
    ok = w[w.status == "ok"] if len(w) else w
    if ok.empty:
        return ""
    miss = [title for m, title, _ in BUFRING_METRICS if pd.to_numeric(ok[m], errors="coerce").isna().all()]
    drivers = ", ".join(sorted(set(ok.driver.dropna().astype(str)))) if "driver" in ok else "?"
    return f"No counter for: {', '.join(miss)} (drivers here: {drivers})." if miss else ""


# ---------------------------------------------------------------------------------------
# lltx-stacking
# ---------------------------------------------------------------------------------------
def _stacks(w: pd.DataFrame) -> list[str]:
    have = set(w["stack"].astype(str))
    return [s for s in STACK_ORDER if s in have] + sorted(have - set(STACK_ORDER))


def fig_lltx(runs: Runs):
    w = lltx_cells(runs)
    if w.empty or (w.status == "ok").sum() == 0:
        return None
    fig, axes = _figure(1, 2, 11, 4.2)
    ok = w[w.status == "ok"]
    grp = [c for c in ["workload", "os", "nic", "procs"] if c in ("nic", "procs") or ok[c].astype(str).nunique() > 1]
    w = measured_only(w, grp)
    stacks = _stacks(w)
    colors = {"direct": "C0", "vlan": "C1", "vxlan": "C2", "gre": "C3"}
    for ax, (m, title, ylabel) in zip(axes, [
            ("lock_wait_ns_per_pkt", "contended-lock wait per TX packet", "lock wait per TX packet [ns/packet]"),
            ("requeues_per_mpkt", "qdisc requeues", "requeues per million TX packets [1/Mpkt]")]):
        _grouped_panel(ax, w, grp, "stack", stacks, m, title, ylabel, colors=colors)
        ax.set_xlabel("NIC, sender processes p (bars: stack; dots: repetitions)", fontsize=8)
    fig.suptitle("lltx-stacking: sending directly on the NIC vs through a VLAN / VXLAN / GRE device on it", fontsize=11)
    fig.tight_layout()
    return fig


def lltx_table(runs: Runs) -> pd.DataFrame:
    w = measured_only(lltx_cells(runs), ["os", "nic", "procs"])
    if w.empty:
        return pd.DataFrame()
    by = [c for c in ["os", "nic", "procs", "stack"] if c in w]
    rows = []
    for keys, g in w.groupby(by, sort=True, dropna=False):
        ok = g[g.status == "ok"]
        row = {**dict(zip(by, keys)), "reps ok": f"{len(ok)}/{len(g)}"}
        if ok.empty:
            row["status"] = _status_word(g)
        else:
            row.update({"Gbit/s": _med_range(ok.gbit_s, "{:.3g}"),
                        "lock wait [ns/packet]": _med_range(ok.lock_wait_ns_per_pkt),
                        "requeues [1/Mpkt]": _med_range(ok.requeues_per_mpkt),
                        "contentions": _med_range(ok.lock_contentions),
                        "stacked dev TX [packets]": (_med_range(ok.stack_tx_packets, "{:.3g}")
                                                     if g["stack"].iloc[0] != "direct" else ""),
                        "peer end": _short(str(ok.stack_peer.dropna().iloc[0]), 60)
                        if "stack_peer" in ok and ok.stack_peer.notna().any() else "", "status": "ok"})
        rows.append(row)
    out = pd.DataFrame(rows)
    out["_o"] = out["stack"].map({s: i for i, s in enumerate(STACK_ORDER)}).fillna(9)
    out = out.sort_values([c for c in ["os", "nic", "procs", "_o"] if c in out])
    return out.drop(columns="_o").reset_index(drop=True)


def lltx_lock_table(runs: Runs, top: int = 5) -> pd.DataFrame:
    """Top lock callers per stack (ok cells): wait per cell run and share of the stack's wait."""
    w = lltx_cells(runs)
    ok = w[w.status == "ok"][KEY + ["stack"]]
    lk = wait_lock_rows(runs.locks)
    if ok.empty or lk.empty:
        return pd.DataFrame()
    lk = lk.merge(ok, on=KEY, how="inner")
    if lk.empty:
        return pd.DataFrame()
    nruns = ok.groupby("stack").size()
    g = lk.groupby(["stack", "lock", "caller", "kind"], dropna=False).agg(
        contentions=("contentions", "sum"), wait_ns=("wait_ns_total", "sum")).reset_index()
    tot = g.groupby("stack")["wait_ns"].transform("sum")
    g["wait ms per cell run"] = g.wait_ns / 1e6 / g["stack"].map(nruns)
    g["share of the stack's wait [%]"] = g.wait_ns / tot.where(tot > 0) * 100
    g["contentions per cell run"] = g.contentions / g["stack"].map(nruns)
    g["_o"] = g["stack"].map({s: i for i, s in enumerate(STACK_ORDER)}).fillna(9)
    g = g.sort_values(["_o", "wait_ns"], ascending=[True, False]).groupby("stack", sort=False).head(top)
    g["lock"] = g["lock"].map(lambda s: _short(s, 60))
    return g[["stack", "lock", "caller", "kind", "contentions per cell run", "wait ms per cell run",
              "share of the stack's wait [%]"]].reset_index(drop=True)


def lltx_skipped(runs: Runs) -> pd.DataFrame:
    """Stacked (vlan/vxlan/gre) cells that did not run: one row per (stack, status, reason) with the
    cells (os nic p) it hit and how many cell runs."""
    w = lltx_cells(runs)
    s = w[(w["stack"].astype(str) != "direct") & (w.status != "ok")]
    if s.empty:
        return pd.DataFrame()
    rows = []
    for (stack, status, reason), g in s.groupby([s["stack"].astype(str), s.status.astype(str),
                                                 s.reason.fillna("").astype(str)], sort=False):
        cells = sorted({_label(r, ["os", "nic", "procs"]) for _, r in g.iterrows()})
        rows.append({"stack": stack, "status": status, "cell runs": len(g), "cells (os nic p)": ", ".join(cells),
                     "reason": _short(reason, 200) or "no reason recorded"})
    out = pd.DataFrame(rows)
    out["_o"] = out["stack"].map({s: i for i, s in enumerate(STACK_ORDER)}).fillna(9)
    return out.sort_values(["_o", "reason"]).drop(columns="_o").reset_index(drop=True)


def lltx_skipped_note(runs: Runs) -> str:
    w = lltx_cells(runs)
    st = w[w["stack"].astype(str) != "direct"]
    if st.empty or (st.status != "ok").sum() == 0:
        return ""
    n_ok, n = int((st.status == "ok").sum()), len(st)
    reasons = lltx_skipped(runs)
    head = (f"No stacked (vlan/vxlan/gre) cell ran ({n} cell runs): only the direct cells are measured below."
            if n_ok == 0 else f"{n - n_ok} of {n} stacked (vlan/vxlan/gre) cell runs did not run.")
    # the reasons that hit the Linux stacked cells (the ones that could have run) first
    lin = reasons[reasons["cells (os nic p)"].str.contains("linux")]
    first = (lin if len(lin) else reasons).drop_duplicates("stack")
    top = "; ".join(f"{r.stack}: {r.reason}" for _, r in first.iterrows())
    return head + (f" Why: {top}." if top else "") + " Every skipped stacked cell and its reason: table below."


# ---------------------------------------------------------------------------------------
# control-churn
# ---------------------------------------------------------------------------------------
def _churns(w: pd.DataFrame) -> list[str]:
    have = set(w.churn.astype(str))
    return [c for c in CHURN_ORDER if c in have] + sorted(have - set(CHURN_ORDER))


def fig_churn_recovery(runs: Runs):
    ev = churn_events(runs)
    ev = ev[ev.status == "ok"] if len(ev) else ev
    if ev.empty:
        return None
    fig, axes = _figure(1, 1, 10, 4.4)
    ax = axes[0]
    acts = _churns(ev)
    gaps = ev.sort_values("event").groupby(KEY)["event_time_s"].diff().dropna()
    top_rec = float(ev.recovery_s.max()) if ev.recovery_s.notna().any() else 0.0
    ceiling = max(top_rec, float(gaps.median()) if len(gaps) else 0.0) * 1.25 or 1.0
    markers = "osD^v<>"
    for ai, act in enumerate(acts):
        e = ev[ev.churn.astype(str) == act]
        reps = sorted(e.rep.dropna().unique())
        off = (ai - (len(acts) - 1) / 2) * 0.08
        for ri, rep in enumerate(reps):
            er = e[e.rep == rep].sort_values("event")
            color = f"C{(CHURN_ORDER.index(act) if act in CHURN_ORDER else ai) % 10}"
            ax.plot(er.event + off, er.recovery_s, marker=markers[ri % len(markers)], color=color, lw=1.2,
                    label=f"{act}, rep {rep}")
            miss = er[~er.recovered]
            if len(miss):
                ax.scatter(miss.event + off, np.full(len(miss), ceiling), marker="x", s=60, color=color, zorder=4)
    if (~ev.recovered).any():
        ax.text(0.01, 0.97, "x at the top: throughput never came back within the cell (not recovered)",
                transform=ax.transAxes, fontsize=8, va="top", color="#b00020")
    if len(gaps):
        ax.axhline(float(gaps.median()), color="#888", ls=":", lw=1,
                   label=f"time to the next event ({gaps.median():.1f} s)")
    ax.set_xticks(sorted(ev.event.unique()))
    ax.set_xlim(0.6, ev.event.max() + 0.4)
    ax.set_ylim(0, ceiling * 1.1)
    thr = ev.threshold.dropna()
    pct = f"{float(thr.iloc[0]) * 100:.0f}%" if len(thr) else "80%"
    ax.set_title(f"control-churn: time until the senders' throughput is back to {pct} of its pre-churn median")
    ax.set_xlabel("reconfiguration event of the cell [index]")
    ax.set_ylabel("recovery time [s] (0.5 s iperf3 intervals)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="churn action, repetition",
              title_fontsize=7)
    return fig


def churn_survival(runs: Runs) -> pd.DataFrame:
    """Per churn action: how the cell runs fared, events recovered, validity, and why not."""
    w = churn_cells(runs)
    if w.empty:
        return pd.DataFrame()
    ev = churn_events(runs)
    by = [c for c in ["os", "nic", "queues", "procs", "churn"] if c in w]
    rows = []
    for keys, g in w.groupby(by, sort=False, dropna=False):
        ok = g[g.status == "ok"]
        e = ev[ev.cell.isin(g.cell) & ev.run_id.isin(g.run_id) & (ev.status == "ok")] if len(ev) else ev
        rec = e.recovery_s.dropna() if len(e) else pd.Series(dtype=float)
        rows.append({**dict(zip(by, keys)),
                     "ok": len(ok), "failed": int((g.status == "failed").sum()),
                     "skipped": int((g.status == "skipped").sum()),
                     "events recovered": f"{int(e.recovered.sum())}/{len(e)}" if len(e) else "-",
                     "recovery max [s]": f"{rec.max():.2f}" if len(rec) else "-",
                     "valid reps": f"{int(ok.valid.fillna(False).astype(bool).sum())}/{len(ok)}" if len(ok) else "-",
                     "conservation ok": (f"{int((ok.conservation_ok == True).sum())}/{len(ok)}"  # noqa: E712
                                         if len(ok) else "-"),
                     "why failed / skipped": _reasons(g[g.status != "ok"], 100)})
    out = pd.DataFrame(rows)
    out["_o"] = out.churn.map({c: i for i, c in enumerate(CHURN_ORDER)}).fillna(9)
    return out.sort_values([c for c in ["os", "_o"] if c in out]).drop(columns="_o").reset_index(drop=True)


def _churn_ok(runs: Runs) -> pd.DataFrame:
    from harness.run.validity import HEADER_BYTES, STACK_OVERHEAD
    w = churn_cells(runs)
    w = w[w.status == "ok"].copy()
    if w.empty:
        return w
    hdr = w.proto.astype(str).map(HEADER_BYTES).fillna(0) + w["stack"].astype(str).map(STACK_OVERHEAD).fillna(0)
    w["ratio_if"] = (w.if_tx_bytes - w.if_tx_packets * hdr) / w.app_bytes
    w["ratio_peer"] = (w.peer_rx_bytes - w.peer_rx_packets * hdr) / w.app_bytes
    w["min_after_pct"] = S.per_packet(w.churn_min_after_bps, w.churn_baseline_bps) * 100
    return w


def fig_churn_impact(runs: Runs):
    """Per churn action: throughput (pre-churn baseline, worst interval after the first event,
    whole cell), TCP retransmits, and byte conservation by three counters."""
    w = _churn_ok(runs)
    if w.empty:
        return None
    acts = _churns(w)
    fig, axes = _figure(1, 3, 13, 4.4)
    x = np.arange(len(acts))
    # 1. throughput
    ax = axes[0]
    series = [("churn_baseline_bps", "pre-churn median interval", "C0"),
              ("churn_min_after_bps", "worst interval after the 1st event", "C3"),
              ("throughput_bps", "whole cell (iperf3 end sum)", "C7")]
    width = 0.8 / len(series)
    vals = []
    for si, (col, lab, color) in enumerate(series):
        med, pts = [], []
        for a in acts:
            v = pd.to_numeric(w.loc[w.churn.astype(str) == a, col], errors="coerce").dropna() / 1e9
            med.append(v.median() if len(v) else np.nan)
            pts.append(v)
        xs = x + (si - 1) * width
        ax.bar(xs, np.nan_to_num(med), width * 0.92, color=color, alpha=0.85, label=lab)
        for xi, v in zip(xs, pts):
            ax.scatter(np.full(len(v), xi), v, s=10, color="k", zorder=3)
        vals += [m for m in med if not pd.isna(m)]
    ax.set_xticks(x, acts)
    ax.set_title("throughput around the churn", fontsize=10)
    ax.set_xlabel("churn action (none: no reconfiguration; bars: median, dots: reps)", fontsize=8)
    ax.set_ylabel("throughput [Gbit/s]")
    ax.legend(fontsize=7)
    # 2. retransmits
    ax = axes[1]
    rt = [pd.to_numeric(w.loc[w.churn.astype(str) == a, "tcp_retransmits"], errors="coerce").dropna() for a in acts]
    ax.bar(x, [v.median() if len(v) else 0 for v in rt], 0.6, color="C1", alpha=0.85)
    for xi, v in zip(x, rt):
        ax.scatter(np.full(len(v), xi), v, s=10, color="k", zorder=3)
    ax.set_xticks(x, acts)
    ax.set_title("TCP retransmissions", fontsize=10)
    ax.set_xlabel("churn action", fontsize=8)
    ax.set_ylabel("retransmitted segments per cell run [count]")
    _all_zero_note(ax, pd.concat(rt) if rt else [])
    # 3. conservation by three counters
    ax = axes[2]
    cons = [("conservation_ratio", "NIC per-queue counters (validity check)", "C0", "o"),
            ("ratio_if", "interface total (ip -s link)", "C2", "s"),
            ("ratio_peer", "peer tap RX", "C4", "^")]
    allr = []
    for ci, (col, lab, color, mk) in enumerate(cons):
        for ai, a in enumerate(acts):
            v = pd.to_numeric(w.loc[w.churn.astype(str) == a, col], errors="coerce").dropna()
            ax.scatter(np.full(len(v), ai + (ci - 1) * 0.2), v, color=color, marker=mk, s=28,
                       label=lab if ai == 0 else None)
            allr += v.tolist()
    ax.axhline(1.0, color="k", ls="--", lw=0.8)
    ax.set_xticks(x, acts)
    lo = min(allr + [0.97])
    ax.set_ylim(min(0.95, lo - 0.03), 1.05)
    ax.set_title("byte conservation (1.0 = every app byte counted)", fontsize=10)
    ax.set_xlabel("churn action", fontsize=8)
    ax.set_ylabel("counted payload / app bytes [ratio]")
    ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("control-churn: what the reconfigurations cost the data path", fontsize=11)
    fig.tight_layout()
    return fig


def churn_counter_note(runs: Runs) -> str:
    """Say so when the per-queue NIC counters disagree with the interface total and the peer."""
    w = _churn_ok(runs)
    if w.empty:
        return ""
    bad = w[(w.conservation_ratio < 0.97) & ((w.ratio_if - 1).abs() <= 0.03) & ((w.ratio_peer - 1).abs() <= 0.03)]
    if bad.empty:
        return ""
    acts = ", ".join(sorted(set(bad.churn.astype(str))))
    return (f"churn {acts}: the conservation check (per-queue NIC counters) finds only "
            f"{bad.conservation_ratio.min():.2f} to {bad.conservation_ratio.max():.2f} of the application bytes, "
            f"but the interface total (ip -s link) and the peer's tap RX account for "
            f"{bad.ratio_if.min():.3f} to {bad.ratio_if.max():.3f}: nothing was lost; the per-queue counters of a "
            "TX queue removed by ethtool -L are missing from the after snapshot. Those cell runs are flagged "
            "invalid (conservation, queue spread) for that counting reason, not for lost packets.")


# ---------------------------------------------------------------------------------------
# probe effect
# ---------------------------------------------------------------------------------------
def probe_table(runs: Runs) -> pd.DataFrame:
    """Per traced cell with an untraced twin: throughput medians and the difference."""
    w = probe_pairs(runs)
    ok = w[w.status == "ok"]
    if ok.empty:
        return pd.DataFrame()
    rows = []
    for (rid, cell), un in ok[~ok.traced.astype(bool)].groupby(["run_id", "cell"]):
        base = cell[: -len(UNTRACED_SUFFIX)]
        tr = ok[(ok.run_id == rid) & (ok.cell == base)]
        if tr.empty:
            continue
        t, u = tr.throughput_bps.median(), un.throughput_bps.median()
        r0 = tr.iloc[0]
        rows.append({"run_id": rid, "cell": base, "label": _label(r0, [c for c in label_cols(tr) if c != "traced"]),
                     "traced Gbit/s": t / 1e9, "traced reps": len(tr),
                     "traced range Gbit/s": _med_range(tr.gbit_s, "{:.3g}"),
                     "untraced Gbit/s": u / 1e9, "untraced reps": len(un),
                     "traced vs untraced [%]": (t / u - 1) * 100 if u else np.nan,
                     "untraced within traced range": bool(tr.throughput_bps.min() <= u <= tr.throughput_bps.max()),
                     "lock wait traced [ns/packet]": tr.lock_wait_ns_per_pkt.median()})
    return pd.DataFrame(rows)


def order_table(runs: Runs) -> pd.DataFrame:
    """The order effect: each boot's warm-up (the first cell run after the boot, status
    `warmup`, left out of every other statistic) against the later measured runs of the same
    configuration on that run, untraced ones first (the warm-up is untraced too)."""
    w = runs.wide(only_ok=False)
    if w.empty or "status" not in w:
        return pd.DataFrame()
    warm = w[w.status == "warmup"]
    ok = w[w.status == "ok"]
    rows = []
    for (rid, cell), wu in warm.groupby(["run_id", "cell"]):
        base = cell[: -len(WARMUP_SUFFIX)]
        # later runs of the same configuration on this run: the untraced twin and the traced
        # repetitions (the probe effect is its own table; here it only widens the CI)
        same = {base, base[: -len(UNTRACED_SUFFIX)] if base.endswith(UNTRACED_SUFFIX) else base + UNTRACED_SUFFIX}
        later = ok[(ok.run_id == rid) & ok.cell.isin(same)]
        if later.empty:
            continue
        ci = S.summarize(later.throughput_bps)
        for x in wu.throughput_bps:
            rows.append({"run_id": rid, "cell": base, "label": _label(later.iloc[0], label_cols(later)),
                         "warm-up Gbit/s": x / 1e9, "later Gbit/s (median, untraced + traced)": ci.median / 1e9,
                         "later 95% CI Gbit/s": f"{ci.ci_lo / 1e9:.3g}..{ci.ci_hi / 1e9:.3g}", "later reps": ci.n,
                         "warm-up vs later [%]": (x / ci.median - 1) * 100 if ci.median else np.nan})
    return pd.DataFrame(rows)


def fig_probe_effect(runs: Runs):
    t = probe_table(runs)
    if t.empty:
        return None
    fig, axes = _figure(1, 1, 10, 4.2)
    ax = axes[0]
    x = np.arange(len(t))
    d = t["traced vs untraced [%]"].to_numpy(dtype=float)
    ax.bar(x, np.nan_to_num(d), color=["C3" if v < 0 else "C2" for v in np.nan_to_num(d)], alpha=0.85)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, [f"{lb}\n(n={a} vs {b})" for lb, a, b in zip(t.label, t["traced reps"], t["untraced reps"])],
                  fontsize=8)
    lim = max(5.0, float(np.nanmax(np.abs(d))) * 1.2) if np.isfinite(d).any() else 5.0
    ax.set_ylim(-lim, lim)
    ax.set_title("Probe effect: throughput with lock tracing installed vs without")
    ax.set_xlabel("cell (median of the traced reps vs the untraced twin)")
    ax.set_ylabel("traced / untraced - 1 [%]")
    return fig


# ---------------------------------------------------------------------------------------
# host-side view
# ---------------------------------------------------------------------------------------
def host_table(runs: Runs) -> pd.DataFrame:
    """Per cell configuration (ok cells): host CPU of QEMU's threads by kind, in % of one host
    CPU (median over reps), the busiest thread, and the guest's own CPU busy for comparison."""
    h = host_cpu_table(runs.metrics, runs.cells)
    w = runs.wide()
    if h.empty or w.empty:
        return pd.DataFrame()
    lc = label_cols(w)
    k = h.pivot_table(index=KEY, columns="kind", values="pct_one_cpu", aggfunc="sum")
    k = w[KEY + lc + ["host_cpu_pct", "host_max_thread_pct", "cpu_busy_pct"]].join(k, on=KEY, how="inner")
    if k.empty:
        return pd.DataFrame()
    kinds = [c for c in KIND_ORDER if c in k]
    g = k.groupby(lc, sort=True, dropna=False)
    out = g[kinds + ["host_cpu_pct", "host_max_thread_pct", "cpu_busy_pct"]].median().reset_index()
    out.insert(len(lc), "reps", g.size().to_numpy())
    out = out.rename(columns={**{c: f"{c} [% host CPU]" for c in kinds},
                              "host_cpu_pct": "all QEMU threads [% host CPU]",
                              "host_max_thread_pct": "busiest thread [% host CPU]",
                              "cpu_busy_pct": "guest CPU busy [% guest CPU]"})
    if "all threads (unnamed) [% host CPU]" in out:
        out = out.drop(columns=["all threads (unnamed) [% host CPU]", "busiest thread [% host CPU]"])
    return out


def host_names_note(runs: Runs) -> str:
    h = host_cpu_table(runs.metrics, runs.cells)
    if h.empty:
        return ""
    un = sorted(set(h.loc[~h.named, "run_id"]))
    cpus = sorted({int((m.get("host") or {}).get("cpus") or 0) for m in runs.manifests.values()} - {0})
    base = (f"Host: {', '.join(map(str, cpus))} CPU(s); 100% = one host CPU busy for the whole sender run "
            "(measured_s; the snapshots also cover the guest's after-snapshot, so an upper bound by a few %). ")
    if not un:
        return base
    names = sorted(set(h.loc[~h.named, "thread"]))
    return (base + f"In {len(un)} run(s) every QEMU thread is named {', '.join(names)}: QEMU ran without "
            "-name ...,debug-threads=on, so vCPU, I/O and main-loop threads cannot be told apart and only "
            "their sum is shown (bar 'all threads (unnamed)').")


def fig_host_cpu(runs: Runs):
    h = host_cpu_table(runs.metrics, runs.cells)
    w = runs.wide()
    if h.empty or w.empty:
        return None
    lc = label_cols(w)
    k = h.pivot_table(index=KEY, columns="kind", values="pct_one_cpu", aggfunc="sum")
    k = w[KEY + lc].join(k, on=KEY, how="inner")
    if k.empty:
        return None
    kinds = [c for c in KIND_ORDER if c in k]
    med = k.groupby(lc, sort=True, dropna=False)[kinds].median().reset_index()
    n = k.groupby(lc, sort=True, dropna=False).size().to_numpy()
    tot = k[kinds].sum(axis=1)
    fig, axes = _figure(1, 1, max(8.0, 0.9 * len(med) + 3), 4.6)
    ax = axes[0]
    x = np.arange(len(med))
    bottom = np.zeros(len(med))
    for kind in kinds:
        v = med[kind].fillna(0).to_numpy(dtype=float)
        ax.bar(x, v, 0.6, bottom=bottom, color=KIND_COLOR.get(kind, "C8"), alpha=0.9, label=kind)
        bottom += v
    for i, (_, r) in enumerate(med.iterrows()):
        sel = (k[lc] == r[lc].values).all(axis=1)
        pts = tot[sel]
        ax.scatter(np.full(len(pts), i) + np.linspace(-0.12, 0.12, len(pts)), pts, s=10, color="k", zorder=3)
    cpus = sorted({int((m.get("host") or {}).get("cpus") or 0) for m in runs.manifests.values()} - {0})
    if cpus:
        ax.axhline(100 * cpus[0], color="#b00020", ls="--", lw=1, label=f"all {cpus[0]} host CPUs busy")
    ax.axhline(100, color="#555", ls=":", lw=1, label="one host CPU")
    ax.set_xticks(x, [f"{_label(r, lc, multiline=True)}\n(n={c})" for (_, r), c in zip(med.iterrows(), n)],
                  fontsize=8, rotation=30 if len(med) > 6 else 0, ha="right" if len(med) > 6 else "center")
    top = max(float(np.nanmax(bottom)) if len(bottom) else 0, float(tot.max()), 100.0 * (cpus[0] if cpus else 1))
    ax.set_ylim(0, top * 1.15)
    ax.set_title("Host CPU of the QEMU process per cell, by thread kind (median over reps)")
    ax.set_xlabel("cell (dots: all QEMU threads, each repetition)")
    ax.set_ylabel("host CPU time / sender run [% of one host CPU]")
    ax.legend(fontsize=7, loc="upper right")
    return fig
