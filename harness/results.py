"""The run directory: one per run, tables written atomically (temp name + rename).

results/<run-id>/
  manifest.json        provenance, per-phase timings, completeness
  metrics.parquet/.csv long form, one row per (cell, rep, metric, queue)
  locks.parquet/.csv   lock contention per (cell, rep, lock, caller)
  cells.parquet/.csv   one row per cell run: status ok/failed/skipped + reason + validity
  raw/<cell>/r<rep>/   the captured text every number was parsed from
  serial/              guest serial console logs, one per boot
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import pandas as pd

METRIC_COLUMNS = ["run_id", "cell", "rep", "os", "kernel", "nic", "driver", "queues", "streams", "procs",
                  "proto", "msg_size", "stack", "churn", "traced", "accel", "queue", "cpu", "metric", "value", "unit", "source", "native_name"]
LOCK_COLUMNS = ["run_id", "cell", "rep", "os", "kernel", "nic", "queues", "procs", "accel", "lock", "caller",
                "kind", "contentions", "wait_ns_total", "wait_ns_max", "method"]
CELL_COLUMNS = ["run_id", "cell", "rep", "attempt", "status", "reason", "os", "kernel", "nic", "driver",
                "queues", "streams", "procs", "proto", "msg_size", "stack", "churn", "traced", "duration_s",
                "accel", "emulated", "valid", "image_verified",
                "boot_group", "started", "wall_s", "measured_s", "validity", "raw_dir"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_table(path_stem: Path, df: pd.DataFrame) -> None:
    """Parquet (for analysis) and CSV (for eyes and grep), each renamed into place."""
    tmp = path_stem.with_name(f".{path_stem.name}.parquet.tmp{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path_stem.with_suffix(".parquet"))
    atomic_write_text(path_stem.with_suffix(".csv"), df.to_csv(index=False))


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid() % 100000:05d}"


def git_revision(repo: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def host_info() -> dict:
    cpu = ""
    try:
        m = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = m.group(1) if m else ""
    except OSError:
        pass
    gov = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    return {
        "hostname": platform.node(), "host_kernel": platform.release(), "cpu_model": cpu,
        "cpus": os.cpu_count(), "memory_kib": _meminfo_kib(),
        "loadavg": os.getloadavg(), "cpu_governor": gov.read_text().strip() if gov.exists() else None,
        "python": platform.python_version(),
    }


def _meminfo_kib() -> int | None:
    try:
        m = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        return int(m.group(1)) if m else None
    except OSError:
        return None


class RunDir:
    """Accumulates rows and rewrites each table atomically after every cell, so a run
    killed at any moment leaves complete tables for the cells finished so far."""

    def __init__(self, path: Path, run_id: str):
        self.path, self.run_id = path, run_id
        self.metrics: list[dict] = []
        self.locks: list[dict] = []
        self.cells: list[dict] = []
        self.manifest: dict = {"run_id": run_id, "complete": False, "timings": {}}

    @classmethod
    def create(cls, results_root: Path, run_id: str | None = None) -> "RunDir":
        run_id = run_id or new_run_id()
        path = results_root / run_id
        (path / "raw").mkdir(parents=True, exist_ok=False)
        (path / "serial").mkdir()
        return cls(path, run_id)

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        """An existing run dir, for --resume: its rows are kept and new ones appended."""
        path = Path(path)
        man_path = path / "manifest.json"
        if not man_path.exists():
            from .errors import InputError
            raise InputError(str(path), "--resume", "not a run dir (no manifest.json)")
        man = json.loads(man_path.read_text())
        rd = cls(path, man["run_id"])
        rd.manifest = man
        for name in ("metrics", "locks", "cells"):
            f = path / f"{name}.parquet"
            if f.exists():
                df = pd.read_parquet(f)
                if name == "cells":
                    df["validity"] = df["validity"].map(lambda v: json.loads(v) if isinstance(v, str) and v else {})
                df["run_id"] = rd.run_id    # kept: the rows must still name their run when flushed again
                rows = df.astype(object).where(df.notna(), None)
                getattr(rd, name).extend(rows.to_dict("records"))
        return rd

    def raw_dir(self, cell: str, rep: int, attempt: int = 1) -> Path:
        d = self.path / "raw" / cell / (f"r{rep}" if attempt == 1 else f"r{rep}.a{attempt}")
        d.mkdir(parents=True, exist_ok=True)
        return d

    def save_raw(self, cell: str, rep: int, name: str, text: str, attempt: int = 1) -> Path:
        p = self.raw_dir(cell, rep, attempt) / name
        atomic_write_text(p, text)
        return p

    def add(self, metrics: list[dict] = (), locks: list[dict] = (), cell: dict | None = None) -> None:
        for r in metrics:
            self.metrics.append({"run_id": self.run_id, **r})
        for r in locks:
            self.locks.append({"run_id": self.run_id, **r})
        if cell is not None:
            self.cells.append({"run_id": self.run_id, **cell})

    def flush(self) -> None:
        for name, rows, cols in (("metrics", self.metrics, METRIC_COLUMNS),
                                 ("locks", self.locks, LOCK_COLUMNS),
                                 ("cells", self.cells, CELL_COLUMNS)):
            df = pd.DataFrame(rows, columns=cols)
            if name == "metrics":
                df["queue"] = df["queue"].astype("Int64")
                df["cpu"] = df["cpu"].astype("Int64")
                df["value"] = df["value"].astype("float64")
            if name == "cells":
                df["validity"] = df["validity"].map(lambda v: json.dumps(v) if isinstance(v, dict) else v)
            atomic_write_table(self.path / name, df)
        self.write_manifest()

    def write_manifest(self) -> None:
        atomic_write_text(self.path / "manifest.json", json.dumps(self.manifest, indent=2, default=str))
