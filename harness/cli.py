"""xmitbench command line."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from .errors import InputError, ResultsDiskFull

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = Path(os.environ.get("XMITBENCH_RESULTS", REPO / "results"))


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"xmitbench: {what} needs root (network namespaces and taps); "
                         f"run: sudo {shlex.join(sys.argv)}")


def _stop_on_signals() -> None:
    """SIGINT/SIGTERM unwind the runner (its finally blocks stop QEMU, iperf3, namespace);
    a second signal while unwinding is the default action: immediate exit."""
    import signal

    def stop(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt(signal.Signals(signum).name)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def cmd_run(args) -> int:
    return run_workload(args)[0]


def run_workload(args) -> tuple[int, Path | None]:
    """`xmitbench run`: (exit status, the run dir it wrote or None if interrupted)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from harness.run.plan import parse_shard
    from harness.run.runner import Runner
    from harness.analysis.summary import render
    from harness.run.workload import load_workload, parse_workload
    resume = Path(args.resume) if args.resume else None
    if resume:
        import json
        man_path = resume / "manifest.json"
        if not man_path.is_file():
            raise InputError(str(resume), "--resume", "not a run dir (no manifest.json)")
        man = json.loads(man_path.read_text())
        # the workload exactly as the run recorded it, not whatever the file says now
        wl = parse_workload(man["workload"]["text"].encode(), man["workload"]["path"])
        shard = tuple(man["shard"]) if man.get("shard") else None
    elif not args.workload:
        raise InputError("xmitbench run", "WORKLOAD", "give a workload TOML file (or --resume RUN_DIR)")
    else:
        wl = load_workload(args.workload)           # bad input: InputError -> exit 2, nothing started
        shard = parse_shard(args.shard) if args.shard else None
    _require_root("run")
    _stop_on_signals()
    console = Console(stderr=False, width=None if sys.stdout.isatty() else 200)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("cells"), TimeRemainingColumn(), console=console,
                  disable=not console.is_terminal) as prog:
        task = prog.add_task(wl.name, total=None)

        def on_cell(cr):
            t = prog.tasks[task]
            if t.total is not None and t.completed + 1 > t.total:   # repetitions = "auto" added one
                prog.update(task, total=t.completed + 1)
            prog.update(task, advance=1, description=f"{wl.name}: {cr.run_id}")

        runner = Runner(wl, Path(args.results), shard=shard, log=console.print, progress=on_cell,
                        on_plan=lambda p: prog.update(task, total=len(p.runs)), resume=resume,
                        allow_unverified=getattr(args, "allow_unverified", False))
        try:
            rd = runner.run()
        except KeyboardInterrupt as e:
            where = runner.rd.path if getattr(runner, "rd", None) else "(no run dir yet)"
            print(f"xmitbench: interrupted ({e or 'SIGINT'}); everything this run started is stopped; "
                  f"run dir {where}; continue with: xmitbench run --resume {where}", file=sys.stderr)
            return 130, None
        except ResultsDiskFull as e:    # everything is stopped by now (the runner's finally blocks)
            where = runner.rd.path if getattr(runner, "rd", None) else None
            if where is not None and (where / "manifest.json").is_file():
                then = (f"run dir {where} is incomplete; free space and continue with: "
                        f"xmitbench run --resume {where}")
            else:
                then = f"no run dir could be started{f' ({where})' if where else ''}; free space and run again"
            print(f"xmitbench: {e}; {then}", file=sys.stderr)
            return 1, None
    render(rd.path, console)
    if args.report:
        from .analysis.report import build_report
        out = build_report([rd.path])
        console.print(f"report: {out}")
        from .analysis.browser import findings_png_note
        console.print(findings_png_note(out))
    cells = __import__("pandas").read_parquet(rd.path / "cells.parquet")
    from .analysis.load import last_attempts
    final = last_attempts(cells)
    return (1 if (final.status == "failed").any() else 0), rd.path


