"""A newer QEMU for the host: Debian 13's `qemu-system-x86` assembled into the cache, and the ONE
rule that decides which QEMU a run starts.

Why: QEMU's only ixgbe-class model, igb, arrived in QEMU 8.0; Debian 12 ships 7.2. Debian 13's
QEMU 10 runs unchanged on Debian 12 when it brings its own C library and loader (DESIGN.md):

* the package and its library closure come from `apt-get download` with the private apt state of
  harness/images/aptstate.py (Debian's archive keyring verifies the indices, apt the .debs; the
  host's apt configuration is never touched);
* every .deb is unpacked with `dpkg-deb -x`, including the display-module packages: a module
  missing from QEMU_MODULE_DIR is looked up in the host's 7.2 module dir and QEMU aborts;
* a launcher runs the bundled `ld-linux-x86-64.so.2 --library-path ...` with QEMU_MODULE_DIR and
  `-L` for the firmware, through a symlink named `qemu-system-x86_64` so the process name (and
  the main-loop thread name host-thread attribution looks for) is QEMU's own.

Layout: <cache>/qemu/<version>/{root/, qemu-system-x86_64 (launcher), fetch.json}; the .debs stay in
<cache>/qemu/debs/ so a re-fetch of the same version downloads nothing.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.images.aptstate import (DEPENDS_ARGS, KEYRING, AptState, AptStateError, apt_state,
                                     dependency_closure, file_sha256,
                                     parse_depends, parse_print_uris)
from harness.images.guestimage import cache_root
from harness.vm import qemu as qemu_binary
from harness.vm.qemu import QemuBinary

RELEASE = "13"
# qemu-system-x86 and the module packages whose modules must come from the same build
SEED_PACKAGES = ("qemu-system-x86", "qemu-system-modules-opengl", "qemu-system-gui", "qemu-system-modules-spice")
# What the closure follows: shared libraries (what the loader needs) and QEMU's own data and
# firmware packages. Daemons and tools that packages merely depend on (systemd, adduser, dbus)
# are never run by QEMU.
_FOLLOWED = re.compile(r"^(lib[\w.+-]+|zlib1g|qemu-[\w.+-]+|seabios|ipxe-qemu)$")
_SKIPPED = {"libc-bin", "libcap2-bin", "libpam-runtime", "libpam-modules", "libpam-modules-bin"}
LAUNCHER = "qemu-system-x86_64"
RECORD = "fetch.json"
WANTED_DEVICE = "igb"          # what the result must list in `-device help` to count as fetched


class QemuFetchError(RuntimeError):
    pass


def qemu_dir() -> Path:
    return cache_root() / "qemu"


def describe(version: str) -> str:
    return f"fetched Debian {RELEASE} qemu-system-x86 {version}"


def fetched_qemu() -> QemuBinary | None:
    """The newest complete fetch in the cache (its record written after the check passed)."""
    found = []
    for rec in qemu_dir().glob(f"*/{RECORD}"):
        try:
            info = json.loads(rec.read_text())
        except (OSError, ValueError):
            continue
        launcher = rec.parent / LAUNCHER
        if info.get("verified") and launcher.is_file():
            found.append((info.get("fetched_at", ""), str(launcher), describe(info["version"])))
    return QemuBinary(*max(found)[1:]) if found else None


# -- the rule --------------------------------------------------------------------------------
@dataclass(frozen=True)
class QemuChoice:
    binary: QemuBinary
    # Why devices the workload needs are missing from `binary` (None: nothing missing); the
    # reason every cell that needs one of them is skipped with.
    unavailable: str | None = None
    pending_fetch: bool = False     # plan only: `run` would fetch QEMU first


def choose_qemu(needed: set[str], fetch: bool = True, log=print) -> QemuChoice:
    """Which QEMU a run starts, for a workload whose NICs need the QEMU devices `needed`:
    XMITBENCH_QEMU wins; else the system QEMU when it has every needed device; else the fetched
    QEMU (fetched now unless `fetch` is False, as for `plan`, which downloads nothing). When the
    fetch fails the system QEMU runs what it can and the rest is skipped with the reason."""
    env = qemu_binary.env_qemu()
    if env is not None:
        return QemuChoice(env)
    system = qemu_binary.system_qemu()
    lacking = sorted(needed - system.devices())
    if not lacking:
        return QemuChoice(system)
    have = fetched_qemu()
    if have is not None and not (needed - have.devices()):
        return QemuChoice(have)
    if not fetch:
        return QemuChoice(system, pending_fetch=True)
    log(f"the system QEMU lacks {', '.join(lacking)}: fetching Debian {RELEASE}'s QEMU (xmitbench qemu fetch)")
    try:
        got = fetch_qemu(log=log)
    except (QemuFetchError, AptStateError) as e:
        reason = f"xmitbench qemu fetch failed: {e}"
        log(f"{reason}; the cells that need {', '.join(lacking)} are skipped")
        return QemuChoice(system, unavailable=reason)
    if needed - got.devices():
        return QemuChoice(system, unavailable=f"the fetched QEMU lacks {', '.join(sorted(needed - got.devices()))}")
    return QemuChoice(got)


# -- the fetch -------------------------------------------------------------------------------
def _apt(state: AptState, args: list[str], **kw) -> str:
    proc = state.run(args, **kw)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise QemuFetchError(f"{' '.join(args[:3])} failed ({proc.returncode}): {last[:300]}")
    return proc.stdout


def _depends(state: AptState, pkgs: list[str]) -> dict[str, list[str]]:
    """First alternative of each Depends/Pre-Depends of each package's candidate."""
    return parse_depends(_apt(state, [*DEPENDS_ARGS, *pkgs]))


