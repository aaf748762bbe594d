"""History at scale: `xmitbench bench-history` on a few synthetic run dirs (correctness only,
never its timings), the wide table's DuckDB-filtered inputs against all metric rows, the
vectorised Jain index, and `make notebook` (its command, not run)."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.analysis import stats as S
from analysis_helpers import cli
from harness.analysis.history_bench import build_history
from harness.analysis.load import KEY, load_runs, sender_table, wide_table
from harness.analysis.report import RUN_DIRS_ENV, resolve_run_dirs
from harness.errors import InputError

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "tests" / "fixtures" / "runs"
TEMPLATE = RUNS / "bufring-race"


def test_bench_history_builds_and_loads_synthetic_run_dirs(tmp_path, capsys):
    tpl = {t: pd.read_parquet(TEMPLATE / f"{t}.parquet") for t in ("metrics", "locks", "cells")}
    out, js = tmp_path / "hist", tmp_path / "timings.json"
    assert cli("bench-history", "--runs", "3", "--dir", str(out), "--repeat", "1", "--json", str(js)) == 0
    res = json.loads(js.read_text())
    best = res["best"]
    assert res["best_uncached"]["metric_rows"] == best["metric_rows"] and not res["cache_used"]
    assert best["run_dirs"] == 3
    assert res["after_a_nightly"]["run_dirs"] == 4          # one run dir added for that trial ...
    assert len([p for p in out.iterdir() if (p / "manifest.json").exists()]) == 3     # ... and removed
    assert best["metric_rows"] == 3 * len(tpl["metrics"])
    assert best["lock_rows"] == 3 * len(tpl["locks"])
    assert best["cell_rows"] == 3 * len(tpl["cells"])
    assert best["wide_rows"] == 3 * len(tpl["cells"].drop_duplicates(KEY))
    assert "3 run dirs" in capsys.readouterr().out
    runs = load_runs(out)
    assert len(set(runs.run_ids)) == 3 and set(runs.metrics.run_id) == set(runs.run_ids)
    # each a nightly one day after the other, its values scaled by its own factor
    started = runs.cells.groupby("run_id")["started"].min().sort_values()
    assert np.allclose(np.diff(started.to_numpy()), 86400.0)
    scales = [m["synthetic"]["value_scale"] for m in runs.manifests.values()]
    first = runs.metrics[runs.metrics.run_id == runs.run_ids[0]].value.to_numpy()
    assert np.allclose(first, tpl["metrics"].value.to_numpy() * scales[0], equal_nan=True)
    # the tables keep the writer's columns
    for t in ("metrics", "locks", "cells"):
        assert list(pd.read_parquet(out / runs.run_ids[1] / f"{t}.parquet").columns) == list(tpl[t].columns)
    # a second call reuses the set; a foreign non-empty dir is refused
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    build_history(out, 3, TEMPLATE)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not written by bench-history"):
        build_history(tmp_path / "foreign", 3, TEMPLATE)


@pytest.mark.parametrize("which", ["all", "bufring-race", "control-churn", "smoke-1rep"])
def test_wide_table_from_scanned_inputs_equals_all_rows(which):
    """The wide table of the rows its counting rules read (one DuckDB scan with a filter) is
    the wide table of every metric row."""
    path = RUNS if which == "all" else RUNS / which
    lazy = load_runs(path)
    w_scan = wide_table(lazy)
    assert lazy._metrics is None            # the scan did not read every metric row
    full = load_runs(path)
    _ = full.metrics
    w_full = wide_table(full)
    pd.testing.assert_frame_equal(w_scan, w_full)
    assert w_scan.throughput_bps.notna().any() and w_scan.cpu_busy_pct.notna().any()


def test_jain_index_by_is_jain_index_per_group():
    snd = sender_table(load_runs(RUNS).metrics)
    got = S.jain_index_by(snd, KEY, "bps")
    want = snd.groupby(KEY)["bps"].apply(S.jain_index)
    assert len(got) == len(want) > 10
    assert np.allclose(got.to_numpy(), want.reindex(got.index).to_numpy(), equal_nan=True)
    edge = pd.DataFrame({"k": ["a", "a", "b", "b", "c"], "bps": [0.0, 0.0, 1.0, np.nan, np.nan]})
    e = S.jain_index_by(edge, ["k"], "bps")
    assert math.isnan(e["a"]) and e["b"] == 1.0 and math.isnan(e["c"])


def test_unreadable_metrics_table_is_an_input_error_on_first_use(tmp_path):
    d = tmp_path / "run"
    shutil.copytree(RUNS / "smoke-1rep", d)
    (d / "metrics.parquet").write_bytes(b"not parquet")
    runs = load_runs(d)                      # cells are fine
    with pytest.raises(InputError, match=r"metrics\.parquet: cannot read"):
        runs.check_tables()                  # what `xmitbench report` does before any kernel starts
    with pytest.raises(InputError, match=r"metrics\.parquet: cannot read"):
        _ = runs.metrics


def test_notebooks_take_run_dirs_from_the_environment(monkeypatch):
    monkeypatch.setenv(RUN_DIRS_ENV, "/a/run1 /b/run2")
    assert resolve_run_dirs([]) == ["/a/run1", "/b/run2"]
    assert resolve_run_dirs(["/given"]) == ["/given"]       # the parameter cell wins


def test_make_notebook_opens_jupyterlab_on_the_analysis_notebooks():
    if not shutil.which("make"):
        pytest.fail("make is not installed")
    out = subprocess.run(["make", "-n", "notebook", "RUN=results/some-run"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert f'XMITBENCH_RUN_DIRS="{REPO}/results/some-run"' in out
    assert "jupyter-lab --notebook-dir=analysis" in out and "--ServerApp.ip=127.0.0.1" in out
    assert "'.[test,notebook]'" in out
    # the extra stays out of `make setup` / `make test`
    for target in ("setup", "test"):
        dry = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True).stdout
        assert "notebook" not in dry and "jupyter" not in dry
    bench = subprocess.run(["make", "-n", "bench-history", "HISTORY_RUNS=100"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout
    assert "xmitbench bench-history --runs 100" in bench


def _tables(runs) -> dict:
    return {"metrics": runs.metrics, "locks": runs.locks, "cells": runs.cells, "wide": wide_table(runs)}


@pytest.mark.filterwarnings("error")      # a cache that falls back to the plain scan says so by a warning
def test_history_cache_gives_the_rows_of_the_plain_scan(tmp_path, monkeypatch):
    """Through the cache (first load builds it, the next reads it) the tables are those of the
    plain scan, over run dirs of different schemas; a rewritten table is read again."""
    from harness.analysis import history_cache as HC
    root = tmp_path / "runs"
    shutil.copytree(RUNS, root)
    monkeypatch.setattr(HC, "MIN_FILES", 2)
    monkeypatch.setenv(HC.ENV, "off")
    plain = _tables(load_runs(root))
    monkeypatch.setenv(HC.ENV, str(tmp_path / "cache"))
    built = _tables(load_runs(root))
    cached = list((tmp_path / "cache").glob("*/*.parquet"))
    assert sorted(p.name for p in cached) == ["cells.parquet", "locks.parquet", "metrics.parquet", "wide.parquet"]
    read = _tables(load_runs(root))
    for name in plain:
        pd.testing.assert_frame_equal(built[name], plain[name])
        pd.testing.assert_frame_equal(read[name], plain[name])
    # a subset in another order: its rows, in its order
    sub = [root / "udp-slow", root / "smoke-1rep"]
    monkeypatch.setenv(HC.ENV, "off")
    want = _tables(load_runs(sub))
    monkeypatch.setenv(HC.ENV, str(tmp_path / "cache"))
    got = _tables(load_runs(sub))
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name])
    # a run dir whose table was rewritten (renamed into place: new inode and mtime) is read anew
    f = root / "udp-slow" / "metrics.parquet"
    m = pd.read_parquet(f)
    m["value"] = m["value"] + 1.0
    m.to_parquet(f.with_name("new.parquet"), index=False)
    f.with_name("new.parquet").replace(f)
    again = load_runs(root).metrics
    rows = again[again.run_id == load_runs(root / "udp-slow").run_ids[0]]
    assert np.allclose(rows.value.to_numpy(), m.value.to_numpy(), equal_nan=True)
    # a deleted run dir leaves the cache at its next refresh
    cache = next((tmp_path / "cache").glob("*/metrics.parquet"))
    before = len(HC._read_index(cache)["files"])
    assert str(root / "udp-base-b" / "metrics.parquet") in HC._read_index(cache)["files"]
    shutil.rmtree(root / "udp-base-b")
    f.touch()                                   # udp-slow changed again: a refresh
    _ = load_runs(root).metrics
    assert str(root / "udp-base-b" / "metrics.parquet") not in HC._read_index(cache)["files"]
    assert len(HC._read_index(cache)["files"]) == before - 1
    # the wide cache: only the changed run dir's rows are computed again (the others are read
    # from the cache), a deleted run dir leaves it, and the table is still the plain one
    from harness.analysis import wide_cache as WC
    wide_file = cache.with_name("wide.parquet")
    calls = []
    real = WC.wide_rows
    monkeypatch.setattr(WC, "wide_rows", lambda compute, *a: real(lambda ks: calls.append(ks) or compute(ks), *a))
    got = load_runs(root).wide(only_ok=False)
    udp_slow = load_runs(root / "udp-slow").run_ids[0]
    assert calls == [[udp_slow]]
    assert str(root / "udp-base-b") not in WC._read_index(wide_file, WC.code_version())["runs"]
    monkeypatch.setenv(HC.ENV, "off")
    pd.testing.assert_frame_equal(got, load_runs(root).wide(only_ok=False))
    # other code for the rules: every run dir's rows computed anew, none served from the cache
    monkeypatch.setenv(HC.ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(WC, "code_version", lambda: "changed-rules")
    calls.clear()
    runs = load_runs(root)
    runs.wide()
    assert sorted(calls[0]) == sorted(runs.run_ids) and len(calls) == 1
