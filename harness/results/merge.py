"""`xmitbench merge`: shard run dirs (`run --shard K/N`, one per runner) into one run dir with
one manifest, as if one machine had run the whole matrix."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from harness.errors import InputError
from harness.results.rundir import RunDir, atomic_write_table, new_run_id


def _manifest(d: Path) -> dict:
    f = d / "manifest.json"
    if not f.is_file():
        raise InputError(str(d), "RUN_DIR", "not a run dir (no manifest.json)")
    return json.loads(f.read_text())


def merge(shard_dirs: list[Path], results_root: Path, force: bool = False, run_id: str | None = None) -> Path:
    """Refuses shards of different workloads or tool revisions (unless `force`), incomplete
    shards, shards that overlap, and a shard set that is not 1..N of one N."""
    mans = [(_manifest(d), d) for d in shard_dirs]
    first = mans[0][0]
    for man, d in mans[1:]:
        for what, a, b in (("workload sha256", first["workload"]["sha256"], man["workload"]["sha256"]),
                           ("tool git revision", first["tool"]["git_revision"], man["tool"]["git_revision"])):
            if a != b and not force:
                raise InputError(str(d), what, f"{b} differs from {a} in {mans[0][1]}; "
                                                f"merge only shards of one run (or pass --force)")
    for man, d in mans:
        if not man.get("complete"):
            raise InputError(str(d), "complete", "shard run is incomplete; finish it with --resume first")
    shards = sorted(tuple(m["shard"]) for m, _ in mans if m.get("shard"))
    if shards and not force:
        n = shards[0][1]
        if shards != [(k, n) for k in range(1, n + 1)]:
            raise InputError(str(mans[0][1]), "shard", f"have shards {shards}; need 1/{n} .. {n}/{n} exactly once")

    run_id = run_id or new_run_id() + "-merged"
    rd = RunDir.create(results_root, run_id)
    tables = {}
    for name in ("metrics", "locks", "cells"):
        parts = []
        for man, d in mans:
            f = d / f"{name}.parquet"
            if f.exists():
                df = pd.read_parquet(f)
                df = df.assign(run_id=run_id).astype({"run_id": df["run_id"].dtype})  # same schema
                parts.append(df)
        tables[name] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    cells = tables["cells"]
    # skipped rows are reported by shard 1 only; measured cells must be in exactly one shard
    measured = cells[cells.status != "skipped"]
    dup = measured.duplicated(["cell", "rep", "attempt"])
    if dup.any() and not force:
        shutil.rmtree(rd.path)
        raise InputError(str(mans[0][1]), "cells", f"cell runs in more than one shard: "
                                                  f"{sorted(set(measured[dup].cell))[:3]}")
    for i, (man, d) in enumerate(mans):
        for sub in ("raw", "serial"):
            src = d / sub
            if src.exists():
                for item in src.iterdir():
                    dest = rd.path / sub / (item.name if sub == "raw" else f"shard{i + 1}-{item.name}")
                    if not dest.exists():
                        shutil.copytree(item, dest) if item.is_dir() else shutil.copy2(item, dest)
    for name, df in tables.items():
        atomic_write_table(rd.path / name, df)
    rd.manifest = {**first, "run_id": run_id, "shard": None, "complete": True,
                   "boots": [b for m, _ in mans for b in m.get("boots", [])],
                   "merged_from": [{"run_id": m["run_id"], "dir": str(d), "shard": m.get("shard"),
                                    "host": m.get("host"), "accel": m.get("accel"),
                                    "timings": m.get("timings"), "benchmarks": m.get("benchmarks")}
                                   for m, d in mans],
                   "timings": {"total": max((m.get("timings", {}).get("total", 0) for m, _ in mans), default=0),
                               "sum_of_shards": sum(m.get("timings", {}).get("total", 0) for m, _ in mans)}}
    accels = {m.get("accel") for m, _ in mans}
    if len(accels) > 1:
        rd.manifest["accel"] = "mixed"
        rd.manifest["warning"] = f"shards ran with different accelerators: {sorted(map(str, accels))}"
    rd.write_manifest()
    return rd.path