def resolve(state: AptState) -> list[str]:
    return dependency_closure(SEED_PACKAGES, lambda pkgs: _depends(state, pkgs),
                              lambda d: bool(_FOLLOWED.match(d)) and d not in _SKIPPED)


def package_uris(state: AptState, pkgs: list[str]) -> list[dict]:
    """apt's view of each download: file name, size and the SHA256 of the signed index."""
    entries = parse_print_uris(_apt(state, ["apt-get", "download", "--print-uris", *pkgs]))
    if len(entries) != len(pkgs):
        raise QemuFetchError(f"apt-get --print-uris gave {len(entries)} entries for {len(pkgs)} packages")
    return entries




def download(state: AptState, entries: list[dict], deb_dir: Path) -> None:
    """`apt-get download` what is not cached yet; apt checks each file against the signed index,
    and so does this (a cached file from an earlier fetch is checked the same way)."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    missing = [e for e in entries if not ((deb_dir / e["file"]).exists() and file_sha256(deb_dir / e["file"]) == e["sha256"])]
    if missing:
        _apt(state, ["apt-get", "download", *(f"{e['package']}={e['version']}" for e in missing)], cwd=deb_dir)
    for e in entries:
        p = deb_dir / e["file"]
        if not p.exists() or file_sha256(p) != e["sha256"]:
            raise QemuFetchError(f"{p}: missing or not the archive's SHA256 after apt-get download")


def launcher_text(root: Path, lib_dirs: list[str], version: str) -> str:
    libs = ":".join(str(root / d) for d in lib_dirs)
    return "\n".join([
        "#!/bin/sh",
        f"# {describe(version)} (xmitbench qemu fetch): QEMU with its own loader and libraries;",
        "# the loader is started through a symlink named qemu-system-x86_64 so the process is named",
        "# as QEMU is (host-thread attribution looks for its main-loop thread by that name).",
        f"export QEMU_MODULE_DIR='{root}/usr/lib/x86_64-linux-gnu/qemu'",
        f"exec '{root}/loader/qemu-system-x86_64' --library-path '{libs}' \\",
        f"    --argv0 qemu-system-x86_64 '{root}/usr/bin/qemu-system-x86_64' \\",
        f"    -L '{root}/usr/share/qemu' -L '{root}/usr/share/seabios' \"$@\"",
        ""])


def _library_dirs(root: Path) -> list[str]:
    """The bundled C library's search list (its ld.so.conf.d), inside `root`, then any other
    directory the packages put shared libraries in."""
    dirs = []
    for conf in sorted((root / "etc/ld.so.conf.d").glob("*.conf")):
        for line in conf.read_text().splitlines():
            line = line.strip()
            if line.startswith("/") and (root / line.lstrip("/")).is_dir():
                dirs.append(line.lstrip("/"))
    for d in ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"):
        if (root / d).is_dir():
            dirs.append(d)
    return list(dict.fromkeys(dirs))


def fetch_qemu(log=print, force: bool = False) -> QemuBinary:
    """Assemble Debian 13's QEMU into <cache>/qemu/<version>/ and check it lists igb. Raises
    QemuFetchError / AptStateError with a one-line reason (e.g. the archive is unreachable)."""
    t0 = time.monotonic()
    state = apt_state(RELEASE, cache_root(), log=log)
    entries = package_uris(state, resolve(state))
    version = next(e["version"] for e in entries if e["package"] == "qemu-system-x86")
    final = qemu_dir() / version.split(":")[-1]
    if not force and (final / RECORD).is_file() and (final / LAUNCHER).is_file():
        info = json.loads((final / RECORD).read_text())
        if info.get("verified"):
            log(f"QEMU {version} already fetched: {final}")
            return QemuBinary(str(final / LAUNCHER), describe(version))
    log(f"fetching {len(entries)} Debian {RELEASE} packages ({sum(e['size'] for e in entries) / 1e6:.0f} MB) "
        f"for qemu-system-x86 {version}")
    deb_dir = qemu_dir() / "debs"
    t_dl = time.monotonic()
    download(state, entries, deb_dir)
    t_dl = time.monotonic() - t_dl
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    root = tmp / "root"
    root.mkdir(parents=True)
    for e in entries:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb_dir / e["file"]), str(root)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise QemuFetchError(f"dpkg-deb -x {e['file']} failed: {proc.stderr.strip()[-300:]}")
    loader = root / "usr/lib64/ld-linux-x86-64.so.2"
    if not loader.exists():
        raise QemuFetchError(f"no loader at {loader} after unpacking libc6")
    (root / "loader").mkdir()
    (root / "loader" / "qemu-system-x86_64").symlink_to("../usr/lib64/ld-linux-x86-64.so.2")
    # the launcher names its final place: it is moved there only after the check below
    text = launcher_text(final / "root", _library_dirs(root), version)
    (tmp / LAUNCHER).write_text(text.replace(str(final / "root"), str(root)))
    (tmp / LAUNCHER).chmod(0o755)
    check = _check(tmp / LAUNCHER)
    shutil.rmtree(final, ignore_errors=True)
    (tmp / LAUNCHER).write_text(text)
    tmp.rename(final)
    record = {
        "version": version, "release": RELEASE, "verified": True,
        "obtained": f"apt-get download ({state.describe()}; indices signed by {KEYRING}), "
                    "dpkg-deb -x, launcher through the bundled loader",
        "check": check, "fetch_s": round(time.monotonic() - t0, 2), "download_s": round(t_dl, 2),
        "download_bytes": sum(e["size"] for e in entries),
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": [{k: e[k] for k in ("package", "version", "file", "size", "sha256")} for e in entries],
    }
    (final / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    log(f"QEMU {version}: {final / LAUNCHER} (igb listed; {record['fetch_s']:.0f} s)")
    return QemuBinary(str(final / LAUNCHER), describe(version))


def _check(launcher: Path) -> dict:
    """The fetched QEMU runs and lists igb, with nothing on stderr (a module from another build
    would complain or abort here)."""
    try:
        ver = subprocess.run([str(launcher), "--version"], capture_output=True, text=True, timeout=60)
        dev = subprocess.run([str(launcher), "-device", "help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QemuFetchError(f"the fetched QEMU does not run: {e}")
    if ver.returncode != 0 or dev.returncode != 0:
        raise QemuFetchError(f"the fetched QEMU failed ({ver.returncode}/{dev.returncode}): "
                             + (dev.stderr or ver.stderr).strip()[-300:])
    from harness.vm.nics import qemu_supported_devices
    devices = qemu_supported_devices(dev.stdout)
    if WANTED_DEVICE not in devices:
        raise QemuFetchError(f"the fetched QEMU's -device help does not list {WANTED_DEVICE}")
    return {"version_line": ver.stdout.splitlines()[0] if ver.stdout else "",
            "device_help_lists": WANTED_DEVICE, "devices": len(devices),
            "stderr": (ver.stderr + dev.stderr).strip()[-500:]}
