"""End-of-run summary: one row per cell (median over repetitions), single vs multi queue
side by side, with the benchmarks the manifest recorded and the TCG warning."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def cell_table(run_dir: Path) -> pd.DataFrame:
    """Median over repetitions per cell, from the analysis layer's wide table (one place
    decides how counters are added up: root qdisc only, per-queue vs interface totals)."""
    from harness.analysis.load import last_attempts, load_runs
    w = load_runs([run_dir]).wide(only_ok=True)
    if w.empty:
        return pd.DataFrame()
    cells = last_attempts(pd.read_parquet(run_dir / "cells.parquet"))   # a re-run's final word
    ok = cells[cells.status == "ok"].copy()
    ok["v"] = ok["validity"].map(lambda v: json.loads(v) if isinstance(v, str) and v else {})
    spread = ok.groupby("cell")["v"].first().map(_spread)
    churn = ok.groupby("cell")["v"].apply(lambda vs: _churn(list(vs)))
    # valid and bottleneck from the wide table (harness.run.validity.is_valid; NA for older run dirs)
    valid = w.groupby("cell")["valid"].apply(
        lambda x: "-" if x.isna().all() else f"{int(x.fillna(False).astype(bool).sum())}/{len(x)}")
    bottleneck = w.groupby("cell")["bottleneck"].apply(_verdicts)
    cols = {"gbit_s": "median", "cpu_busy_pct": "median", "cpu_pct_per_gbit": "median", "requeues_per_mpkt": "median", "drops_per_mpkt": "median",
            "restarts_per_mpkt": "median", "lock_wait_ns_per_pkt": "median", "lock_contentions": "median",
            "conservation_ratio": "median", "rep": "count"}
    med = w.groupby("cell").agg(cols).rename(columns={"rep": "reps"})
    meta = w.drop_duplicates("cell").set_index("cell")[["os", "nic", "driver", "queues", "procs", "proto", "msg_size",
                                                         "replay"]]
    out = meta.join(med).join(spread.rename("spread")).join(churn.rename("churn")).join(valid.rename("valid"))
    out = out.join(bottleneck.rename("bottleneck"))
    out = out.join(_reps_stop(pd.read_parquet(run_dir / "cells.parquet")).rename("stop"))
    return out.reset_index()


def _verdicts(x: pd.Series) -> str:
    """The bottleneck verdicts of one cell's repetitions: "tx_path", or "tx_path 2, peer 1"."""
    counts = x.dropna().astype(str).value_counts()
    if counts.empty:
        return "-"
    if len(counts) == 1 and counts.iloc[0] == len(x):
        return counts.index[0]
    return ", ".join(f"{k} {n}" for k, n in counts.items()) + ("" if counts.sum() == len(x) else
                                                               f", - {len(x) - counts.sum()}")


def valid_count(run_dir: Path) -> tuple[int, int]:
    """(valid, measured) cell runs of a run dir: each cell run's final word, status ok."""
    from .load import load_runs
    w = load_runs([run_dir]).wide(only_ok=True)
    return int(w["valid"].fillna(False).astype(bool).sum()) if len(w) else 0, len(w)


def _reps_stop(cells: pd.DataFrame) -> pd.Series:
    """Per cell, why its repetitions stopped (harness.run.repetitions); older run dirs: none."""
    if "reps_stop" not in cells:
        return pd.Series(dtype=object)
    return cells.dropna(subset=["reps_stop"]).groupby("cell")["reps_stop"].last()


def _churn(vs: list[dict]) -> str:
    recs = [v.get("churn", {}).get("recovery_s_max") for v in vs if v.get("churn")]
    if not recs:
        return ""
    done = [r for r in recs if r is not None]
    return (f"{max(done):.1f}" if done else "-") + ("" if len(done) == len(recs) else " (not all)")


def _spread(v: dict) -> str:
    qs = v.get("queue_spread")
    if not qs:
        return ""
    shares = "/".join(f"{float(s) * 100:.0f}%" for s in qs["shares"].values())
    missing = qs.get("missing_queues")
    return shares + (f" (q{','.join(map(str, missing))} no counters)" if missing else "")


def _short_stop(stop) -> str:
    """The repetition stop reason in a few characters ("ci 4.9%", "budget", "max", "fixed");
    the whole reason is in cells.reps_stop."""
    if not isinstance(stop, str):
        return "-"
    word = stop.split()[0]
    if word == "ci":
        return "ci " + stop.split()[1] + "%"
    return word


