"""Build `debian-cloud`: a Debian 12 cloud image made from Debian packages with mmdebstrap,
the way Debian's own cloud images are made (a package list, a few config files, a disk).

It holds Debian's packaged amd64 kernel (the same kernel package the initramfs guest boots, so
the two guests differ only in userland and boot path), an initramfs-tools initramfs, systemd,
cloud-init with the NoCloud datasource only, ifupdown + dhclient (cloud-init's eni renderer,
what Debian 12 cloud images use), openssh-server, iperf3, ethtool and iproute2. First boot
needs no network: nothing is installed then.

The disk is put together without loop devices or mounts, so the build runs in containers too:
  * MBR (syslinux's mbr.bin) + two primary partitions written by `sfdisk` into a plain file;
  * partition 1, FAT, bootable: the kernel, the initramfs and syslinux.cfg, copied with mtools;
    syslinux installs itself into it through mtools (`syslinux --offset`), no mount needed
    (extlinux and grub-install both want a mounted file system or a block device);
  * partition 2, ext4, label `xbroot`: the mmdebstrap tree, written by `mke2fs -d`.
The raw disk becomes a qcow2; the runner boots per-boot overlays of it, never the file itself.

Cached under ~/.cache/xmitbench/images/debian-cloud-<key>, the key hashing every input (the
candidate versions of the packages named here, the files written into the image, this
builder's version). The image's sha256 is recorded in image.json beside it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from harness.images.aptstate import KEYRING, MIRROR, SECURITY_MIRROR, apt_state
from harness.images.aptstate import file_sha256
from harness.images.guestimage import ImageBuildError, cache_root

BUILDER_VERSION = "4"
NAME = "debian-cloud"
RELEASE = "12"
SUITE = "bookworm"
ROOT_LABEL = "xbroot"
DISK_MIB = 3072
BOOT_MIB = 160                    # FAT: kernel + initramfs (MODULES=most, ~40 MiB)
BOOT_START_SECTOR = 2048

PACKAGES = ["linux-image-amd64", "initramfs-tools", "systemd", "systemd-sysv", "udev", "dbus",
            "cloud-init", "openssh-server", "sudo", "ifupdown", "isc-dhcp-client", "netbase",
            "iperf3", "ethtool", "iproute2", "procps", "kmod", "e2fsprogs", "zstd"]
# The tools' paths in this image (usrmerge: /bin, /sbin are /usr/bin, /usr/sbin).
TOOLS = {"ip": "/usr/sbin/ip", "tc": "/usr/sbin/tc", "ethtool": "/usr/sbin/ethtool",
         "iperf3": "/usr/bin/iperf3"}
KERNEL_CMDLINE = f"root=LABEL={ROOT_LABEL} ro console=tty0 console=ttyS0,115200 consoleblank=0"

# Files written into the tree (path -> text). What Debian's cloud images configure, cut down:
# only the NoCloud datasource (no probing of cloud metadata services that are not there).
FILES = {
    "/etc/fstab": f"LABEL={ROOT_LABEL} / ext4 rw,discard,errors=remount-ro 0 1\n",
    "/etc/cloud/cloud.cfg.d/01_xmitbench_datasource.cfg": "datasource_list: [ NoCloud, None ]\n",
    # cc_locale would set LANG=en_US.UTF-8, which this image never generated (update-locale
    # exits 255 and cloud-init ends in "status: error"); the guest runs with glibc's C.UTF-8.
    "/etc/cloud/cloud.cfg.d/02_xmitbench_locale.cfg": "locale: false\n",
    "/etc/network/interfaces": "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n",
    "/etc/hostname": "localhost\n",
}
# Docs, man pages and translations are left out of the tree (smaller cache, same behaviour).
DPKG_EXCLUDES = ["/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*"]
# Run in the tree after the packages are in: per-instance state is made on first boot by
# systemd (machine-id) and cloud-init (SSH host keys), as in Debian's images.
CUSTOMIZE = ["rm -f \"$1\"/etc/ssh/ssh_host_*_key \"$1\"/etc/ssh/ssh_host_*_key.pub",
             "truncate -s 0 \"$1\"/etc/machine-id", "rm -f \"$1\"/var/lib/dbus/machine-id",
             "chroot \"$1\" systemctl enable ssh.service"]
SYSLINUX_CFG = f"SERIAL 0 115200\nDEFAULT linux\nTIMEOUT 0\nPROMPT 0\nLABEL linux\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND {KERNEL_CMDLINE}\n"
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
HOST_TOOLS = ["mmdebstrap", "mke2fs", "mkfs.vfat", "mcopy", "syslinux", "sfdisk", "qemu-img"]


def _run(cmd: list[str], log=None, **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise ImageBuildError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


def candidate_versions(pkgs: list[str], log=print) -> dict[str, str]:
    """The version apt would install of each package (Debian 12's apt state): the cache key."""
    state = apt_state(RELEASE, cache_root(), log=log)
    out = state.run(["apt-cache", "policy", *pkgs]).stdout
    versions, current = {}, None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif current and line.strip().startswith("Candidate:"):
            versions[current] = line.split(":", 1)[1].strip()
    missing = [p for p in pkgs if versions.get(p) in (None, "(none)")]
    if missing:
        raise ImageBuildError(f"no Debian {RELEASE} candidate for {', '.join(missing)} "
                              f"(apt-get update for {state.describe()}?)")
    return versions


def cache_key(versions: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"builder": BUILDER_VERSION, "suite": SUITE, "packages": versions, "files": FILES,
                         "customize": CUSTOMIZE, "excludes": DPKG_EXCLUDES, "syslinux": SYSLINUX_CFG,
                         "disk_mib": DISK_MIB, "boot_mib": BOOT_MIB}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def image_dir(key: str) -> Path:
    return cache_root() / "images" / f"{NAME}-{key}"


def build_debian_cloud(log=print, force: bool = False) -> tuple[Path, dict]:
    """(qcow2 path, manifest); a cache hit when every input is unchanged."""
    missing = [t for t in HOST_TOOLS if not shutil.which(t) and not Path("/usr/sbin", t).exists()]
    if missing or not MBR_BIN.exists():
        raise ImageBuildError(f"building {NAME} needs {', '.join(missing or [str(MBR_BIN)])} "
                              "(make system-deps installs mmdebstrap, syslinux, mtools, dosfstools, fdisk)")
    versions = candidate_versions(PACKAGES, log=log)
    key = cache_key(versions)
    d = image_dir(key)
    disk, meta = d / "disk.qcow2", d / "image.json"
    if meta.exists() and disk.exists() and not force:
        manifest = json.loads(meta.read_text())
        log(f"{NAME}: cached {disk} (key {key})")
        return disk, manifest
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    debs = cache_root() / "debs-mmdebstrap" / SUITE
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xb-cloud-", dir=d) as tmp:
        tmp = Path(tmp)
        root = tmp / "root"
        log(f"{NAME}: mmdebstrap {SUITE} ({len(PACKAGES)} packages + dependencies)")
        _mmdebstrap(root, debs)
        t_tree = time.monotonic() - t0
        kernel_release = _kernel_release(root)
        dpkg_list = _dpkg_list(root)
        raw = tmp / "disk.raw"
        log(f"{NAME}: disk (syslinux on FAT + ext4 root) for kernel {kernel_release}")
        _make_disk(root, raw, kernel_release)
        tmp_qcow = d / "disk.qcow2.tmp"
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp_qcow)])
        os.replace(tmp_qcow, disk)
    manifest = {"name": NAME, "key": key, "release": RELEASE, "suite": SUITE,
                "image_kind": f"local cloud image (mmdebstrap, Debian {RELEASE})",
                "kernel_release": kernel_release, "kernel_cmdline": KERNEL_CMDLINE,
                "boot_loader": "syslinux (FAT partition, installed through mtools)",
                "packages": versions, "installed": dpkg_list, "tools": TOOLS,
                "sha256": file_sha256(disk), "size_bytes": disk.stat().st_size,
                "build_s": round(time.monotonic() - t0, 1), "tree_s": round(t_tree, 1),
                "builder_version": BUILDER_VERSION}
    meta.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    log(f"{NAME}: built {disk} in {manifest['build_s']} s, sha256 {manifest['sha256']}")
    return disk, manifest


