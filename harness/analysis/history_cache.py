"""A history cache: the rows of many run dirs' Parquet tables gathered in one Parquet file per
table, so loading years of nightlies opens a few files instead of thousands.

Opening a Parquet file costs ~1 ms however small it is; 1,000 run dirs x 3 tables is seconds
before a row is read. When ``load_runs`` reads at least ``MIN_FILES`` files of one table, the
scan goes through the cache of the run dirs' common parent directory (usually the results
root) under $XMITBENCH_HISTORY_CACHE (default ~/.cache/xmitbench/history; "off" disables it):

* ``<table>.parquet`` holds the rows of every source file it has seen, each with ``__src`` (the
  file's number); its Parquet metadata lists each number's path, size, mtime and inode and the
  columns that file had. A file whose stat still matches is read from the cache; any other
  file of the set is read from its own Parquet file, in the SAME DuckDB scan, and the cache is
  then rewritten (temp name + rename: a reader sees the old or the new cache, never half).
* The result is what ``scan_tables`` returns for the same files: the rows in the order of the
  files (then of the rows in each file), each row's run_id the key of its file, and only the
  columns that some file of the set has.
The stat check is the one make and git rely on; a run dir is never edited in place (tables are
renamed into place, which changes the inode and mtime).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from harness.results import jsontext


# Arrow -> pandas column types, shared with load.py (which reads through this cache)
def _pandas_type(t):
    """Arrow -> pandas column types: strings stay Arrow-backed (pandas' ``str`` dtype, missing =
    NaN as elsewhere in pandas), no Python object per value; numbers as pandas makes them."""
    import pyarrow as pa
    if pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", bool)(t):
        return ARROW_STR
    return None


try:
    ARROW_STR = pd.StringDtype("pyarrow", na_value=np.nan)
except TypeError:      # pandas < 2.3: no NaN-variant of the Arrow string dtype
    ARROW_STR = pd.StringDtype("pyarrow")


MIN_FILES = 50                 # below this the plain scan is as fast (and writes nothing)
ENV = "XMITBENCH_HISTORY_CACHE"
META_KEY = b"xmitbench.history_cache"
FORMAT = 3                     # 3: each distinct column list stored once ("schemas")


def _castable() -> dict:
    import pyarrow as pa
    return {"int64": pa.int64(), "int32": pa.int32(), "double": pa.float64(), "bool": pa.bool_()}


def cache_root() -> Path | None:
    v = os.environ.get(ENV, "")
    if v.strip().lower() in ("off", "0", "no", "false"):
        return None
    return Path(v) if v.strip() else Path.home() / ".cache" / "xmitbench" / "history"


def cache_file(files: Sequence[Path], table: str) -> Path | None:
    """The cache of these files' common parent directory, or None (disabled / too few files)."""
    root = cache_root()
    if root is None or len(files) < MIN_FILES:
        return None
    parent = os.path.commonpath([os.path.dirname(os.path.dirname(os.path.abspath(f))) for f in files])
    return root / hashlib.sha256(parent.encode()).hexdigest()[:16] / f"{table}.parquet"


def _stat(f: str | Path) -> list:
    st = os.stat(f)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_index(cache: Path) -> dict:
    """{"files": {path: [number, size, mtime_ns, inode, [columns]]}, "next": number} (stored with
    each distinct column list once, in "schemas")."""
    import pyarrow.parquet as pq
    try:
        meta = pq.read_schema(cache).metadata or {}
        idx = jsontext.loads(meta[META_KEY])
        if idx.get("format") != FORMAT:
            return {}
        schemas = idx.pop("schemas")
        idx["files"] = {p: [*v[:4], schemas[v[4]]] for p, v in idx["files"].items()}
        return idx
    except (OSError, KeyError, ValueError, Exception):  # noqa: BLE001 - no usable cache: start afresh
        return {}


