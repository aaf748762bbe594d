"""What the real-QEMU tests share: a short TCG workload and the CLI run as a user runs it.

Each test states only what it is about (its NIC, queues, senders, the keys it tests); the rest
is the short-TCG default below, so a change to the defaults is made once."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Short cells on a 2-vCPU TCG guest: the defaults of every real-QEMU test's workload.
SHORT_WORKLOAD = {"repetitions": 1, "duration_s": 2, "warmup_s": 0}
TCG_MACHINE = {"vcpus": 2, "memory_mib": 512, "accel": "tcg"}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def workload_toml(name: str, matrix: dict, workload: dict | None = None, machine: dict | None = None,
                  **sections: dict) -> str:
    """A workload file's text: [workload] name + SHORT_WORKLOAD + `workload`, [machine]
    TCG_MACHINE + `machine`, [matrix] `matrix`, then any other section (e.g. setup={...}).
    A None value leaves that key out."""
    sections = {"workload": {"name": name, **SHORT_WORKLOAD, **(workload or {})},
                "machine": {**TCG_MACHINE, **(machine or {})},
                "matrix": matrix, **sections}
    out = []
    for title, keys in sections.items():
        out.append(f"[{title}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in keys.items() if v is not None]
    return "\n".join(out) + "\n"


def xmitbench(*args, timeout: float = 900, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`xmitbench ARGS` from the repo, as a user runs it; `check`: a non-zero exit fails the test
    with the tail of its output."""
    p = subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=REPO, timeout=timeout, env=env)
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p
