"""The guest OS names every layer may validate against (catalog entries, workloads): the
built-in ones, plus any a guest driver registers at run time (harness.guests.register).
A built-in name without a registered driver is an error at the driver registry's first use."""
from __future__ import annotations

BUILTIN_OSES = ("linux", "freebsd")
_registered: list[str] = []


def add_os_name(name: str) -> None:
    if name not in BUILTIN_OSES and name not in _registered:
        _registered.append(name)


def os_names() -> tuple[str, ...]:
    return BUILTIN_OSES + tuple(_registered)
