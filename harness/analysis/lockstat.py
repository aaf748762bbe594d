"""Report section: Linux's two lock methods side by side on a LOCK_STAT kernel, and what
lockdep costs. Self-contained: `section(runs)` renders it wherever the report places it.

- `tx_locks_side_by_side`: per cell run and TX-path lock (TX queue lock, qdisc root lock,
  busylock), lock_stat's class numbers (acquisitions, contentions, ratio, waits) beside the
  tracepoint method's (contention_begin hits, waits), with the cell's cross-check verdict.
- `lockdep_overhead`: throughput of the same cell configurations on the LOCK_STAT kernel and
  on the stock kernel, when the runs hold both.
Native class names are kept (lock_stat truncates them to ~38 characters itself).
"""
from __future__ import annotations

import pandas as pd

from harness.parsers.linux import (LOCK_STAT_METHOD, QDISC_BUSYLOCK, QDISC_ROOT_LOCK, TX_QUEUE_LOCK,
                                   tracepoint_tx_lock_role, tx_lock_role)

from .load import KEY, Runs

TX_ROLES = (TX_QUEUE_LOCK, QDISC_ROOT_LOCK, QDISC_BUSYLOCK)
CONFIG_COLS = ["nic", "queues", "procs", "streams", "proto", "msg_size", "stack", "churn"]


def _roles(lk: pd.DataFrame) -> pd.Series:
    points = lk["contention_points"] if "contention_points" in lk else pd.Series(None, index=lk.index)
    return pd.Series([tx_lock_role(str(l), p if isinstance(p, str) else None) if m == LOCK_STAT_METHOD
                      else tracepoint_tx_lock_role(str(l))
                      for l, m, p in zip(lk["lock"], lk["method"], points)], index=lk.index, dtype=object)


def tx_locks_side_by_side(runs: Runs) -> pd.DataFrame:
    """One row per (cell, rep, TX-path lock role) of the cell runs that have lock_stat rows."""
    lk = runs.locks
    if lk.empty or "method" not in lk or not (lk["method"] == LOCK_STAT_METHOD).any():
        return pd.DataFrame()
    lk = lk.copy()
    lk["role"] = _roles(lk)
    lk = lk[lk.role.isin(TX_ROLES)]
    with_ls = lk[lk.method == LOCK_STAT_METHOD][KEY].drop_duplicates()
    lk = lk.merge(with_ls, on=KEY)
    if lk.empty:
        return pd.DataFrame()
    ls, tp = lk[lk.method == LOCK_STAT_METHOD], lk[lk.method != LOCK_STAT_METHOD]
    a = ls.groupby(KEY + ["role"]).agg(
        classes=("lock", lambda s: ", ".join(sorted(set(map(str, s))))),
        acquisitions=("acquisitions", "sum"), ls_contentions=("contentions", "sum"),
        ls_wait_ms=("wait_ns_total", lambda s: s.sum() / 1e6),
        ls_wait_us_max=("wait_ns_max", lambda s: s.max() / 1e3),
        hold_ms=("hold_ns_total", lambda s: s.sum() / 1e6)).reset_index()
    b = tp.groupby(KEY + ["role"]).agg(
        tp_contentions=("contentions", "sum"),
        tp_wait_ms=("wait_ns_total", lambda s: s.sum() / 1e6)).reset_index()
    t = a.merge(b, on=KEY + ["role"], how="outer")
    for c in ("acquisitions", "ls_contentions", "tp_contentions"):
        t[c] = pd.to_numeric(t[c], errors="coerce").fillna(0).astype("int64")
    acq = t.acquisitions.where(t.acquisitions > 0)
    t["contention_ratio"] = (t.ls_contentions / acq).round(5)
    t["tp_per_ls"] = (t.tp_contentions / t.ls_contentions.where(t.ls_contentions > 0)).round(4)
    cells = runs.cells
    if not cells.empty and "validity" in cells:
        check = {}
        for _, c in cells.iterrows():
            v = c["validity"] if isinstance(c["validity"], dict) else {}
            lc = v.get("lock_crosscheck")
            if lc:
                check[(c["run_id"], c["cell"], int(c["rep"]))] = "ok" if lc.get("ok") else f"FAILED: {lc.get('reason')}"
        t["crosscheck"] = [check.get((r, c, int(p)), "") if r == r else ""
                           for r, c, p in zip(t.run_id, t.cell, t.rep)]
    t["role"] = pd.Categorical(t.role, TX_ROLES, ordered=True)
    return t.sort_values(["cell", "rep", "role"]).reset_index(drop=True)


