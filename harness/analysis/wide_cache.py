"""The wide table of a long history, kept per run dir: a nightly adds one run dir, and the
report after it computes the wide rows of that run dir only, not of the years before it.

The wide table's rows of a run dir depend only on that run dir (its cells, metrics and
manifest) and on the code of the counting rules, except for the ``workload`` label, which
tells apart runs of one workload name made from different files, so it is set after the cache
(``load.workload_labels``). The cache is ``wide.parquet`` beside the history cache's tables
(``history_cache.cache_file``; same directory, same switch ``$XMITBENCH_HISTORY_CACHE``, same
``MIN_FILES``). Its Parquet metadata lists each run dir it holds: the stat (size, mtime,
inode) of the manifest, cells and metrics files the rows were computed from, and the rows'
``__src`` number. The whole cache is void when the code of the rules differs (``code_version``:
the sha256 of the modules that make the wide table), so a changed rule is never served stale.

A load reads the rows of the run dirs that still match in one scan, computes the others with
``compute`` (the wide table of just those run dirs), and puts the rows in the order the
uncached wide table has (``load.last_attempts`` of the cells). Columns of Python objects are
stored as the Arrow type Arrow infers for them (lists of strings, bools with None) and read
back as Python values; a column Arrow cannot type is stored as JSON text and decoded on read.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from harness.results import jsontext

from . import history_cache

FORMAT = 1
INPUT_FILES = ("manifest.json", "cells.parquet", "metrics.parquet")     # what a run dir's wide rows are made of
SET_AFTER = ("workload",)              # depends on the other run dirs of the load (workload_labels)
META_KEY = b"xmitbench.wide_cache"
_HERE = Path(__file__).resolve().parent
# the modules whose code makes the wide table: a change to any voids the cache
RULE_MODULES = (_HERE / "load.py", _HERE / "stats.py", _HERE.parent / "counters" / "counting.py",
                _HERE.parent / "run" / "validity.py")


def code_version() -> str:
    h = hashlib.sha256(pd.__version__.encode())
    for f in RULE_MODULES:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_file(run_paths: list[str]) -> Path | None:
    """``wide.parquet`` of the history cache of these run dirs, or None (off / too few)."""
    return history_cache.cache_file([os.path.join(p, "cells.parquet") for p in run_paths], "wide")


def _inputs(path: str) -> list:
    return [history_cache._stat(os.path.join(path, f)) for f in INPUT_FILES]


def _read_index(cache: Path, version: str) -> dict:
    import pyarrow.parquet as pq
    try:
        idx = jsontext.loads((pq.read_schema(cache).metadata or {})[META_KEY])
    except Exception:  # noqa: BLE001 - no usable cache (missing, unreadable, no index): start afresh
        return {}
    return idx if idx.get("format") == FORMAT and idx.get("code") == version else {}


def _json_default(x):
    return x.item() if isinstance(x, np.generic) else str(x)


def wide_rows(compute: Callable, keys: list[str], paths: list[str], cache: Path) -> pd.DataFrame:
    """The wide rows of the run dirs ``paths`` (``paths[i]`` loaded as run ``keys[i]``) through
    ``cache``, without the SET_AFTER columns, in no set order; ``compute(run_keys)`` is the
    uncached wide table of those runs only."""
    import pyarrow.parquet as pq

    version = code_version()
    paths = [os.path.abspath(p) for p in paths]
    stats = [_inputs(p) for p in paths]
    idx = _read_index(cache, version) if cache.exists() else {}
    known = idx.get("runs", {})
    hit = [p in known and known[p][1] == s for p, s in zip(paths, stats)]
    miss_keys = [k for k, h in zip(keys, hit) if not h]
    parts = []
    if any(hit):
        key_of_src = {known[p][0]: k for p, k, h in zip(paths, keys, hit) if h}
        tbl = pq.read_table(cache, filters=None if len(key_of_src) == len(known) else
                            [("__src", "in", sorted(key_of_src))])
        df = tbl.to_pandas()       # the pandas types as stored (pandas' metadata in the file)
        df["run_id"] = pd.Series(df.pop("__src").map(key_of_src).to_numpy(), index=df.index, dtype=df["run_id"].dtype)
        for col in idx.get("object_columns", []):      # the Python values (lists, not NumPy arrays)
            df[col] = pd.Series(tbl.column(col).to_pylist(), index=df.index, dtype=object)
        for col in idx.get("json_columns", []):
            df[col] = pd.Series([json.loads(v) if isinstance(v, str) else None for v in tbl.column(col).to_pylist()],
                                index=df.index, dtype=object)
        parts.append(df)
    if miss_keys:
        new = compute(miss_keys).drop(columns=list(SET_AFTER), errors="ignore")
        _store(cache, idx, version, [(p, s) for p, s, h in zip(paths, stats, hit) if not h],
               {k: p for k, p in zip(keys, paths)}, new)
        parts.append(new)
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _store(cache: Path, idx: dict, version: str, misses: list[tuple[str, list]], path_of: dict[str, str],
           new: pd.DataFrame) -> None:
    """Rewrite ``cache`` with ``new`` (the rows of ``misses``) added, their stale rows and those
    of run dirs that no longer exist dropped."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    known = dict(idx.get("runs", {}))
    nxt = int(idx.get("next", 0))
    miss_paths = {p for p, _ in misses}
    gone = [p for p in known if p not in miss_paths and not os.path.exists(p)]
    drop = {known.pop(p)[0] for p in list(miss_paths) + gone if p in known}
    for i, (p, s) in enumerate(misses):
        known[p] = [nxt + i, s]
    src_of_key = {k: known[p][0] for k, p in path_of.items() if p in miss_paths}
    out = new.copy()
    # columns of Python objects: as Arrow types where Arrow has one (lists of strings, bools
    # with None), as JSON text otherwise
    json_cols = set(idx.get("json_columns", []))
    for c in [c for c in out.columns if out[c].dtype == object]:
        if c not in json_cols:
            try:
                pa.array(out[c].tolist())
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
                json_cols.add(c)
    for c in json_cols:
        out[c] = pd.Series([None if v is None else json.dumps(v, default=_json_default) for v in out[c]],
                           index=out.index, dtype=object)
    obj_cols = sorted(set(idx.get("object_columns", [])) | {c for c in out.columns if out[c].dtype == object}
                      - json_cols)
    out["__src"] = out["run_id"].map(src_of_key).astype("int64")
    tbl = pa.Table.from_pandas(out, preserve_index=False)
    if idx and cache.exists() and len(known) > len(misses):
        old = pq.read_table(cache, filters=[("__src", "not in", sorted(drop))] if drop else None)
        if old.num_rows:
            tbl = pa.concat_tables([old, tbl], promote_options="permissive")
    meta = dict(tbl.schema.metadata or {})
    meta[META_KEY] = json.dumps({"format": FORMAT, "code": version, "runs": known, "next": nxt + len(misses),
                                 "json_columns": sorted(json_cols), "object_columns": obj_cols}).encode()
    history_cache.write_cache(cache, tbl.replace_schema_metadata(meta))
