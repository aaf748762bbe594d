"""The guest-driver contract: every member a caller (procedure, runner, plan, analysis) uses,
declared once. A driver that misses one is refused when it is registered
(``harness.guests.register``), not discovered later as a NaN column.

Per-boot state (is lock tracing installed on this VM, which stacked device exists) is a
``BootState`` the caller creates per boot and hands to the driver; nobody outside a driver
touches the driver's private attributes.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

from harness.counters.counting import CPU_SOURCES, DRIVER_TX_SOURCES, INTERFACE_TX_SOURCES


@dataclass
class BootState:
    """What one boot of one guest has set up so far."""
    lock_tracing: bool = False       # lock statistics installed (once per boot, by the first traced cell)
    lock_paused: bool = False        # installed but paused (an untraced cell runs between traced ones)
    lock_stat: bool = False          # the kernel has /proc/lock_stat (CONFIG_LOCK_STAT; found at boot)

    @property
    def measuring_locks(self) -> bool:
        return self.lock_tracing and not self.lock_paused
    stack_dev: str | None = None     # the stacked device (vlan/vxlan/gre) this boot has


@dataclass(frozen=True)
class NicSupport:
    """What one guest OS's driver makes of an emulated NIC model (harness.vm.nics)."""
    driver: str                     # the guest driver's name (virtio_net, vtnet, em, ...)
    max_tx_queues: int              # also bounded by the guest's vCPUs
    runtime_queue_change: bool      # True: set_queues at run time; False: boot setting + reboot
    pow2_fixed_at_probe: bool = False   # the count is fixed at driver probe to a power of two


# Class attributes every driver must set, with the type each must have.
REQUIRED_ATTRIBUTES = {
    "os_name": str,                  # the name workloads and catalog use ("linux", "freebsd")
    "SERIAL_FAULTS": list,           # [(kind, compiled regex)]: kernel fault lines on the console
    "STACK_DEVS": dict,              # stacked-device kind -> guest device name (supported stacks)
    "LOCK_TOTALS": tuple,            # (source, native name of wait total, of contention count)
    "COUNTER_SOURCES": dict,         # {"tx_queue", "interface", "cpu"} -> Sample.source its parsers emit
    "BOOT_ID_COMMAND": str,          # prints an id that changes on every boot
    "REBOOT_COMMAND": str,           # takes the guest down for a reboot
    "ABSENT_METRICS": dict,          # analysis metric -> why this OS has no such counter (rendered
                                     # beside kernel-vs-kernel tables; a metric another OS carries
                                     # and this one lacks needs an entry, tests/test_replay_freebsd.py)
    "NIC_SUPPORT": dict,             # NIC model name -> NicSupport (the NICs this OS can run)
}
# Where each COUNTER_SOURCES entry must point: the sources harness.counters.counting knows.
COUNTING_SOURCES = {"tx_queue": DRIVER_TX_SOURCES, "interface": INTERFACE_TX_SOURCES, "cpu": CPU_SOURCES}