def cmd_plan(args) -> int:
    """Every cell in run order, grouped by boot, with the exact QEMU argv and guest commands.
    Nothing is built, downloaded or started; paths that exist only at run time are <...>."""
    from .guests import BootState, driver_class
    from harness.vm.machine import build_argv, device_help, forced_accel
    from harness.vm.nics import qemu_supported_devices
    from harness.run.plan import parse_shard, plan
    from harness.run.repetitions import describe as describe_repetitions
    from harness.run.procedure import boot_steps, cell_steps, machine_spec, render, state_after, tap_queue_count
    from harness.run.workload import load_workload, warmup_run
    from harness.images.local import boots_kernel_directly, has_lock_stat, installs_packages_on_first_boot
    from harness.images.hostqemu import choose_qemu
    from harness.vm import qemu as qemu_binary
    from harness.vm.nics import NICS
    wl = load_workload(args.workload)
    shard = parse_shard(args.shard) if args.shard else None
    needed = {NICS[n].qemu_device for n in wl.matrix.nic}
    choice = choose_qemu(needed, fetch=False)       # the run's rule; plan downloads nothing
    qemu_binary.use(choice.binary)
    supported = qemu_supported_devices(device_help())
    if choice.pending_fetch:    # the run fetches Debian 13's QEMU first, which has them
        supported |= needed
    p = plan(wl, supported, shard)
    print(f"workload {wl.path} ({wl.sha256[:12]}): {len(p.runs)} cell runs in {len(p.groups)} boot groups, "
          f"{len(p.skipped)} skipped; ETA {p.eta_s / 60:.1f} min (plus image downloads)")
    print(f"QEMU binary {choice.binary.resolved} ({choice.binary.obtained})" + (
        f"; the system QEMU lacks {', '.join(sorted(needed - qemu_binary.system_qemu().devices()))}: "
        "`xmitbench run` first fetches Debian 13's QEMU (`xmitbench qemu fetch`) and runs every cell on it"
        if choice.pending_fetch else ""))
    print(f"repetitions: {describe_repetitions(wl)}")
    print("placeholders: <cache> the guest image dir (`xmitbench images list`), <state> a per-boot dir, "
          "<run> the run dir, <per-run-key> the run's SSH public key; fd=/fds= are the tap queues the "
          "harness opens in its namespace and hands to QEMU")
    same: dict[str, dict[str, tuple]] = {}    # nic -> image -> the data NIC and CPU options
    inspected: set[tuple[str, str]] = set()   # workload.inspect: the first boot of each image and NIC
    for gi, g in enumerate(p.groups):
        bk = g.boot_key
        cloud = not boots_kernel_directly(bk.image)
        # as the runner resolves it, minus the KVM probe: XMITBENCH_ACCEL, else TCG
        accel = bk.accel if bk.accel != "auto" else (forced_accel() or "tcg")
        spec = machine_spec(bk, accel, kernel=None if cloud else Path("<cache>/bzImage"),
                            initrd=None if cloud else Path("<cache>/initramfs.cpio.gz"),
                            disk=Path(f"<state>/{bk.image}-overlay.qcow2") if cloud else None,
                            seed_iso=Path("<state>/seed.iso") if cloud else None,
                            serial_log=Path("<run>/serial/boot.log"), qmp_socket=Path("<state>/qmp.sock"),
                            ssh_port=0, ssh_pubkey_b64="<per-run-key>",
                            tap_fds=list(range(3, 3 + tap_queue_count(bk))),
                            guest_egress=cloud and installs_packages_on_first_boot(bk.image))
        guest = driver_class(bk.os).for_plan(bk.nic, BootState(lock_stat=has_lock_stat(bk.image)), image=bk.image)
        how = ("set in workload" if bk.accel != "auto" else "XMITBENCH_ACCEL" if forced_accel()
               else "auto probes KVM, else TCG; shown as TCG, XMITBENCH_ACCEL=kvm shows KVM")
        print(f"\n== boot group {gi}: {bk.label} ({bk.os}; accel {accel}: {how})")
        argv = build_argv(spec)
        print("   qemu: " + shlex.join(argv))
        same.setdefault(bk.nic, {}).setdefault(bk.image, set()).add(data_plane_options(argv))
        print(f"   lock method: {guest.lock_method(accel)}")
        inspect = wl.inspect and (bk.image, bk.nic) not in inspected
        inspected.add((bk.image, bk.nic))
        print("   " + render(boot_steps(guest, bk, inspect=inspect)).rstrip().replace("\n", "\n   "))
        warmup = [warmup_run(g.runs[0].cell)] if wl.warmup_after_boot and g.runs else []   # as the runner does
        for cr in warmup + list(g.runs):
            c = cr.cell
            note = ("" if c.traced else "  (warm-up after boot, untraced)" if cr in warmup else
                    "  (untraced: lock statistics paused)" if guest.state.lock_tracing else
                    "  (untraced: no lock tracing installed yet)")
            steps = cell_steps(guest, wl, c)
            guest.state = state_after(guest, wl, c)     # as the runner's driver actions leave it
            print(f"-- {cr.run_id}" + note)
            print(render(steps), end="")    # unindented: a heredoc in it must end at column 0 to paste
    for nic, by_os in same.items():
        if len(by_os) > 1:
            opts = {o for s in by_os.values() for o in s}
            print(f"{nic}: data NIC, tap and CPU options across {' and '.join(sorted(by_os))}: "
                  + ("identical" if len(opts) == 1 else "DIFFERENT: " + " | ".join(" ".join(o) for o in sorted(opts))))
    for sk in p.skipped:
        print(f"skipped {sk.cell.cell_id}: {sk.reason}")
    return 0