def _mmdebstrap(root: Path, debs: Path) -> None:
    sources = [f"deb [arch=amd64 signed-by={KEYRING}] {m} {s} main"
               for m, s in ((MIRROR, SUITE), (MIRROR, f"{SUITE}-updates"), (SECURITY_MIRROR, f"{SUITE}-security"))]
    hooks = []
    for path, text in FILES.items():
        hooks += ["--customize-hook", f"mkdir -p \"$1\"{os.path.dirname(path)} && "
                                      f"printf '%s' '{text}' > \"$1\"{path}"]
    for cmd in CUSTOMIZE:
        hooks += ["--customize-hook", cmd]
    cmd = ["mmdebstrap", "--mode=root", "--variant=apt", "--format=directory",
           f"--keyring={KEYRING}", "--include=" + ",".join(PACKAGES),
           *[f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES],
           "--dpkgopt=path-include=/usr/share/doc/*/copyright",
           # The downloaded .debs are kept between builds (mmdebstrap's documented sync-in/out).
           "--skip=download/empty", "--skip=essential/unlink",
           "--setup-hook", "mkdir -p \"$1\"/var/cache/apt/archives/",
           "--setup-hook", f"sync-in {debs} /var/cache/apt/archives/",
           "--customize-hook", f"sync-out /var/cache/apt/archives {debs}",
           "--customize-hook", "rm -f \"$1\"/var/cache/apt/archives/*.deb",
           *hooks, SUITE, str(root), *sources]
    _run(cmd)


