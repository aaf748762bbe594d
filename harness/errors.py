"""Errors the user can fix by editing an input (workload file, command-line option).

The CLI prints ``str(err)`` to stderr and exits 2, so the text must stand alone on one
line and say what was wrong, where, and what would have been accepted.
"""
from __future__ import annotations

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