def data_plane_options(argv: list[str]) -> tuple[str, ...]:
    """What must match between kernels for a fair comparison: the data NIC's -device and
    -netdev, and -accel/-cpu/-smp/-m. (Boot medium and management NIC differ by image kind.)"""
    out = []
    for flag, val in zip(argv, argv[1:]):
        if (flag == "-device" and "netdev=data" in val) or (flag == "-netdev" and val.startswith("tap,id=data")) \
                or flag in ("-accel", "-cpu", "-smp", "-m"):
            out.append(f"{flag} {val}")
    return tuple(out)


def cmd_images(args) -> int:
    from harness.images.guestimage import ImageBuildError, build_linux_deb
    if args.image_cmd == "build":
        from harness.images.local import LOCAL_IMAGES
        if args.name not in LOCAL_IMAGES:
            raise InputError("images build", "name", f"unknown image {args.name!r}; allowed: "
                             + ", ".join(LOCAL_IMAGES))
        release = args.release
        if args.name.startswith("linux-deb-"):        # linux-deb-12, linux-deb-13: the release named
            named = args.name[len("linux-deb-"):]
            if release is not None and _release_or_input_error(release) != named:
                raise InputError("images build", "--release",
                                 f"{args.name} is Debian {named}; --release {release} contradicts it")
            release = named
        elif release is not None and args.name != "linux-deb":
            raise InputError("images build", "--release", "only linux-deb and linux-deb-<release> take --release")
        if release is not None:
            _release_or_input_error(release)
        if not args.name.startswith("linux-deb"):
            if args.kernel or args.modules:
                raise InputError("images build", "--kernel", "only linux-deb takes --kernel/--modules")
            from harness.images.bootimage import ImageUnavailable
            try:
                bi = LOCAL_IMAGES[args.name].build(log=print)
            except (ImageBuildError, ImageUnavailable) as e:
                print(f"xmitbench: image build failed: {e}", file=sys.stderr)
                return 1
            sha = f" sha256 {bi.info['sha256']}" if bi.info.get("sha256") else ""
            print(f"{bi.name}: {bi.kernel or bi.disk} ({bi.release}){sha}")
            return 0
        for p in (args.kernel, args.modules):
            if p is not None and not Path(p).exists():
                raise InputError(str(p), "path", "file or directory does not exist")
        try:
            img = build_linux_deb(Path(args.kernel) if args.kernel else None,
                                  Path(args.modules) if args.modules else None, force=args.force,
                                  release=release)
        except ImageBuildError as e:
            print(f"xmitbench: image build failed: {e}", file=sys.stderr)
            return 1
        print(f"{img.name} {img.key}: kernel {img.kernel} initrd {img.initrd} "
              f"(Debian {img.manifest.get('debian_release', '?')}, {img.kernel_release})")
        return 0
    if args.image_cmd == "inspect":
        return cmd_images_inspect(args)
    return 2


