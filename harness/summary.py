"""End-of-run summary: one row per cell (median over repetitions), single vs multi queue
side by side, with the benchmarks the manifest recorded and the TCG warning."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def cell_table(run_dir: Path) -> pd.DataFrame:
    m = pd.read_parquet(run_dir / "metrics.parquet")
    cells = pd.read_parquet(run_dir / "cells.parquet")
    ok = cells[cells.status == "ok"]
    if m.empty or ok.empty:
        return pd.DataFrame()
    agg_all = m[m["queue"].isna()]

    def per_rep(metric, source=None):
        d = agg_all[agg_all.metric == metric]
        if source:
            d = d[d.source == source]
        return d.groupby(["cell", "rep"])["value"].sum()

    nic_pkts = m[(m.source == "ethtool -S") & (m.metric == "tx_packets") & m["queue"].notna()] \
        .groupby(["cell", "rep"])["value"].sum()
    link_pkts = per_rep("tx_packets", "ip -s -j link")
    pkts = nic_pkts.combine_first(link_pkts)
    df = pd.DataFrame({
        "gbit_s": per_rep("throughput_bps") / 1e9,
        "tx_pkts": pkts,
        "requeues": _qdisc_total(m, "tx_requeues"),
        "qdisc_drops": _qdisc_total(m, "qdisc_drops"),
        "restarts": m[m.metric == "tx_restarts"].groupby(["cell", "rep"])["value"].sum(),
        "lock_wait_ns": per_rep("lock_wait_ns"),
        "contentions": per_rep("lock_contentions"),
    })
    df["requeues_per_mpkt"] = df.requeues / df.tx_pkts * 1e6
    df["drops_per_mpkt"] = df.qdisc_drops / df.tx_pkts * 1e6
    df["lock_wait_ns_per_pkt"] = df.lock_wait_ns / df.tx_pkts
    df = df.reset_index()
    validity = ok.set_index(["cell", "rep"])["validity"].map(lambda v: json.loads(v) if isinstance(v, str) else v)
    df["conservation"] = [validity.get((c, r), {}).get("conservation", {}).get("ratio") for c, r in zip(df.cell, df.rep)]
    df["spread"] = [_spread(validity.get((c, r), {})) for c, r in zip(df.cell, df.rep)]
    df = df[df.set_index(["cell", "rep"]).index.isin(ok.set_index(["cell", "rep"]).index)]
    meta = ok.drop_duplicates("cell").set_index("cell")[["nic", "driver", "queues", "procs", "streams", "proto", "accel"]]
    med = df.groupby("cell").agg({"gbit_s": "median", "requeues_per_mpkt": "median", "drops_per_mpkt": "median",
                                  "lock_wait_ns_per_pkt": "median", "contentions": "median",
                                  "conservation": "median", "spread": "first", "rep": "count"})
    return meta.join(med, how="inner").rename(columns={"rep": "reps"}).reset_index()


def _qdisc_total(m: pd.DataFrame, metric: str) -> pd.Series:
    """Root qdisc only (an mq root already sums its children)."""
    d = m[(m.source == "tc -s -j qdisc") & (m.metric == metric) & m["queue"].isna()
          & ~m.native_name.str.contains(" parent ", regex=False)]
    return d.groupby(["cell", "rep"])["value"].sum()


def _spread(v: dict) -> str:
    qs = v.get("queue_spread")
    if not qs:
        return ""
    return "/".join(f"{float(s) * 100:.0f}%" for s in qs["shares"].values())


def render(run_dir: Path, console=None) -> str:
    from rich.console import Console
    from rich.table import Table
    man = json.loads((run_dir / "manifest.json").read_text())
    console = console or Console()
    t = cell_table(run_dir)
    cells = pd.read_parquet(run_dir / "cells.parquet")
    table = Table(title=f"xmitbench {man['run_id']}  kernel {man['guest_image']['kernel_release']}  "
                        f"accel {man['accel']}", show_lines=False)
    for col in ("nic", "driver", "procs", "queues", "reps", "Gbit/s", "requeues/Mpkt", "drops/Mpkt",
                "lock wait ns/pkt", "contentions", "bytes NIC/app", "queue share"):
        table.add_column(col, justify="right" if col not in ("nic", "driver") else "left")
    if not t.empty:
        t = t.sort_values(["nic", "procs", "queues"])
        for _, r in t.iterrows():
            table.add_row(r.nic, str(r.driver), str(r.procs), str(r.queues), str(r.reps), f"{r.gbit_s:.3f}",
                          _f(r.requeues_per_mpkt), _f(r.drops_per_mpkt), _f(r.lock_wait_ns_per_pkt),
                          _f(r.contentions, 0), _f(r.conservation, 3), r.spread)
    console.print(table)
    skipped = cells[cells.status == "skipped"].drop_duplicates("cell")
    failed = cells[cells.status == "failed"]
    for _, r in skipped.iterrows():
        console.print(f"[yellow]skipped[/] {r.cell}: {r.reason}")
    for _, r in failed.iterrows():
        console.print(f"[red]failed[/] {r.cell} rep {r.rep}: {r.reason}")
    b = man.get("benchmarks", {})
    if b:
        console.print(f"guest build {b.get('guest_build_s')} s (this run's image step {b.get('image_step_s')} s); "
                      f"boot-to-SSH median {b.get('boot_to_ssh_s_median')} s {b.get('boot_to_ssh_s')}; "
                      f"per-cell overhead median {b.get('cell_overhead_s_median')} s; "
                      f"efficiency {b.get('efficiency')} (measured {b.get('measured_s')} s / wall {b.get('wall_s')} s)")
    if man.get("emulated"):
        console.print(f"[bold red]WARNING[/]: {man.get('warning')}")
    console.print(f"run dir: {run_dir}")
    return ""


def _f(v, nd: int = 1) -> str:
    if v is None or pd.isna(v):
        return "-"
    return f"{v:.{nd}f}"
