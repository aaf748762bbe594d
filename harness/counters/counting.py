"""Counting rules: how raw counter rows add up to the figures a verdict rests on. Each rule
is written once, here, and the runner (validity), the summary and the analysis all call it,
for every guest OS.

Every function takes the long-form metric rows (a DataFrame with the ``KEY`` columns plus
source, metric, native_name, queue, value; what ``metrics.parquet`` holds) and returns one
value per (run_id, cell, rep). The runner calls them on the rows of the one cell it just
measured (``rows_frame``), analysis on thousands of cells at once: same code, same answer.

Rules
-----
* Per-queue TX packets / bytes (queue shares): the driver's per-queue counters, else the mq
  root's per-queue child qdiscs (virtio_net >= 6.9 has no per-queue ethtool packets); one
  source per cell run, named on each row (``queue_table``).
* TX packets / bytes the NIC sent: the driver's per-queue counters summed (Linux
  ``ethtool -S`` tx_queue_N_*, FreeBSD ``sysctl dev.<drv>.N.txqM.*``/iflib); where a driver
  has none, its interface-level driver counter (e1000e ``ethtool -S tx_packets``); else the
  interface counters (``ip -s -j link``, ``netstat -i``). Never two of these added together.
  A virtio TSO/GSO super-frame counts once (skb), an e1000e one per wire segment (GPTC).
* qdisc totals (requeues, drops, packets): the ROOT qdisc only (queue null, no `` parent ``
  in the native name). An mq root already holds the sum of its children.
* driver event counters (tx_restarts, tx_ring_stalls, tx_drops_ring): per-queue rows summed,
  or the interface row when the driver has no per-queue counter.
* CPU busy: /proc/stat (jiffies) or kern.cp_times (stathz ticks); busy = user+nice+system+
  irq+softirq+steal, total = busy + idle + iowait. Ticks cancel, so the share is unit-free.
  ``cpu_busy_pct`` = busy share x CPUs x 100 (100 = one CPU busy for the whole interval).
* CPU time split (user vs kernel), per CPU: user = user+nice; kernel = system+irq+softirq
  (FreeBSD: sys+intr; it has no softirq state); steal on its own; each a share of the CPU's
  total ticks (``cpu_split``). The bottleneck verdict reads the sender vCPUs from it.
* per Mpkt / per packet / per Gbit/s: a ratio with NaN where the denominator is not > 0.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

KEY = ["run_id", "cell", "rep"]
QDISC_SOURCE = "tc -s -j qdisc"
DRIVER_TX_SOURCES = ("ethtool -S", "sysctl")          # the driver's own counters, per OS
INTERFACE_TX_SOURCES = ("ip -s -j link", "netstat -i")  # the stack's interface counters
CPU_SOURCES = ("/proc/stat", "kern.cp_times")
BUSY_MODES = ("cpu_user", "cpu_nice", "cpu_system", "cpu_irq", "cpu_softirq", "cpu_steal")
IDLE_MODES = ("cpu_idle", "cpu_iowait")
DRIVER_EVENTS = ("tx_restarts", "tx_ring_stalls", "tx_drops_ring")


# ---------------------------------------------------------------------------- ratios
def _ratio(num, den, scale: float = 1.0):
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1) * scale, np.nan)
    return float(r) if r.ndim == 0 else r


def per_million(count, packets):
    """Events per million packets (drops, requeues, restarts, ring stalls); nan without packets."""
    return _ratio(count, packets, 1e6)


def per_packet(value, packets):
    """E.g. lock wait ns per packet; nan without packets."""
    return _ratio(value, packets)


def cpu_pct_per_gbit(cpu_pct, throughput_bps):
    """CPU percent (100 = one CPU busy) per Gbit/s of throughput; nan without throughput."""
    return _ratio(cpu_pct, np.asarray(throughput_bps, dtype=float) / 1e9)


def cpu_busy_pct(busy_ticks, total_ticks, ncpus):
    """Busy share of the interval x CPUs x 100 (ticks cancel: USER_HZ or stathz do not matter)."""
    return _ratio(np.asarray(busy_ticks, dtype=float) * np.asarray(ncpus, dtype=float), total_ticks, 100.0)


# ---------------------------------------------------------------------------- helpers
def rows_frame(rows, run_id: str = "", cell: str = "", rep: int = 0) -> pd.DataFrame:
    """Samples or metric-row dicts of one cell run as the long-form frame the rules take."""
    recs = [r if isinstance(r, dict) else {"source": r.source, "native_name": r.native_name, "metric": r.metric,
                                           "value": r.value, "queue": r.queue, "cpu": r.cpu} for r in rows]
    df = pd.DataFrame(recs, columns=["source", "native_name", "metric", "value", "queue", "cpu"])
    df["queue"] = df["queue"].astype("Int64")
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype("float64")
    df["run_id"], df["cell"], df["rep"] = run_id, cell, rep
    return df


def _sum_by_key(d: pd.DataFrame) -> pd.Series:
    if d.empty:
        return pd.Series(dtype=float, index=pd.MultiIndex.from_tuples([], names=KEY))
    return d.groupby(KEY, sort=False)["value"].sum(min_count=1)


def _first_available(*series: pd.Series) -> pd.Series:
    out = series[0]
    for s in series[1:]:
        out = out.combine_first(s)
    return out


def _per_queue(d: pd.DataFrame) -> pd.Series:
    return d["queue"].notna()


# ---------------------------------------------------------------------------- the rules
def tx_total(m: pd.DataFrame, what: str = "tx_packets") -> pd.Series:
    """TX packets (or bytes, ``what="tx_bytes"``) the NIC sent: see the module doc."""
    d = m[m.metric == what]
    drv = d[d.source.isin(DRIVER_TX_SOURCES)]
    ifc = d[d.source.isin(INTERFACE_TX_SOURCES) & d["queue"].isna()]
    return _first_available(_sum_by_key(drv[_per_queue(drv)]), _sum_by_key(drv[~_per_queue(drv)]),
                            _sum_by_key(ifc))


QUEUE_COLUMNS = KEY + ["queue", "tx_packets", "tx_bytes", "share", "source", "native_name"]


def queue_table(m: pd.DataFrame) -> pd.DataFrame:
    """Per TX queue: packets and bytes, and each queue's share of the packets (NaN without
    packets), from the best source the guest kernel has, ONE source per cell run:

    1. the driver's per-queue counters (Linux ``ethtool -S tx_queue_N_packets``: virtio_net up
       to 6.8, igb; FreeBSD ``sysctl ... txqM``);
    2. else the per-TX-queue child qdiscs of an ``mq`` root (``tc -s -j qdisc``, parent
       ``<mq>:<N+1>``; sch_mq gives every TX queue its own child). virtio_net from 6.9 moved its
       per-queue packets/bytes out of ``ethtool -S`` into netdev qstats, so on 6.12 this is where
       they are. A child counts GSO segments (bstats_update adds gso_segs), the driver skbs:
       shares compare across sources, absolute per-queue packets do not.

    ``source`` and ``native_name`` (of the packets counter) say which one each row came from.
    A configured queue with neither has no row: validity.queue_spread names it."""
    drv = m[m.source.isin(DRIVER_TX_SOURCES) & m["queue"].notna() & m.metric.isin(["tx_packets", "tx_bytes"])]
    mq = m[(m.source == QDISC_SOURCE) & m["queue"].notna() & m.metric.isin(["qdisc_packets", "qdisc_bytes"])]
    mq = mq.assign(metric=mq.metric.map({"qdisc_packets": "tx_packets", "qdisc_bytes": "tx_bytes"}))
    has_drv = set(map(tuple, drv[KEY].drop_duplicates().itertuples(index=False)))
    if has_drv and len(mq):
        mq = mq[[tuple(k) not in has_drv for k in mq[KEY].itertuples(index=False)]]
    d = pd.concat([x for x in (drv, mq) if len(x)]) if len(drv) or len(mq) else drv
    if d.empty:
        return pd.DataFrame(columns=QUEUE_COLUMNS)
    q = d.pivot_table(index=KEY + ["queue"], columns="metric", values="value", aggfunc="sum").reset_index()
    for c in ("tx_packets", "tx_bytes"):
        if c not in q:
            q[c] = np.nan
    tot = q.groupby(KEY)["tx_packets"].transform("sum")
    q["share"] = q.tx_packets / tot.where(tot > 0)
    q.columns.name = None
    names = (d.sort_values("metric", ascending=False)       # the tx_packets row's names
             .drop_duplicates(KEY + ["queue"])[KEY + ["queue", "source", "native_name"]])
    return q.merge(names, on=KEY + ["queue"], how="left")[QUEUE_COLUMNS]


def root_qdisc(m: pd.DataFrame, metric: str) -> pd.Series:
    """Root qdisc rows only: an mq root already sums its children (never add them)."""
    d = m[(m.source == QDISC_SOURCE) & (m.metric == metric) & m["queue"].isna()]
    d = d[~d.native_name.astype(str).str.contains(" parent ", regex=False)]
    return _sum_by_key(d)


def driver_total(m: pd.DataFrame, metric: str) -> pd.Series:
    """A driver event counter: per-queue rows summed; where a cell run has none, its queue-null rows."""
    d = m[(m.metric == metric) & (m.source != QDISC_SOURCE)]
    return _first_available(_sum_by_key(d[_per_queue(d)]), _sum_by_key(d[~_per_queue(d)]))


def cpu_modes(m: pd.DataFrame, per_cpu: bool = False) -> pd.DataFrame:
    """Ticks per CPU mode over the snapshot interval: all CPUs (per_cpu False; the all-CPU
    line, else the per-CPU lines summed) or one row per (key, cpu)."""
    d = m[m.source.isin(CPU_SOURCES)]
    idx = KEY + (["queue"] if per_cpu else [])
    if d.empty:
        return pd.DataFrame(columns=list(BUSY_MODES + IDLE_MODES), index=pd.MultiIndex.from_tuples([], names=idx))
    per = d[d["queue"].notna()]
    if per_cpu:
        modes = per.pivot_table(index=idx, columns="metric", values="value", aggfunc="sum")
    else:
        agg = d[d["queue"].isna()].pivot_table(index=KEY, columns="metric", values="value", aggfunc="sum")
        modes = agg.combine_first(per.pivot_table(index=KEY, columns="metric", values="value", aggfunc="sum"))
    for c in BUSY_MODES + IDLE_MODES:
        if c not in modes:
            modes[c] = 0.0
    return modes.fillna(0.0)


def cpu_table(m: pd.DataFrame) -> pd.DataFrame:
    """Per (run, cell, rep): busy/total ticks, CPU count, busy % and per-mode %."""
    modes = cpu_modes(m)
    if modes.empty:
        return pd.DataFrame(columns=["cpu_busy_pct", "ncpus"], index=pd.MultiIndex.from_tuples([], names=KEY))
    d = m[m.source.isin(CPU_SOURCES) & m["queue"].notna()]
    ncpu = d.groupby(KEY)["queue"].nunique().rename("ncpus")
    busy = modes[list(BUSY_MODES)].sum(axis=1)
    total = busy + modes[list(IDLE_MODES)].sum(axis=1)
    out = pd.DataFrame({"busy_jiffies": busy, "total_jiffies": total}).join(ncpu, how="left")
    out["ncpus"] = out["ncpus"].fillna(1)
    out["cpu_busy_pct"] = cpu_busy_pct(out.busy_jiffies, out.total_jiffies, out.ncpus)
    for mode in ("cpu_user", "cpu_system", "cpu_softirq", "cpu_irq"):     # modes this OS reports (FreeBSD: no softirq)
        has = out.index.isin(pd.MultiIndex.from_frame(d.loc[d.metric == mode, KEY].drop_duplicates()))
        out[mode + "_pct"] = np.where(has, cpu_busy_pct(modes[mode], total, out.ncpus), np.nan)
    return out


def cpu_busy_share(m: pd.DataFrame) -> dict[int, float]:
    """One cell run's busy share (0..1) per guest CPU."""
    modes = cpu_modes(m, per_cpu=True)
    out = {}
    for idx, r in modes.iterrows():
        busy = sum(r[c] for c in BUSY_MODES)
        total = busy + sum(r[c] for c in IDLE_MODES)
        out[int(idx[-1])] = float(busy / total) if total else 0.0
    return out


