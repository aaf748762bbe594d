"""Errors the user can fix by editing an input (workload file, command-line option), and the
results disk running full.

The CLI prints ``str(err)`` to stderr and exits 2 for an InputError (1 for ResultsDiskFull),
so the text must stand alone on one line and say what was wrong, where, and what would have
been accepted.
"""
from __future__ import annotations

import errno
import os


class InputError(Exception):
    """A bad input: ``<source>: <key>: <message>`` on one line.

    ``source`` is a file path (as the user gave it) or an option name such as ``--shard``.
    ``key`` is a dotted TOML key (``matrix.queues[2]``), ``line N`` for syntax errors, or
    ``""`` when the whole source is at fault (missing file); then it is left out.
    ``message`` names the allowed values or range.
    """

    def __init__(self, path: str | os.PathLike[str], key: str, message: str):
        self.path = os.fspath(path)
        self.key = key
        # One line, whatever the caller passed in (tomllib messages, OS errors ...).
        self.message = " ".join(str(message).split())
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [self.path, self.key, self.message] if self.key else [self.path, self.message]
        return ": ".join(parts)


# errno values that mean "the filesystem has no room": out of blocks/inodes, or over quota.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and (e.errno in DISK_FULL_ERRNOS or "No space left on device" in str(e))


class ResultsDiskFull(BaseException):
    """The results filesystem is full: the run must stop (it cannot record what it measures).

    A BaseException, like KeyboardInterrupt, on purpose: the runner turns every ``Exception``
    during a cell into a failed row and goes on, and a failed row could not be written either.
    It unwinds through the runner's ``finally`` blocks (QEMU, iperf3, namespace, tap stopped);
    the CLI prints ``str(err)`` (one line) and exits 1 (2 is for bad input).
    """

    def __init__(self, path: str | os.PathLike[str], free_bytes: int | None):
        self.path = os.fspath(path)
        self.free_bytes = free_bytes
        super().__init__(self.path, free_bytes)

    @property
    def free_text(self) -> str:
        return "free space unknown" if self.free_bytes is None else f"{self.free_bytes // 1024} KiB free"

    def __str__(self) -> str:
        return f"results disk full: {self.path} ({self.free_text})"


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path`` (or the
    nearest existing parent of it)."""
    p = os.path.abspath(os.fspath(path))
    while True:
        try:
            st = os.statvfs(p)
            return st.f_bavail * st.f_frsize
        except OSError:
            parent = os.path.dirname(p)
            if parent == p:
                return None
            p = parent
