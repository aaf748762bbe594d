"""A synthetic run dir shaped like a bigger matrix, made from a real one (tests/fixtures/runs).

Each new cell (nic x queues x procs, traced and untraced) copies every row of one real ok cell
of the source run (its metrics, locks and cells rows, all repetitions) under the new cell's name
and axis values. The numbers are real TCG measurements, only relabelled: the result exercises the
report's layout at a larger matrix, it is not a measurement (the manifest says so).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

# 3 x the default matrix: 54 measured cells (3 multi-queue NICs x 3 queue counts x 3 sender counts,
# traced and untraced) against the default's 18
BIG = {"nics": ("virtio-net", "igb", "vmxnet3"), "queues": (1, 2, 4), "procs": (1, 2, 4)}
DEFAULT_SHAPE = {"nics": ("virtio-net", "e1000e"), "queues": (1, 2), "procs": (1, 2, 4)}
SINGLE_QUEUE_NICS = {"e1000e"}      # as on Linux: recorded as skipped for queues > 1


def write_matrix(src: Path, dst: Path, nics, queues, procs, untraced: bool = True,
                 run_id: str = "20261202-000000-synth") -> Path:
    cells = pd.read_parquet(src / "cells.parquet")
    metrics = pd.read_parquet(src / "metrics.parquet")
    locks = pd.read_parquet(src / "locks.parquet") if (src / "locks.parquet").exists() else pd.DataFrame()
    ok = cells[cells.status == "ok"]
    templates = ok.drop_duplicates("cell")[["cell", "queues", "procs"]].reset_index(drop=True)
    out_c, out_m, out_l = [], [], []
    i = 0
    for nic in nics:
        for q in queues:
            for p in procs:
                for traced in ((True, False) if untraced else (True,)):
                    cell = f"linux-deb.{nic}.q{q}.p{p}.s1.tcp.m0" + ("" if traced else ".untraced")
                    axes = {"cell": cell, "nic": nic, "queues": q, "procs": p, "traced": traced,
                            "stack": "direct", "churn": "none", "run_id": run_id}
                    if nic in SINGLE_QUEUE_NICS and q > 1:
                        if traced:
                            row = cells.iloc[[0]].copy().assign(**axes, rep=0, attempt=1, status="skipped",
                                                                reason=f"{nic} has at most 1 TX queue on linux",
                                                                kernel=None, validity="", raw_dir="")
                            out_c.append(row)
                        continue
                    same = templates[(templates.queues == min(q, 2))]
                    t = (same if len(same) else templates).iloc[i % max(1, len(same) or len(templates))].cell
                    i += 1
                    c = cells[cells.cell == t].copy().assign(**axes)
                    c["raw_dir"] = [f"raw/{cell}/r{r}" for r in c.rep]
                    out_c.append(c)
                    out_m.append(metrics[metrics.cell == t].copy().assign(
                        **{k: v for k, v in axes.items() if k in metrics.columns or k in ("traced", "stack", "churn")}))
                    if traced and len(locks):
                        out_l.append(locks[locks.cell == t].copy().assign(
                            **{k: v for k, v in axes.items() if k in ("cell", "nic", "queues", "procs", "run_id")}))
    dst.mkdir(parents=True, exist_ok=True)
    pd.concat(out_c, ignore_index=True).to_parquet(dst / "cells.parquet", index=False)
    pd.concat(out_m, ignore_index=True).to_parquet(dst / "metrics.parquet", index=False)
    (pd.concat(out_l, ignore_index=True) if out_l else locks.iloc[0:0]).to_parquet(dst / "locks.parquet", index=False)
    man = json.loads((src / "manifest.json").read_text())
    man["run_id"] = run_id
    man["synthetic"] = (f"{len(nics)} NICs x queues {list(queues)} x procs {list(procs)}: rows of run "
                        f"{src.name} relabelled, for the report's layout; not a measurement")
    (dst / "manifest.json").write_text(json.dumps(man, indent=1))
    return dst


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
