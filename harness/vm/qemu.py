"""Which QEMU binary the machine layer starts: the system's, the one `XMITBENCH_QEMU` names, or
one `xmitbench qemu fetch` assembled (harness/images/hostqemu.py decides; this module only holds
the decision). One binary serves a whole run, so every cell of a comparison runs the same QEMU.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from harness.vm.nics import qemu_supported_devices

SYSTEM_QEMU = "qemu-system-x86_64"
ENV_VAR = "XMITBENCH_QEMU"


@dataclass(frozen=True)
class QemuBinary:
    path: str          # what argv[0] is: a name on PATH or a file (a fetched QEMU's launcher)
    obtained: str      # "system", "env XMITBENCH_QEMU", "fetched Debian 13 qemu-system-x86 <version>"

    @property
    def resolved(self) -> str:
        return shutil.which(self.path) or self.path

    def device_help(self) -> str:
        key = self.resolved
        if key not in _help_cache:
            try:
                _help_cache[key] = subprocess.run([self.path, "-device", "help"], capture_output=True,
                                                  text=True, timeout=60).stdout
            except OSError:
                _help_cache[key] = ""     # no such binary: it has no devices
        return _help_cache[key]

    def devices(self) -> set[str]:
        return qemu_supported_devices(self.device_help())

    def version(self) -> str:
        try:
            out = subprocess.run([self.path, "--version"], capture_output=True, text=True, timeout=60).stdout
        except OSError as e:
            return f"unknown ({e})"
        m = re.search(r"version (\S+)", out)
        return m.group(1) if m else out.strip()

    def manifest(self) -> dict:
        return {"binary": self.resolved, "version": self.version(), "obtained": self.obtained}


_help_cache: dict[str, str] = {}
_current: QemuBinary | None = None


def system_qemu() -> QemuBinary:
    return QemuBinary(SYSTEM_QEMU, "system")


def env_qemu() -> QemuBinary | None:
    path = os.environ.get(ENV_VAR)
    return QemuBinary(path, f"env {ENV_VAR}") if path else None


def current() -> QemuBinary:
    """The binary machines start: set by `use` (the run's choice); before that XMITBENCH_QEMU or
    the system QEMU."""
    return _current or env_qemu() or system_qemu()


def use(binary: QemuBinary) -> None:
    global _current
    _current = binary
