"""Run a plan: boot one VM per boot group, measure each cell, write the run dir.

Faults during a cell (guest command failure, SSH loss, QEMU exit, timeouts) become a
`failed` row with the reason and the serial tail; the VM is rebooted for the next cell
and the matrix goes on. Everything the run started (QEMU, iperf3, namespace, tap) is
stopped by PID/name in `finally` blocks.
"""
from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

from harness.errors import ResultsDiskFull, free_bytes, is_disk_full
from harness.images.bootimage import BootImage, ImageUnavailable
from harness.images.guestimage import GuestImage
from harness.results.rundir import RunDir, cell_context, cell_row
from harness.run.boot import login, prepare_images, start_machine
from harness.run.cell import execute, measure, save_captures, validity
from harness.run.host import Host
from harness.run.inspect import INSPECT_DIR, bundle_about, write_bundle
from harness.run.manifest import TCG_WARNING, benchmarks, resumed_entry, run_manifest
from harness.run.plan import Plan, plan as make_plan
from harness.run.procedure import cell_steps, inspect_dir_name
from harness.run.repetitions import extra_cost, group_runs, policy_for
from harness.run.watch import AttemptWatch
from harness.run.validity import RERUN_CHECKS, failed_checks, is_valid
from harness.run.workload import warmup_run
from harness.vm.faults import Injector
from harness.vm.nics import NICS, qemu_supported_devices


