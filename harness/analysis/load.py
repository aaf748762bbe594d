"""Open run directories (DuckDB over their Parquet tables) into pandas, and derive the
per-(run, cell, rep) wide table every notebook and ``xmitbench compare`` work from.

TX packets/bytes, qdisc totals, driver event counters, CPU busy and the per-Mpkt ratios follow
the counting rules of ``harness.counters.counting`` (the runner's validity uses the same functions).
* throughput: iperf3 ``throughput_bps`` (sum over sender processes, warm-up omitted).
* host CPU: ``host_thread_cpu_s`` rows (utime+stime per QEMU thread name, from the host's
  /proc/<qemu>/task/*/stat around the sender run) over the cell's ``measured_s`` x 100 = % of one
  host CPU. The snapshots bracket the sender run plus the guest's after-snapshot, so the share is
  an upper bound by a few percent. Thread kinds: ``CPU <n>/TCG|KVM`` = vCPU, ``IO ...``/iothread/
  vhost = I/O, anything else = main loop + other. Without ``-name ...,debug-threads=on`` every
  thread is called ``qemu-system-x86`` and only the total is known (kind "all threads (unnamed)").

Run dirs from before the ``stack``/``churn``/``traced``/``valid`` columns load with the defaults
``direct``/``none``/True (False for a cell id ending in ``.untraced``)/NA; without a bottleneck
verdict (schema v1/v2) ``bottleneck`` is NA. ``valid`` is re-derived from each cell run's recorded
checks by ``harness.run.validity.is_valid`` where the run recorded a flag (the recorded one stays in
``valid_recorded``).
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from harness.errors import InputError
from harness.results import jsontext
from harness.counters.lockclass import lock_class
from harness.counters.counting import (BUSY_MODES, CPU_SOURCES, IDLE_MODES, INTERFACE_TX_SOURCES, _sum_by_key, cpu_table,  # noqa: F401
                              driver_total, queue_table, root_qdisc, tx_total)
from harness.run.validity import failed_checks, is_valid

from . import history_cache, wide_cache
from .history_cache import ARROW_STR, _pandas_type
from . import stats as S

TABLES = ("metrics", "locks", "cells")
REQUIRED = ("metrics", "cells")
KEY = ["run_id", "cell", "rep"]
CONFIG = ["os", "kernel", "nic", "driver", "queues", "streams", "procs", "proto", "msg_size", "stack", "churn",
          "traced", "accel"]
# Cell axes added after the first run dirs were written: (default for older dirs).
AXIS_DEFAULTS = {"stack": "direct", "churn": "none"}
UNTRACED_SUFFIX = ".untraced"
HOST_CPU_SOURCE = "host /proc/<qemu>/task/*/stat"
OS_NAMES = {"freebsd": "FreeBSD", "linux": "Linux"}


def replay_note(os_names) -> str:
    """The label every replayed row carries wherever it is shown (summary, report, compare)."""
    names = sorted({OS_NAMES.get(str(o), str(o)) for o in os_names}) or ["guest"]
    what = "/".join(names)
    return f"REPLAY of recorded {what} outputs — a test of xmitbench's pipeline, not a {what} result"


def is_replay(manifest: dict) -> bool:
    """A run played from recorded guest outputs (manifest host_kind "replay"), not a live guest."""
    return bool(manifest.get("replay")) or manifest.get("host_kind") == "replay"
_VCPU_THREAD = re.compile(r"^CPU \d+/(TCG|KVM|HVF|WHPX|NVMM)$")

# Metrics of the wide table: name -> (unit, higher_is_better, caption of the kernel mechanism).
WIDE_METRICS: dict[str, tuple[str, bool, str]] = {
    "throughput_bps": ("bit/s", True, "iperf3 goodput summed over sender processes"),
    "gbit_s": ("Gbit/s", True, "iperf3 goodput summed over sender processes"),
    "tx_packets": ("packets", True, "packets the driver put on its TX rings"),
    "tx_bytes": ("bytes", True, "bytes the driver put on its TX rings"),
    "tx_requeues": ("count", False, "qdisc requeues: driver returned NETDEV_TX_BUSY or queue stopped"),
    "qdisc_drops": ("packets", False, "packets the root qdisc dropped (queue limit / AQM)"),
    "tx_drops_ring": ("packets", False, "packets a driver ring dropped (FreeBSD buf_ring/mp_ring)"),
    "tx_restarts": ("count", False, "driver restarted a TX queue stopped for lack of descriptors"),
    "tx_ring_stalls": ("count", False, "driver found its TX ring full"),
    "lock_wait_ns": ("ns", False, "time spent waiting for contended kernel locks"),
    "lock_contentions": ("count", False, "contended lock acquisitions"),
    "cpu_busy_pct": ("% of one CPU", False, "guest CPU busy time during the cell"),
    "requeues_per_mpkt": ("per Mpkt", False, "qdisc requeues per million TX packets"),
    "drops_per_mpkt": ("per Mpkt", False, "qdisc + ring drops per million TX packets"),
    "restarts_per_mpkt": ("per Mpkt", False, "TX queue restarts per million TX packets"),
    "ring_stalls_per_mpkt": ("per Mpkt", False, "TX ring-full events per million TX packets"),
    "lock_wait_ns_per_pkt": ("ns/packet", False, "lock wait per TX packet"),
    "cpu_pct_per_gbit": ("% CPU per Gbit/s", False, "CPU cost of one Gbit/s"),
    "jain": ("index", True, "Jain fairness over per-sender throughput"),
    "tcp_retransmits": ("count", False, "TCP retransmissions reported by iperf3"),
    "unexplained_pct": ("% of app bytes", False,
                        "application bytes the NIC counters do not account for (conservation check)"),
    "host_cpu_pct": ("% of one host CPU", False, "host CPU time of all QEMU threads during the cell"),
    "host_vcpu_pct": ("% of one host CPU", False, "host CPU time of the QEMU vCPU threads during the cell"),
}


# The metric rows the wide table's counting rules read (harness.counters.counting and the
# sums below): every row of these sources, and these metrics from any source. A test checks
# that the wide table of these rows equals the wide table of all rows.
WIDE_INPUT_SOURCES = ("iperf3",) + CPU_SOURCES
WIDE_INPUT_METRICS = ("app_bytes", "tcp_retransmits", "throughput_bps", "tx_packets", "tx_bytes", "tx_requeues",
                      "qdisc_drops", "qdisc_packets", "tx_drops_ring", "tx_drops", "tx_restarts", "tx_ring_stalls",
                      "lock_wait_ns", "lock_contentions", "peer_rx_packets", "peer_rx_bytes", "stack_tx_packets",
                      "host_thread_cpu_s")
WIDE_INPUT_COLUMNS = KEY + ["attempt", "queue", "metric", "value", "source", "native_name"]   # attempt: where present


class Runs:
    """The tables of one or many run dirs, concatenated (``run_id`` tells them apart).

    ``cells`` is read by ``load_runs``; ``metrics`` and ``locks`` on first use, each by one
    DuckDB scan over the run dirs' Parquet files (a history of years of nightlies is millions
    of metric rows, and the wide table needs only the few its counting rules read:
    ``wide_inputs``)."""

    def __init__(self, paths: list[Path], manifests: dict[str, dict], metrics: pd.DataFrame | None = None,
                 locks: pd.DataFrame | None = None, cells: pd.DataFrame | None = None,
                 sources: dict[str, tuple[list[Path], list[str]]] | None = None):
        self.paths, self.manifests = paths, manifests
        self._sources = sources or {}      # table -> (its Parquet files, the run_id of each)
        self._metrics, self._locks = metrics, locks
        self.cells = cells if cells is not None else _normalise_cells(_empty("cells"))
        self._wide: pd.DataFrame | None = None

    def __repr__(self) -> str:
        return f"Runs({len(self.manifests)} run dirs, {len(self.cells)} cell rows)"

    @property
    def metrics(self) -> pd.DataFrame:
        if self._metrics is None:
            self._metrics = final_attempt_rows(_normalise_metrics(self._scan("metrics")), self.cells)
        return self._metrics

    @metrics.setter
    def metrics(self, df: pd.DataFrame) -> None:
        self._metrics = df

    @property
    def locks(self) -> pd.DataFrame:
        if self._locks is None:
            self._locks = final_attempt_rows(_normalise_locks(self._scan("locks")), self.cells)
        return self._locks

    @locks.setter
    def locks(self, df: pd.DataFrame) -> None:
        self._locks = df

    def _scan(self, table: str, columns: Sequence[str] | None = None, where: str = "",
              params: dict | None = None) -> pd.DataFrame:
        files, keys = self._sources.get(table, ([], []))
        if not files:
            df = _empty(table)
            return df[[c for c in df if c in columns]] if columns else df
        cache = history_cache.cache_file(files, table)
        if cache is not None:       # a long history: one cache file instead of thousands
            try:
                return history_cache.scan(files, keys, cache, columns, where, params)
            except Exception as e:  # noqa: BLE001 - the plain scan below gives the same rows (or the error)
                warnings.warn(f"history cache {cache} not used: {e}", stacklevel=2)
        try:
            return scan_tables(files, keys, columns, where, params)
        except Exception as e:  # noqa: BLE001 - report which table, as an input error
            raise InputError(files[0].parent, f"{table}.parquet", f"cannot read: {e}") from None

    def subset(self, run_ids: Sequence[str]) -> "Runs":
        """The runs ``run_ids`` of this load alone (their tables not yet read are read from
        their own files)."""
        want = set(run_ids)
        sources = {}
        for t, (files, keys) in self._sources.items():
            pairs = [(f, k) for f, k in zip(files, keys) if k in want]
            sources[t] = ([f for f, _ in pairs], [k for _, k in pairs])
        pick = lambda df: None if df is None else df[df.run_id.isin(want)]  # noqa: E731
        manifests = {k: m for k, m in self.manifests.items() if k in want}
        return Runs([Path(m["_path"]) for m in manifests.values()], manifests, pick(self._metrics),
                    pick(self._locks), pick(self.cells), sources)

    def check_tables(self) -> None:
        """Read the key columns of the tables not yet read: a run dir whose metrics or locks
        table is unreadable is an InputError now, not on first use."""
        for table, loaded in (("metrics", self._metrics), ("locks", self._locks)):
            if loaded is None:
                self._scan(table, ["run_id", "cell"])

    def wide_inputs(self) -> pd.DataFrame:
        """The metric rows the wide table's counting rules read (``WIDE_INPUT``): a filter of
        ``metrics`` when loaded, else a DuckDB scan that reads only those rows and columns."""
        if self._metrics is not None:
            m = self._metrics
            m = m[m.source.isin(WIDE_INPUT_SOURCES) | m.metric.isin(WIDE_INPUT_METRICS)]
            m = m[[c for c in WIDE_INPUT_COLUMNS if c in m]]
        else:
            m = self._scan("metrics", WIDE_INPUT_COLUMNS, "source IN (SELECT unnest($sources)) "
                                                          "OR metric IN (SELECT unnest($metrics))",
                           {"sources": list(WIDE_INPUT_SOURCES), "metrics": list(WIDE_INPUT_METRICS)})
            m = final_attempt_rows(_normalise_metric_values(m), self.cells)
            m = m[[c for c in WIDE_INPUT_COLUMNS if c in m]]
        # a few dozen names over hundreds of thousands of rows: the rules' many filters compare
        # and copy category codes, not strings
        return m.astype({c: "category" for c in ("source", "metric", "native_name")})

    @property
    def run_ids(self) -> list[str]:
        return list(self.manifests)

    @property
    def accels(self) -> set[str]:
        acc = {str(m.get("accel")) for m in self.manifests.values() if m.get("accel")}
        acc |= set(self.cells["accel"].dropna().astype(str)) if "accel" in self.cells else set()
        return acc

    @property
    def emulated(self) -> bool:
        """True when any number comes from a TCG (software-emulated CPU) guest."""
        return "tcg" in self.accels or any(m.get("emulated") for m in self.manifests.values())

    @property
    def tcg_run_ids(self) -> list[str]:
        out = [r for r, m in self.manifests.items() if m.get("accel") == "tcg" or m.get("emulated")]
        if "accel" in self.cells:
            out += sorted(set(self.cells.loc[self.cells.accel == "tcg", "run_id"]) - set(out))
        return out

    @property
    def replay_run_ids(self) -> list[str]:
        return [r for r, m in self.manifests.items() if is_replay(m)]

    def run_dir(self, run_id: str) -> Path:
        return Path(self.manifests[run_id]["_path"])

    def wide(self, only_ok: bool = True) -> pd.DataFrame:
        if self._wide is None:
            self._wide = wide_table(self)
        w = self._wide
        return w[w.status == "ok"].reset_index(drop=True) if only_ok else w

    def runs_table(self) -> pd.DataFrame:
        """One row per run: when, what, on which kernel and accel, how many cells fared how."""
        # per run, from one grouping of the cells table (a history has tens of thousands of rows)
        c = self.cells
        by_run = c.run_id.astype(str) if len(c) else pd.Series(dtype=str)
        started = (pd.to_numeric(c["started"], errors="coerce").groupby(by_run).min().to_dict()
                   if len(c) and "started" in c else {})

        def values(col: str) -> dict[str, str]:
            if not len(c) or col not in c:
                return {}
            v = c[col].dropna().astype(str)
            return v.groupby(by_run[v.index]).agg(lambda x: ",".join(sorted(set(x)))).to_dict()
        kernels, oses = values("kernel"), values("os")
        counts = (c.groupby([by_run, c.status.astype(str)]).size().unstack(fill_value=0).to_dict("index")
                  if len(c) and "status" in c else {})
        rows = []
        for rid, m in self.manifests.items():
            n = counts.get(rid, {})
            rows.append({
                "run_id": rid,
                "started": started.get(rid, math.nan),
                "workload": (m.get("workload") or {}).get("name"),
                # the kernels its cells ran (a run of linux-deb-12 and -13 has two), else the default guest's
                "kernel": kernels.get(rid) or (m.get("guest_image") or {}).get("kernel_release"),
                "os": oses.get(rid, ""),
                "accel": m.get("accel"),
                "replay": is_replay(m),
                "complete": bool(m.get("complete")),
                "git": ((m.get("tool") or {}).get("git_revision") or "")[:12],
                "ok": int(n.get("ok", 0)),
                "failed": int(n.get("failed", 0)),
                "skipped": int(n.get("skipped", 0)),
                "path": m.get("_path"),
            })
        df = pd.DataFrame(rows)
        if len(df):     # one conversion for the whole column; runs without cells: the time in the run_id
            t = pd.to_datetime(pd.to_numeric(df["started"], errors="coerce"), unit="s").dt.floor("s")
            df["started"] = t.where(t.notna(), pd.to_datetime(df.run_id.str[:15], format="%Y%m%d-%H%M%S",
                                                              errors="coerce"))
        return df.sort_values(["started", "run_id"]).reset_index(drop=True) if len(df) else df


def expand_run_dirs(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Run dirs named directly, or a results root whose children are run dirs (sorted by
    name, which starts with the run's time). Duplicates (same resolved path) are dropped."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise InputError(p, "", "run directory does not exist")
        if not p.is_dir():
            raise InputError(p, "", "not a directory; expected a run dir with manifest.json and *.parquet")
        if (p / "manifest.json").exists() or any((p / f"{t}.parquet").exists() for t in TABLES):
            found = [(p, p.resolve())]
        else:
            # a results root of years of nightlies: one scandir, and the root resolved once
            # (a child that is a symlink is resolved on its own below)
            with os.scandir(p) as it:
                found = sorted(Path(e.path) for e in it
                               if e.is_dir() and os.path.exists(os.path.join(e.path, "manifest.json")))
            if found:
                real_root = p.resolve()
                found = [(f, f.resolve() if f.is_symlink() else real_root / f.name) for f in found]
            if not found:
                raise InputError(p, "", "no manifest.json here nor in any subdirectory: not a run dir "
                                        "or a results root")
        for f, r in found:
            if r not in seen:
                seen.add(r)
                out.append(f)
    if not out:
        raise InputError("run dirs", "", "no run directory given")
    return out


def _read_manifest(p: Path) -> dict:
    f = p / "manifest.json"
    if not f.exists():
        raise InputError(p, "manifest.json", "missing: not a run dir written by `xmitbench run`")
    try:
        m = jsontext.loads(f.read_bytes())
    except (OSError, ValueError) as e:
        raise InputError(f, "", f"unreadable manifest: {e}") from None
    if not isinstance(m, dict) or "run_id" not in m:
        raise InputError(f, "run_id", "missing: not a run manifest")
    from harness.results.rundir import SCHEMA_VERSION
    version = m.get("schema_version", 1)      # run dirs from before the version was recorded: 1
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise InputError(f, "schema_version", f"{version!r} is newer than this xmitbench reads (1..{SCHEMA_VERSION}); "
                                              f"update xmitbench to analyse this run dir")
    return m




def scan_tables(files: Sequence[Path], keys: Sequence[str], columns: Sequence[str] | None = None, where: str = "",
                params: dict | None = None) -> pd.DataFrame:
    """ONE DuckDB scan over ``files`` (same table of many run dirs; columns matched by name,
    missing ones null), optionally only ``columns`` (those present) and rows ``where`` (an SQL
    condition); each
    row's ``run_id`` is the key of its file (a copied run dir keeps its run_id inside)."""
    import duckdb
    import pyarrow as pa
    con = duckdb.connect()
    try:
        # the named columns that exist (a regex: no lambda syntax differs between DuckDB versions)
        select = "*" if columns is None else "COLUMNS($scan_columns)"
        q = (f"SELECT {select}, file_index AS __file FROM read_parquet($scan_files, union_by_name=true)"
             + (f" WHERE {where}" if where else ""))
        p = {**(params or {}), "scan_files": [str(f) for f in files],
             **({"scan_columns": "^(" + "|".join(re.escape(c) for c in columns) + ")$"} if columns is not None else {})}
        res = con.sql(q, params=p).arrow()
        tbl = res.read_all() if hasattr(res, "read_all") else res
    finally:
        con.close()
    run_id = pa.array(list(keys), pa.string()).take(tbl.column("__file"))
    tbl = tbl.drop_columns(["__file"])
    if "run_id" in tbl.column_names:
        tbl = tbl.set_column(tbl.column_names.index("run_id"), "run_id", run_id)
    else:
        tbl = tbl.append_column("run_id", run_id)
    return tbl.combine_chunks().to_pandas(types_mapper=_pandas_type)   # one chunk: filters take() once per column


