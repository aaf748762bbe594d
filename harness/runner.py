"""Run a plan: boot one VM per boot group, measure each cell, write the run dir.

Faults during a cell (guest command failure, SSH loss, QEMU exit, timeouts) become a
`failed` row with the reason and the serial tail; the VM is rebooted for the next cell
and the matrix goes on. Everything the run started (QEMU, iperf3, namespace, tap) is
stopped by PID/name in `finally` blocks.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import sys
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path

from . import __version__
from .dataplane import DataPlane, clean_stale
from .faults import Injector, scan_serial
from .guestimage import GuestImage, build_linux_deb
from .bootimage import (CLOUD_PACKAGES_NEED_EGRESS, BootImage, ImageUnavailable, first_login, prepare_image,
                        seed_for)
from .bottleneck import decide, inputs_from_rows
from .counting import cpu_busy_share, rows_frame, tx_for_conservation
from .guests import BootState, driver_class
from .guests.base import sender_outputs
from .machine import (DATA_MAC, QEMU, Machine, device_help, free_port, lock_visibility_method, probe_accel,
                      qemu_version)
from .nics import qemu_supported_devices
from .peer import peer_metrics
from .plan import Plan, plan as make_plan
from .procedure import (boot_steps, cell_steps, data_address, machine_spec, peer_ip_for, ports_for,
                        render as render_steps, tap_queue_count)
from .results import (RunDir, cell_context, cell_row, git_revision, host_info, lock_row, metric_row,
                      sample_row)
from .samples import delta
from .ssh import GuestShell, make_key
from .validity import (RERUN_CHECKS, app_bytes_total, churn_recovery, conservation, failed_checks,
                       host_thread_cpu, is_valid, queue_spread, sender_saturation)

BOOT_TIMEOUT_S = 120.0
CLOUD_BOOT_TIMEOUT_S = float(os.environ.get("XMITBENCH_CLOUD_BOOT_TIMEOUT_S", 600.0))  # TCG is slow
SSH_TIMEOUT_S = float(os.environ.get("XMITBENCH_SSH_TIMEOUT_S", 30.0))
TCG_WARNING = ("accel=tcg: QEMU is emulating the CPU in software. Throughput and lock waits are "
               "NOT kernel results; use them only to check that the harness and counters work.")
REPO = Path(__file__).resolve().parent.parent


class CellFailure(RuntimeError):
    pass


class Runner:
    def __init__(self, workload, results_root: Path, shard=None, log=print, progress=None,
                 image: GuestImage | None = None, on_plan=None, resume: Path | None = None,
                 allow_unverified: bool = False):
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

    # -- top level ----------------------------------------------------------------------
    def run(self) -> RunDir:
        from .errors import ResultsDiskFull, free_bytes, is_disk_full
        t_run = time.monotonic()
        wl = self.workload
        supported = qemu_supported_devices(device_help())
        self.plan: Plan = make_plan(wl, supported, self.shard)
        if self.on_plan:
            self.on_plan(self.plan)
        t0 = time.monotonic()
        if self.image is None:
            # always built: it is the KVM probe's kernel, and the default guest
            self.image = build_linux_deb(log=self.log)
        self.images: dict[str, BootImage | ImageUnavailable] = {}
        for name in dict.fromkeys(c.image for c in self.workload_cells()):
            try:
                self.images[name] = prepare_image(name, log=self.log, built=self.image,
                                                  allow_unverified=self.allow_unverified)
                if not self.images[name].verified:
                    self.log(f"WARNING: image {name} is NOT checksum-verified (--allow-unverified); "
                             f"every row of its cells says image_verified=false")
            except ImageUnavailable as e:
                self.images[name] = e
                self.log(f"image {name}: {e}; its cells are recorded as skipped")
        self.timings["image"] = time.monotonic() - t0
        t0 = time.monotonic()
        if wl.machine.accel == "auto":
            self.accel, accel_reason = probe_accel(self.image.kernel, self.image.initrd)
        else:
            self.accel, accel_reason = wl.machine.accel, "set in workload"
        self.timings["accel_probe"] = time.monotonic() - t0
        if self.accel == "tcg":
            self.log(f"WARNING: {TCG_WARNING} ({accel_reason})")

        removed = clean_stale()
        if removed:
            self.log(f"removed namespaces left by crashed runs: {', '.join(removed)}")
        if self.resume:
            rd = self.rd = RunDir.open(self.resume)
            self._load_progress()
        else:
            rd = self.rd = RunDir.create(self.results_root)
        self.key_dir = Path(os.environ.get("XMITBENCH_STATE", "/run/xmitbench")) / "keys" / rd.run_id
        previous = dict(rd.manifest) if self.resume else None
        rd.manifest.update({
            "tool": {"name": "xmitbench", "version": __version__, "git_revision": git_revision(REPO)},
            "command_line": sys.argv,
            "workload": {"path": str(wl.path), "sha256": wl.sha256, "name": wl.name,
                         "text": previous["workload"]["text"] if previous else Path(wl.path).read_text()},
            "shard": list(self.shard) if self.shard else None,
            "host": host_info(),
            "host_activity": host_activity(),
            "shuffle_seed": wl.shuffle_seed,
            "qemu": {"binary": shutil.which(QEMU) or QEMU, "version": qemu_version()},
            "accel": self.accel, "accel_reason": accel_reason, "emulated": self.accel == "tcg",
            "warning": TCG_WARNING if self.accel == "tcg" else None,
            "guest_image": {"name": self.image.name, "key": self.image.key,
                            "kernel_release": self.image.kernel_release,
                            "kernel_source": self.image.manifest.get("kernel_source"),
                            "bzImage_sha256": self.image.manifest.get("bzImage_sha256"),
                            "initramfs_sha256": self.image.manifest.get("initramfs_sha256"),
                            "build_s": self.image.manifest.get("build_s")},
            "images": {n: (i.info if isinstance(i, BootImage) else {"unavailable": str(i)})
                       for n, i in self.images.items()},
            "lock_method": lock_visibility_method(self.accel),
            "plan": {"groups": [g.boot_key.label for g in self.plan.groups],
                     "cell_runs": len(self.plan.runs), "skipped": len(self.plan.skipped),
                     "eta_s": self.plan.eta_s},
            "boots": previous.get("boots", []) if previous else [],
        })
        if previous:
            rd.manifest["resumed"] = previous.get("resumed", []) + [
                {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "command_line": sys.argv,
                 "already_ok": len(self.done), "previous_timings": previous.get("timings"),
                 "previous_interrupted": previous.get("interrupted", False)}]
            rd.manifest.pop("interrupted", None)
            rd.manifest.pop("incomplete_reason", None)
        for sk in self.plan.skipped:
            for rep in range(wl.repetitions):
                if (sk.cell.cell_id, rep) not in self.done:
                    self._record_skip(sk.cell, rep, sk.reason, None)
        rd.flush()
        self.dp = DataPlane(rd.run_id)
        measured = 0.0
        disk_full = None
        try:
            self.dp.create()
            self.key = make_key(self.key_dir)
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
            rd.manifest["benchmarks"] = self._benchmarks(wall, measured)
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

    def _benchmarks(self, wall: float, measured: float) -> dict:
        boots = [b["boot_to_ssh_s"] for b in self.rd.manifest["boots"] if b.get("boot_to_ssh_s")]
        return {
            "guest_build_s": self.image.manifest.get("build_s", {}).get("total"),
            "image_step_s": round(self.timings.get("image", 0.0), 2),
            "boot_to_ssh_s": boots,
            "boot_to_ssh_s_median": statistics.median_high(boots) if boots else None,
            "cell_overhead_s": [round(x, 2) for x in self.cell_overheads],
            "cell_overhead_s_median": statistics.median_high(self.cell_overheads) if self.cell_overheads else None,
            "measured_s": round(measured, 2), "wall_s": round(wall, 2),
            "efficiency": round(measured / wall, 3) if wall else None,
        }

    # -- one VM ---------------------------------------------------------------------------
    def _boot(self, gi: int, group, boot_no: int, cr, attempt: int):
        bk = group.boot_key
        image: BootImage = self.images[bk.image]
        t0 = time.monotonic()
        tapname = "xbt" + hashlib.sha1(f"{self.rd.run_id}-{boot_no}".encode()).hexdigest()[:8]
        fds = self.dp.open_tap(tapname, tap_queue_count(bk))
        serial = self.rd.path / "serial" / f"boot{boot_no:02d}-{bk.image}-{bk.nic}.log"
        state = self.key_dir / f"boot{boot_no}"
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        disk = seed = None
        if image.is_cloud:
            from .catalog import make_overlay
            disk = make_overlay(image.disk, state)       # the cached base is never written
            seed = seed_for(image, self.key.public_line, state / "seed.iso")
        spec = machine_spec(bk, self.accel, kernel=image.kernel, initrd=image.initrd, disk=disk, seed_iso=seed,
                            serial_log=serial, qmp_socket=state / "qmp.sock", ssh_port=free_port(),
                            ssh_pubkey_b64=self.key.public_b64, tap_fds=fds,
                            guest_egress=image.is_cloud and CLOUD_PACKAGES_NEED_EGRESS,
                            extra_cmdline="xb.nossh=1" if self.injector.wants("no-ssh", cr.run_id, attempt) else "")
        m = self._last_machine = Machine(spec)
        boot = {"boot": boot_no, "group": bk.label, "image": bk.image, "argv": m.argv,
                "serial_log": str(serial.relative_to(self.rd.path)), "guest_egress": spec.guest_egress}
        self.rd.manifest["boots"].append(boot)
        try:
            m.start()
        finally:
            for fd in fds:
                os.close(fd)
        boot["qemu_pid"] = m.pid
        try:
            if not image.is_cloud:
                m.wait_serial("xmitbench: ready", BOOT_TIMEOUT_S)
            shell, over_ssh = first_login(image, self.key.public_line,
                                          lambda user: GuestShell(spec.ssh_port, self.key, user=user),
                                          SSH_TIMEOUT_S if not image.is_cloud else CLOUD_BOOT_TIMEOUT_S)
            if over_ssh:       # what the seed could not do for this release, done over SSH
                boot["first_boot_over_ssh"] = over_ssh
            guest = driver_class(bk.os)(shell, image.tools, state=BootState())
            for step in boot_steps(guest, bk):
                if step.action == "data_interface":
                    guest.setup_data_interface(DATA_MAC, data_address())
                elif step.action == "boot_config":
                    guest.run(step.command)
                    boot["rebooted_for"] = step.command
                elif step.action == "reboot":
                    boot["reboot_s"] = round(guest.reboot(timeout=CLOUD_BOOT_TIMEOUT_S), 2)
        except BaseException:
            boot["error"] = traceback.format_exc(limit=1).strip().splitlines()[-1]
            m.stop()
            raise
        if self.workload.pin_vcpus:
            boot["vcpu_pinning"] = m.pin_vcpus()
        boot["boot_to_ssh_s"] = round(time.monotonic() - t0, 2)
        boot["ssh_host_key"] = shell.host_key_fingerprint
        boot["kernel"] = guest.kernel_release()
        boot["driver"] = guest.nic_driver()
        boot["tx_queues_at_boot"] = guest.tx_queue_count()
        boot["lock_method"] = guest.lock_method(self.accel)
        self.timings["boot"] += time.monotonic() - t0
        self.log(f"booted {bk.label}: {boot['kernel']} {boot['driver']} "
                 f"in {boot['boot_to_ssh_s']} s (QEMU pid {m.pid})")
        return m, shell, guest, boot

    def _run_group(self, gi: int, group) -> float:
        """Cells of one boot configuration on one VM; a fault reboots the VM, a failed cell
        is retried within the budget, and every attempt is recorded."""
        measured = 0.0
        vm = None  # (machine, shell, guest, boot)
        try:
            for cr in group.runs:
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
                            vm = self._boot(gi, group, len(self.rd.manifest["boots"]), cr, attempt)
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
                vm[1].close()
                vm[0].stop()
            self.dp.stop_servers()
            self.timings["teardown"] += time.monotonic() - t0
        return measured

    def _attempt(self, cr, attempt: int, vm, gi: int):
        """One attempt at one cell run. Returns (ok, vm or None if it must be rebooted, measured s)."""
        m, shell, guest, boot = vm
        t_cell = time.monotonic()
        limit = self.workload.cell_timeout_s or (cr.cell.duration_s + cr.cell.warmup_s + 90)
        expired = threading.Event()

        def expire():  # the cell watchdog: stop our own QEMU by PID; the cell's commands then fail
            expired.set()
            m.kill()
        watchdog = threading.Timer(limit, expire)
        watchdog.daemon = True
        watchdog.start()
        serial_mark = m.serial_size()
        self.injector.arm(cr.run_id, attempt, m, shell)
        try:
            secs, validity = self._run_cell(cr, attempt, m, guest, boot, gi)
            faults = scan_serial(m.serial_since(serial_mark), guest.SERIAL_FAULTS)
            if faults:
                raise CellFailure(f"guest kernel {faults[0].kind}: {faults[0].line}")
            self.cell_overheads.append(time.monotonic() - t_cell - cr.cell.duration_s - cr.cell.warmup_s)
            rerun = [c for c in failed_checks(validity) if c in RERUN_CHECKS]
            if rerun:   # recorded as ok but invalid; the loop re-runs it if the budget allows
                self._rerun_after[(cr.cell.cell_id, cr.rep)] = (attempt, rerun)
                self.log(f"cell {cr.run_id} attempt {attempt} invalid ({', '.join(rerun)}): "
                         f"re-run within the retry budget")
            return not rerun, vm, secs
        except KeyboardInterrupt as e:
            self._record_failure(cr, attempt, f"interrupted ({e or 'SIGINT'})", m, gi)
            raise
        except Exception as e:  # noqa: BLE001 — any fault becomes a failed row; the matrix goes on
            reason = f"{type(e).__name__}: {e}"
            m.settle(3.0)  # a dying QEMU drops SSH a moment before its exit status is visible
            faults = scan_serial(m.serial_since(serial_mark), guest.SERIAL_FAULTS)
            if expired.is_set():
                reason = f"cell timed out after {limit} s (QEMU stopped by the watchdog); {reason}"
            elif faults:
                reason = f"guest kernel {faults[0].kind}: {faults[0].line}"
            elif not m.alive():
                reason = f"{m.exit_reason()}; during: {reason}"
            self._record_failure(cr, attempt, reason, m, gi)
            if m.alive() and not faults and _shell_ok(shell):
                return False, vm, 0.0
            shell.close()
            m.stop()
            return False, None, 0.0
        finally:
            watchdog.cancel()
            self.injector.disarm()

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
    def _run_cell(self, cr, attempt: int, m: Machine, guest, boot: dict, gi: int) -> tuple[float, dict]:
        """Run one cell; returns (measured seconds, its validity checks)."""
        cell, rep, wl = cr.cell, cr.rep, self.workload
        rd = self.rd
        t0 = time.monotonic()
        if not cell.traced and guest.state.lock_tracing:
            raise CellFailure("an untraced cell on a VM whose lock tracing is already installed")
        peer_stack = self.dp.add_stack(cell.stack)     # the peer end first: it picks the VLAN id
        steps = cell_steps(guest, wl, cell, vlan_id=peer_stack.vlan_id, peer_detail=peer_stack.detail)
        snaps: dict[str, dict] = {}
        host: dict[str, tuple] = {}
        senders, measured, started, t1 = {}, 0.0, None, t0
        for step in steps:       # the procedure, executed: each guest step sends step.command
            if step.action == "lock_install":
                guest.lock_stats_enable()
                boot["lock_tracing_installed_before"] = cr.run_id
            elif step.action == "set_queues":
                guest.set_queues(cell.queues)
            elif step.action == "check_queues":
                if guest.tx_queue_count() != cell.queues:
                    raise CellFailure(f"{boot['driver']} has {guest.tx_queue_count()} TX queues and cannot "
                                      f"change them at run time; cell wants {cell.queues}")
            elif step.action == "setup":
                guest.run(step.command)
            elif step.action == "stack":
                guest.setup_stack(cell.stack, peer_stack.vlan_id)
            elif step.action == "servers":
                self.dp.start_servers(ports_for(cell), bind=peer_ip_for(cell.stack))
            elif step.action in ("snapshot_before", "snapshot_after"):
                snaps[step.action] = guest.snapshot()
            elif step.action in ("host_before", "host_after"):
                host[step.action] = (self.dp.tap_stats(), qemu_thread_stats(m.pid), self.dp.peer_stats())
                if step.action == "host_after":
                    self.dp.stop_servers()
            elif step.action == "senders":
                self.timings["setup"] += time.monotonic() - t0
                t_meas, started = time.monotonic(), time.time()
                senders = guest.run_senders(step.command, timeout=cell.duration_s + cell.warmup_s + 30)
                measured = time.monotonic() - t_meas
                self.timings["measure"] += measured
                t1 = time.monotonic()
        before, after = snaps["snapshot_before"], snaps["snapshot_after"]
        (tap_before, host_before, peer_before), (tap_after, host_after, peer_after) = host["host_before"], host["host_after"]

        def save(name: str, text: str) -> None:
            rd.save_raw(cell.cell_id, rep, name, text, attempt=attempt)

        for name, text in before.items():
            save(f"before.{name}.txt", text)
        for name, text in after.items():
            save(f"after.{name}.txt", text)
        for name, text in senders.items():
            save(f"{name}.json", text)
        save("peer_tap.json", json.dumps({"before": tap_before, "after": tap_after}))
        save("commands.sh", render_steps(steps))

        results = guest.parse_senders(senders)
        errors = [r.error for r in results if r.error]
        missing = cell.procs - len(results)
        if errors or missing:
            raise CellFailure("iperf3 failed: " + "; ".join(errors or [f"{missing} sender(s) gave no JSON"]))

        driver = boot["driver"]
        samples = delta(guest.parse_snapshot(before, driver), guest.parse_snapshot(after, driver))
        interval, interval_note = guest.interval_samples(senders)   # measured over the interval itself
        samples += interval
        ctx = cell_context(cell, rep, kernel=boot["kernel"], driver=boot["driver"], accel=self.accel)
        rows = [sample_row(ctx, s) for s in samples]

        def add(metric: str, value: float, unit: str, source: str, native_name: str) -> None:
            rows.append(metric_row(ctx, metric, value, unit, source, native_name))

        add("throughput_bps", sum(r.sent_bps for r in results), "bits/s", "iperf3", "end.sum_sent.bits_per_second")
        add("app_bytes", sum(r.sent_bytes for r in results), "bytes", "iperf3", "end.sum_sent.bytes")
        if cell.proto == "tcp":
            add("tcp_retransmits", sum(r.retransmits or 0 for r in results), "count", "iperf3",
                "end.sum_sent.retransmits")
        for i, r in enumerate(results):
            add(f"sender{i}_bps", r.sent_bps, "bits/s", "iperf3", "end.sum_sent.bits_per_second")
        if tap_before and tap_after:
            for k in ("bytes", "packets", "dropped"):
                add(f"peer_rx_{k}", tap_after["stats64"]["rx"][k] - tap_before["stats64"]["rx"][k],
                    "count" if k == "dropped" else k, "peer ip -s -j link (tap)", f"stats64.rx.{k}")
        cpu_b, cpu_a = host_thread_cpu(host_before), host_thread_cpu(host_after)
        for name in sorted(cpu_a):
            add("host_thread_cpu_s", cpu_a[name] - cpu_b.get(name, 0.0), "s", "host /proc/<qemu>/task/*/stat", name)
        for peer_row in peer_metrics(peer_before, peer_after):     # peer server CPU, peer-side drops
            add(*peer_row)
        lock_rows = []
        if wl.lock_stats and cell.traced:
            method = guest.lock_method(self.accel)
            for rec in guest.parse_locks(before, after, method, senders):
                lock_rows.append(lock_row(ctx, rec))
            src, wait_native, count_native = guest.LOCK_TOTALS
            add("lock_wait_ns", sum(r["wait_ns_total"] for r in lock_rows), "ns", src, wait_native)
            add("lock_contentions", sum(r["contentions"] for r in lock_rows), "count", src, count_native)

        validity = self._validity(cell, samples, senders, rows, results, measured)
        if cell.churn != "none":
            validity["churn"] = churn_recovery(senders.get("churn", ""),
                                               sender_outputs(senders))
        if interval_note:
            validity["interval_probe"] = interval_note
        if peer_stack.detail:     # not a check: how the peer terminated the stack, kept beside them
            validity["stack_peer"] = peer_stack.detail
        prev = self._rerun_after.get((cell.cell_id, rep))
        note = f"re-run: attempt {prev[0]} failed {', '.join(prev[1])}" if prev else ""
        rd.add(metrics=rows, locks=lock_rows,
               cell=self._cell_row(cell, rep, "ok", note, gi, attempt=attempt, kernel=boot["kernel"], driver=driver,
                                   started=started, wall_s=time.monotonic() - t0, measured_s=measured,
                                   validity=validity,
                                   raw_dir=str(rd.raw_dir(cell.cell_id, rep, attempt).relative_to(rd.path))))
        rd.flush()
        self.timings["collect"] += time.monotonic() - t1
        return measured, validity

    def _validity(self, cell, samples, senders, rows, results, measured) -> dict:
        frame = rows_frame(samples)
        per_q_pkts, nic_pkts, nic_bytes = tx_for_conservation(frame)    # harness.counting's rules
        app = sum(app_bytes_total(text) for text in sender_outputs(senders))
        busy = cpu_busy_share(frame)
        pinned = [i % self.workload.machine.vcpus for i in range(cell.procs)]
        v = {"conservation": conservation(app, nic_bytes, nic_pkts, cell.proto, cell.stack),
             "emulated": self.accel == "tcg",
             "sender_saturation": sender_saturation(busy, pinned),      # reported, not a veto
             "bottleneck": decide(inputs_from_rows(rows_frame(rows), pinned, results, measured,
                                                   cell.duration_s + cell.warmup_s,
                                                   rate_limited=cell.proto == "udp" and cell.udp_bitrate != "0"))}
        if cell.queues > 1:
            v["queue_spread"] = queue_spread(per_q_pkts, cell.queues, self.workload.require_queue_spread)
        return v

    def _image_verified(self, name: str) -> bool | None:
        """True: the image's checksum was verified (linux-deb: built from apt-verified .debs);
        False: used unverified on the user's explicit flag; None: the image was never obtained."""
        img = getattr(self, "images", {}).get(name)
        return img.verified if isinstance(img, BootImage) else None

    def _cell_row(self, cell, rep, status, reason, group, attempt=1, validity=None, **kw) -> dict:
        accel = getattr(self, "accel", None)    # None when the run stopped before the probe
        return cell_row(cell, rep, status, reason, group=group, accel=accel,
                        image_verified=self._image_verified(cell.image), attempt=attempt, validity=validity,
                        valid=is_valid(validity) if status == "ok" else None, **kw)


def host_activity() -> dict:
    """Other things competing for this host while we measure: recorded, not controlled."""
    import subprocess
    ps = subprocess.run(["ps", "-eo", "pid,comm"], capture_output=True, text=True).stdout.splitlines()[1:]
    qemus = [p[0] for p in (l.split() for l in ps) if len(p) == 2 and p[1].startswith("qemu-system")]
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    return {"loadavg": os.getloadavg(), "other_qemu_pids": qemus,
            "other_xmitbench_netns": [l.split()[0] for l in ns if l.startswith("xb-")]}


def qemu_thread_stats(pid: int | None) -> dict[str, str]:
    """/proc/<qemu>/task/*/stat texts: host CPU time per vCPU / I/O thread of our own QEMU."""
    out = {}
    if pid is None:
        return out
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out[task.name] = (task / "stat").read_text()
            except OSError:
                pass
    except OSError:
        pass
    return out


def _shell_ok(shell) -> bool:
    try:
        shell.run("true", timeout=10)
        return True
    except Exception:  # noqa: BLE001
        return False