class Runner:
    def __init__(self, workload, results_root: Path, shard=None, log=print, progress=None,
                 image: GuestImage | None = None, on_plan=None, resume: Path | None = None,
                 allow_unverified: bool = False, host: Host | None = None):
        self.host = host or Host()     # QEMU, namespace, SSH; a replay swaps it (manifest says which)
        self.workload, self.results_root, self.shard = workload, results_root, shard
        self.allow_unverified = allow_unverified   # use catalog images without a checksum; rows say so
        self.log, self.progress, self.on_plan = log, progress, on_plan
        self.image = image
        self.timings: dict[str, float] = defaultdict(float)
        self.cell_overheads: list[float] = []
        self.resume = resume
        self.done: set[tuple[str, int]] = set()          # (cell, rep) already ok (resume)
        self.attempts: dict[tuple[str, int], int] = {}   # attempts made so far (resume)
        self._rerun_after: dict[tuple[str, int], tuple[int, list[str]]] = {}   # invalid attempt -> checks
        self.injector = Injector()
        self.injector.peers = lambda: [s.pid for s in self.dp.servers]   # for the peer-throttle fault
        self._last_machine = None
        self.inspected: set[tuple[str, str]] = set()    # (image, nic) with a bundle (workload.inspect)

    # -- top level ----------------------------------------------------------------------
    def run(self) -> RunDir:
        t_run = time.monotonic()
        wl = self.workload
        # one QEMU for the whole run (every cell of a comparison on the same binary); a newer one
        # is fetched when the system's lacks a NIC model the workload names (harness.images.hostqemu)
        t0 = time.monotonic()
        self.qemu = self.host.select_qemu({NICS[n].qemu_device for n in wl.matrix.nic}, self.log)
        self.timings["qemu_select"] = time.monotonic() - t0    # includes a fetch when this run made one
        supported = qemu_supported_devices(self.host.device_help())
        self.plan: Plan = make_plan(wl, supported, self.shard, qemu_unavailable=self.qemu.unavailable)
        if self.on_plan:
            self.on_plan(self.plan)
        t0 = time.monotonic()
        if self.image is None:
            # always built: it is the KVM probe's kernel, and the default guest
            self.image = self.host.build_guest(self.log)
        self.images = prepare_images(self.host, [c.image for c in self.workload_cells()], self.image,
                                     self.allow_unverified, self.log)
        if wl.machine.kernel is not None:     # [machine] kernel: its cells boot the user's bzImage
            self.images[wl.machine.image] = self.host.user_kernel_image(
                wl.machine.image, wl.machine.kernel, wl.machine.modules, self.log)
        self.timings["image"] = time.monotonic() - t0
        t0 = time.monotonic()
        if wl.machine.accel == "auto":
            self.accel, accel_reason = self.host.probe_accel(self.image.kernel, self.image.initrd)
        else:
            self.accel, accel_reason = wl.machine.accel, "set in workload"
        self.timings["accel_probe"] = time.monotonic() - t0
        if self.accel == "tcg":
            self.log(f"WARNING: {TCG_WARNING} ({accel_reason})")

        removed = self.host.clean_stale()
        if removed:
            self.log(f"removed namespaces left by crashed runs: {', '.join(removed)}")
        if self.resume:
            rd = self.rd = RunDir.open(self.resume)
            self._load_progress()
        else:
            rd = self.rd = RunDir.create(self.results_root)
        self.key_dir = Path(os.environ.get("XMITBENCH_STATE", "/run/xmitbench")) / "keys" / rd.run_id
        previous = dict(rd.manifest) if self.resume else None
        rd.manifest.update(run_manifest(self.host, wl, self.shard, self.accel, accel_reason, self.qemu, self.image,
                                        self.images, self.plan, previous))
        self.reps = policy_for(wl, self.accel)       # "auto": the CI target resolved for this accel
        rd.manifest["repetitions"] = self.reps.manifest()
        if previous:
            rd.manifest["resumed"] = resumed_entry(previous, len(self.done))
            rd.manifest.pop("interrupted", None)
            rd.manifest.pop("incomplete_reason", None)
        for sk in self.plan.skipped:
            for rep in range(wl.repetitions):
                if (sk.cell.cell_id, rep) not in self.done:
                    self._record_skip(sk.cell, rep, sk.reason, None)
        rd.flush()
        self.dp = self.host.dataplane(rd.run_id)
        measured = 0.0
        disk_full = None
        try:
            self.dp.create()
            self.key = self.host.make_key(self.key_dir)
            for gi, group in enumerate(self.plan.groups):
                image = self.images.get(group.boot_key.image)
                if isinstance(image, ImageUnavailable):
                    for cr in group.runs:
                        if (cr.cell.cell_id, cr.rep) not in self.done:
                            self._record_skip(cr.cell, cr.rep, str(image), gi, cr)
                    rd.flush()
                    continue
                measured += self._run_group(gi, group)
        except KeyboardInterrupt:
            rd.manifest["interrupted"] = True
            raise
        except ResultsDiskFull as e:
            disk_full = e
            raise
        except OSError as e:    # a write into the run dir outside RunDir's helpers (serial tail)
            if not (is_disk_full(e) and e.filename and Path(e.filename).is_relative_to(rd.path)):
                raise
            disk_full = ResultsDiskFull(e.filename, free_bytes(rd.path))
            raise disk_full from e
        finally:
            self.dp.destroy()       # everything stopped first, whatever the writes below do
            shutil.rmtree(self.key_dir, ignore_errors=True)
            wall = time.monotonic() - t_run
            self.timings["total"] = wall
            rd.manifest["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
            rd.manifest["benchmarks"] = benchmarks(rd.manifest, self.image, self.timings, self.cell_overheads,
                                                   wall, measured)
            rd.manifest["benchmarks"].update(extra_cost(rd.cells, self.reps))
            if disk_full is not None:   # no flush: it cannot be written, and must not say complete
                rd.mark_incomplete(str(disk_full))
            else:
                rd.manifest["complete"] = not rd.manifest.get("interrupted", False)
                try:
                    rd.flush()
                except ResultsDiskFull as e:
                    rd.mark_incomplete(str(e))
                    raise
        return rd

    def workload_cells(self):
        return [cr.cell for cr in self.plan.runs] + [sk.cell for sk in self.plan.skipped]

    def _load_progress(self) -> None:
        """Resume: cells already ok (or recorded as skipped) are not run again; attempts go on
        counting from what was recorded."""
        for c in self.rd.cells:
            key = (c["cell"], int(c["rep"]))
            if c["status"] in ("ok", "skipped"):
                self.done.add(key)
            self.attempts[key] = max(self.attempts.get(key, 0), int(c["attempt"]))

    # -- one VM ---------------------------------------------------------------------------
    def _boot(self, group, boot_no: int, cr, attempt: int):
        bk = group.boot_key
        image: BootImage = self.images[bk.image]
        t0 = time.monotonic()
        nossh = "xb.nossh=1" if self.injector.wants("no-ssh", cr.run_id, attempt) else ""
        m, spec, boot = start_machine(self.host, self.rd, self.dp, self.key, self.key_dir, bk, image, self.accel,
                                      boot_no, extra_cmdline=nossh)
        self._last_machine = m
        vm = login(self.host, m, spec, boot, self.key, bk, image, self.accel, self.workload.pin_vcpus, t0,
                   inspect=self._inspect_step(bk, image, boot_no))
        self.timings["boot"] += time.monotonic() - t0
        self.log(f"booted {bk.label}: {boot['kernel']} {boot['driver']} "
                 f"in {boot['boot_to_ssh_s']} s (QEMU pid {m.pid})")
        if self.workload.warmup_after_boot:
            self._warmup(vm, cr, boot_no)
        return vm

    def _inspect_step(self, bk, image: BootImage, boot_no: int):
        """workload.inspect: the first boot of each image and NIC writes its inspect bundle (as
        `images inspect` does) to inspect/<image>.<nic>/; the manifest lists them."""
        if not self.workload.inspect or (bk.image, bk.nic) in self.inspected:
            return None
        rel = f"{INSPECT_DIR}/{inspect_dir_name(bk)}"
        about = bundle_about(bk, image, self.accel, f"xmitbench run {self.workload.path.name} "
                                                    f"(run {self.rd.run_id}, boot {boot_no})")

        def step(guest):
            index = write_bundle(guest, self.rd.path / rel, about)
            self.inspected.add((bk.image, bk.nic))
            self.rd.manifest.setdefault("inspect", {})[inspect_dir_name(bk)] = {
                "dir": rel, "boot": boot_no, "coverage_counts": index["coverage_counts"]}
            counts = index["coverage_counts"]
            self.log(f"inspect bundle {rel}: {index['driver']} counters {counts['mapped']} mapped, "
                     f"{counts['unmapped']} unmapped, {counts['missing']} missing")
        return step

    def _warmup(self, vm, cr, boot_no: int) -> None:
        """The first cell after a boot ran ~45 % slow (cold caches, TCG translation): every
        boot first runs the next cell's configuration untraced, recorded with status `warmup`
        (left out of every statistic; the order-effect table compares it with the later runs).
        A warm-up that fails fails this boot."""
        t0 = time.monotonic()
        try:
            self._run_cell(warmup_run(cr.cell), boot_no + 1, vm, None, status="warmup")
        except Exception:
            vm.close()
            raise
        self.timings["warmup"] += time.monotonic() - t0

    def _run_group(self, gi: int, group) -> float:
        """Cells of one boot configuration on one VM; a fault reboots the VM, a failed cell
        is retried within the budget, and every attempt is recorded."""
        measured = 0.0
        vm = None
        try:
            for cr in group_runs(group, self.rd, self.reps, 1 + self.workload.retries):
                if (cr.cell.cell_id, cr.rep) in self.done:
                    continue
                unsupported = self.dp.stack_unsupported(cr.cell.stack)
                if unsupported:
                    self._record_skip(cr.cell, cr.rep, unsupported, gi, cr)
                    self.rd.flush()
                    continue
                attempt = self.attempts.get((cr.cell.cell_id, cr.rep), 0)
                for _ in range(1 + self.workload.retries):
                    attempt += 1
                    if vm is None:
                        try:
                            vm = self._boot(group, len(self.rd.manifest["boots"]), cr, attempt)
                        except KeyboardInterrupt:
                            raise
                        except Exception as e:  # noqa: BLE001 — a failed boot fails this attempt
                            self._record_failure(cr, attempt, f"boot failed: {e}", self._last_machine, gi)
                            continue
                    ok, vm, secs = self._attempt(cr, attempt, vm, gi)
                    measured += secs
                    if ok:
                        break
                if self.progress:
                    self.progress(cr)
        finally:
            t0 = time.monotonic()
            if vm:
                vm.close()
            self.dp.stop_servers()
            self.timings["teardown"] += time.monotonic() - t0
        return measured

    def _attempt(self, cr, attempt: int, vm, gi: int):
        """One attempt at one cell run. Returns (ok, vm or None if it must be rebooted, measured s)."""
        t_cell = time.monotonic()
        limit = self.workload.cell_timeout_s or (cr.cell.duration_s + cr.cell.warmup_s + 90)
        self.injector.arm(cr.run_id, attempt, vm.machine, vm.shell)
        try:
            with AttemptWatch(vm.machine, vm.shell, vm.guest.SERIAL_FAULTS, limit) as watch:
                try:
                    secs, validity = self._run_cell(cr, attempt, vm, gi)
                    watch.check_serial()
                except KeyboardInterrupt as e:
                    self._record_failure(cr, attempt, f"interrupted ({e or 'SIGINT'})", vm.machine, gi)
                    raise
                except Exception as e:  # noqa: BLE001 — any fault becomes a failed row; the matrix goes on
                    self._record_failure(cr, attempt, watch.failure_reason(e), vm.machine, gi)
                    if watch.vm_usable():
                        return False, vm, 0.0
                    vm.close()
                    return False, None, 0.0
        finally:
            self.injector.disarm()
        self.cell_overheads.append(time.monotonic() - t_cell - cr.cell.duration_s - cr.cell.warmup_s)
        rerun = [c for c in failed_checks(validity) if c in RERUN_CHECKS]
        if rerun:   # recorded as ok but invalid; the loop re-runs it if the budget allows
            self._rerun_after[(cr.cell.cell_id, cr.rep)] = (attempt, rerun)
            self.log(f"cell {cr.run_id} attempt {attempt} invalid ({', '.join(rerun)}): re-run within the retry budget")
        return not rerun, vm, secs

    def _record_skip(self, cell, rep: int, reason: str, gi, cr=None) -> None:
        """A cell run that cannot be measured here, with the reason (`cr`: it counts as done
        for the progress bar)."""
        self.rd.add(cell=self._cell_row(cell, rep, "skipped", reason, gi))
        if cr is not None and self.progress:
            self.progress(cr)

    def _record_failure(self, cr, attempt: int, reason: str, m, gi) -> None:
        raw = self.rd.raw_dir(cr.cell.cell_id, cr.rep, attempt)
        tail = m.serial_tail() if m is not None else ""
        if tail:
            (raw / "serial_tail.txt").write_text(tail)
        self.log(f"cell {cr.run_id} attempt {attempt} FAILED: {reason}")
        self.rd.add(cell=self._cell_row(cr.cell, cr.rep, "failed", reason, gi, attempt=attempt,
                                        raw_dir=str(raw.relative_to(self.rd.path))))
        self.rd.flush()

    # -- one cell ----------------------------------------------------------------------
    def _run_cell(self, cr, attempt: int, vm, gi, status: str = "ok") -> tuple[float, dict]:
        """Run one cell (harness.run.cell); returns (measured seconds, its validity checks)."""
        cell, rep, rd, boot = cr.cell, cr.rep, self.rd, vm.boot
        t0 = time.monotonic()
        peer_stack = self.dp.add_stack(cell.stack)     # the peer end first: it picks the VLAN id
        steps = cell_steps(vm.guest, self.workload, cell, vlan_id=peer_stack.vlan_id, peer_detail=peer_stack.detail)
        cap = execute(steps, vm.guest, self.dp, self.host, vm.machine, cell, boot, cr.run_id, peer_stack.vlan_id)
        self.timings["setup"] += cap.setup_s
        self.timings["measure"] += cap.measured_s
        save_captures(rd, cell, rep, attempt, cap, steps)
        ctx = cell_context(cell, rep, kernel=boot["kernel"], driver=boot["driver"], accel=self.accel,
                           attempt=attempt, kernel_sha256=boot.get("kernel_sha256"))
        traced = self.workload.lock_stats and cell.traced
        rows, lock_rows, samples, results, note, lock_problems = measure(
            vm.guest, cap, ctx, cell, boot["driver"], vm.guest.lock_method(self.accel) if traced else None)
        checks = validity(cell, samples, cap.senders, rows, results, cap.measured_s, accel=self.accel,
                          vcpus=self.workload.machine.vcpus, require_queue_spread=self.workload.require_queue_spread,
                          interval_note=note, peer_detail=peer_stack.detail, lock_problems=lock_problems,
                          lock_counts=vm.guest.tx_lock_counts(lock_rows))
        prev = self._rerun_after.get((cell.cell_id, rep))
        note = f"re-run: attempt {prev[0]} failed {', '.join(prev[1])}" if prev else ""
        rd.add(metrics=rows, locks=lock_rows,
               cell=self._cell_row(cell, rep, status, note, gi, attempt=attempt, kernel=boot["kernel"],
                                   kernel_sha256=boot.get("kernel_sha256"),
                                   driver=boot["driver"], started=cap.started, wall_s=time.monotonic() - t0,
                                   measured_s=cap.measured_s, validity=checks,
                                   raw_dir=str(rd.raw_dir(cell.cell_id, rep, attempt).relative_to(rd.path))))
        rd.flush()
        self.timings["collect"] += time.monotonic() - cap.t_collect
        return cap.measured_s, checks

    def _image_verified(self, name: str) -> bool | None:
        """True: the image's checksum was verified (linux-deb: built from apt-verified .debs);
        False: used unverified on the user's explicit flag; None: the image was never obtained."""
        img = getattr(self, "images", {}).get(name)
        return img.verified if isinstance(img, BootImage) else None

    def _cell_row(self, cell, rep, status, reason, group, attempt=1, validity=None, **kw) -> dict:
        accel = getattr(self, "accel", None)    # None when the run stopped before the probe
        return cell_row(cell, rep, status, reason, group=group, accel=accel,
                        image_verified=self._image_verified(cell.image), attempt=attempt, validity=validity,
                        valid=is_valid(validity) if status in ("ok", "warmup") else None, **kw)

