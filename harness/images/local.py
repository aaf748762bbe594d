"""Images the harness builds itself, by name. Every other name comes from the catalog.

Each entry says which OS it runs, how it boots and which function builds it, so the workload
check, `plan` and the runner ask one table. Builders are named as "module:function" and
imported only when an image is prepared: `plan` and the workload check stay cheap.
A builder takes (log, built) and returns a BootImage (built: the default guest when the
runner already has it)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

KERNEL_BOOT = "kernel"   # direct kernel boot: bzImage + initramfs, no disk, no seed
DISK_BOOT = "disk"       # a disk image booted by its own boot loader, with a NoCloud seed


@dataclass(frozen=True)
class LocalImage:
    name: str
    os: str
    boot: str        # KERNEL_BOOT or DISK_BOOT
    summary: str
    builder: str     # "module:function"
    lock_stat: bool = False   # its kernel has /proc/lock_stat (plan shows the lock_stat steps)

    def build(self, log=print, built=None):
        module, func = self.builder.split(":")
        return getattr(importlib.import_module(module), func)(log=log, built=built)


LOCAL_IMAGES: dict[str, LocalImage] = {
    "linux-deb": LocalImage("linux-deb", "linux", KERNEL_BOOT,
                            "Debian's packaged kernel of the host's release + an initramfs userland",
                            "harness.images.bootimage:linux_deb_image"),
    # One per Debian release, on any host (a private apt state for a release not the host's).
    "linux-deb-12": LocalImage("linux-deb-12", "linux", KERNEL_BOOT,
                               "Debian 12 (bookworm) packaged kernel, Linux 6.1, + an initramfs userland",
                               "harness.images.bootimage:linux_deb_12_image"),
    "linux-deb-13": LocalImage("linux-deb-13", "linux", KERNEL_BOOT,
                               "Debian 13 (trixie) packaged kernel, Linux 6.12, + an initramfs userland",
                               "harness.images.bootimage:linux_deb_13_image"),
    "debian-cloud": LocalImage("debian-cloud", "linux", DISK_BOOT,
                               "Debian 12 cloud image built with mmdebstrap: cloud-init (NoCloud), systemd, sshd",
                               "harness.images.bootimage:debian_cloud_image"),
    "linux-lockstat": LocalImage("linux-lockstat", "linux", KERNEL_BOOT,
                                 "Debian's linux-source-6.1 built with CONFIG_LOCK_STAT (tinyconfig + "
                                 "vm/kernel/lockstat.config) + the same initramfs userland",
                                 "harness.images.kernelbuild:linux_lockstat_image", lock_stat=True),
}


def local_image(name: str) -> LocalImage | None:
    return LOCAL_IMAGES.get(name)


def has_lock_stat(name: str) -> bool:
    """What `plan` assumes; a run asks the booted kernel (GuestDriver.lock_stat_probe)."""
    img = LOCAL_IMAGES.get(name)
    return img is not None and img.lock_stat


def boots_kernel_directly(name: str) -> bool:
    """True for the harness's initramfs guests; catalog images and local disk images boot from disk."""
    img = LOCAL_IMAGES.get(name)
    return img is not None and img.boot == KERNEL_BOOT


def installs_packages_on_first_boot(name: str) -> bool:
    """Catalog cloud images install iperf3 & co. from their repositories on first boot (their
    management NIC needs egress); the images the harness builds already hold them."""
    return name not in LOCAL_IMAGES
