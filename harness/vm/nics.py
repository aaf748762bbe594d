"""The emulated NIC models a workload can name, and what each guest kernel makes of them.

Facts below were checked in the drivers' own sources (Linux 6.1-era trees, FreeBSD 14/15):

- virtio_net: ``virtnet_set_channels`` (ethtool -L <if> combined N) changes the active queue
  pairs at run time, up to the ``queues=`` the device was created with.
- e1000e: ``e1000_probe`` uses ``alloc_etherdev()`` -> one TX queue; no ``.set_channels``.
- vmxnet3: ``vmxnet3_ethtool_ops`` has ``.get_channels`` only (added 5.x, "Number of
  interrupts cannot be changed on the fly"); no ``.set_channels``. The TX queue count is fixed
  at probe: ``rounddown_pow_of_two(min(VMXNET3_DEVICE_MAX_TX_QUEUES=8, num_online_cpus()))``
  for devices older than v6 (QEMU emulates v1); ``enable_mq`` is a plain static, not a module
  parameter. So a queue count needs a boot (and the guest must bring the probe-time online CPU
  count to that number) and only powers of two exist.
- igb: ``igb_set_channels`` exists; 82576 gets ``IGB_MAX_RX_QUEUES`` (8) RSS queues, capped by
  online CPUs. QEMU's ``igb`` device appeared in QEMU 8.0.
- FreeBSD: queue counts are loader tunables (vtnet ``hw.vtnet.mq_max_pairs``, iflib
  ``override_ntxqs``), so every change needs a reboot. ``em_set_num_queues`` gives 82574 two
  queues, 82576 (igb) eight; ``VMXNET3_MAX_TX_QUEUES`` is 8.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

OSES = ("linux", "freebsd")


@dataclass(frozen=True)
class NicModel:
    name: str                      # the name a workload uses
    qemu_device: str               # -device <this>
    linux_driver: str
    freebsd_driver: str
    max_tx_queues_linux: int       # also bounded by the guest's vCPUs
    max_tx_queues_freebsd: int
    # Linux can change the TX queue count without a reboot (ethtool -L <if> combined N).
    runtime_queue_change_linux: bool
    # Linux driver only ever has a power-of-two TX queue count.
    pow2_queues_linux: bool = False
    # Oldest QEMU that has the device, for the "needs QEMU >= x.y" skip reason.
    min_qemu: tuple[int, int] | None = None

    def driver(self, os: str) -> str:
        return self.linux_driver if os == "linux" else self.freebsd_driver

    def max_tx_queues(self, os: str) -> int:
        return self.max_tx_queues_linux if os == "linux" else self.max_tx_queues_freebsd

    def runtime_queue_change(self, os: str) -> bool:
        # FreeBSD: loader tunables for every driver here, so never at run time.
        return self.runtime_queue_change_linux if os == "linux" else False

    def queue_skip_reason(self, os: str, queues: int, vcpus: int | None = None) -> str | None:
        """Why this model cannot run with ``queues`` TX queues on ``os``; None if it can."""
        most = self.max_tx_queues(os)
        if queues > most:
            plural = "queue" if most == 1 else "queues"
            return f"{self.name} has at most {most} TX {plural} on {os} ({self.driver(os)} driver)"
        if os == "linux" and self.pow2_queues_linux and queues & (queues - 1):
            return f"{self.name} on linux ({self.linux_driver} driver) only has power-of-two TX queue counts"
        if os == "linux" and self.pow2_queues_linux and vcpus:
            # vmxnet3 sizes its queues at probe: rounddown_pow_of_two(min(8, online CPUs))
            fixed = 1 << (min(self.max_tx_queues_linux, vcpus).bit_length() - 1)
            if queues != fixed:
                return (f"{self.name} on linux with {vcpus} vCPUs always has {fixed} TX queues "
                        f"(set at driver probe, no ethtool -L)")
        return None


NICS: dict[str, NicModel] = {
    m.name: m
    for m in (
        NicModel("virtio-net", "virtio-net-pci", "virtio_net", "vtnet", 8, 8,
                 runtime_queue_change_linux=True),
        NicModel("e1000e", "e1000e", "e1000e", "em", 1, 2,
                 runtime_queue_change_linux=False),
        NicModel("vmxnet3", "vmxnet3", "vmxnet3", "vmx", 8, 8,
                 runtime_queue_change_linux=False, pow2_queues_linux=True),
        NicModel("igb", "igb", "igb", "igb", 8, 8,
                 runtime_queue_change_linux=True, min_qemu=(8, 0)),
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


def missing_device_reason(nic: NicModel, supported_devices: set[str] | None) -> str | None:
    """The skip reason when this QEMU lacks the device; None if present or unknown."""
    if supported_devices is None or nic.qemu_device in supported_devices:
        return None
    reason = f"QEMU has no device {nic.qemu_device}"
    if nic.min_qemu:
        reason += f" (needs QEMU >= {nic.min_qemu[0]}.{nic.min_qemu[1]})"
    return reason