class GuestDriver(ABC):
    """One guest OS: command builders (pure, so `plan` prints what a cell runs), actions over
    the management shell, and parsers of the captured text."""
    os_name: str
    SERIAL_FAULTS: list[tuple[str, re.Pattern]]
    STACK_DEVS: dict[str, str]
    LOCK_TOTALS: tuple[str, str, str]
    COUNTER_SOURCES: dict[str, str]
    BOOT_ID_COMMAND: str
    REBOOT_COMMAND: str
    ABSENT_METRICS: dict[str, str]
    NIC_SUPPORT: dict[str, NicSupport]
    state: BootState

    # -- construction ------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def for_plan(cls, nic: str, state: BootState, image: str | None = None) -> "GuestDriver":
        """A driver without a shell, named as the guest will name the data NIC (and with the
        tool paths of `image` where they are known): for `plan`."""

    # -- capabilities (from the class attributes: workload and plan ask these) -----------
    @classmethod
    def queues_at_runtime(cls, nic: str) -> bool:
        """True: the TX queue count changes at run time (set_queues); False: at boot
        (boot_config_script + reboot) only."""
        return cls.NIC_SUPPORT[nic].runtime_queue_change

    @classmethod
    def supported_stacks(cls) -> set[str]:
        return {"direct", *cls.STACK_DEVS}

    @classmethod
    def queue_skip_reason(cls, nic: str, queues: int, vcpus: int | None = None) -> str | None:
        """Why `nic` cannot run with `queues` TX queues on this OS; None if it can."""
        sup = cls.NIC_SUPPORT.get(nic)
        if sup is None:
            return f"{nic} has no {cls.os_name} driver here"
        if queues > sup.max_tx_queues:
            plural = "queue" if sup.max_tx_queues == 1 else "queues"
            return f"{nic} has at most {sup.max_tx_queues} TX {plural} on {cls.os_name} ({sup.driver} driver)"
        if sup.pow2_fixed_at_probe and queues & (queues - 1):
            return f"{nic} on {cls.os_name} ({sup.driver} driver) only has power-of-two TX queue counts"
        if sup.pow2_fixed_at_probe and vcpus:
            fixed = 1 << (min(sup.max_tx_queues, vcpus).bit_length() - 1)
            if queues != fixed:
                return (f"{nic} on {cls.os_name} with {vcpus} vCPUs always has {fixed} TX queues "
                        f"(set at driver probe, no ethtool -L)")
        return None

    @classmethod
    def stack_skip_reason(cls, stack: str) -> str | None:
        if stack in cls.supported_stacks():
            return None
        return f"{stack} stacking is not measured on {cls.os_name} (supported: {', '.join(sorted(cls.supported_stacks()))})"

    @staticmethod
    @abstractmethod
    def lock_method(accel: str) -> str:
        """How lock waits become visible on this OS under `accel` (recorded beside every number)."""

    # -- the kernel's own lock statistics (Linux /proc/lock_stat on a LOCK_STAT kernel) ---
    # A second lock method beside the tracing one, only where the kernel has it: cleared
    # before a traced cell, read after. Default: the OS has none (FreeBSD's lockstat is its
    # tracing method).
    LOCK_STAT_METHOD: str | None = None

    def lock_stat_probe(self) -> bool:
        """True if the booted kernel keeps lock_stat-style statistics (asked once per boot)."""
        return False

    def lock_stat_clear_command(self) -> str | None:
        return None

    def lock_stat_read_command(self) -> str | None:
        return None

    def tx_lock_counts(self, lock_rows: list[dict]) -> dict | None:
        """The TX queue lock's numbers from both lock methods of one cell run, for the
        cross-check (harness.run.validity.lock_crosscheck); None unless both methods ran."""
        return None

    # -- pure command builders ---------------------------------------------------------
    @abstractmethod
    def boot_config_script(self, nic: str, queues: int) -> str | None: ...
    @abstractmethod
    def set_queues_command(self, queues: int) -> str: ...
    @abstractmethod
    def tx_queue_count_command(self) -> str:
        """Prints what tx_queue_count() counts (one entry per TX queue)."""
    @abstractmethod
    def stack_command(self, stack: str, vlan_id: int = ...) -> str | None: ...
    @abstractmethod
    def churn_command(self, churn: str, interval_s: int, count: int, queues: int) -> str | None: ...
    @abstractmethod
    def snapshot_command(self) -> str: ...
    @abstractmethod
    def lock_start_script(self) -> str: ...
    @abstractmethod
    def lock_pause_script(self) -> str | None:
        """Stops lock statistics from counting without removing them (None: nothing runs
        between cells on this OS, so there is nothing to pause)."""
    @abstractmethod
    def lock_continue_script(self) -> str | None: ...
    @abstractmethod
    def senders_script(self, ports: list[int], vcpus: int, peer_ip: str, duration_s: int, warmup_s: int,
                       streams: int, proto: str, msg_size: int, udp_bitrate: str = "0",
                       churn: str | None = None) -> str: ...

    # -- actions -----------------------------------------------------------------------
    @abstractmethod
    def run(self, cmd: str, timeout: float = 30.0, check: bool = True) -> str: ...
    @abstractmethod
    def setup_data_interface(self, mac: str, address: str) -> None: ...
    @abstractmethod
    def reboot(self, timeout: float) -> float: ...
    @abstractmethod
    def kernel_release(self) -> str: ...
    @abstractmethod
    def nic_driver(self) -> str: ...
    @abstractmethod
    def tx_queue_count(self) -> int: ...
    @abstractmethod
    def set_queues(self, queues: int) -> None: ...
    @abstractmethod
    def setup_stack(self, stack: str, vlan_id: int) -> str | None: ...
    @abstractmethod
    def lock_stats_enable(self) -> None: ...
    @abstractmethod
    def lock_pause(self) -> None: ...
    @abstractmethod
    def lock_continue(self) -> None: ...
    @abstractmethod
    def snapshot(self) -> dict[str, str]: ...
    @abstractmethod
    def run_senders(self, script: str, timeout: float) -> dict[str, str]: ...

    # -- first contact (`images inspect`) ------------------------------------------------
    @abstractmethod
    def inspect_commands(self) -> dict[str, str]:
        """File name -> command for a first-contact bundle: OS and kernel versions, the data
        NIC's driver and full native counter list, lock tools/probes, boot tunables. Each runs
        on its own; its output (stderr too) is saved as is, a failure is recorded, not raised."""
    @abstractmethod
    def inspect_counters(self, raw: dict[str, str], driver: str) -> tuple[list, dict[str, str]]:
        """(samples parsed from the bundle's native NIC counter outputs, the counters this
        harness expects of `driver`: native name pattern ("<N>" = queue index) -> metric)."""

    # -- pure parsers ------------------------------------------------------------------
    @abstractmethod
    def parse_snapshot(self, raw: dict[str, str], driver: str | None = None) -> list: ...
    @abstractmethod
    def parse_senders(self, raw: dict[str, str]) -> list: ...
    @abstractmethod
    def parse_locks(self, before: dict[str, str], after: dict[str, str], method: str, senders=None) -> list: ...
    @abstractmethod
    def interval_samples(self, senders: dict[str, str]) -> tuple[list, str | None]: ...

    def lock_problems(self, before: dict[str, str], after: dict[str, str], senders=None) -> list[str]:
        """Why this cell's lock numbers are incomplete, one named reason each (empty: they are
        complete). The runner puts them on every locks row (``incomplete``) and in
        cells.validity["lock_stats"]; a driver whose lock tool can lose data says so here."""
        return []


def check_driver(cls) -> None:
    """Refuse a driver class that does not fulfil the contract (TypeError naming what is missing)."""
    if not (isinstance(cls, type) and issubclass(cls, GuestDriver)):
        raise TypeError(f"{cls!r} is not a GuestDriver")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    wrong = [f"{a} ({t.__name__})" for a, t in REQUIRED_ATTRIBUTES.items()
             if not isinstance(getattr(cls, a, None), t) or (t is str and not getattr(cls, a))]
    sources = getattr(cls, "COUNTER_SOURCES", None) or {}
    bad = [f"COUNTER_SOURCES[{k!r}]={sources.get(k)!r} (allowed: {', '.join(v)})"
           for k, v in COUNTING_SOURCES.items() if sources.get(k) not in v]
    if missing or wrong or bad:
        raise TypeError(f"guest driver {cls.__name__} does not fulfil the contract: "
                        + "; ".join(filter(None, [("missing " + ", ".join(missing)) if missing else "",
                                                  ("attributes " + ", ".join(wrong)) if wrong else "",
                                                  ", ".join(bad)])))
