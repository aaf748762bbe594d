"""The emulated NIC models a workload can name: QEMU's side of each. What a guest kernel makes of
a model (its driver, TX queue limits, run-time vs boot-time queue changes) is a fact of that
OS's driver, so it lives in the guest driver (``NIC_SUPPORT`` in harness/guests/*.py).

No QEMU emulates an 82599/ixgbe: igb (82576, QEMU >= 8.0) is the ixgbe-class stand-in,
vmxnet3 the multi-queue one on QEMU 7.2.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class NicModel:
    name: str                      # the name a workload uses
    qemu_device: str               # -device <this>
    # Oldest QEMU that has the device, for the "needs QEMU >= x.y" skip reason.
    min_qemu: tuple[int, int] | None = None


NICS: dict[str, NicModel] = {
    m.name: m
    for m in (
        NicModel("virtio-net", "virtio-net-pci"),
        NicModel("e1000e", "e1000e"),
        NicModel("vmxnet3", "vmxnet3"),
        NicModel("igb", "igb", min_qemu=(8, 0)),
    )
}

_DEVICE_LINE = re.compile(r'^name "([^"]+)"(?:.*?, alias "([^"]+)")?')


def qemu_supported_devices(help_text: str) -> set[str]:
    """Device names (and their aliases) listed by ``qemu-system-x86_64 -device help``."""
    names: set[str] = set()
    for line in help_text.splitlines():
        m = _DEVICE_LINE.match(line.strip())
        if m:
            names.update(n for n in m.groups() if n)
    return names


def missing_device_reason(nic: NicModel, supported_devices: set[str] | None,
                          why_no_other: str | None = None) -> str | None:
    """The skip reason when this QEMU lacks the device; None if present or unknown.
    ``why_no_other``: why no QEMU that has it is used (e.g. the fetch of a newer QEMU failed)."""
    if supported_devices is None or nic.qemu_device in supported_devices:
        return None
    reason = f"QEMU has no device {nic.qemu_device}"
    if nic.min_qemu:
        reason += f" (needs QEMU >= {nic.min_qemu[0]}.{nic.min_qemu[1]})"
    return reason + (f"; {why_no_other}" if why_no_other else "")
