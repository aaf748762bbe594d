"""The nightly job on one runner: run, report, compare with the baseline, write the job
summary, and promote tonight's run to baseline only when it is green.

Where the baseline lives: a directory the self-hosted runner keeps between jobs
(`$XMITBENCH_BASELINE_DIR`, default `/var/lib/xmitbench/baseline`), one subdirectory per
workload name holding a copy of the last green run dir plus `history.jsonl` with one line per
night (run id, verdict, medians). Green = complete run, no failed cell, no significant
regression against the previous baseline. A red night never replaces the baseline.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from harness.analysis.load import last_attempts

DEFAULT_BASELINE_ROOT = Path(os.environ.get("XMITBENCH_BASELINE_DIR", "/var/lib/xmitbench/baseline"))


def baseline_dir(workload_name: str, root: Path | None = None) -> Path:
    return (root or DEFAULT_BASELINE_ROOT) / workload_name


def current_baseline(workload_name: str, root: Path | None = None) -> Path | None:
    d = baseline_dir(workload_name, root) / "run"
    return d if (d / "manifest.json").exists() else None


def run_is_green(run_dir: Path) -> tuple[bool, str]:
    from harness.analysis.load import is_replay, replay_note
    man = json.loads((run_dir / "manifest.json").read_text())
    if is_replay(man):      # never a baseline, never a night's result
        cells = pd.read_parquet(run_dir / "cells.parquet")
        return False, f"not a live run: {replay_note(cells.os.dropna().unique())}"
    if not man.get("complete"):
        return False, "run incomplete"
    cells = pd.read_parquet(run_dir / "cells.parquet")
    final = last_attempts(cells)
    failed = final[final.status == "failed"]
    if len(failed):
        return False, f"{len(failed)} failed cell run(s): {sorted(set(failed.cell))[:3]}"
    if not (final.status == "ok").any():
        return False, "no cell measured"
    return True, "complete, no failed cells"


def promote(run_dir: Path, workload_name: str, root: Path | None = None) -> Path:
    """Copy the run to <baseline>/run atomically (temp name + rename)."""
    d = baseline_dir(workload_name, root)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".run.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run_dir, tmp, ignore=shutil.ignore_patterns("raw"))
    old = d / "run"
    if old.exists():
        retired = d / f".run.old{os.getpid()}"
        old.rename(retired)
        tmp.rename(old)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        tmp.rename(old)
    return old


def record_history(run_dir: Path, workload_name: str, verdict: str, root: Path | None = None) -> None:
    d = baseline_dir(workload_name, root)
    d.mkdir(parents=True, exist_ok=True)
    m = pd.read_parquet(run_dir / "metrics.parquet")
    med = (m[m.metric == "throughput_bps"].groupby("cell")["value"].median() / 1e9).round(4).to_dict()
    line = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_id": run_dir.name, "dir": str(run_dir),
            "verdict": verdict, "throughput_gbit_s": med}
    with open(d / "history.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def job_summary(run_dir: Path, verdict: str, compare_text: str, green_reason: str) -> str:
    """Markdown for $GITHUB_STEP_SUMMARY."""
    from harness.analysis.summary import cell_table
    man = json.loads((run_dir / "manifest.json").read_text())
    from harness.analysis.load import is_replay, replay_note
    t = cell_table(run_dir)
    lines = [f"## xmitbench nightly: {verdict}", "",
             *([f"**{replay_note(t.os.unique() if len(t) else [])}**: not a nightly result", ""] if is_replay(man) else []),
             f"run `{man['run_id']}`, kernel `{man['guest_image']['kernel_release']}`, accel `{man['accel']}`"
             f"{' — **TCG: not kernel results**' if man.get('emulated') else ''}; {green_reason}", ""]
    if not t.empty:
        lines += ["| cell | Gbit/s | requeues/Mpkt | lock wait ns/pkt | NIC/app bytes |", "|---|---|---|---|---|"]
        for _, r in t.iterrows():
            lines.append(f"| {r.cell} | {r.gbit_s:.3f} | {r.requeues_per_mpkt:.1f} | {r.lock_wait_ns_per_pkt:.1f} "
                         f"| {r.conservation_ratio:.3f} |")
    if compare_text:
        lines += ["", "<details><summary>compare against baseline</summary>", "", "```", compare_text.strip(),
                  "```", "</details>"]
    return "\n".join(lines) + "\n"
