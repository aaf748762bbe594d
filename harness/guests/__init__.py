"""Guest drivers: every OS-specific command lives in one of these, behind one contract
(harness/guests/contract.py). A driver is registered here, and checked when it is."""
from __future__ import annotations

from harness.oses import BUILTIN_OSES, add_os_name
from .contract import BootState, GuestDriver, check_driver  # noqa: F401

_DRIVERS: dict[str, type] = {}


def register(cls):
    """Add a driver class (usable as a decorator); a contract gap is a TypeError now."""
    check_driver(cls)
    _DRIVERS[cls.os_name] = cls
    add_os_name(cls.os_name)     # catalogs and workloads may now name it
    return cls


def _builtin() -> None:
    """The built-in drivers, registered on first use (importing them at module load would
    make a cycle: they import the contract from this package)."""
    if "linux" not in _DRIVERS:
        from .freebsd import FreeBSDGuest
        from .linux import LinuxGuest
        register(LinuxGuest)
        register(FreeBSDGuest)
        unbacked = [n for n in BUILTIN_OSES if n not in _DRIVERS]
        if unbacked:
            raise TypeError(f"harness.oses.BUILTIN_OSES names {', '.join(unbacked)} with no guest driver")


def driver_class(os_name: str):
    _builtin()
    try:
        return _DRIVERS[os_name]
    except KeyError:
        raise ValueError(f"no guest driver for {os_name!r}; registered: {', '.join(sorted(_DRIVERS))}") from None


def os_names() -> tuple[str, ...]:
    _builtin()
    return tuple(_DRIVERS)
