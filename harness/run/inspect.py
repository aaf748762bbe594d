"""`xmitbench images inspect NAME`: boot an image once, the way a run boots it, and capture a
first-contact bundle into a run dir: what OS and kernel it is, the data NIC's driver and every
native counter it prints, the lock tools and probes present, the boot tunables, and a coverage
table of which native counters the parsers map into the common vocabulary.

The bundle (`<run dir>/inspect/`) is raw command outputs, one file per command, plus
`index.json` (commands, exit statuses, coverage) and `coverage.txt`: shaped so it can be copied
into tests/fixtures and fed to the parsers as it is.

The boot is the runner's (boot.start_machine + boot.login): same QEMU argv, same seed, same
login, same data-NIC setup; the capture is the procedure's `inspect` boot step (write_bundle),
which a run also takes on each image and NIC it boots when its workload says `inspect = true`
(bundles in `<run dir>/inspect/<image>.<nic>/`). The commands come from the guest driver
(inspect_commands).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from harness.guests.base import counter_coverage
from harness.run.boot import login, start_machine
from harness.run.workload import BootKey

INSPECT_DIR = "inspect"


def coverage_text(rows: list[dict], driver: str) -> str:
    """The coverage table as text: one line per native counter pattern."""
    counts = {k: sum(1 for r in rows if r["status"] == k) for k in ("mapped", "unmapped", "missing")}
    width = max([len(r["native"]) for r in rows] + [20])
    lines = [f"native counters of driver {driver}: {counts['mapped']} mapped, {counts['unmapped']} unmapped, "
             f"{counts['missing']} expected but missing",
             f"{'status':<9} {'native name':<{width}} {'metric':<28} queues"]
    for r in rows:
        q = ",".join(map(str, r["queues"])) if r["queues"] else "-"
        lines.append(f"{r['status']:<9} {r['native']:<{width}} {r['metric'] or '-':<28} {q}")
    return "\n".join(lines) + "\n"


def capture(guest, driver: str, dest: Path) -> dict:
    """Run the driver's inspect commands, write each output to `dest/<name>.txt`, and return
    the index (commands, exit statuses, coverage). Every command runs even if others fail."""
    dest.mkdir(parents=True, exist_ok=True)
    raw: dict[str, str] = {}
    commands: dict[str, dict] = {}
    for name, cmd in guest.inspect_commands().items():
        try:
            rc, out, err = guest.shell.run(cmd, timeout=120, check=False)
        except Exception as e:  # noqa: BLE001 — one command that hangs is recorded, the rest still run
            rc, out, err = None, "", f"{type(e).__name__}: {e}"
        text = out + (err if err else "")
        raw[name] = out
        (dest / f"{name}.txt").write_text(text)
        commands[name] = {"command": cmd, "exit_status": rc, "file": f"{name}.txt"}
    samples, expected = guest.inspect_counters(raw, driver)
    rows = counter_coverage(samples, expected)
    (dest / "coverage.txt").write_text(coverage_text(rows, driver))
    return {"commands": commands, "coverage": rows,
            "coverage_counts": {k: sum(1 for r in rows if r["status"] == k) for k in ("mapped", "unmapped", "missing")}}


def write_bundle(guest, dest: Path, about: dict) -> dict:
    """The procedure's `inspect` step on a logged-in guest: capture into `dest`, then write
    `dest/index.json` (the capture, this boot's kernel and driver, and `about`: image, NIC,
    accel, source). `images inspect` and a run with `workload.inspect` both call it."""
    driver = guest.nic_driver()
    index = capture(guest, driver, dest)
    index.update({"kernel": guest.kernel_release(), "driver": driver, **about,
                  "captured": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    (dest / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True, default=str))
    return index


def bundle_about(bk: BootKey, image, accel: str, source: str) -> dict:
    return {"image": bk.image, "os": image.os, "nic": bk.nic, "accel": accel, "image_info": image.info,
            "source": source}


def inspect_image(name: str, results_root: Path, log=print, host=None, nic: str = "virtio-net",
                  accel: str = "auto", vcpus: int = 2, memory_mib: int = 1024) -> Path:
    """Boot `name` once and write the bundle; returns the run dir. Everything started is
    stopped (QEMU, namespace, key dir) whatever happens."""
    from harness.results.rundir import RunDir
    from harness.run.host import Host
    host = host or Host()
    built = host.build_guest(log)
    image = host.prepare_image(name, log, built, allow_unverified=False)
    if accel == "auto":
        accel, accel_reason = host.probe_accel(built.kernel, built.initrd)
    else:
        accel_reason = "given"
    host.clean_stale()
    rd = RunDir.create(Path(results_root))
    key_dir = Path(os.environ.get("XMITBENCH_STATE", "/run/xmitbench")) / "keys" / rd.run_id
    rd.manifest.update({"kind": "inspect", "image": name, "image_info": image.info, "accel": accel,
                        "accel_reason": accel_reason, "nic": nic, "boots": [],
                        "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    dp = host.dataplane(rd.run_id)
    vm = None
    try:
        dp.create()
        key = host.make_key(key_dir)
        bk = BootKey(image=name, os=image.os, nic=nic, vcpus=vcpus, memory_mib=memory_mib, accel=accel, queues=1)
        about = bundle_about(bk, image, accel, f"xmitbench images inspect {name} (run {rd.run_id})")
        captured: list[dict] = []
        t0 = time.monotonic()
        m, spec, boot = start_machine(host, rd, dp, key, key_dir, bk, image, accel, 1)
        # the same boot steps as a run's, with the inspect step
        vm = login(host, m, spec, boot, key, bk, image, accel, False, t0,
                   inspect=lambda guest: captured.append(write_bundle(guest, rd.path / INSPECT_DIR, about)))
        log(f"inspect {name}: {boot['kernel']} {boot['driver']}, SSH after {boot['boot_to_ssh_s']} s")
        rd.manifest["inspect"] = {"dir": INSPECT_DIR, "coverage_counts": captured[0]["coverage_counts"]}
        rd.manifest["complete"] = True
    finally:
        if vm is not None:
            vm.close()
        dp.destroy()
        shutil.rmtree(key_dir, ignore_errors=True)
        rd.write_manifest()
    return rd.path