def load_runs(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> Runs:
    """Load one or many run dirs (or results roots holding run dirs).

    Raises InputError for a missing dir, a missing manifest or a missing metrics/cells
    table. Two dirs with the same run_id (a copy) are kept apart as ``<run_id>~2`` etc.
    The cells table is read now; metrics and locks when first used (``Runs.metrics``).
    """
    with jsontext.gc_paused():      # thousands of manifests and tens of thousands of validity dicts
        return _load_runs(paths)


def _load_runs(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> Runs:
    dirs = expand_run_dirs(paths)
    manifests: dict[str, dict] = {}
    keys: list[str] = []
    present: list[set[str]] = []
    for d in dirs:
        m = _read_manifest(d)
        present.append(set(os.listdir(d)))         # one call per run dir, not one stat per table
        for t in REQUIRED:
            if f"{t}.parquet" not in present[-1]:
                raise InputError(d, f"{t}.parquet", "missing: the run wrote no table (killed before its "
                                                    "first cell?)")
        key = str(m["run_id"])
        i = 1
        while key in manifests:
            i += 1
            key = f"{m['run_id']}~{i}"
        manifests[key] = {**m, "_path": str(d)}
        keys.append(key)
    sources = {}
    for t in TABLES:
        pairs = [(d / f"{t}.parquet", k) for d, k, names in zip(dirs, keys, present) if f"{t}.parquet" in names]
        sources[t] = ([p for p, _ in pairs], [k for _, k in pairs])
    runs = Runs(dirs, manifests, sources=sources)
    runs.cells = _normalise_cells(runs._scan("cells"))
    return runs


def _empty(t: str) -> pd.DataFrame:
    from harness.results.rundir import CELL_COLUMNS, LOCK_COLUMNS, METRIC_COLUMNS
    return pd.DataFrame(columns={"metrics": METRIC_COLUMNS, "locks": LOCK_COLUMNS, "cells": CELL_COLUMNS}[t])


def _axis_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """stack/churn/traced for tables written before those cell axes existed (or with nulls)."""
    for col, default in AXIS_DEFAULTS.items():
        # always Arrow strings: the type must not depend on which run dirs a load includes
        have = df[col] if col in df else pd.Series(None, index=df.index, dtype=object)
        df[col] = have.astype(object).where(have.notna(), default).astype(ARROW_STR)
    if "traced" in df and df["traced"].dtype == bool:      # every row recorded it: nothing to infer
        return df
    cell = df["cell"].astype(str) if "cell" in df else pd.Series("", index=df.index)
    inferred = ~cell.str.endswith(UNTRACED_SUFFIX)
    if "traced" in df:
        t = df["traced"].astype(object)
        df["traced"] = t.where(t.notna(), inferred).astype(bool)
    else:
        df["traced"] = inferred.astype(bool)
    return df


def _normalise_metrics(m: pd.DataFrame) -> pd.DataFrame:
    return _normalise_metric_values(_axis_defaults(m))


def _normalise_metric_values(m: pd.DataFrame) -> pd.DataFrame:
    """The numeric columns of metric rows (all ``_normalise_metrics`` does but the cell axes)."""
    for col in ("queue", "cpu"):
        m[col] = (m[col] if col in m else pd.Series(pd.NA, index=m.index)).astype("Int64")
    m["value"] = pd.to_numeric(m["value"], errors="coerce").astype("float64")
    for col in ("rep", "queues", "streams", "procs", "msg_size"):
        if col in m:
            m[col] = pd.to_numeric(m[col], errors="coerce").astype("Int64")
    return m


def _normalise_locks(lk: pd.DataFrame) -> pd.DataFrame:
    # columns added within schema 2 (rundir.LOCK_COLUMNS): absent in older run dirs
    for col in ("holds", "hold_ns_total", "incomplete"):
        if col not in lk:
            lk[col] = pd.Series(0 if col == "holds" else None, index=lk.index, dtype=object)
    if len(lk):     # the role of each lock, derived for run dirs written before the column
        derived = [lock_class(str(a), str(b)) for a, b in zip(lk["lock"], lk["caller"])]
        lk["lock_class"] = (lk["lock_class"].astype(object).where(lk["lock_class"].notna(), pd.Series(derived, index=lk.index))
                            if "lock_class" in lk else derived)
    elif "lock_class" not in lk:
        lk["lock_class"] = pd.Series(dtype=object)
    for col in ("contentions", "wait_ns_total", "wait_ns_max", "holds", "hold_ns_total"):
        if col in lk:
            lk[col] = pd.to_numeric(lk[col], errors="coerce").astype("float64")
    for col in ("rep", "queues", "procs"):
        if col in lk:
            lk[col] = pd.to_numeric(lk[col], errors="coerce").astype("Int64")
    return lk


def _normalise_cells(c: pd.DataFrame) -> pd.DataFrame:
    c = _axis_defaults(c)
    for col in ("rep", "queues", "streams", "procs", "msg_size", "attempt", "boot_group"):
        if col in c:
            c[col] = pd.to_numeric(c[col], errors="coerce").astype("Int64")
    for col in ("duration_s", "measured_s", "wall_s", "started"):
        if col in c:
            c[col] = pd.to_numeric(c[col], errors="coerce").astype("float64")
    c["valid"] = (c["valid"].astype("boolean") if "valid" in c
                  else pd.Series(pd.NA, index=c.index, dtype="boolean"))
    c["validity"] = _parse_validities(c["validity"]) if "validity" in c else [{}] * len(c)
    # why the cell's repetitions stopped (harness.run.repetitions); run dirs from before: NA
    c["reps_stop"] = (c["reps_stop"].astype("string") if "reps_stop" in c
                      else pd.Series(pd.NA, index=c.index, dtype="string"))
    return c


def _parse_validities(col: pd.Series) -> list[dict]:
    """``_parse_validity`` of every row; the JSON texts parsed as one array (a history has tens
    of thousands), each row on its own only if that fails."""
    vals = col.tolist()         # one conversion: iterating an Arrow-backed column is per value
    texts = [v if isinstance(v, str) and v.strip() else "{}" for v in vals]
    if not any(isinstance(v, dict) for v in vals):
        try:
            out = jsontext.loads("[" + ",".join(texts) + "]")
            if len(out) == len(texts):
                return [x if isinstance(x, dict) else {} for x in out]
        except ValueError:
            pass
    return [_parse_validity(v) for v in vals]


def _parse_validity(v) -> dict:
    if isinstance(v, dict):
        return v
    if isinstance(v, str) and v.strip():
        try:
            out = json.loads(v)
            return out if isinstance(out, dict) else {}
        except json.JSONDecodeError:
            return {}
    return {}


# ---------------------------------------------------------------------------------------
# The wide table
# ---------------------------------------------------------------------------------------
def sender_table(m: pd.DataFrame) -> pd.DataFrame:
    """Long table of per-sender-process throughput: run_id, cell, rep, sender, bps."""
    d = m[(m.source == "iperf3") & m.metric.str.fullmatch(r"sender\d+_bps")].copy()
    d["sender"] = d.metric.str.extract(r"sender(\d+)_bps", expand=False).astype(int)
    return d[KEY + ["sender", "value"]].rename(columns={"value": "bps"}).reset_index(drop=True)


def wide_table(runs: Runs) -> pd.DataFrame:
    """One row per (run, cell, rep) run attempt recorded in cells.parquet, key metrics as columns.
    A long history goes through the wide cache (``wide_cache``): each run dir's rows are
    computed once, by ``_wide_table`` of that run dir alone."""
    keys = list(runs.manifests)
    paths = [runs.manifests[k]["_path"] for k in keys]
    cache = wide_cache.cache_file(paths)
    if cache is None or runs.cells.empty:
        return _wide_table(runs)
    try:
        with jsontext.gc_paused():
            w = wide_cache.wide_rows(lambda some: _wide_table(runs.subset(some)), keys, paths, cache)
    except Exception as e:  # noqa: BLE001 - the uncached table is the same rows (or the error)
        warnings.warn(f"wide cache {cache} not used: {e}", stacklevel=2)
        return _wide_table(runs)
    # the uncached table's row order (that of the cell runs' final attempts) and its labels,
    # which depend on the other run dirs of this load
    order = pd.MultiIndex.from_frame(last_attempts(runs.cells)[KEY])
    w = w.set_index(KEY).reindex(order).reset_index()
    w.insert(3, "workload", w.run_id.map(workload_labels(runs.manifests)))
    return w


def _wide_table(runs: Runs) -> pd.DataFrame:
    m = runs.wide_inputs()
    cells = runs.cells.copy()
    if cells.empty:
        return pd.DataFrame(columns=KEY + ["workload"] + CONFIG + ["status"] + list(WIDE_METRICS))
    cells = last_attempts(cells)
    base = cells[[c for c in KEY + CONFIG + ["status", "reason", "valid", "duration_s", "measured_s", "started",
                                             "boot_group", "validity"] if c in cells]].set_index(KEY)
    q = lambda metric, sources=None: _sum_by_key(  # noqa: E731
        m[(m.metric == metric) & m["queue"].isna() & (m.source.isin(sources) if sources else True)])
    cols = {
        "throughput_bps": q("throughput_bps", ["iperf3"]),
        "app_bytes": q("app_bytes", ["iperf3"]),
        "tcp_retransmits": q("tcp_retransmits", ["iperf3"]),
        "tx_packets": tx_total(m, "tx_packets"),
        "tx_bytes": tx_total(m, "tx_bytes"),
        "tx_requeues": root_qdisc(m, "tx_requeues"),
        "qdisc_drops": root_qdisc(m, "qdisc_drops"),
        "qdisc_packets": root_qdisc(m, "qdisc_packets"),
        "tx_drops_ring": driver_total(m, "tx_drops_ring"),
        "if_tx_drops": q("tx_drops", INTERFACE_TX_SOURCES),    # the stack's interface counters, per OS
        "tx_restarts": driver_total(m, "tx_restarts"),
        "tx_ring_stalls": driver_total(m, "tx_ring_stalls"),
        "lock_wait_ns": q("lock_wait_ns"),
        "lock_contentions": q("lock_contentions"),
        "peer_rx_packets": q("peer_rx_packets"),
        "peer_rx_bytes": q("peer_rx_bytes"),
        "if_tx_packets": q("tx_packets", INTERFACE_TX_SOURCES),
        "if_tx_bytes": q("tx_bytes", INTERFACE_TX_SOURCES),
        "stack_tx_packets": q("stack_tx_packets"),     # the stacked device's own TX counter
    }
    w = base.join(pd.DataFrame(cols), how="left").join(cpu_table(m), how="left")
    w = w.join(host_cpu_wide(host_cpu_table(m, cells)), how="left")
    snd = sender_table(m)
    if len(snd):
        g = snd.groupby(KEY)["bps"]
        w = w.join(pd.DataFrame({"n_senders": g.size(), "jain": S.jain_index_by(snd, KEY, "bps")}), how="left")
    else:
        w["n_senders"], w["jain"] = np.nan, np.nan
    w = w.reset_index()
    w.insert(3, "workload", w.run_id.map(workload_labels(runs.manifests)))
    # played from recorded outputs (tests/replay_freebsd.py): never a live result of that OS
    w["replay"] = w.run_id.map({r: is_replay(mf) for r, mf in runs.manifests.items()}).fillna(False).astype(bool)
    w["gbit_s"] = w.throughput_bps / 1e9
    drops = w[["qdisc_drops", "tx_drops_ring"]].sum(axis=1, min_count=1)
    w["drops"] = drops
    w["requeues_per_mpkt"] = S.per_million(w.tx_requeues, w.tx_packets)
    w["drops_per_mpkt"] = S.per_million(drops, w.tx_packets)
    w["restarts_per_mpkt"] = S.per_million(w.tx_restarts, w.tx_packets)
    w["ring_stalls_per_mpkt"] = S.per_million(w.tx_ring_stalls, w.tx_packets)
    w["lock_wait_ns_per_pkt"] = S.per_packet(w.lock_wait_ns, w.tx_packets)
    w["cpu_pct_per_gbit"] = S.cpu_pct_per_gbit(w.cpu_busy_pct, w.throughput_bps)
    v = w.pop("validity") if "validity" in w else pd.Series([{}] * len(w))
    w["conservation_ratio"] = [((x or {}).get("conservation") or {}).get("ratio") for x in v]
    # nullable booleans (NA: the check was not made): one type whatever rows a load holds
    flag = lambda vals: pd.array([None if b is None else bool(b) for b in vals], dtype="boolean")  # noqa: E731
    w["conservation_ok"] = flag(((x or {}).get("conservation") or {}).get("ok") for x in v)
    w["queue_spread_ok"] = flag(((x or {}).get("queue_spread") or {}).get("ok") for x in v)
    w["saturated"] = flag(((x or {}).get("sender_saturation") or {}).get("saturated") for x in v)   # reported only
    w["bottleneck"] = pd.Series([((x or {}).get("bottleneck") or {}).get("verdict") for x in v], index=w.index,
                                dtype="string")    # NA for run dirs from before the verdict
    w["bottleneck_reason"] = pd.Series([((x or {}).get("bottleneck") or {}).get("reason") for x in v],
                                       index=w.index, dtype="string")
    w["stack_peer"] = pd.Series([(x or {}).get("stack_peer") for x in v], index=w.index,   # how the peer terminated a stack
                                dtype=ARROW_STR)
    w["failed_checks"] = [failed_checks(x or {}) for x in v]        # the rule `cells.valid` is made by
    # `valid` by today's rule (harness.run.validity.is_valid) from the recorded checks, so an older
    # run dir (e.g. a nightly baseline judged with the retired sender-saturation veto) is judged
    # like a new one; the flag the run itself recorded stays in `valid_recorded`.
    if "valid" in w:
        w["valid_recorded"] = w["valid"]
        ok = (w["status"] == "ok") if "status" in w else pd.Series(True, index=w.index)
        w["valid"] = pd.array([is_valid(x) if o and r is not pd.NA and "conservation" in (x or {}) else r
                               for x, o, r in zip(v, ok, w["valid_recorded"])], dtype="boolean")
    w["conservation_ratio"] = pd.to_numeric(w["conservation_ratio"], errors="coerce")
    cons = [((x or {}).get("conservation") or {}) for x in v]
    w["unexplained_bytes"] = pd.to_numeric(pd.Series([c.get("unexplained_bytes") for c in cons], index=w.index),
                                           errors="coerce")
    app = pd.to_numeric(pd.Series([c.get("app_bytes") for c in cons], index=w.index), errors="coerce")
    w["conservation_app_bytes"] = app      # payload of the whole run, warm-up included (validity)
    w["unexplained_pct"] = S.per_packet(w.unexplained_bytes, app) * 100
    ch = [((x or {}).get("churn") or {}) for x in v]
    w["churn_events"] = pd.to_numeric(pd.Series([c.get("events") for c in ch], index=w.index), errors="coerce")
    w["churn_all_recovered"] = pd.Series([c.get("all_recovered") for c in ch], index=w.index, dtype=object)
    w["churn_recovery_s_max"] = pd.to_numeric(pd.Series([c.get("recovery_s_max") for c in ch], index=w.index),
                                              errors="coerce")
    w["churn_baseline_bps"] = pd.to_numeric(pd.Series([c.get("baseline_bps") for c in ch], index=w.index),
                                            errors="coerce")
    w["churn_min_after_bps"] = pd.to_numeric(
        pd.Series([c.get("min_interval_bps_after_first") for c in ch], index=w.index), errors="coerce")
    for c in WIDE_METRICS:
        if c not in w:
            w[c] = np.nan
    # counts joined from the metric rows are float (NaN where a cell lacks them): the same type
    # whether or not this particular set of run dirs has a gap
    ints = [c for c, t in w.dtypes.items() if isinstance(t, np.dtype) and t.kind in "iu"]
    return w.astype({c: "float64" for c in ints}) if ints else w


def last_attempts(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, cell, rep), the cell run's final word: its last measured (status ok)
    attempt if it has one, else its last attempt. A re-run of an invalid cell that then fails
    does not throw away the measurement it was meant to improve on."""
    if "attempt" in cells:
        cells = cells.sort_values("attempt", kind="stable")
    if "status" in cells:
        cells = cells.assign(_ok=cells.status == "ok").sort_values("_ok", kind="stable").drop(columns="_ok")
    return cells.drop_duplicates(KEY, keep="last")


# The lock_stat method's rows (a LOCK_STAT kernel; harness.parsers.linux.LOCK_STAT_METHOD) are a
# second count of the same waits beside the tracing method's: summing both counts a wait twice.
LOCK_STAT_METHOD = "lock_stat"


def wait_lock_rows(lk: pd.DataFrame) -> pd.DataFrame:
    """The locks rows of each cell's tracing method (tracepoint hist on Linux, lockstat(1) on
    FreeBSD), without lock_stat's rows, which analysis.lockstat compares beside them."""
    if lk.empty or "method" not in lk:
        return lk
    return lk[lk["method"].astype(str) != LOCK_STAT_METHOD]


def final_attempt_rows(rows: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The metric or lock rows of each cell run's final attempt (``last_attempts``). A cell run
    re-run after an invalid attempt keeps both attempts' rows in its run dir; summing them would
    count the cell twice. Rows without an attempt number (run dirs from before it) are kept."""
    if rows.empty or "attempt" not in rows or "attempt" not in cells or not (rows.attempt > 1).any():
        return rows
    final = last_attempts(cells)[KEY + ["attempt"]].rename(columns={"attempt": "_final"})
    final["_final"] = final["_final"].astype("Int64")
    merged = rows.merge(final, on=KEY, how="left")
    keep = merged.attempt.isna() | merged._final.isna() | (merged.attempt == merged._final)
    return rows[keep.to_numpy()]


def thread_kind(name: str, named: bool = True) -> str:
    """QEMU thread name -> vCPU | I/O | main loop + other (see the module doc)."""
    if not named:
        return "all threads (unnamed)"
    if _VCPU_THREAD.match(name):
        return "vCPU"
    if name.startswith(("IO ", "iothread", "vhost")):
        return "I/O"
    return "main loop + other"


def host_cpu_table(m: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Long table per (run, cell, rep, QEMU thread name): host CPU seconds, thread kind, the
    interval (the cell's ``measured_s``) and the share of one host CPU in %. ``named`` is False
    for a run whose QEMU threads all carry the process name (no debug-threads=on)."""
    cols = KEY + ["thread", "kind", "named", "cpu_s", "interval_s", "pct_one_cpu"]
    d = m[(m.metric == "host_thread_cpu_s") & (m.source == HOST_CPU_SOURCE)] if len(m) else m
    if d is None or d.empty:
        return pd.DataFrame(columns=cols)
    d = d[KEY + ["native_name", "value"]].rename(columns={"native_name": "thread", "value": "cpu_s"})
    d["thread"] = d["thread"].astype(str)
    vcpu = d.thread.str.fullmatch(_VCPU_THREAD.pattern.strip("^$")).astype(bool)
    d["named"] = d.run_id.isin(set(d.run_id[vcpu]))
    d["kind"] = [thread_kind(t, n) for t, n in zip(d.thread, d.named)]
    c = last_attempts(cells)
    iv = c.set_index(KEY)["measured_s"] if "measured_s" in c else pd.Series(dtype=float)
    if "duration_s" in c:
        iv = iv.combine_first(c.set_index(KEY)["duration_s"]) if len(iv) else c.set_index(KEY)["duration_s"]
    d = d.join(iv.rename("interval_s"), on=KEY, how="left")
    d["pct_one_cpu"] = S.per_packet(d.cpu_s, d.interval_s) * 100
    return d[cols].reset_index(drop=True)


def host_cpu_wide(h: pd.DataFrame) -> pd.DataFrame:
    """Per (run, cell, rep): all QEMU threads, the vCPU threads (NaN when unnamed) and the
    busiest single thread, each in % of one host CPU."""
    if h.empty:
        return pd.DataFrame(columns=["host_cpu_pct", "host_max_thread_pct", "host_vcpu_pct"],
                            index=pd.MultiIndex.from_tuples([], names=KEY), dtype="float64")
    g = h.groupby(KEY)
    out = pd.DataFrame({"host_cpu_pct": g["pct_one_cpu"].sum(min_count=1),
                        "host_max_thread_pct": g["pct_one_cpu"].max()})
    v = h[h.kind == "vCPU"].groupby(KEY)["pct_one_cpu"].sum(min_count=1)
    out["host_vcpu_pct"] = v
    return out


def churn_events(runs: "Runs") -> pd.DataFrame:
    """One row per reconfiguration event of every churn cell run (status ok): when it happened,
    how long the senders' summed throughput took to come back to ``threshold`` x the pre-churn
    median (harness.run.validity.churn_recovery; None = not within the run)."""
    cols = KEY + ["status", "nic", "queues", "procs", "churn", "event", "event_time_s", "recovery_s", "recovered",
                  "baseline_bps", "threshold"]
    c = last_attempts(runs.cells)
    rows = []
    for _, r in c[c.churn.astype(str) != "none"].iterrows():
        ch = (r.validity or {}).get("churn") or {}
        times, recs = ch.get("event_times_s") or [], ch.get("recovery_s") or []
        for i, t in enumerate(times):
            rec = recs[i] if i < len(recs) else None
            rows.append({**{k: r[k] for k in KEY + ["status", "nic", "queues", "procs", "churn"]},
                         "event": i + 1, "event_time_s": t, "recovery_s": rec if rec is not None else math.nan,
                         "recovered": rec is not None, "baseline_bps": ch.get("baseline_bps"),
                         "threshold": ch.get("threshold")})
    return pd.DataFrame(rows, columns=cols)


def workload_labels(manifests: dict[str, dict]) -> dict[str, str]:
    """run_id -> workload name, or ``name@sha8`` when runs of one name used different files
    (e.g. the same cells at another udp_bitrate): their repetitions must not be pooled."""
    wl = {rid: ((m.get("workload") or {}).get("name") or "?", ((m.get("workload") or {}).get("sha256") or "")[:8])
          for rid, m in manifests.items()}
    shas: dict[str, set] = {}
    for name, sha in wl.values():
        shas.setdefault(name, set()).add(sha)
    return {rid: (f"{name}@{sha}" if len(shas[name]) > 1 else name) for rid, (name, sha) in wl.items()}


def config_label(row, keys: Sequence[str] = ("os", "kernel", "nic", "queues")) -> str:
    parts = []
    for k in keys:
        v = row[k]
        parts.append(f"q{v}" if k == "queues" else f"p{v}" if k == "procs" else str(v))
    return " ".join(parts)