def _release_or_input_error(release: str) -> str:
    """'13'/'trixie' -> '13'; an unknown release is bad input (exit 2, nothing started)."""
    from harness.images.aptstate import RELEASES, normalize_release
    try:
        return normalize_release(release)
    except ValueError:
        raise InputError("images build", "--release", f"unknown Debian release {release!r}; allowed: "
                         + ", ".join(f"{v}, {c}" for v, c in RELEASES.items())) from None


def cmd_images_inspect(args) -> int:
    """Boot an image once and write its first-contact bundle into a new run dir."""
    from harness.images.bootimage import ImageUnavailable
    from harness.images.catalog import load_catalog
    from harness.images.local import LOCAL_IMAGES
    from harness.run.inspect import INSPECT_DIR, inspect_image
    from harness.vm.nics import NICS
    names = [*LOCAL_IMAGES, *(img.name for img in load_catalog())]
    if args.name not in names:
        raise InputError("images inspect", "name", f"unknown image {args.name!r}; allowed: {', '.join(names)}")
    if args.nic not in NICS:
        raise InputError("images inspect", "--nic", f"unknown NIC {args.nic!r}; allowed: {', '.join(NICS)}")
    try:
        rd = inspect_image(args.name, Path(args.results), nic=args.nic)
    except ImageUnavailable as e:
        print(f"xmitbench: image {args.name}: {e}", file=sys.stderr)
        return 1
    print((rd / INSPECT_DIR / "coverage.txt").read_text(), end="")
    print(f"bundle: {rd / INSPECT_DIR}")
    return 0


def cmd_summary(args) -> int:
    from rich.console import Console
    from harness.analysis.summary import render
    if not (Path(args.run_dir) / "manifest.json").is_file():
        raise InputError(args.run_dir, "RUN_DIR", "not a run dir (no manifest.json)")
    render(Path(args.run_dir), Console(width=None if sys.stdout.isatty() else 200))
    return 0


def cmd_nightly(args) -> int:
    """Run the nightly workload, report, compare with the baseline, summarise, promote if green.
    Exit 1 on a significant regression or a failed cell, 0 otherwise."""
    import contextlib
    import io
    import json
    from harness.analysis import nightly as N
    from .analysis.commands import cmd_compare
    from .analysis.report import build_report
    from harness.run.workload import load_workload
    root = Path(args.baseline_dir) if args.baseline_dir else None
    if args.run_dir:
        run_dir = Path(args.run_dir)
        if not (run_dir / "manifest.json").is_file():
            raise InputError(str(run_dir), "--run-dir", "not a run dir (no manifest.json)")
        name = json.loads((run_dir / "manifest.json").read_text())["workload"]["name"]
    else:
        name = load_workload(args.workload).name
        rc, run_dir = run_workload(argparse.Namespace(workload=args.workload, results=args.results, shard=None,
                                                      resume=None, report=False))
        if run_dir is None:
            return rc
    report = build_report([run_dir])
    print(f"report: {report}")
    green, why = N.run_is_green(run_dir)
    base = N.current_baseline(name, root)
    compare_text, regressed = "", False
    if base is not None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            crc = cmd_compare(argparse.Namespace(base=str(base), cand=str(run_dir), metric=args.metric,
                                                 threshold=args.threshold, alpha=args.alpha, seed=0, csv=None,
                                                 include_invalid=args.include_invalid))
        compare_text = out.getvalue()
        print(compare_text)
        regressed = crc == 1
    verdict = ("REGRESSION" if regressed else "FAILED CELLS" if not green else
               "green" if base is not None else "green (first night: no baseline yet)")
    summary = N.job_summary(run_dir, verdict, compare_text, why)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as f:
            f.write(summary)
    (run_dir / "nightly-summary.md").write_text(summary)
    N.record_history(run_dir, name, verdict, root)
    if green and not regressed and not args.no_promote:
        print(f"baseline updated: {N.promote(run_dir, name, root)}")
    print(f"nightly verdict: {verdict}")
    return 1 if (regressed or not green) else 0