USER_MODES = ("cpu_user", "cpu_nice")
KERNEL_MODES = ("cpu_system", "cpu_irq", "cpu_softirq")


def cpu_split(m: pd.DataFrame) -> dict[int, dict[str, float]]:
    """One cell run, per guest CPU: shares (0..1) of the CPU's ticks in user, kernel, softirq
    (part of kernel), steal, idle and busy (= user + kernel + steal), by the rule in the
    module doc. Empty without per-CPU rows."""
    out = {}
    for idx, r in cpu_modes(m, per_cpu=True).iterrows():
        busy = sum(r[c] for c in BUSY_MODES)
        total = busy + sum(r[c] for c in IDLE_MODES)
        if not total:
            continue
        user, kernel = sum(r[c] for c in USER_MODES), sum(r[c] for c in KERNEL_MODES)
        out[int(idx[-1])] = {"user": user / total, "kernel": kernel / total, "softirq": r["cpu_softirq"] / total,
                             "steal": r["cpu_steal"] / total, "idle": 1 - busy / total, "busy": busy / total}
    return out


def one(series: pd.Series, default=float("nan")) -> float:
    """The single value of a rule applied to one cell run's frame."""
    return float(series.iloc[0]) if len(series) else default


def tx_for_conservation(m: pd.DataFrame) -> tuple[dict[int, float], float, float]:
    """One cell run: (per-queue TX packets, total TX packets, total TX bytes) by the rules above."""
    q = queue_table(m)
    per_q = {int(r.queue): float(r.tx_packets) for r in q.itertuples()} if len(q) else {}
    return per_q, one(tx_total(m, "tx_packets"), 0.0), one(tx_total(m, "tx_bytes"), float("nan"))


def queue_source(m: pd.DataFrame) -> str:
    """One cell run: where its per-queue TX counters came from ("ethtool -S", "tc -s -j qdisc"
    (the mq children), "sysctl"), "" when it has none."""
    q = queue_table(m)
    return ", ".join(sorted(set(q.source.dropna()))) if len(q) else ""