def scan(files: Sequence[Path], keys: Sequence[str], cache: Path, columns: Sequence[str] | None = None,
         where: str = "", params: dict | None = None) -> pd.DataFrame:
    """``scan_tables(files, keys, columns, where, params)`` through the cache ``cache``."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    castable = _castable()
    paths = [os.path.abspath(f) for f in files]
    stats = [_stat(p) for p in paths]
    idx = _read_index(cache) if cache.exists() else {}
    known = idx.get("files", {})
    hit = [p in known and known[p][1:4] == s for p, s in zip(paths, stats)]
    misses = [p for p, h in zip(paths, hit) if not h]
    pos_of_src = {known[p][0]: i for i, (p, h) in enumerate(zip(paths, hit)) if h}
    sources = ([str(cache)] if pos_of_src else []) + misses
    con = duckdb.connect()
    try:
        if misses:
            _refresh(con, cache, idx, misses)
            con.close()
            return scan(files, keys, cache, columns, where, params)
        want = None if columns is None else "^(" + "|".join(re.escape(c) for c in columns) + ")$"
        select = "*" if want is None else "COLUMNS($cache_columns), __src"
        src_ids = sorted(pos_of_src)
        q = (f"SELECT {select} FROM read_parquet($cache_files, union_by_name=true) "
             f"WHERE __src IN (SELECT unnest($cache_src_ids))" + (f" AND ({where})" if where else ""))
        p = {**(params or {}), "cache_files": sources, "cache_src_ids": src_ids, **({"cache_columns": want} if want else {})}
        res = con.sql(q, params=p).arrow()
        tbl = res.read_all() if hasattr(res, "read_all") else res
    finally:
        con.close()
    src = tbl.column("__src").to_numpy()
    lut = np.full(max(src_ids) + 1 if src_ids else 1, -1, dtype=np.int64)
    for s, i in pos_of_src.items():
        lut[s] = i
    pos = lut[src]
    order = np.argsort(pos, kind="stable")       # rows in the order of the files asked for
    if not np.all(order == np.arange(len(order))):
        tbl = tbl.take(pa.array(order))
        pos = pos[order]
    run_id = pa.array(list(keys), pa.string()).take(pa.array(pos))
    tbl = tbl.drop_columns(["__src"])
    present: dict[str, set] = {}        # the plain scan's columns: first appearance, file by file
    for p in paths:
        for name, typ in known[p][4]:
            present.setdefault(name, set()).add(typ)
    tbl = tbl.select([c for c in present if c in tbl.column_names])
    for i, name in enumerate(tbl.column_names):
        # the cache holds the type of all the files it has seen (int64 in one run dir, double in
        # another: double); where the set's files agree, theirs, as the plain scan reads them
        typ = next(iter(present[name])) if len(present[name]) == 1 else None
        if typ in castable and str(tbl.schema.field(i).type) != typ:
            tbl = tbl.set_column(i, name, tbl.column(i).cast(castable[typ]))
    if "run_id" in tbl.column_names:
        tbl = tbl.set_column(tbl.column_names.index("run_id"), "run_id", run_id)
    else:
        tbl = tbl.append_column("run_id", run_id)
    return tbl.combine_chunks().to_pandas(types_mapper=_pandas_type)


def _refresh(con, cache: Path, idx: dict, misses: list[str]) -> None:
    """Rewrite ``cache`` with the rows of ``misses`` added (their stale rows, if any, and those of
    files that no longer exist dropped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    known = dict(idx.get("files", {}))
    nxt = int(idx.get("next", 0))
    gone = [p for p in known if p not in misses and not os.path.exists(p)]     # run dirs deleted since
    stale = [known.pop(p)[0] for p in misses + gone if p in known]
    new_ids = list(range(nxt, nxt + len(misses)))
    parts = []
    if cache.exists() and known:
        res = con.sql("SELECT * FROM read_parquet($c) WHERE __src NOT IN (SELECT unnest($stale))",
                      params={"c": str(cache), "stale": stale or [-1]}).arrow()
        parts.append(res.read_all() if hasattr(res, "read_all") else res)
    res = con.sql("SELECT *, file_index AS __fi FROM read_parquet($f, union_by_name=true)",
                  params={"f": misses}).arrow()
    new = res.read_all() if hasattr(res, "read_all") else res
    ids = pa.array(new_ids, pa.int64()).take(new.column("__fi"))
    new = new.drop_columns(["__fi"]).append_column("__src", ids)
    for p, i in zip(misses, new_ids):
        cols = [(f.name, str(f.type)) for f in pq.read_schema(p)]
        known[p] = [i, *_stat(p), cols]
    parts.append(new)
    tbl = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
    # a history's files share a few column lists: each stored once (the index is read on every load)
    schema_ids: dict[str, int] = {}
    files = {}
    for p, v in known.items():
        files[p] = [*v[:4], schema_ids.setdefault(json.dumps(v[4]), len(schema_ids))]
    index = {"format": FORMAT, "files": files, "schemas": [json.loads(k) for k in schema_ids], "next": nxt + len(misses)}
    write_cache(cache, tbl.replace_schema_metadata({META_KEY: json.dumps(index).encode()}))


def write_cache(cache: Path, tbl) -> None:
    """Write a cache file under a temp name and rename it into place: a reader sees the old or
    the new cache, never half of one."""
    import pyarrow.parquet as pq
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp{os.getpid()}")
    try:
        pq.write_table(tbl, tmp, row_group_size=256 * 1024)
        os.replace(tmp, cache)
    finally:
        if tmp.exists():
            tmp.unlink()
