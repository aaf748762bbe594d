"""`xmitbench bench-history`: how long a history of N run dirs takes to load (``load_runs``) and
to turn into the wide table (``wide_table``), on synthetic run dirs made from a real one.

A synthetic run dir is a copy of a template run dir (by default the fixture
tests/fixtures/runs/bufring-race: a real TCG run, ~1,600 metric rows, locks, host thread CPU,
validity) with its own run_id, its cells started one day after the previous run's (a nightly
history), and every metric value scaled by a per-run factor near 1 (a history with noise). The
tables keep the template's columns and types, written by the run dir writer
(``harness.results.rundir.atomic_write_table``), so the loader reads exactly what it reads of a
real run. Built dirs are kept (``--dir``) and reused when they match N and the template.

Timings are recorded (printed and written to a JSON), never asserted anywhere.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import InputError

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "runs" / "bufring-race"
DAY_S = 86400.0
FIRST_NIGHT = pd.Timestamp("2025-01-01 02:00:00")


def _template_tables(template: Path) -> tuple[dict, dict[str, pd.DataFrame]]:
    man = template / "manifest.json"
    if not man.exists():
        raise InputError(template, "manifest.json", "missing: --template must be a run dir")
    tables = {}
    for t in ("metrics", "locks", "cells"):
        f = template / f"{t}.parquet"
        if f.exists():
            tables[t] = pd.read_parquet(f)
    for t in ("metrics", "cells"):
        if t not in tables:
            raise InputError(template, f"{t}.parquet", "missing: --template must be a run dir with its tables")
    return json.loads(man.read_text()), tables


def _signature(n: int, template: Path) -> dict:
    return {"runs": n, "template": str(template.resolve())}


def build_history(out: Path, n: int, template: Path = DEFAULT_TEMPLATE, seed: int = 1) -> list[Path]:
    """Write ``n`` synthetic run dirs under ``out`` (reused when ``out`` already holds this set)."""
    from harness.results.rundir import atomic_write_table, atomic_write_text
    if n < 1:
        raise InputError("--runs", "", f"expected a positive number of run dirs, got {n}")
    out = Path(out)
    stamp = out / "synthetic-history.json"
    sig = _signature(n, template)
    if stamp.exists() and json.loads(stamp.read_text()) == sig:
        return sorted(p for p in out.iterdir() if (p / "manifest.json").exists())
    if out.exists():
        if any(out.iterdir()) and not stamp.exists():
            raise InputError(out, "--dir", "exists and was not written by bench-history; give an empty or new dir")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest, tables = _template_tables(template)
    rng = np.random.default_rng(seed)
    t0_started = pd.to_numeric(tables["cells"].get("started"), errors="coerce").min()
    dirs = []
    for i in range(n):
        when = FIRST_NIGHT + pd.Timedelta(days=i)
        run_id = f"{when:%Y%m%d-%H%M%S}-{i % 100000:05d}"
        d = out / run_id
        d.mkdir()
        scale = float(rng.normal(1.0, 0.03))
        for name, df in tables.items():
            df = df.copy()
            df["run_id"] = run_id
            if name == "metrics":
                df["value"] = df["value"] * scale
            if name == "cells" and "started" in df and not pd.isna(t0_started):
                df["started"] = df["started"] - t0_started + when.timestamp()
            atomic_write_table(d / name, df)
        rows = {t: len(df) for t, df in tables.items()}
        man = {**manifest, "run_id": run_id, "table_rows": {"run_id": run_id, **rows},
               "synthetic": {"template": str(template), "index": i, "value_scale": scale}}
        atomic_write_text(d / "manifest.json", json.dumps(man, indent=2, default=str))
        dirs.append(d)
    stamp.write_text(json.dumps(sig))
    return dirs


def add_nightly(out: Path) -> Path:
    """One more synthetic run dir after the newest (a copy of it with its own run_id, one day
    later): what the next nightly adds to a history. Not in the set's stamp; the caller removes it."""
    from harness.results.rundir import atomic_write_table, atomic_write_text
    newest = sorted(p for p in out.iterdir() if (p / "manifest.json").exists())[-1]
    n = len([p for p in out.iterdir() if (p / "manifest.json").exists()])
    when = FIRST_NIGHT + pd.Timedelta(days=n)
    run_id = f"{when:%Y%m%d-%H%M%S}-{n % 100000:05d}"
    d = out / run_id
    d.mkdir()
    for t in ("metrics", "locks", "cells"):
        f = newest / f"{t}.parquet"
        if f.exists():
            df = pd.read_parquet(f)
            df["run_id"] = run_id
            if t == "cells" and "started" in df:
                df["started"] = df["started"] + DAY_S
            atomic_write_table(d / t, df)
    man = json.loads((newest / "manifest.json").read_text())
    atomic_write_text(d / "manifest.json", json.dumps({**man, "run_id": run_id}, indent=2, default=str))
    return d


