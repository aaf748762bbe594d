"""Debian packages of any release, on any Debian host, without touching the host's apt setup.

A release other than the host's gets a private apt state under the cache: its own sources
file, lists, package cache and an empty dpkg status, all named by an `APT_CONFIG` file that
every apt call for that release runs with. The sources are signed by Debian's archive keyring
(`signed-by=`), so apt verifies every index against it exactly as it does for the host's own
sources; nothing is ever fetched unauthenticated. The host's release uses the host's apt
state as before (the packages the host itself resolves).

Used by the guest build (`images build linux-deb --release 13`) and the QEMU fetch.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Debian major version -> codename. The names users type are the numbers; codenames work too.
RELEASES: dict[str, str] = {"12": "bookworm", "13": "trixie"}
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
LISTS_MAX_AGE_S = 24 * 3600     # older lists are refreshed before resolving


class AptStateError(RuntimeError):
    pass


def host_release() -> str:
    """The host's Debian major version ("12", "13"), or "" when it is not Debian."""
    try:
        text = Path(os.environ.get("XMITBENCH_OS_RELEASE", "/etc/os-release")).read_text()
    except OSError:
        return ""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if fields.get("ID", "").strip('"') != "debian":
        return ""
    version = fields.get("VERSION_ID", "").strip('"')
    if version in RELEASES:
        return version
    codename = fields.get("VERSION_CODENAME", "").strip('"')
    return next((v for v, c in RELEASES.items() if c == codename), "")


def normalize_release(name: str) -> str:
    """'13', 'trixie' -> '13'; anything else is a ValueError naming the allowed values."""
    name = str(name).strip().lower()
    if name in RELEASES:
        return name
    for version, codename in RELEASES.items():
        if name == codename:
            return version
    allowed = ", ".join(f"{v} ({c})" for v, c in RELEASES.items())
    raise ValueError(f"unknown Debian release {name!r}; allowed: {allowed}")


@dataclass(frozen=True)
class AptState:
    """apt for one Debian release. `env()` is what every apt call for it runs with."""
    release: str                 # "12", "13"
    root: Path | None = None     # None: the host's own apt state (the host's release)

    @property
    def codename(self) -> str:
        return RELEASES[self.release]

    @property
    def private(self) -> bool:
        return self.root is not None

    def env(self) -> dict[str, str]:
        e = dict(os.environ)
        if self.root is not None:
            e["APT_CONFIG"] = str(self.root / "apt.conf")
        return e

    def run(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, env=self.env(), **kw)

    def inputs(self) -> list[Path]:
        """The files apt's answers about candidates and their dependencies come from: the
        configuration, sources and preferences, the package lists and the dpkg status."""
        if self.root is not None:
            return [self.root / "apt.conf", self.root / "sources.list", self.root / "sources.list.d",
                    self.root / "preferences", self.root / "preferences.d", self.root / "state" / "lists",
                    self.root / "state" / "status"]
        return [Path("/etc/apt"), Path("/var/lib/apt/lists"), Path("/var/lib/dpkg/status")]

    def fingerprint(self) -> str:
        """Path, size and mtime of every input file (what apt itself checks before it reuses
        its pkgcache.bin); APT_CONFIG from the environment is part of it too."""
        h = hashlib.sha256(f"{self.release}\0{self.env().get('APT_CONFIG', '')}".encode())
        for top in self.inputs():
            files = sorted(top.rglob("*")) if top.is_dir() else [top]
            for f in files:
                if "partial" in f.parts or f.name == "lock":
                    continue
                try:
                    st = f.stat()
                except OSError:
                    continue
                if f.is_file():
                    h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def query(self, args: list[str], memo_dir: Path | None) -> str:
        """stdout of a read-only apt query (apt-cache depends, apt-get --print-uris), kept in
        `memo_dir` under the query and the apt state's fingerprint. Each such call costs
        seconds where apt keeps no pkgcache.bin (Debian's container images turn it off), and
        every run asks the same ones to find its cached guest; a changed list, status or
        source changes the fingerprint, so a stale answer is never reused. A failed query
        raises AptStateError and is not kept."""
        memo = None
        if memo_dir is not None:
            key = hashlib.sha256(json.dumps([self.fingerprint(), args]).encode()).hexdigest()[:32]
            memo = memo_dir / f"{key}.out"
            if memo.is_file():
                return memo.read_text()
        proc = self.run(args)
        if proc.returncode != 0:
            raise AptStateError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        if memo is not None:
            memo_dir.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(proc.stdout)
            tmp.replace(memo)
        return proc.stdout

    def describe(self) -> str:
        return (f"Debian {self.release} ({self.codename}), private apt state {self.root}" if self.private
                else f"Debian {self.release} ({self.codename}), the host's apt state")


def sources_text(codename: str, mirror: str = MIRROR, security: str = SECURITY_MIRROR) -> str:
    opts = f"[arch=amd64 signed-by={KEYRING}]"
    return (f"deb {opts} {mirror} {codename} main\n"
            f"deb {opts} {mirror} {codename}-updates main\n"
            f"deb {opts} {security} {codename}-security main\n")


