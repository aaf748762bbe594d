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

from harness.counters.lockclass import lock_class
from harness.errors import ResultsDiskFull, free_bytes, is_disk_full

# The run dir's schema: bump when a column changes meaning or a table changes shape. Analysis
# reads every version up to this one and refuses a newer one (exit 2, one line).
# 1: before the version was recorded; 2: counting rules in harness.counters.counting, FreeBSD CPU rows.
# Added columns (kernel_sha256 on every table; lock_stat columns in locks) are additive: still 2.
SCHEMA_VERSION = 2

METRIC_COLUMNS = ["run_id", "cell", "rep", "attempt", "os", "kernel", "kernel_sha256", "nic", "driver", "queues",
                  "streams", "procs", "proto", "msg_size", "stack", "churn", "traced", "accel", "queue", "cpu", "metric",
                  "value", "unit", "source", "native_name"]
LOCK_COLUMNS = ["run_id", "cell", "rep", "attempt", "os", "kernel", "kernel_sha256", "nic", "queues", "procs", "accel",
                "lock", "caller", "kind", "contentions", "wait_ns_total", "wait_ns_max", "method",
                # added within version 2 (older run dirs lack them; analysis reads by name):
                # holds/hold_ns_total for hold sections (FreeBSD lockstat -H), the lock's role
                # (harness.counters.lockclass), why the cell's lock numbers are incomplete, and
                # lock_stat's acquisitions, minimum wait, contention ratio and contention points
                "holds", "hold_ns_total", "lock_class", "incomplete",
                "acquisitions", "wait_ns_min", "contention_ratio", "contention_points"]
CELL_COLUMNS = ["run_id", "cell", "rep", "attempt", "status", "reason", "os", "kernel", "kernel_sha256", "nic", "driver",
                "queues", "streams", "procs", "proto", "msg_size", "stack", "churn", "traced", "duration_s",
                "accel", "emulated", "valid", "image_verified",
                "boot_group", "started", "wall_s", "measured_s", "validity", "raw_dir", "reps_stop"]


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _disk_full(e: BaseException, path: Path) -> BaseException:
    """ENOSPC/EDQUOT -> ResultsDiskFull naming the file and the space left; anything else as is."""
    if isinstance(e, OSError) and is_disk_full(e):
        return ResultsDiskFull(path, free_bytes(path.parent))
    return e


def cell_context(cell, rep: int, *, kernel: str, driver: str, accel: str, attempt: int = 1,
                 kernel_sha256: str | None = None) -> dict:
    """The cell-describing columns every metric row of one cell run carries. `attempt`: a cell
    run re-run after an invalid attempt keeps both attempts' rows; analysis reads the last."""
    return {"cell": cell.cell_id, "rep": rep, "attempt": attempt, "os": cell.os, "kernel": kernel,
            "kernel_sha256": kernel_sha256, "nic": cell.nic,
            "driver": driver, "queues": cell.queues, "streams": cell.streams, "procs": cell.procs,
            "proto": cell.proto, "msg_size": cell.msg_size, "stack": cell.stack, "churn": cell.churn,
            "traced": cell.traced, "accel": accel}


def sample_row(ctx: dict, s) -> dict:
    """A metric row from a parsed Sample."""
    return {**ctx, "queue": s.queue, "cpu": s.cpu, "metric": s.metric, "value": s.value, "unit": s.unit,
            "source": s.source, "native_name": s.native_name}


def metric_row(ctx: dict, metric: str, value: float, unit: str, source: str, native_name: str) -> dict:
    """A metric row the harness derives (iperf3 sums, peer tap, host threads, lock totals)."""
    return {**ctx, "queue": None, "metric": metric, "value": float(value), "unit": unit,
            "source": source, "native_name": native_name}


def lock_row(ctx: dict, rec, incomplete: str | None = None) -> dict:
    """A locks-table row from a parsed LockRecord; ``incomplete``: why the cell's lock numbers
    are incomplete (None: complete)."""
    ratio = rec.contention_ratio if hasattr(rec, "contention_ratio") else None
    return {**{k: ctx.get(k) for k in ("cell", "rep", "os", "kernel", "kernel_sha256", "nic", "queues", "procs",
                                       "accel")},
            "attempt": ctx.get("attempt", 1),
            "lock": rec.lock, "caller": rec.caller, "kind": rec.kind, "contentions": rec.contentions,
            "wait_ns_total": rec.wait_ns_total, "wait_ns_max": rec.wait_ns_max, "method": rec.method,
            "holds": getattr(rec, "holds", 0), "hold_ns_total": getattr(rec, "hold_ns_total", None),
            "lock_class": lock_class(rec.lock, rec.caller), "incomplete": incomplete,
            "acquisitions": getattr(rec, "acquisitions", None), "wait_ns_min": getattr(rec, "wait_ns_min", None),
            "contention_ratio": ratio, "contention_points": getattr(rec, "contention_points", None)}