def time_history(root: Path) -> dict:
    """Load every run dir under ``root`` and build the wide table: wall and CPU seconds (CPU of
    this process, DuckDB's threads included: other jobs on a shared host inflate wall time
    more than CPU time) and row counts. ``metrics_all_s``: reading every metric row, which
    ``load_runs`` leaves to the first use of ``Runs.metrics`` (not part of ``total_s``)."""
    from .load import load_runs, wide_table
    c0, t0 = time.process_time(), time.perf_counter()
    runs = load_runs(root)
    c1, t1 = time.process_time(), time.perf_counter()
    wide = wide_table(runs)
    c2, t2 = time.process_time(), time.perf_counter()
    n_metrics = len(runs.metrics)
    t3 = time.perf_counter()
    return {"run_dirs": len(runs.manifests), "metric_rows": n_metrics, "lock_rows": len(runs.locks),
            "cell_rows": len(runs.cells), "wide_rows": len(wide), "load_s": round(t1 - t0, 4),
            "wide_s": round(t2 - t1, 4), "total_s": round(t2 - t0, 4), "load_cpu_s": round(c1 - c0, 4),
            "wide_cpu_s": round(c2 - c1, 4), "total_cpu_s": round(c2 - c0, 4), "metrics_all_s": round(t3 - t2, 4)}


def bench_history(runs: int, out_dir: Path, template: Path = DEFAULT_TEMPLATE, repeat: int = 3) -> dict:
    """Build (or reuse) ``runs`` synthetic run dirs and time load + wide table ``repeat`` times
    each way: "uncached", every run dir's Parquet files opened (the history cache off), and
    "cached", through the history cache (``harness.analysis.history_cache`` for the tables,
    ``wide_cache`` for the wide rows; in DIR/.history-cache, built by a first, separately reported
    load; used from MIN_FILES run dirs on); then once after adding one run dir (``add_nightly``)."""
    from . import history_cache
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    build_history(out_dir, runs, template)
    build_s = time.perf_counter() - t0
    cache_dir = out_dir / ".history-cache"
    saved = os.environ.get(history_cache.ENV)
    modes = {}
    try:
        os.environ[history_cache.ENV] = "off"
        modes["uncached"] = [time_history(out_dir) for _ in range(max(1, repeat))]
        os.environ[history_cache.ENV] = str(cache_dir)
        shutil.rmtree(cache_dir, ignore_errors=True)
        cache_build = time_history(out_dir)
        modes["cached"] = [time_history(out_dir) for _ in range(max(1, repeat))]
        # the report after a nightly: one run dir more than the caches hold; they take in its
        # rows only (its wide rows computed, the cells cache rewritten)
        new = add_nightly(out_dir)
        try:
            nightly = time_history(out_dir)
        finally:
            shutil.rmtree(new)
    finally:
        if saved is None:
            os.environ.pop(history_cache.ENV, None)
        else:
            os.environ[history_cache.ENV] = saved
    best = {k: min(v, key=lambda r: r["total_s"]) for k, v in modes.items()}
    return {"runs": runs, "dir": str(out_dir), "template": str(template), "build_s": round(build_s, 2),
            "repeat": max(1, repeat), "best": best["cached"], "best_uncached": best["uncached"],
            "cache_used": any(cache_dir.glob("*/*.parquet")), "cache_build": cache_build, "after_a_nightly": nightly,
            "trials": modes,
            "host": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                     "python": platform.python_version(), "pandas": pd.__version__, "duckdb": _version("duckdb"),
                     "pyarrow": _version("pyarrow")}}


def _version(mod: str) -> str:
    try:
        return __import__(mod).__version__
    except ImportError:
        return "missing"


def cmd_bench_history(args) -> int:
    template = Path(args.template) if args.template else DEFAULT_TEMPLATE
    out_dir = Path(args.dir) if args.dir else Path(os.environ.get("TMPDIR", "/tmp")) / f"xmitbench-history-{args.runs}"
    res = bench_history(args.runs, out_dir, template, args.repeat)
    for mode, trials in res["trials"].items():
        for i, t in enumerate(trials, 1):
            print(f"{mode} trial {i}: {t['run_dirs']} run dirs, {t['metric_rows']} metric rows: load_runs "
                  f"{t['load_s']:.3f} s, wide_table {t['wide_s']:.3f} s ({t['wide_rows']} rows), total {t['total_s']:.3f} s "
                  f"(CPU {t['total_cpu_s']:.3f} s); every metric row on first use {t['metrics_all_s']:.3f} s")
    c, u = res["best"], res["best_uncached"]
    print(f"bench-history: {c['run_dirs']} run dirs: load_runs + wide_table {c['total_s']:.3f} s through the history "
          f"cache{'' if res['cache_used'] else ' (not used: too few run dirs)'} (load {c['load_s']:.3f} s + wide "
          f"{c['wide_s']:.3f} s), {u['total_s']:.3f} s opening every run dir (load {u['load_s']:.3f} s + wide "
          f"{u['wide_s']:.3f} s); best of {res['repeat']}; cache built in {res['cache_build']['total_s']:.3f} s; "
          f"load average {res['host']['loadavg_before'][0]:.1f} on {res['host']['cpus']} CPUs")
    n = res["after_a_nightly"]
    print(f"after a nightly ({n['run_dirs']} run dirs, 1 new): load_runs + wide_table {n['total_s']:.3f} s "
          f"(load {n['load_s']:.3f} s + wide {n['wide_s']:.3f} s)")
    out = Path(args.json) if args.json else out_dir / "bench-history.json"
    out.write_text(json.dumps(res, indent=2))
    print(f"timings: {out}")
    return 0