def cmd_merge(args) -> int:
    from harness.results.merge import merge
    dirs = [Path(d) for d in args.shard_dirs]
    out = merge(dirs, Path(args.results), force=args.force)
    print(f"merged {len(dirs)} shard run dirs into {out}")
    return 0


def cmd_clean(args) -> int:
    from harness.vm.dataplane import clean_stale
    removed = clean_stale()
    print("removed: " + (", ".join(removed) if removed else "nothing stale"))
    return 0


def cmd_qemu(args) -> int:
    """`qemu fetch`: assemble Debian 13's QEMU into the cache; `qemu show`: which QEMU a run of
    the workload would start, and why."""
    from harness.images.aptstate import AptStateError
    from harness.images.hostqemu import QemuFetchError, choose_qemu, fetch_qemu, fetched_qemu
    if args.qemu_cmd == "fetch":
        try:
            b = fetch_qemu(force=args.force)
        except (QemuFetchError, AptStateError) as e:
            print(f"xmitbench: qemu fetch failed: {e}", file=sys.stderr)
            return 1
        print(f"{b.path}: {b.obtained}")
        return 0
    from harness.run.workload import load_workload
    from harness.vm.nics import NICS
    wl = load_workload(args.workload) if args.workload else None
    needed = {NICS[n].qemu_device for n in wl.matrix.nic} if wl else set()
    choice = choose_qemu(needed, fetch=False)
    have = fetched_qemu()
    print(f"runs: {choice.binary.resolved} ({choice.binary.obtained}, version {choice.binary.version()})"
          + ("; `xmitbench run` fetches Debian 13's QEMU first (the system QEMU lacks a needed device)"
             if choice.pending_fetch else ""))
    print(f"fetched: {have.path} ({have.obtained})" if have else "fetched: none")
    return 0


