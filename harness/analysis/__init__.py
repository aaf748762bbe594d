"""Analysis layer: run dirs -> pandas (DuckDB over Parquet), statistics over repetitions,
A/B comparison, and the notebooks/report.

    from harness.analysis import load_runs, stats
    runs = load_runs(["results/20261123-180657-08780"])
    w = runs.wide()                       # one row per (run, cell, rep), key metrics as columns
    stats.summarize(w[w.cell == c].throughput_bps)

Modules: ``load`` (Runs, load_runs, wide_table), ``stats`` (bootstrap CI, A/B tests, Jain,
scaling efficiency, USL fit, normalised rates), ``compare`` (compare_runs), ``report``
(figure helpers used by analysis/*.ipynb, build_report), ``commands`` (CLI wiring).
"""
from . import stats
from .compare import Comparison, compare_runs
from .load import Runs, load_runs, wide_table

__all__ = ["Comparison", "Runs", "compare_runs", "load_runs", "stats", "wide_table"]
