"""What a run does on this machine, behind one object: QEMU, the data-plane namespace, SSH,
images and keys. The runner asks this object for each of them and never builds one itself, so
a replay (recorded guest outputs, no QEMU) drives the same runner, and says so in the manifest.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness.images.bootimage import BootImage, prepare_image, seed_for
from harness.images.catalog import make_overlay
from harness.images.guestimage import build_linux_deb
from harness.images.hostqemu import QemuChoice, choose_qemu
from harness.vm import qemu as qemu_binary
from harness.vm.dataplane import DataPlane, clean_stale
from harness.vm.machine import Machine, device_help, probe_accel, qemu_version
from harness.vm.ssh import GuestShell, make_key


def qemu_thread_stats(pid: int | None, proc: Path = Path("/proc")) -> dict[str, str]:
    """tid -> stat text of every thread that works for QEMU process ``pid``: its own threads
    (/proc/<pid>/task/*/stat; vCPUs, main loop, iothreads, and on Linux >= 6.4 the vhost-net
    workers, which are user threads of QEMU named ``vhost-<pid>``), plus the vhost-net kernel
    threads of older hosts (vhost_dev_set_owner: kthread "vhost-<owner pid>", a child of
    kthreadd, so not in QEMU's task list). The bottleneck verdict counts "vhost-" threads as
    I/O, so host CPU spent moving packets under vhost=on is attributed, not lost."""
    out: dict[str, str] = {}
    if pid is None:
        return out
    try:
        for task in (proc / str(pid) / "task").iterdir():
            try:
                out[task.name] = (task / "stat").read_text()
            except OSError:
                pass
    except OSError:
        return out
    worker = f"vhost-{pid}"
    try:
        entries = [e for e in proc.iterdir() if e.name.isdigit() and e.name not in out]
    except OSError:
        return out
    for e in entries:
        try:
            if (e / "comm").read_text().strip() != worker:
                continue
            out[e.name] = (e / "stat").read_text()
        except OSError:
            pass    # exited between listing and reading
    return out


class Host:
    """The real host: QEMU guests, a harness-owned namespace, SSH to 127.0.0.1."""
    kind = "qemu"               # manifest["host_kind"]
    replay_of: str | None = None  # a replay names what it replays (manifest["replay"])

    def select_qemu(self, needed_devices: set[str], log) -> QemuChoice:
        """The QEMU this run starts (fetched first if need be): every machine uses it."""
        choice = choose_qemu(needed_devices, fetch=True, log=log)
        qemu_binary.use(choice.binary)
        return choice

    def device_help(self) -> str:
        return device_help()

    def qemu_version(self) -> str:
        return qemu_version()

    def probe_accel(self, kernel: Path, initrd: Path) -> tuple[str, str]:
        return probe_accel(kernel, initrd)

    def clean_stale(self) -> list[str]:
        return clean_stale()

    def build_guest(self, log):
        return build_linux_deb(log=log)

    def user_kernel_image(self, name: str, kernel: Path, modules: Path | None, log) -> BootImage:
        """The default guest's userland around the workload's own kernel ([machine] kernel)."""
        from harness.images.bootimage import kernel_boot_image
        return kernel_boot_image(name, build_linux_deb(kernel, modules, log=log))

    def prepare_image(self, name: str, log, built, allow_unverified: bool) -> BootImage:
        return prepare_image(name, log=log, built=built, allow_unverified=allow_unverified)

    def make_key(self, directory: Path):
        return make_key(directory)

    def dataplane(self, run_id: str) -> DataPlane:
        return DataPlane(run_id)

    def boot_disk(self, image: BootImage, public_line: str, state_dir: Path) -> tuple[Path | None, Path | None]:
        """A cloud image boots a per-boot qcow2 overlay (the cached base is never written) and
        a NoCloud seed; the built initramfs guest needs neither."""
        if not image.is_cloud:
            return None, None
        return make_overlay(image.disk, state_dir), seed_for(image, public_line, state_dir / "seed.iso")

    def machine(self, spec) -> Machine:
        return Machine(spec)

    def shell(self, port: int, key, user: str) -> GuestShell:
        return GuestShell(port, key, user=user)

    def thread_stats(self, pid: int | None) -> dict[str, str]:
        """Stat texts (tid -> /proc/.../stat) of our own QEMU's threads and of its vhost-net
        workers: host CPU time per vCPU / I/O / vhost thread (see qemu_thread_stats)."""
        return qemu_thread_stats(pid)

    def activity(self) -> dict:
        """Other things competing for this host while we measure: recorded, not controlled."""
        ps = subprocess.run(["ps", "-eo", "pid,comm"], capture_output=True, text=True).stdout.splitlines()[1:]
        qemus = [p[0] for p in (line.split() for line in ps) if len(p) == 2 and p[1].startswith("qemu-system")]
        ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
        return {"loadavg": os.getloadavg(), "other_qemu_pids": qemus,
                "other_xmitbench_netns": [line.split()[0] for line in ns if line.startswith("xb-")]}