def apt_conf_text(root: Path) -> str:
    return "\n".join([
        f'Dir::State "{root}/state";',
        f'Dir::State::status "{root}/state/status";',
        f'Dir::Cache "{root}/cache";',
        f'Dir::Etc::SourceList "{root}/sources.list";',
        f'Dir::Etc::SourceParts "{root}/sources.list.d";',
        f'Dir::Etc::Preferences "{root}/preferences";',
        f'Dir::Etc::PreferencesParts "{root}/preferences.d";',
        'APT::Architecture "amd64";',
        'APT::Architectures { "amd64"; };',
        'Acquire::Languages "none";',
        'Acquire::AllowInsecureRepositories "false";',
        'Acquire::AllowDowngradeToInsecureRepositories "false";',
        # An unprivileged user can still build: apt drops to _apt only when root.
        'APT::Sandbox::User "root";' if os.geteuid() == 0 else "",
        "",
    ])


def apt_state(release: str | None, cache: Path, update: bool = True, log=print) -> AptState:
    """apt for `release` ("12"/"13"/codename; None = the host's). A release other than the
    host's gets its private state under `cache/apt/<codename>`, refreshed when older than a day.
    Raises ValueError for an unknown release, AptStateError when the archive is unreachable."""
    host = host_release()
    release = normalize_release(release) if release else host
    if not release:
        raise AptStateError("this host is not Debian 12 or 13; name a release (12 or 13)")
    if release == host and not os.environ.get("XMITBENCH_PRIVATE_APT"):
        return AptState(release)
    if not KEYRING.is_file():
        raise AptStateError(f"{KEYRING} is missing (install debian-archive-keyring)")
    root = cache / "apt" / RELEASES[release]
    for d in ("state/lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "state" / "status").touch()
    mirror = os.environ.get("XMITBENCH_DEBIAN_MIRROR", MIRROR)
    security = os.environ.get("XMITBENCH_DEBIAN_SECURITY_MIRROR", SECURITY_MIRROR)
    _write_if_changed(root / "sources.list", sources_text(RELEASES[release], mirror, security))
    _write_if_changed(root / "apt.conf", apt_conf_text(root))
    state = AptState(release, root)
    stamp = root / "state" / "updated"
    if update and (not stamp.exists() or time.time() - stamp.stat().st_mtime > LISTS_MAX_AGE_S):
        log(f"apt: refreshing package lists for {state.describe()}")
        # --error-on=any: an unreachable mirror is an error, not a warning with exit status 0
        # (which would leave no lists and a fresh stamp)
        proc = state.run(["apt-get", "update", "-q", "--error-on=any"])
        if proc.returncode != 0 or "W: " in proc.stderr and "not signed" in proc.stderr:
            lines = proc.stderr.strip().splitlines() or ["no output"]
            why = next((ln for ln in lines if "Failed to fetch" in ln), lines[-1])[:300]
            if not any((root / "state" / "lists").glob("*_Packages*")):
                raise AptStateError(f"apt-get update for Debian {release} ({RELEASES[release]}) failed: {why}")
            log(f"apt: could not refresh Debian {release} lists ({why}); using the lists fetched before")
        else:
            stamp.touch()
    return state


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)


# --- what apt prints, parsed (pure; the guest build and the QEMU fetch both read these) -------

def parse_depends(out: str) -> dict[str, list[str]]:
    """`apt-cache depends --no-recommends ...` output -> each package's first alternative of
    each Depends/PreDepends (virtual packages, shown as <name>, are left out)."""
    deps: dict[str, list[str]] = {}
    current, in_alternative = None, False
    for line in out.splitlines():
        if line and not line[0].isspace():
            current, in_alternative = line.strip().split(":")[0], False
            deps.setdefault(current, [])
            continue
        m = re.match(r"\s*(\|?)(Pre)?Depends: (\S+)", line)
        if not m or current is None:
            continue
        if not in_alternative and not m.group(3).startswith("<"):
            deps[current].append(m.group(3).split(":")[0])
        in_alternative = bool(m.group(1))
    return deps


DEPENDS_ARGS = ["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
                "--no-breaks", "--no-replaces", "--no-enhances"]


def dependency_closure(seed: list[str], depends: Callable[[list[str]], dict[str, list[str]]],
                       follow: Callable[[str], bool]) -> list[str]:
    """``seed`` and, level by level, each dependency (``depends``: first alternatives per package,
    one apt call per level) that ``follow`` accepts; each package once, in the order found."""
    seen: list[str] = []
    level = list(seed)
    while level:
        level = [p for p in dict.fromkeys(level) if p not in seen]
        if not level:
            break
        seen += level
        found = depends(level)
        level = [d for p in level for d in found.get(p, []) if follow(d) and d not in seen]
    return seen


def parse_print_uris(out: str) -> list[dict]:
    """`apt-get download --print-uris` output -> uri, file, package, version, size and the
    SHA256 of the signed index, per package."""
    entries = []
    for line in out.splitlines():
        m = re.match(r"'(\S+)' (\S+) (\d+) SHA256:([0-9a-f]{64})", line)
        if m:
            name, version = m.group(2).split("_")[:2]
            entries.append({"uri": m.group(1), "file": m.group(2), "package": name,
                            "version": version.replace("%3a", ":"), "size": int(m.group(3)),
                            "sha256": m.group(4)})
    return entries


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