def lockdep_overhead(runs: Runs, metric: str = "throughput_bps") -> pd.DataFrame:
    """Median throughput per cell configuration on each kernel, the LOCK_STAT kernel(s) against
    a kernel without lock_stat rows (the stock one), matched on the configuration. Empty when
    the runs do not hold both. NB: linux-lockstat is tinyconfig-based and the stock kernel is
    Debian's full config (speculation mitigations, audit, LSMs, ...): the ratio is lockdep +
    lock_stat AND every config difference; here (TCG) the LOCK_STAT kernel came out faster."""
    w = runs.wide()
    if w.empty or metric not in w:
        return pd.DataFrame()
    lk = runs.locks
    ls_kernels = set(lk.loc[lk["method"] == LOCK_STAT_METHOD, "kernel"].astype(str)) if not lk.empty else set()
    kernels = set(w.kernel.astype(str))
    stock = sorted(kernels - ls_kernels)
    if not ls_kernels or not stock:
        return pd.DataFrame()
    cols = [c for c in CONFIG_COLS if c in w]
    med = w.groupby(cols + ["kernel"], dropna=False)[metric].agg(["median", "count"]).reset_index()
    base = med[med.kernel.astype(str) == stock[0]].drop(columns="kernel")
    out = []
    for k in sorted(ls_kernels & kernels):
        cand = med[med.kernel.astype(str) == k].drop(columns="kernel")
        m = base.merge(cand, on=cols, suffixes=("_stock", "_lockstat"))
        m.insert(0, "lockstat_kernel", k)
        m.insert(0, "stock_kernel", stock[0])
        out.append(m)
    if not out:
        return pd.DataFrame()
    t = pd.concat(out, ignore_index=True)
    t["lockstat_vs_stock"] = (t.median_lockstat / t.median_stock).round(3)
    for c in ("median_stock", "median_lockstat"):
        t[c.replace("median", "gbit_s")] = (t.pop(c) / 1e9).round(3)
    return t


def section(runs: Runs) -> None:
    """Render the two tables (report helpers), with what the numbers mean."""
    from .report import note, show_table
    t = tx_locks_side_by_side(runs)
    if t.empty:
        note("No lock_stat rows: none of these runs booted a LOCK_STAT kernel (image linux-lockstat).")
        return
    show_table(t, "TX-path locks per cell run: lock_stat (LOCK_STAT kernel) beside the contention "
                  "tracepoint hist", drop_constant=False)
    note("lock_stat counts every failed trylock in LOCK_CONTENDED (spin_lock on a LOCK_STAT kernel); the "
         "tracepoint fires only once queued_spin_lock_slowpath queues (past the pending-bit path), so "
         "tp_per_ls is at most 1 and often far below it: the first waiter of a lock never reaches the "
         "tracepoint. The tracepoint cannot tell the root lock from the busylock (same callers).")
    o = lockdep_overhead(runs)
    if o.empty:
        note("Lockdep overhead: these runs hold no stock-kernel cells with the same configuration.")
    else:
        show_table(o, "Throughput on the LOCK_STAT kernel vs the stock kernel, same cell configuration "
                      "(median over repetitions)", drop_constant=False)
        note("This is not lockdep's cost alone: linux-lockstat is tinyconfig + a fragment, the stock kernel "
             "Debian's full config (speculation mitigations, audit, LSMs, ...). Isolating lockdep needs the same "
             "fragment built without CONFIG_LOCK_STAT.")