def _kernel_release(root: Path) -> str:
    kernels = sorted(p.name[len("vmlinuz-"):] for p in (root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1 or not (root / "boot" / f"initrd.img-{kernels[0]}").exists():
        raise ImageBuildError(f"{NAME}: expected one kernel + initramfs in /boot, found {kernels}")
    return kernels[0]


def _dpkg_list(root: Path) -> dict[str, str]:
    out = _run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package} ${Version}\n"])
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


def _make_disk(root: Path, raw: Path, kernel_release: str) -> None:
    sector = 512
    boot_off = BOOT_START_SECTOR * sector
    root_start = BOOT_START_SECTOR + BOOT_MIB * 2048
    root_off = root_start * sector
    with open(raw, "wb") as f:
        f.truncate(DISK_MIB << 20)
    _run(["sfdisk", "--no-reread", "--no-tell-kernel", str(raw)],
         input=f"label: dos\nstart={BOOT_START_SECTOR}, size={BOOT_MIB * 2048}, type=c, bootable\n"
               f"start={root_start}, type=83\n")
    with open(raw, "r+b") as f:      # boot code only (440 bytes): the partition table stays
        f.write(MBR_BIN.read_bytes()[:440])
    boot_img = raw.with_name("boot.fat")
    # -h: the partition's start as "hidden sectors" in the boot sector, where syslinux's boot
    # sector code finds its own partition (mkfs on a bare file would write 0)
    _run(["mkfs.vfat", "-n", "XBBOOT", "-h", str(BOOT_START_SECTOR), "-C", str(boot_img), str(BOOT_MIB * 1024)])
    cfg = raw.with_name("syslinux.cfg")
    cfg.write_text(SYSLINUX_CFG)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    for src, name in ((root / "boot" / f"vmlinuz-{kernel_release}", "vmlinuz"),
                      (root / "boot" / f"initrd.img-{kernel_release}", "initrd.img"), (cfg, "syslinux.cfg")):
        _run(["mcopy", "-i", str(boot_img), str(src), f"::/{name}"], env=env)
    _run(["syslinux", "--install", str(boot_img)], env=env)
    _splice(boot_img, raw, boot_off)
    boot_img.unlink()
    root_img = raw.with_name("root.ext4")
    root_bytes = (DISK_MIB << 20) - root_off
    _run(["mke2fs", "-q", "-t", "ext4", "-L", ROOT_LABEL, "-d", str(root), "-F", str(root_img),
          str(root_bytes // 1024) + "k"])
    _splice(root_img, raw, root_off)
    root_img.unlink()


def _splice(part: Path, disk: Path, offset: int) -> None:
    """Copy a partition image into the disk file at `offset`, keeping holes sparse."""
    _run(["dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={offset}", "oflag=seek_bytes",
          "conv=notrunc,sparse", "status=none"])
