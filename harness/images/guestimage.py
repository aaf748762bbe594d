"""Build the offline Linux guest: Debian's packaged kernel + an initramfs userland.

Everything comes from downloaded Debian packages (`apt-get download`, unpacked with
`dpkg-deb -x`), never from the host's own files, so the guest is the same on every
machine that resolves the same package versions. The result is cached under a key
that hashes every input (package checksums, module list, init script, builder
version); a second build with the same inputs is a cache hit.

A user kernel (e.g. one built with CONFIG_LOCK_STAT) replaces the packaged one with
`--kernel bzImage --modules DIR`; its file hashes go into the cache key.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from harness.images.aptstate import (DEPENDS_ARGS, AptState, AptStateError, apt_state,
                                     dependency_closure, file_sha256, normalize_release,
                                     parse_depends, parse_print_uris)

BUILDER_VERSION = "7"    # 7: the release in the key and the dir name; merged-/usr packages

# What the guest must run. Libraries are added by dependency closure below.
SEED_PACKAGES = ["busybox-static", "dropbear-bin", "iperf3", "libiperf0", "iproute2", "ethtool"]
KERNEL_META = "linux-image-amd64"

# NIC drivers measured, plus what the race workloads stack on them.
WANTED_MODULES = ["virtio_pci", "virtio_net", "e1000e", "igb", "vmxnet3", "8021q", "ip_gre", "vxlan", "sch_netem",
                  "sch_prio", "cls_u32",   # prio + u32: impair one flow class (e.g. UDP) only
                  "virtio_blk", "isofs"]   # the disk-image variant reads a NoCloud seed ISO

# Real tools that a busybox applet of the same name must never shadow.
REAL_TOOLS = {"ip", "tc", "ethtool", "iperf3", "dropbear", "bridge", "ss"}

BUSYBOX_APPLETS = """
sh ash mount umount mkdir rmdir cat echo sleep ls ps kill killall pidof taskset grep egrep awk sed
insmod rmmod lsmod modprobe hostname poweroff reboot halt sync cut head tail tr wc find xargs chmod
chown ln cp rm mv date uname dmesg env true false test [ [[ printf seq nproc timeout setsid nohup
stat mknod readlink dirname basename tee sort uniq od hexdump base64 id whoami stty top free uptime
sha256sum md5sum tar gzip gunzip zcat vi less which touch expr usleep watch fuser
""".split()

# Library packages are followed through Depends; everything else (debconf, adduser,
# init-system-helpers, perl) is maintainer-script machinery a ramdisk does not need.
_LIB_PKG = re.compile(r"^(lib[\w.+-]+|zlib1g)$")
_SKIP_PKG = {"libc-bin", "libcap2-bin", "libpam-runtime", "libpam-modules", "libpam-modules-bin"}


# Where Debian 12 puts the real tools (a catalog cloud image and `plan` before any build use
# these); every build finds the actual paths in the unpacked packages and records them.
DEFAULT_TOOLS = {"ip": "/bin/ip", "tc": "/sbin/tc", "ethtool": "/sbin/ethtool",
                 "iperf3": "/usr/bin/iperf3", "dropbear": "/usr/sbin/dropbear"}
# Debian 13 (merged /usr), as a trixie build found them: `plan` shows these before one is built.
PLAN_TOOLS = {"12": DEFAULT_TOOLS,
              "13": {"ip": "/usr/bin/ip", "tc": "/usr/sbin/tc", "ethtool": "/usr/sbin/ethtool",
                     "iperf3": "/usr/bin/iperf3", "dropbear": "/usr/sbin/dropbear"}}
GUEST_TOOLS = ("ip", "tc", "ethtool", "iperf3", "dropbear")
# Directories of a merged-/usr system that are links into /usr (Debian 13: every package
# ships under /usr; base-files, not unpacked here, would provide the links).
MERGED_USR_DIRS = ("bin", "sbin", "lib", "lib64")


def known_tools(release: str | None = None) -> dict[str, str]:
    """Tool paths of the newest cached guest (of `release` when given), for `plan`, which
    must not build anything."""
    images = sorted((cache_root() / "images").glob("linux-deb-*/image.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(images):
        m = json.loads(path.read_text())
        if release is None or m.get("debian_release") == release:
            return m.get("tools", DEFAULT_TOOLS)
    return dict(PLAN_TOOLS.get(release or "", DEFAULT_TOOLS))


class ImageBuildError(RuntimeError):
    pass


@dataclass
class GuestImage:
    """A built guest: what the machine layer boots, and what results record."""
    name: str
    kernel: Path
    initrd: Path
    kernel_release: str
    key: str
    manifest: dict

    @property
    def dir(self) -> Path:
        return self.kernel.parent


def cache_root() -> Path:
    base = os.environ.get("XMITBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "xmitbench")
    return Path(base)


def _run(cmd: list[str], apt: AptState | None = None, **kw) -> str:
    """Run a command; `apt`: the release whose apt state an apt call must use."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=apt.env() if apt else None, **kw)
    if proc.returncode != 0:
        raise ImageBuildError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _apt_query(cmd: list[str], apt: AptState | None) -> str:
    """A read-only apt query; with an apt state, answered from the memo while its lists are
    unchanged (AptState.query: a cached guest is then found in milliseconds, not ~10 s)."""
    if apt is None:
        return _run(cmd)
    try:
        return apt.query(cmd, cache_root() / "apt-answers")
    except AptStateError as e:
        raise ImageBuildError(str(e)) from None


def _depends(pkgs: list[str], apt: AptState | None = None) -> dict[str, list[str]]:
    """First alternative of each Depends/PreDepends of each package's candidate version
    (one apt-cache call for the whole list: it is ~0.6 s a call)."""
    return parse_depends(_apt_query([*DEPENDS_ARGS, *pkgs], apt))


def resolve_packages(kernel: bool = True, apt: AptState | None = None) -> list[str]:
    """Seed packages + library closure (+ the concrete kernel image package)."""
    level = list(SEED_PACKAGES)
    if kernel:
        level += [d for d in _depends([KERNEL_META], apt).get(KERNEL_META, []) if d.startswith("linux-image-")][:1]
    return dependency_closure(level, lambda pkgs: _depends(pkgs, apt),
                              lambda d: bool(_LIB_PKG.match(d)) and d not in _SKIP_PKG)


def package_uris(pkgs: list[str], apt: AptState | None = None) -> list[dict]:
    """apt's own view of what it would download: file name, size and SHA256."""
    entries = parse_print_uris(_apt_query(["apt-get", "download", "--print-uris", *pkgs], apt))
    if len(entries) != len(pkgs):
        raise ImageBuildError(f"apt-get --print-uris gave {len(entries)} entries for {len(pkgs)} packages"
                              " (run `apt-get update`?)")
    return entries




def fetch_packages(entries: list[dict], deb_dir: Path, apt: AptState | None = None) -> list[Path]:
    deb_dir.mkdir(parents=True, exist_ok=True)
    paths, missing = [], []
    for e in entries:
        p = deb_dir / e["file"]
        paths.append(p)
        if not (p.exists() and file_sha256(p) == e["sha256"]):
            missing.append(e)
    if missing:
        names = [re.sub(r"_.*", "", e["file"]) + "=" + _unquote(e["file"]).split("_")[1] for e in missing]
        _run(["apt-get", "download", *names], apt, cwd=deb_dir)
        for e in missing:
            p = deb_dir / e["file"]
            if not p.exists():  # apt names files with %3a for ':' in epochs
                alt = deb_dir / _unquote(e["file"]).replace(":", "%3a")
                if alt.exists():
                    alt.rename(p)
            if not p.exists() or file_sha256(p) != e["sha256"]:
                raise ImageBuildError(f"{p}: checksum mismatch or missing after download")
    return paths


def bzimage_release(path: Path) -> str:
    """The kernel release a bzImage says it is (boot protocol header: "HdrS" at 0x202, the
    kernel_version string at 0x200 + the 16-bit offset at 0x20e). ValueError if not a bzImage."""
    with open(path, "rb") as f:
        head = f.read(0x4000)
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise ValueError("not a bzImage (no HdrS boot header)")
    off = 0x200 + int.from_bytes(head[0x20E:0x210], "little")
    with open(path, "rb") as f:
        f.seek(off)
        text = f.read(256).split(b"\0", 1)[0].decode("ascii", "replace")
    if not text.strip():
        raise ValueError("bzImage has no kernel_version string")
    return text.split()[0]


def _unquote(s: str) -> str:
    return s.replace("%3a", ":")


# --- kernel modules -------------------------------------------------------------

def _modinfo_depends(ko: Path) -> list[str]:
    with open(ko, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".modinfo")
        data = sec.data() if sec else b""
    for field in data.split(b"\0"):
        if field.startswith(b"depends="):
            return [d for d in field[8:].decode().split(",") if d]
    return []


def module_load_order(moddir: Path, wanted: list[str]) -> list[Path]:
    """Wanted modules and their dependencies, dependencies first (depmod not needed)."""
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        builtin = {Path(l.strip()).name.split(".ko")[0] for l in bfile.read_text().splitlines()}
    index: dict[str, Path] = {}
    for ko in (moddir / "kernel").rglob("*.ko*"):
        index.setdefault(ko.name.split(".ko")[0].replace("-", "_"), ko)
    order: list[Path] = []

    def visit(name: str, chain: tuple) -> None:
        key = name.replace("-", "_")
        if key in builtin or name in builtin:
            return
        ko = index.get(key)
        if ko is None:
            raise ImageBuildError(f"module {name} (needed by {' -> '.join(chain) or 'xmitbench'}) not found in {moddir}")
        if ko in order:
            return
        for dep in _modinfo_depends(_decompressed(ko)):
            visit(dep, chain + (name,))
        order.append(ko)

    for m in wanted:
        visit(m, ())
    return order


def _decompressed(ko: Path) -> Path:
    if ko.suffix == ".ko":
        return ko
    out = ko.with_suffix("")  # foo.ko.xz -> foo.ko
    if not out.exists():
        if ko.suffix == ".xz":
            import lzma
            out.write_bytes(lzma.decompress(ko.read_bytes()))
        elif ko.suffix == ".zst":
            _run(["zstd", "-q", "-d", "-o", str(out), str(ko)])
        elif ko.suffix == ".gz":
            out.write_bytes(gzip.decompress(ko.read_bytes()))
        else:
            raise ImageBuildError(f"unknown module compression: {ko}")
    return out


# --- userland --------------------------------------------------------------------

def _elf_needed(path: Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return []
            f.seek(0)
            dyn = ELFFile(f).get_section_by_name(".dynamic")
            if dyn is None:
                return []
            return [t.needed for t in dyn.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
    except Exception:
        return []


def check_libraries(root: Path, binaries: list[str]) -> None:
    """Every DT_NEEDED of the shipped binaries must resolve inside the guest root."""
    libdirs = [root / d for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib", "lib64")]
    todo, seen, missing = [root / b.lstrip("/") for b in binaries], set(), []
    while todo:
        p = todo.pop()
        for lib in _elf_needed(p):
            if lib in seen:
                continue
            seen.add(lib)
            hit = next((d / lib for d in libdirs if (d / lib).exists()), None)
            if hit is None:
                missing.append(f"{lib} (needed by {p.name})")
            else:
                todo.append(hit.resolve() if hit.is_symlink() and hit.resolve().exists() else hit)
    if missing:
        raise ImageBuildError("guest userland lacks libraries: " + ", ".join(sorted(missing)))


# Debian's busybox-static prefers its own applets inside `sh` (FEATURE_SH_STANDALONE): a bare
# `ip` or `tc` runs busybox's cut-down applet even when iproute2 is installed. Real tools are
# therefore always called by absolute path; the paths are found at build time and recorded.
INIT_SCRIPT = r"""#!/bin/busybox sh
# xmitbench guest init: mount, load NIC drivers, bring up management + data plane, start sshd.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
IP=@ip@
mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
echo "xmitbench: init $(cat /proc/uptime)" > /dev/console
while read -r m; do insmod "/lib/modules/xmitbench/$m" 2>/dev/console; done < /etc/xmitbench/modules.order
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1="*) echo "${w#*=}";; esac; done; }
MGMT_MAC=$(arg xb.mgmt_mac); DATA_MAC=$(arg xb.data_mac); DATA_IP=$(arg xb.data_ip)
KEY=$(arg xb.key)
# Booted from disk (no per-run kernel command line): behave like a cloud image and take the
# key from a NoCloud seed (ISO labelled cidata), the way cloud-init / nuageinit would.
if [ -z "$KEY" ]; then
  MGMT_MAC=52:54:00:00:00:01
  mkdir -p /seed
  for dev in /dev/vd? /dev/sr?; do
    mount -t iso9660 -o ro "$dev" /seed 2>/dev/null || continue
    if [ -f /seed/user-data ]; then
      KEY=$(grep -o 'ssh-ed25519 [A-Za-z0-9+/=]*' /seed/user-data | head -1 | cut -d' ' -f2)
      echo "xmitbench: NoCloud seed on $dev" > /dev/console
      umount /seed; break
    fi
    umount /seed
  done
fi
$IP link set lo up
for d in /sys/class/net/*; do
  n=${d##*/}; mac=$(cat "$d/address")
  if [ "$mac" = "$MGMT_MAC" ]; then $IP link set "$n" name xbmgmt; fi
  if [ "$mac" = "$DATA_MAC" ]; then $IP link set "$n" name xb0; fi
done
$IP addr add 198.19.0.15/24 dev xbmgmt && $IP link set xbmgmt up
if [ -n "$DATA_IP" ] && [ -e /sys/class/net/xb0 ]; then $IP addr add "$DATA_IP" dev xb0 && $IP link set xb0 up; fi
mkdir -p /root/.ssh /etc/dropbear && chmod 700 /root/.ssh
echo "ssh-ed25519 $KEY xmitbench" > /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
# -s: no password logins; -R: make host keys now; -E: log to stderr (the console).
# xb.nossh=1 exists for the fault-injection test of a guest whose SSH never comes up.
[ "$(arg xb.nossh)" = 1 ] || @dropbear@ -R -s -E -p 22 2>/dev/console
echo "xmitbench: ready $(cat /proc/uptime)" > /dev/console
while :; do sleep 3600; done
"""


def _write_newc(root: Path, out: Path) -> None:
    """Write a gzip'd cpio (newc) archive of root, owned by root:root, sorted (reproducible)."""
    entries = sorted(p for p in root.rglob("*"))
    ino = 1
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
        def emit(name: str, mode: int, data: bytes, nlink: int = 1) -> None:
            nonlocal ino
            nb = name.encode() + b"\0"
            hdr = "070701" + "".join(f"{v:08X}" for v in (
                ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(nb), 0))
            gz.write(hdr.encode() + nb + b"\0" * ((4 - (110 + len(nb)) % 4) % 4))
            gz.write(data + b"\0" * ((4 - len(data) % 4) % 4))
            ino += 1
        for p in entries:
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                emit(rel, st.st_mode, os.readlink(p).encode())
            elif stat.S_ISDIR(st.st_mode):
                emit(rel, st.st_mode, b"", 2)
            elif stat.S_ISREG(st.st_mode):
                emit(rel, st.st_mode, p.read_bytes())
        emit("TRAILER!!!", 0, b"")


def merge_usr(root: Path) -> bool:
    """Make an unpacked merged-/usr userland runnable: `bin`, `sbin`, `lib`, `lib64` become links
    to `usr/...` (what base-files' aliasing links are on Debian 13; the ELF interpreter is
    /lib64/ld-linux-x86-64.so.2 and init's is /bin/busybox). A stray file a package still put
    under a top-level dir is moved into usr/ first. Returns False (nothing done) for a
    split-/usr userland (Debian 12: busybox-static ships /bin/busybox)."""
    if (root / "bin" / "busybox").exists() or not (root / "usr" / "bin" / "busybox").exists():
        return False
    for d in MERGED_USR_DIRS:
        top, usr = root / d, root / "usr" / d
        usr.mkdir(parents=True, exist_ok=True)
        if top.is_dir() and not top.is_symlink():
            for item in sorted(top.rglob("*"), key=lambda p: len(p.parts)):
                dst = usr / item.relative_to(top)
                if item.is_dir() and not item.is_symlink():
                    dst.mkdir(parents=True, exist_ok=True)
                elif not dst.exists() and not dst.is_symlink():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    item.rename(dst)
            shutil.rmtree(top)
        top.symlink_to(f"usr/{d}")
    return True


def kernel_modules_dir(kroot: Path) -> Path:
    """The one modules/<release> dir of an unpacked linux-image package: lib/modules on
    Debian 12, usr/lib/modules on Debian 13 (merged /usr)."""
    for base in (kroot / "lib" / "modules", kroot / "usr" / "lib" / "modules"):
        if base.is_dir() and not base.is_symlink():
            dirs = [d for d in base.iterdir() if d.is_dir()]
            if dirs:
                return dirs[0]
    raise ImageBuildError("the kernel package has no lib/modules/<release> or usr/lib/modules/<release>")


def find_tools(root: Path, names=GUEST_TOOLS) -> dict[str, str]:
    """Absolute guest paths of the real tools (a file, not a busybox link), /usr first."""
    tools = {}
    for tool in names:
        hit = next((f"/{d}/{tool}" for d in ("usr/sbin", "usr/bin", "sbin", "bin")
                    if (root / d / tool).is_file() and not (root / d / tool).is_symlink()), None)
        if hit is None:
            raise ImageBuildError(f"guest userland lacks {tool}")
        tools[tool] = hit
    return tools


def release_of_image(image: str | None) -> str | None:
    """The Debian release a harness-built image runs ("13" for linux-deb-13, the host's for
    linux-deb), None for any other image."""
    from harness.images.aptstate import RELEASES, host_release
    if image == "linux-deb":
        return host_release() or None
    if image and image.startswith("linux-deb-") and image[len("linux-deb-"):] in RELEASES:
        return image[len("linux-deb-"):]
    return None


def image_name(release: str | None) -> str:
    """`linux-deb` for the host's release, `linux-deb-12`/`linux-deb-13` when one is named."""
    return "linux-deb" if release is None else f"linux-deb-{normalize_release(release)}"


def build_linux_deb(kernel: Path | None = None, modules: Path | None = None,
                    force: bool = False, log=print, release: str | None = None) -> GuestImage:
    """Build (or reuse) the Debian-kernel initramfs guest of `release` ("12", "13", a codename;
    None = the host's). Returns the cached image. An unknown release is a ValueError; an
    archive apt cannot reach an ImageBuildError."""
    t0 = time.monotonic()
    if modules is not None and kernel is None:
        raise ImageBuildError("--modules needs --kernel")
    name = image_name(release)
    try:
        apt = apt_state(release, cache_root(), log=log)
    except AptStateError as e:
        raise ImageBuildError(str(e)) from None
    pkgs = resolve_packages(kernel=kernel is None, apt=apt)
    entries = package_uris(pkgs, apt)
    key_src = {"builder": BUILDER_VERSION, "release": apt.release, "packages": sorted(e["sha256"] for e in entries),
               "modules": WANTED_MODULES, "init": INIT_SCRIPT, "applets": BUSYBOX_APPLETS}
    if kernel is not None:
        key_src["user_kernel"] = file_sha256(kernel)
        key_src["user_modules"] = (sorted(f"{p.relative_to(modules)}:{p.stat().st_size}"
                                          for p in modules.rglob("*.ko*")) if modules else None)
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    out_dir = cache_root() / "images" / f"linux-deb-{apt.release}-{key}"
    manifest_path = out_dir / "image.json"
    if manifest_path.exists() and not force:
        m = json.loads(manifest_path.read_text())
        log(f"guest image {name} {key}: cached (Debian {apt.release}, {m['kernel_release']})")
        return GuestImage(name, out_dir / "bzImage", out_dir / "initramfs.cpio.gz",
                          m["kernel_release"], key, m)

    log(f"guest image {name} {key}: building from {len(entries)} Debian {apt.release} packages")
    debs = fetch_packages(entries, cache_root() / "debs", apt)
    t_fetch = time.monotonic() - t0
    with tempfile.TemporaryDirectory(prefix="xb-image-") as tmp:
        stage, root = Path(tmp) / "stage", Path(tmp) / "root"
        stage.mkdir()
        root.mkdir()
        kdebs = [d for d in debs if d.name.startswith("linux-image-")]
        for deb in debs:
            if deb in kdebs:
                _run(["dpkg-deb", "-x", str(deb), str(stage / "kernel")])
            else:
                _run(["dpkg-deb", "-x", str(deb), str(root)])
        if kernel is None:
            kroot = stage / "kernel"
            vmlinuz = next((kroot / "boot").glob("vmlinuz-*"))
            moddir = kernel_modules_dir(kroot)
        else:
            vmlinuz, moddir = kernel, modules
        # a user kernel without a modules dir: everything it needs is built in (init loads nothing)
        release = moddir.name if moddir is not None else bzimage_release(vmlinuz)
        # Keep only what a ramdisk runs; docs and locales are most of the bytes.
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/lintian",
                     "usr/share/bash-completion", "etc/init.d", "usr/lib/systemd", "lib/systemd"):
            shutil.rmtree(root / junk, ignore_errors=True)
        merged = merge_usr(root)
        # busybox applets only where no real tool of that name exists.
        bb = root / "bin" / "busybox"
        if not bb.exists():
            raise ImageBuildError("busybox-static provided neither /bin/busybox nor /usr/bin/busybox")
        existing = {p.name for d in ("bin", "sbin", "usr/bin", "usr/sbin") if (root / d).exists()
                    for p in (root / d).iterdir()}
        for applet in BUSYBOX_APPLETS:
            if applet not in existing and applet not in REAL_TOOLS:
                (root / "bin" / applet).symlink_to("busybox")
        tools = find_tools(root)
        check_libraries(root, [str(p.relative_to(root)) for d in ("bin", "sbin", "usr/bin", "usr/sbin")
                               if (root / d).exists() for p in (root / d).iterdir()
                               if p.is_file() and not p.is_symlink()])
        # Modules, flattened, with their load order (deps first).
        mdst = root / "lib" / "modules" / "xmitbench"
        mdst.mkdir(parents=True)
        order = module_load_order(moddir, WANTED_MODULES) if moddir is not None else []
        for ko in order:
            shutil.copy(_decompressed(ko), mdst / (ko.name.split(".ko")[0] + ".ko"))
        (root / "etc" / "xmitbench").mkdir(parents=True, exist_ok=True)
        (root / "etc" / "xmitbench" / "modules.order").write_text(
            "".join(ko.name.split(".ko")[0] + ".ko\n" for ko in order))
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc" / "group").write_text("root:x:0:\n")
        (root / "etc" / "shells").write_text("/bin/sh\n")
        (root / "etc" / "hostname").write_text("xmitbench-guest\n")
        init = root / "init"
        init.write_text(INIT_SCRIPT.replace("@ip@", tools["ip"]).replace("@dropbear@", tools["dropbear"]))
        init.chmod(0o755)
        for d in ("proc", "sys", "dev", "tmp", "run", "root"):
            (root / d).mkdir(exist_ok=True)
        # ld.so in Debian searches the multiarch dirs only via ld.so.cache.
        _run(["/sbin/ldconfig", "-r", str(root)])
        tmp_out = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp_out, ignore_errors=True)
        tmp_out.mkdir(parents=True)
        shutil.copy(vmlinuz, tmp_out / "bzImage")
        _write_newc(root, tmp_out / "initramfs.cpio.gz")
        manifest = {
            "name": name, "key": key, "kernel_release": release, "debian_release": apt.release,
            "apt_state": apt.describe(), "merged_usr": merged,
            "kernel_source": "user" if kernel else next(e["file"] for e in entries if e["file"].startswith("linux-image-")),
            "packages": [{"file": _unquote(e["file"]), "sha256": e["sha256"]} for e in entries],
            "modules": [ko.name for ko in order],
            "tools": tools,
            "bzImage_sha256": file_sha256(tmp_out / "bzImage"),
            "initramfs_sha256": file_sha256(tmp_out / "initramfs.cpio.gz"),
            "initramfs_bytes": (tmp_out / "initramfs.cpio.gz").stat().st_size,
            "build_s": {"fetch": round(t_fetch, 2), "total": round(time.monotonic() - t0, 2)},
        }
        (tmp_out / "image.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp_out.rename(out_dir)
    log(f"guest image {name} {key}: built in {manifest['build_s']['total']} s "
        f"(Debian {apt.release}, {release}, initramfs {manifest['initramfs_bytes'] // 1024} KiB)")
    return GuestImage(name, out_dir / "bzImage", out_dir / "initramfs.cpio.gz", release, key, manifest)


def build_disk_variant(img: GuestImage, log=print) -> Path:
    """The same guest as a bootable disk (a hybrid ISO: isolinux, kernel, initramfs) that
    takes its SSH key from a NoCloud seed: a local stand-in for a cloud image, so the
    overlay + seed + boot-from-disk path runs here without downloading anything."""
    out = img.dir / "disk-variant.iso"
    if out.exists():
        return out
    lib = Path("/usr/lib/ISOLINUX")
    mods = Path("/usr/lib/syslinux/modules/bios")
    if not (lib / "isolinux.bin").exists() or not shutil.which("xorriso"):
        raise ImageBuildError("building the disk variant needs Debian's isolinux, syslinux-common and xorriso")
    with tempfile.TemporaryDirectory(prefix="xb-disk-") as tmp:
        root = Path(tmp) / "iso"
        (root / "isolinux").mkdir(parents=True)
        shutil.copy(lib / "isolinux.bin", root / "isolinux")
        shutil.copy(mods / "ldlinux.c32", root / "isolinux")
        shutil.copy(img.kernel, root / "bzImage")
        shutil.copy(img.initrd, root / "initrd.gz")
        (root / "isolinux" / "isolinux.cfg").write_text(
            "DEFAULT xb\nPROMPT 0\nTIMEOUT 0\nLABEL xb\n  KERNEL /bzImage\n"
            "  APPEND initrd=/initrd.gz console=ttyS0 panic=-1 quiet loglevel=4\n")
        tmp_out = out.with_name(out.name + ".tmp")
        _run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(tmp_out), "-isohybrid-mbr",
              str(lib / "isohdpfx.bin"), "-c", "isolinux/boot.cat", "-b", "isolinux/isolinux.bin",
              "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", "-V", "XMITBENCH", str(root)])
        tmp_out.rename(out)
    log(f"guest disk variant: {out}")
    return out
