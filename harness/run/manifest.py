"""What a run's manifest says about where and how it ran, and the run's own benchmarks."""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from harness import __version__
from harness.images.bootimage import BootImage
from harness.results.rundir import git_revision, host_info
from harness.vm.machine import lock_visibility_method

TCG_WARNING = ("accel=tcg: QEMU is emulating the CPU in software. Throughput and lock waits are "
               "NOT kernel results; use them only to check that the harness and counters work.")
REPO = Path(__file__).resolve().parents[2]


def run_manifest(host, wl, shard, accel: str, accel_reason: str, qemu, image, images: dict, plan,
                 previous: dict | None) -> dict:
    """The manifest's run-level entries (a resumed run keeps its workload text and boots)."""
    m = {
        "tool": {"name": "xmitbench", "version": __version__, "git_revision": git_revision(REPO)},
        "command_line": sys.argv,
        "workload": {"path": str(wl.path), "sha256": wl.sha256, "name": wl.name,
                     "text": previous["workload"]["text"] if previous else Path(wl.path).read_text()},
        "shard": list(shard) if shard else None,
        "host": host_info(),
        "host_kind": host.kind,
        "host_activity": host.activity(),
        "shuffle_seed": wl.shuffle_seed,
        # how cell runs are ordered on a VM (harness.run.workload.expand): what the order effect
        # and probe effect tables rely on
        "order": {"warmup_after_boot": wl.warmup_after_boot,
                  "probe_pairs": ("each untraced twin next to its traced cell's first repetition, "
                                  "alternating which runs first (ABBA across pairs), phase shuffle_seed % 2")
                  if wl.probe_effect and wl.lock_stats else None,
                  "repetitions": "rep-major rounds (every cell once, then again)"},
        # qemu: harness.images.hostqemu.QemuChoice; "obtained": system, env XMITBENCH_QEMU or fetched
        "qemu": {"binary": qemu.binary.resolved, "version": host.qemu_version(), "obtained": qemu.binary.obtained,
                 "unavailable": qemu.unavailable},
        "accel": accel, "accel_reason": accel_reason, "emulated": accel == "tcg",
        "warning": TCG_WARNING if accel == "tcg" else None,
        "guest_image": {"name": image.name, "key": image.key,
                        "kernel_release": image.kernel_release,
                        "kernel_source": image.manifest.get("kernel_source"),
                        "bzImage_sha256": image.manifest.get("bzImage_sha256"),
                        "initramfs_sha256": image.manifest.get("initramfs_sha256"),
                        "build_s": image.manifest.get("build_s")},
        "images": {n: (i.info if isinstance(i, BootImage) else {"unavailable": str(i)}) for n, i in images.items()},
        "lock_method": lock_visibility_method(accel),
        "plan": {"groups": [g.boot_key.label for g in plan.groups],
                 "cell_runs": len(plan.runs), "skipped": len(plan.skipped), "eta_s": plan.eta_s},
        "boots": previous.get("boots", []) if previous else [],
    }
    if host.replay_of:
        m["replay"] = host.replay_of
    return m


def resumed_entry(previous: dict, already_ok: int) -> list[dict]:
    return previous.get("resumed", []) + [
        {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "command_line": sys.argv,
         "already_ok": already_ok, "previous_timings": previous.get("timings"),
         "previous_interrupted": previous.get("interrupted", False)}]


def benchmarks(manifest: dict, image, timings: dict, cell_overheads: list[float], wall: float,
               measured: float) -> dict:
    boots = [b["boot_to_ssh_s"] for b in manifest["boots"] if b.get("boot_to_ssh_s")]
    return {
        "guest_build_s": image.manifest.get("build_s", {}).get("total"),
        # images with a kernel the harness compiled (linux-lockstat): how long make took here
        "kernel_build_s": {n: i["kernel_build"].get("build_s") for n, i in manifest.get("images", {}).items()
                           if isinstance(i, dict) and i.get("kernel_build")} or None,
        "image_step_s": round(timings.get("image", 0.0), 2),
        "boot_to_ssh_s": boots,
        "boot_to_ssh_s_median": statistics.median_high(boots) if boots else None,
        "cell_overhead_s": [round(x, 2) for x in cell_overheads],
        "cell_overhead_s_median": statistics.median_high(cell_overheads) if cell_overheads else None,
        "measured_s": round(measured, 2), "wall_s": round(wall, 2),
        "efficiency": round(measured / wall, 3) if wall else None,
        "warmup_s": round(timings.get("warmup", 0.0), 2),      # the warm-ups after boots (left out of stats)
    }
