"""Plan a run: boot groups in order, skipped cells, time estimate, and ``--shard K/N``.

A boot group is the list of cell runs that share one VM (equal BootKey). Groups are never
split: a shard boots each of its VMs once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import InputError
from harness.images.local import boots_kernel_directly
from harness.guests import BootState, driver_class
from harness.vm.nics import NICS, missing_device_reason
from harness.run.repetitions import allowance_s
from harness.run.workload import BootKey, CellRun, SkippedCell, Workload, expand

# Estimates for eta_s; rough on purpose (TCG boots are slower, KVM faster).
BOOT_S = 10.0       # boot a guest until SSH answers, set it up, shut it down
CLOUD_BOOT_S = 60.0  # a cloud image: full OS boot, cloud-init/nuageinit, package install
OVERHEAD_S = 3.0    # per cell run: set queues, start sinks/senders, snapshot counters


@dataclass(frozen=True)
class BootGroup:
    boot_key: BootKey
    runs: tuple[CellRun, ...]   # in execution order (repetitions interleaved)

    def boot_cost_s(self, boot_s: float = BOOT_S) -> float:
        """The harness's own initramfs guest boots in ``boot_s``; a cloud image takes longer,
        and one whose queue counts are boot settings boots twice (e.g. FreeBSD loader tunables)."""
        bk = self.boot_key
        if boots_kernel_directly(bk.image):
            return boot_s
        guest = driver_class(bk.os).for_plan(bk.nic, BootState())
        return CLOUD_BOOT_S * (2 if guest.boot_config_script(bk.nic, bk.queues) else 1)

    def est_s(self, boot_s: float = BOOT_S, overhead_s: float = OVERHEAD_S) -> float:
        return self.boot_cost_s(boot_s) + sum(r.cell.duration_s + r.cell.warmup_s + overhead_s for r in self.runs)


@dataclass(frozen=True)
class Plan:
    workload: Workload
    groups: tuple[BootGroup, ...]
    skipped: tuple[SkippedCell, ...]
    eta_s: float
    shard: tuple[int, int] | None = None

    @property
    def runs(self) -> list[CellRun]:
        return [r for g in self.groups for r in g.runs]


def plan(workload: Workload, supported_devices: set[str] | None = None,
         shard: tuple[int, int] | None = None, *,
         boot_s: float = BOOT_S, overhead_s: float = OVERHEAD_S, qemu_unavailable: str | None = None) -> Plan:
    """Group the workload's cell runs by boot, drop what this QEMU cannot do, and shard.

    ``supported_devices`` comes from ``nics.qemu_supported_devices`` (None: do not check).
    ``qemu_unavailable``: why no QEMU with the missing devices runs (added to their skip reason).
    Skipped cells are reported by shard 1 only (or the unsharded plan), so the union of all
    shards' results records each skip exactly once.
    """
    runs, skipped = expand(workload)
    skipped = list(skipped)
    kept: list[CellRun] = []
    missing: set[str] = set()
    for run in runs:
        reason = missing_device_reason(NICS[run.cell.nic], supported_devices, qemu_unavailable)
        if reason is None:
            kept.append(run)
        elif run.cell.cell_id not in missing:   # one skip per cell, not per repetition
            missing.add(run.cell.cell_id)
            skipped.append(SkippedCell(run.cell, reason))

    grouped: dict[BootKey, list[CellRun]] = {}
    for run in kept:   # expand() already orders runs group by group
        grouped.setdefault(run.cell.boot_key, []).append(run)
    groups = [BootGroup(k, tuple(v)) for k, v in grouped.items()]

    if shard is not None:
        k, n = shard
        if not 1 <= k <= n:
            raise InputError("--shard", f"{k}/{n}", "expected K/N with 1 <= K <= N, e.g. 2/3")
        groups = shard_groups(groups, n, boot_s, overhead_s)[k - 1]
        if k != 1:
            skipped = []

    eta = sum(g.est_s(boot_s, overhead_s) for g in groups)
    if workload.warmup_after_boot:      # each boot's warm-up: its first cell once more
        eta += sum(g.runs[0].cell.duration_s + g.runs[0].cell.warmup_s + overhead_s for g in groups if g.runs)
    eta += allowance_s(workload, [r for g in groups for r in g.runs], overhead_s)   # repetitions = "auto"
    return Plan(workload, tuple(groups), tuple(skipped), eta, shard)


def shard_groups(groups: list[BootGroup], n: int, boot_s: float = BOOT_S,
                 overhead_s: float = OVERHEAD_S) -> list[list[BootGroup]]:
    """Split whole groups into ``n`` bins balanced by estimated time.

    Greedy longest-first: take groups from longest to shortest (ties: plan order) and put each
    on the bin with the least time so far (ties: lowest bin). Deterministic, and within 4/3 of
    the best possible makespan. Each bin keeps the plan's group order.
    """
    order = sorted(range(len(groups)), key=lambda i: (-groups[i].est_s(boot_s, overhead_s), i))
    loads = [0.0] * n
    members: list[list[int]] = [[] for _ in range(n)]
    for i in order:
        b = min(range(n), key=lambda j: (loads[j], j))
        loads[b] += groups[i].est_s(boot_s, overhead_s)
        members[b].append(i)
    return [[groups[i] for i in sorted(m)] for m in members]


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/3"`` -> ``(2, 3)``: shard K of N, 1-based."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        # An empty value would vanish from the message: show it quoted.
        raise InputError("--shard", text.strip() or '""', "expected K/N with 1 <= K <= N, e.g. 2/3")
    return int(m[1]), int(m[2])
