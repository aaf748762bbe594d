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
from harness.vm.dataplane import DataPlane, clean_stale
from harness.vm.machine import Machine, device_help, probe_accel, qemu_version
from harness.vm.ssh import GuestShell, make_key


class Host:
    """The real host: QEMU guests, a harness-owned namespace, SSH to 127.0.0.1."""
    kind = "qemu"               # manifest["host_kind"]
    replay_of: str | None = None  # a replay names what it replays (manifest["replay"])

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
        """/proc/<qemu>/task/*/stat texts: host CPU time per vCPU / I/O thread of our own QEMU."""
        out: dict[str, str] = {}
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

    def activity(self) -> dict:
        """Other things competing for this host while we measure: recorded, not controlled."""
        ps = subprocess.run(["ps", "-eo", "pid,comm"], capture_output=True, text=True).stdout.splitlines()[1:]
        qemus = [p[0] for p in (line.split() for line in ps) if len(p) == 2 and p[1].startswith("qemu-system")]
        ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
        return {"loadavg": os.getloadavg(), "other_qemu_pids": qemus,
                "other_xmitbench_netns": [line.split()[0] for line in ns if line.startswith("xb-")]}
