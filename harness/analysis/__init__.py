"""Analysis layer: run dirs -> pandas (DuckDB over Parquet), statistics over repetitions,
A/B comparison, and the notebooks/report.

    from harness.analysis import load_runs, stats
    runs = load_runs(["results/20261123-180657-08780"])
    w = runs.wide()                       # one row per (run, cell, rep), key metrics as columns
    stats.summarize(w[w.cell == c].throughput_bps)

Modules: ``load`` (Runs, load_runs, wide_table, host_cpu_table, churn_events), ``stats``
(bootstrap CI, A/B tests, Jain, scaling efficiency, USL fit, normalised rates, noise_band,
detect_steps), ``compare`` (compare_runs), ``report`` (figure helpers used by analysis/*.ipynb,
build_report), ``races`` (sections of analysis/race_reproducers.ipynb: bufring-race,
lltx-stacking, control-churn, probe effect, host-side view), ``commands`` (CLI wiring).

Names are imported lazily, so ``harness.analysis.commands`` (imported by the CLI for every
command) does not pull in numpy/pandas/scipy.
"""
from __future__ import annotations

import importlib

_LAZY = {"load_runs": "load", "wide_table": "load", "Runs": "load",
         "compare_runs": "compare", "Comparison": "compare"}

__all__ = ["Comparison", "Runs", "compare_runs", "load_runs", "stats", "wide_table"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in ("stats", "load", "compare", "report", "races", "commands"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