def _label(cell: str, common: set[str]) -> str:
    return ".".join(p for p in cell.split(".") if p not in common) or "(base cell)"


def render(run_dir: Path, console=None) -> str:
    from rich.console import Console
    from rich.table import Table
    from harness.analysis.load import last_attempts
    man = json.loads((run_dir / "manifest.json").read_text())
    console = console or Console()
    t = cell_table(run_dir)
    cells = pd.read_parquet(run_dir / "cells.parquet")
    kernels = ", ".join(sorted(cells.kernel.dropna().astype(str).unique())) if "kernel" in cells else ""
    table = Table(title=f"xmitbench {man['run_id']}  kernel {kernels or man['guest_image']['kernel_release']}  "
                        f"accel {man['accel']}  (median over repetitions; per Mpkt = per million TX packets)")
    for col in ("cell", "reps", "Gbit/s", "CPU busy %", "CPU %/Gbit", "requeues /Mpkt", "qdisc drops /Mpkt", "restarts /Mpkt",
                "lock wait ns/pkt", "contentions", "NIC/app bytes", "queue share", "churn recovery s", "valid",
                "bottleneck", "reps stop"):
        if col == "cell":       # the cell name is what a row is: never cut it short
            table.add_column(col, justify="left", no_wrap=True, min_width=12)
        else:
            table.add_column(col, justify="right")
    if not t.empty:
        parts = [set(c.split(".")) for c in t.cell]
        common = set.intersection(*parts) if len(parts) > 1 else set()
        t = t.sort_values(["os", "nic", "procs", "queues", "cell"])
        for _, r in t.iterrows():
            table.add_row(_label(r.cell, common) + (" [REPLAY]" if r.replay else ""), str(r.reps), f"{r.gbit_s:.3f}",
                          _f(r.cpu_busy_pct), _f(r.cpu_pct_per_gbit), _f(r.requeues_per_mpkt),
                          _f(r.drops_per_mpkt), _f(r.restarts_per_mpkt), _f(r.lock_wait_ns_per_pkt),
                          _f(r.lock_contentions, 0), _f(r.conservation_ratio, 3), r.spread or "",
                          r.churn or "", r.valid, r.bottleneck,
                          _short_stop(r.stop))
    from harness.analysis.load import is_replay, replay_note
    if is_replay(man):
        console.print(f"[bold magenta]{replay_note(cells.os.dropna().unique())}[/] ({man.get('replay')})")
    console.print(table)
    if is_replay(man):
        console.print(f"[bold magenta]{replay_note(cells.os.dropna().unique())}[/]: rows marked [REPLAY]")
    if not t.empty:
        n_valid, n_measured = valid_count(run_dir)
        console.print(f"valid {n_valid} of {n_measured} measured cell runs (invalid: bytes not conserved, a "
                      f"bottleneck outside the path under test, no recovery after churn"
                      f"{', an idle queue the workload required' if _requires_spread(man) else ''})")
    final = last_attempts(cells)
    for _, r in final[final.status == "skipped"].drop_duplicates("cell").iterrows():
        console.print(f"[yellow]skipped[/] {r.cell}: {r.reason}")
    for _, r in cells[cells.status == "failed"].iterrows():
        console.print(f"[red]failed[/] {r.cell} rep {r.rep} attempt {r.attempt}: {r.reason}")
    b = man.get("benchmarks", {})
    if b:
        console.print(f"guest build {b.get('guest_build_s')} s (this run's image step {b.get('image_step_s')} s); "
                      f"boot-to-SSH median {b.get('boot_to_ssh_s_median')} s {b.get('boot_to_ssh_s')}; "
                      f"per-cell overhead median {_f(b.get('cell_overhead_s_median'), 2)} s; "
                      f"efficiency {b.get('efficiency')} (measured {b.get('measured_s')} s / wall {b.get('wall_s')} s)")
    if man.get("emulated"):
        console.print(f"[bold red]WARNING[/]: {man.get('warning')}")
    names = sorted(n for n, i in (man.get("images") or {}).items() if isinstance(i, dict) and i.get("verified") is False)
    if names:
        console.print(f"[bold red]WARNING[/]: image(s) {', '.join(names)} used without a verified checksum "
                      f"(--allow-unverified); their rows say image_verified=false")
    console.print(f"run dir: {run_dir}")
    return ""


def _requires_spread(man: dict) -> bool:
    return "require_queue_spread = true" in ((man.get("workload") or {}).get("text") or "")


def _f(v, nd: int = 1) -> str:
    if v is None or pd.isna(v):
        return "-"
    return f"{v:.{nd}f}"