def cell_row(cell, rep: int, status: str, reason: str, *, group, accel: str | None, image_verified: bool | None,
             valid: bool | None, attempt: int = 1, kernel=None, driver=None, started=None, wall_s=None,
             measured_s=None, validity=None, raw_dir=None, kernel_sha256=None) -> dict:
    """The cells-table row of one attempt at one cell run."""
    return {"cell": cell.cell_id, "rep": rep, "attempt": attempt, "status": status, "reason": reason,
            "os": cell.boot_key.os, "kernel": kernel, "kernel_sha256": kernel_sha256, "nic": cell.nic, "driver": driver,
            "queues": cell.queues, "streams": cell.streams, "procs": cell.procs, "proto": cell.proto,
            "msg_size": cell.msg_size, "stack": cell.stack, "churn": cell.churn, "traced": cell.traced,
            "duration_s": cell.duration_s, "valid": valid, "accel": accel, "emulated": accel == "tcg",
            "image_verified": image_verified, "boot_group": group, "started": started, "wall_s": wall_s,
            "measured_s": measured_s, "validity": validity or {}, "raw_dir": raw_dir,
            "reps_stop": None}     # set on the cell's last row by harness.run.repetitions


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp name and rename into place; on any failure the temp file is removed
    and the old file (if any) is left as it was. A full disk raises ResultsDiskFull."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    _write_renamed(path, path.with_name(f".{path.name}.tmp{os.getpid()}"), write)


def _write_renamed(path: Path, tmp: Path, write) -> None:
    """``write(tmp)``, then rename it to ``path``; on any failure remove ``tmp`` (ENOSPC and
    EDQUOT become ResultsDiskFull naming ``path``)."""
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        _unlink_quietly(tmp)
        err = _disk_full(e, path)
        if err is e:
            raise
        raise err from e


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_table(path_stem: Path, df: pd.DataFrame) -> None:
    """Parquet (for analysis) and CSV (for eyes and grep), each renamed into place."""
    _write_renamed(path_stem.with_suffix(".parquet"),
                   path_stem.with_name(f".{path_stem.name}.parquet.tmp{os.getpid()}"),
                   lambda tmp: df.to_parquet(tmp, index=False))
    atomic_write_text(path_stem.with_suffix(".csv"), df.to_csv(index=False))


def _mkdir(p: Path, **kw) -> None:
    try:
        p.mkdir(**kw)
    except OSError as e:
        err = _disk_full(e, p)
        if err is e:
            raise
        raise err from e


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
        self.manifest: dict = {"run_id": run_id, "schema_version": SCHEMA_VERSION, "complete": False,
                               "timings": {}}
        # rows per table at the last flush that wrote all three tables; the manifest records it
        # (table_rows), so a flush cut short (disk full) cannot leave rows a resume would count twice
        self.flushed_rows: dict[str, int] = {"metrics": 0, "locks": 0, "cells": 0}

    @classmethod
    def create(cls, results_root: Path, run_id: str | None = None) -> "RunDir":
        run_id = run_id or new_run_id()
        path = results_root / run_id
        _mkdir(path / "raw", parents=True, exist_ok=False)
        _mkdir(path / "serial")
        return cls(path, run_id)

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        """An existing run dir, for --resume: its rows are kept and new ones appended."""
        path = Path(path)
        man_path = path / "manifest.json"
        if not man_path.exists():
            from harness.errors import InputError
            raise InputError(str(path), "--resume", "not a run dir (no manifest.json)")
        man = json.loads(man_path.read_text())
        rd = cls(path, man["run_id"])
        rd.manifest = man
        counted = man.get("table_rows") or {}
        if counted.get("run_id") != rd.run_id:    # copied from another run dir (merge): not ours
            counted = {}
        for name in ("metrics", "locks", "cells"):
            f = path / f"{name}.parquet"
            if f.exists():
                df = pd.read_parquet(f)
                if name == "cells":
                    df["validity"] = df["validity"].map(lambda v: json.loads(v) if isinstance(v, str) and v else {})
                df["run_id"] = rd.run_id    # kept: the rows must still name their run when flushed again
                rows = df.astype(object).where(df.notna(), None)
                records = rows.to_dict("records")
                if name in counted:     # newer than the manifest (a flush cut short): not kept
                    records = records[:counted[name]]
                getattr(rd, name).extend(records)
            rd.flushed_rows[name] = len(getattr(rd, name))
        return rd

    def raw_dir(self, cell: str, rep: int, attempt: int = 1) -> Path:
        d = self.path / "raw" / cell / (f"r{rep}" if attempt == 1 else f"r{rep}.a{attempt}")
        _mkdir(d, parents=True, exist_ok=True)
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
            if name == "locks":     # typed even when all null, so run dirs union by name
                for col in ("holds", "hold_ns_total"):
                    df[col] = df[col].astype("Int64")
                for col in ("lock_class", "incomplete"):
                    df[col] = df[col].astype("string")
            if name == "cells":
                df["validity"] = df["validity"].map(lambda v: json.dumps(v) if isinstance(v, dict) else v)
            atomic_write_table(self.path / name, df)
        self.flushed_rows = {"metrics": len(self.metrics), "locks": len(self.locks), "cells": len(self.cells)}
        self.manifest["table_rows"] = {"run_id": self.run_id, **self.flushed_rows}
        self.write_manifest()

    def write_manifest(self) -> None:
        atomic_write_text(self.path / "manifest.json", json.dumps(self.manifest, indent=2, default=str))

    def mark_incomplete(self, reason: str) -> None:
        """Best effort after a full disk: say why in the manifest if it can still be written.
        If it cannot, the manifest on disk is an earlier one, and that says complete=false."""
        self.manifest["complete"] = False
        self.manifest["incomplete_reason"] = reason
        try:
            self.write_manifest()
        except ResultsDiskFull:
            pass