def cmd_probe(args) -> int:
    from harness.images.guestimage import build_linux_deb
    from harness.vm.machine import probe_accel
    img = build_linux_deb()
    accel, reason = probe_accel(img.kernel, img.initrd, timeout=args.timeout)
    print(f"{accel}: {reason}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="xmitbench", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a workload and write a run dir")
    r.add_argument("workload", nargs="?")
    r.add_argument("--results", default=str(DEFAULT_RESULTS))
    r.add_argument("--resume", metavar="RUN_DIR", help="re-run only the cells of RUN_DIR not yet ok")
    r.add_argument("--report", action="store_true", help="render report.html into the run dir at the end")
    r.add_argument("--allow-unverified", action="store_true",
                   help="use catalog images whose checksum is missing or unreachable; every row of their "
                        "cells then says image_verified=false")
    r.add_argument("--shard", help="K/N: run part K of N (boot groups kept whole)")
    r.set_defaults(fn=cmd_run)
    p = sub.add_parser("plan", help="show cells, boot groups, QEMU argv and guest commands")
    p.add_argument("workload")
    p.add_argument("--shard")
    p.set_defaults(fn=cmd_plan)
    im = sub.add_parser("images", help="guest images")
    isub = im.add_subparsers(dest="image_cmd", required=True)
    b = isub.add_parser("build")
    b.add_argument("name", help="an image the harness builds (see images/local.py): linux-deb, ...")
    b.add_argument("--kernel", help="a bzImage to use instead of Debian's (e.g. a LOCK_STAT build)")
    b.add_argument("--modules", help="its /lib/modules/<release> directory")
    b.add_argument("--force", action="store_true")
    b.add_argument("--release", help="Debian release of the packages: 12, 13, bookworm, trixie "
                                     "(default: the host's; linux-deb-12/-13 name it themselves)")
    ins = isub.add_parser("inspect", help="boot an image once and capture a first-contact bundle "
                                          "(versions, NIC counters and their coverage, lock probes, tunables)")
    ins.add_argument("name", help="a catalog image or one the harness builds")
    ins.add_argument("--nic", default="virtio-net", help="the data NIC model (default virtio-net)")
    ins.add_argument("--results", default=str(DEFAULT_RESULTS))
    im.set_defaults(fn=cmd_images)
    from harness.images.cli import register as register_image_commands
    register_image_commands(isub)   # images list | fetch NAME | verify NAME
    s = sub.add_parser("summary", help="print the summary table of a run dir")
    s.add_argument("run_dir")
    s.set_defaults(fn=cmd_summary)
    ng = sub.add_parser("nightly", help="run + report + compare with the baseline; promote when green")
    ng.add_argument("workload", nargs="?", default=str(REPO / "workloads" / "nightly.toml"))
    ng.add_argument("--results", default=str(DEFAULT_RESULTS))
    ng.add_argument("--run-dir", help="judge this (e.g. merged) run dir instead of running")
    ng.add_argument("--baseline-dir", help="default $XMITBENCH_BASELINE_DIR or /var/lib/xmitbench/baseline")
    ng.add_argument("--metric", action="append", help="compared metric (repeatable; default throughput_bps)")
    ng.add_argument("--threshold", type=float, default=0.05)
    ng.add_argument("--include-invalid", action="store_true",
                    help="gate on cell runs that failed a validity check too")
    ng.add_argument("--alpha", type=float, default=0.05)
    ng.add_argument("--no-promote", action="store_true", help="never update the baseline")
    ng.set_defaults(fn=cmd_nightly)
    mg = sub.add_parser("merge", help="merge shard run dirs (run --shard K/N) into one run dir")
    mg.add_argument("shard_dirs", nargs="+")
    mg.add_argument("--results", default=str(DEFAULT_RESULTS))
    mg.add_argument("--force", action="store_true", help="merge despite differing workload/tool revision")
    mg.set_defaults(fn=cmd_merge)
    c = sub.add_parser("clean", help="remove namespaces left by crashed runs")
    c.set_defaults(fn=cmd_clean)
    q = sub.add_parser("qemu", help="the QEMU a run starts: fetch Debian 13's (igb needs QEMU >= 8.0), show the choice")
    qsub = q.add_subparsers(dest="qemu_cmd", required=True)
    qf = qsub.add_parser("fetch", help="assemble Debian 13's qemu-system-x86 into the cache (private apt state)")
    qf.add_argument("--force", action="store_true", help="unpack and check again even if this version is cached")
    qs = qsub.add_parser("show", help="which QEMU a run of WORKLOAD would start")
    qs.add_argument("workload", nargs="?")
    q.set_defaults(fn=cmd_qemu)
    pr = sub.add_parser("probe", help="probe KVM by a short boot")
    pr.add_argument("--timeout", type=float, default=20.0)
    pr.set_defaults(fn=cmd_probe)
    from .analysis.commands import register as register_analysis
    register_analysis(sub)   # report RUN_DIR... | compare BASE CAND
    args = ap.parse_args(argv)
    if args.cmd != "run":   # `xmitbench plan ... | head` ends quietly
        import signal
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return args.fn(args)
    except InputError as e:
        print(f"xmitbench: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
