"""A guest kernel built from Debian's own kernel source (`linux-source-6.1`): the LOCK_STAT kernel.

The source package is fetched through the apt state of Debian 12 (aptstate.py: the host's apt
on a Debian 12 host, a private bookworm state on Debian 13) and unpacked with `dpkg-deb -x`;
nothing is installed. The config is `make tinyconfig` + a fragment kept in the repo
(vm/kernel/lockstat.config), with every driver built in. The kernel is cached under a key
hashing the source package's SHA256, the fragment and KBUILD_VERSION; the guest around it is
the stock initramfs userland (guestimage.build_linux_deb with the user kernel), whose init
loads nothing because modules.builtin lists every module it would insmod.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.images.aptstate import file_sha256
from harness.images.guestimage import ImageBuildError, WANTED_MODULES, cache_root

KBUILD_VERSION = "1"
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_RELEASE = "12"           # the Debian release whose kernel source it is (bookworm)
FRAGMENT = Path(__file__).resolve().parents[2] / "vm" / "kernel" / "lockstat.config"
LOCALVERSION = "-xmitbench-lockstat"

# The guest init insmods WANTED_MODULES; here each is built in, by this config symbol.
BUILTIN_MODULES = {
    "virtio_pci": ("CONFIG_VIRTIO_PCI", "drivers/virtio/virtio_pci.ko"),
    "virtio_net": ("CONFIG_VIRTIO_NET", "drivers/net/virtio_net.ko"),
    "e1000e": ("CONFIG_E1000E", "drivers/net/ethernet/intel/e1000e/e1000e.ko"),
    "igb": ("CONFIG_IGB", "drivers/net/ethernet/intel/igb/igb.ko"),
    "vmxnet3": ("CONFIG_VMXNET3", "drivers/net/vmxnet3/vmxnet3.ko"),
    "8021q": ("CONFIG_VLAN_8021Q", "net/8021q/8021q.ko"),
    "ip_gre": ("CONFIG_NET_IPGRE", "net/ipv4/ip_gre.ko"),
    "vxlan": ("CONFIG_VXLAN", "drivers/net/vxlan/vxlan.ko"),
    "sch_netem": ("CONFIG_NET_SCH_NETEM", "net/sched/sch_netem.ko"),
    "sch_prio": ("CONFIG_NET_SCH_PRIO", "net/sched/sch_prio.ko"),
    "cls_u32": ("CONFIG_NET_CLS_U32", "net/sched/cls_u32.ko"),
    "virtio_blk": ("CONFIG_VIRTIO_BLK", "drivers/block/virtio_blk.ko"),
    "isofs": ("CONFIG_ISO9660_FS", "fs/isofs/isofs.ko"),
}


@dataclass
class BuiltKernel:
    bzimage: Path
    moddir: Path          # <dir>/<release>, holding modules.builtin (no .ko files)
    release: str
    key: str
    manifest: dict


def fragment_options(text: str) -> dict[str, str]:
    """CONFIG_X=value lines of a config fragment (comments and blanks skipped)."""
    opts = {}
    for line in text.splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line.strip())
        if m:
            opts[m.group(1)] = m.group(2)
    return opts


def missing_options(fragment: dict[str, str], config_text: str) -> list[str]:
    """Fragment options the final .config does not carry (a dependency kconfig refused)."""
    final = fragment_options(config_text)
    return sorted(f"{k}={v} (got {final.get(k, 'unset')})" for k, v in fragment.items() if final.get(k) != v)


def _run(cmd: list[str], log_file=None, **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if log_file is not None:
        with open(log_file, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise ImageBuildError(f"{' '.join(cmd[:3])} failed ({proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip()[-600:]}")
    return proc.stdout


def source_package(log=print) -> tuple[object, dict]:
    """(apt state, {'file','sha256','size','uri'}) of the kernel source package."""
    from harness.images.aptstate import AptStateError, apt_state, parse_print_uris
    try:
        state = apt_state(SOURCE_RELEASE, cache_root(), log=log)
    except AptStateError as e:
        raise ImageBuildError(str(e)) from None
    proc = state.run(["apt-get", "download", "--print-uris", SOURCE_PACKAGE])
    entries = parse_print_uris(proc.stdout)
    if proc.returncode != 0 or not entries:
        raise ImageBuildError(f"apt-get download --print-uris {SOURCE_PACKAGE} ({state.describe()}) found no "
                              f"package: {proc.stderr.strip()[-300:] or 'no output'}")
    e = entries[0]
    return state, {"uri": e["uri"], "file": e["file"].replace("%3a", ":"), "size": e["size"], "sha256": e["sha256"]}


def build_key(source_sha256: str, fragment_text: str) -> str:
    src = {"kbuild": KBUILD_VERSION, "source": source_sha256, "fragment": fragment_text,
           "localversion": LOCALVERSION, "builtin": BUILTIN_MODULES}
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()[:16]


def build_lockstat_kernel(force: bool = False, log=print) -> BuiltKernel:
    """Build (or reuse) the LOCK_STAT kernel. The build time is recorded in kernel.json."""
    t0 = time.monotonic()
    fragment_text = FRAGMENT.read_text()
    state, pkg = source_package(log=log)
    key = build_key(pkg["sha256"], fragment_text)
    out = cache_root() / "kernels" / f"linux-lockstat-{key}"
    if (out / "kernel.json").exists() and not force:
        m = json.loads((out / "kernel.json").read_text())
        log(f"kernel linux-lockstat {key}: cached ({m['release']}, built in {m['build_s']['make']} s)")
        return BuiltKernel(out / "bzImage", out / "modules" / m["release"], m["release"], key, m)
    deb_dir = cache_root() / "debs"
    deb_dir.mkdir(parents=True, exist_ok=True)
    deb = deb_dir / pkg["file"]
    if not (deb.exists() and file_sha256(deb) == pkg["sha256"]):
        log(f"kernel linux-lockstat {key}: downloading {pkg['file']} ({pkg['size'] // 2**20} MiB)")
        proc = state.run(["apt-get", "download", SOURCE_PACKAGE], cwd=deb_dir)
        if proc.returncode != 0 or not deb.exists() or file_sha256(deb) != pkg["sha256"]:
            raise ImageBuildError(f"apt-get download {SOURCE_PACKAGE} failed or checksum mismatch: "
                                  f"{proc.stderr.strip()[-300:]}")
    t_fetch = time.monotonic() - t0
    jobs = len(os.sched_getaffinity(0)) or 1     # what nproc prints
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xb-kbuild-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        log_file = tmp / "build.log"
        _run(["dpkg-deb", "-x", str(deb), str(tmp / "pkg")])
        tarball = next((tmp / "pkg" / "usr" / "src").glob("linux-source-*.tar.*"), None)
        if tarball is None:
            raise ImageBuildError(f"{pkg['file']} holds no /usr/src/linux-source-*.tar.*")
        _run(["tar", "-xf", str(tarball), "-C", str(tmp)])
        shutil.rmtree(tmp / "pkg")
        src = next(p for p in tmp.iterdir() if p.is_dir() and p.name.startswith("linux-source-"))
        make = ["make", "-C", str(src), "ARCH=x86_64", f"LOCALVERSION={LOCALVERSION}"]
        log(f"kernel linux-lockstat {key}: tinyconfig + {FRAGMENT.name}, make -j{jobs} bzImage")
        t_cfg = time.monotonic()
        _run(make + ["tinyconfig"], log_file)
        _run([str(src / "scripts" / "kconfig" / "merge_config.sh"), "-m", "-O", str(src),
              str(src / ".config"), str(FRAGMENT)], log_file, cwd=src)
        _run(make + ["olddefconfig"], log_file)
        config_text = (src / ".config").read_text()
        missing = missing_options(fragment_options(fragment_text), config_text)
        if missing:
            raise ImageBuildError(f"{FRAGMENT}: options kconfig did not take: {', '.join(missing)}")
        t_make = time.monotonic()
        _run(make + [f"-j{jobs}", "bzImage"], log_file)
        t_done = time.monotonic()
        release = _run(make + ["-s", "kernelrelease"]).strip().splitlines()[-1]
        stage = out.with_name(out.name + ".tmp")
        shutil.rmtree(stage, ignore_errors=True)
        moddir = stage / "modules" / release
        moddir.mkdir(parents=True)
        final = fragment_options(config_text)
        not_builtin = [m for m in WANTED_MODULES if final.get(BUILTIN_MODULES.get(m, ("?",))[0]) != "y"]
        if not_builtin:
            raise ImageBuildError(f"guest modules not built in: {', '.join(not_builtin)}")
        (moddir / "modules.builtin").write_text(
            "".join(f"kernel/{BUILTIN_MODULES[m][1]}\n" for m in WANTED_MODULES))
        shutil.copy(src / "arch" / "x86" / "boot" / "bzImage", stage / "bzImage")
        shutil.copy(src / ".config", stage / "config")
        shutil.copy(log_file, stage / "build.log")
        manifest = {
            "name": "linux-lockstat", "key": key, "release": release,
            "source_package": pkg["file"], "source_sha256": pkg["sha256"], "apt": state.describe(),
            "fragment": str(FRAGMENT.relative_to(FRAGMENT.parents[2])),
            "fragment_sha256": hashlib.sha256(fragment_text.encode()).hexdigest(),
            "kbuild_version": KBUILD_VERSION, "jobs": jobs,
            "bzImage_sha256": file_sha256(stage / "bzImage"),
            "bzImage_bytes": (stage / "bzImage").stat().st_size,
            # a benchmark of this machine, not a property of the kernel
            "build_s": {"fetch": round(t_fetch, 1), "config": round(t_make - t_cfg, 1),
                        "make": round(t_done - t_make, 1), "total": round(time.monotonic() - t0, 1)},
        }
        (stage / "kernel.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        stage.rename(out)
    log(f"kernel linux-lockstat {key}: {release} built, make -j{jobs} bzImage {manifest['build_s']['make']} s")
    return BuiltKernel(out / "bzImage", out / "modules" / release, release, key, manifest)


def linux_lockstat_image(log=print, built=None):
    """The LOCK_STAT kernel with the stock initramfs userland (a local image builder)."""
    from harness.images.bootimage import kernel_boot_image
    from harness.images.guestimage import build_linux_deb
    k = build_lockstat_kernel(log=log)
    img = build_linux_deb(kernel=k.bzimage, modules=k.moddir, log=log)
    bi = kernel_boot_image("linux-lockstat", img)
    bi.info["kernel_build"] = {x: k.manifest[x] for x in ("key", "source_package", "source_sha256",
                                                          "fragment_sha256", "build_s", "jobs")}
    return bi
