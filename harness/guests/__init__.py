"""Guest drivers: every OS-specific command lives in one of these, behind one contract
(see tests/test_guest_contract.py)."""
from __future__ import annotations


def driver_class(os_name: str):
    if os_name == "linux":
        from .linux import LinuxGuest
        return LinuxGuest
    if os_name == "freebsd":
        from .freebsd import FreeBSDGuest
        return FreeBSDGuest
    raise ValueError(f"no guest driver for {os_name!r}")
