"""Fault detection (pure: serial console text in, findings out) and fault injection for tests.

Injection is driven only by the XMITBENCH_INJECT environment variable, which the
fault-injection tests set; a normal run never has it. Format: one or more comma-separated
entries `<fault>@<cell-run-id>` with an optional `@<seconds>` after the measurement starts
(default 1.0). `<cell-run-id>` matches the CellRun id (e.g. `virtio-net.q1.p2.s1.tcp.m0.r0`);
a trailing `!1` limits it to attempt 1, so that a retry can succeed. Several entries let one
run (one harness start) hit several cells, each with its own fault.
"""
from __future__ import annotations

import os
import re
import signal
import threading
from dataclasses import dataclass

from harness.errors import InputError

# Kernel messages that make a cell untrustworthy. Order matters: the first match per line wins.
SERIAL_FAULTS = {
    "linux": [
        ("panic", re.compile(r"Kernel panic - not syncing.*")),
        ("oops", re.compile(r"(?:BUG: .*|Oops: .*|general protection fault.*)")),
        ("watchdog", re.compile(r"NETDEV WATCHDOG: .*")),
        ("warning", re.compile(r"WARNING: CPU: \d+ PID: \d+ at .*")),
        ("hung_task", re.compile(r"INFO: task .* blocked for more than .*")),
        ("soft_lockup", re.compile(r"watchdog: BUG: soft lockup.*|rcu: INFO: rcu_.* stall.*")),
    ],
    "freebsd": [
        ("panic", re.compile(r"panic: .*")),
        ("fatal_trap", re.compile(r"Fatal trap \d+: .*")),
        ("watchdog", re.compile(r"\S+: Watchdog timeout.*|.*device timeout.*")),
        ("lor", re.compile(r"lock order reversal:.*")),
    ],
}


@dataclass(frozen=True)
class SerialFault:
    kind: str
    line: str


def scan_serial(text: str, patterns) -> list[SerialFault]:
    """Kernel fault lines in a piece of serial console output. ``patterns``: the guest
    driver's SERIAL_FAULTS (or an OS name of SERIAL_FAULTS); required, so no caller can
    silently scan a FreeBSD console with Linux's patterns."""
    if isinstance(patterns, str):
        patterns = SERIAL_FAULTS[patterns]
    out = []
    for raw in text.splitlines():
        line = re.sub(r"^\[\s*\d+\.\d+\]\s*", "", raw.strip())
        for kind, rx in patterns:
            m = rx.search(line)
            if m:
                out.append(SerialFault(kind, m.group(0)[:200]))
                break
    return out


@dataclass(frozen=True)
class Injection:
    fault: str
    cell_run: str
    after_s: float
    attempt: int | None


FAULTS = ("kill-qemu", "panic", "kill-iperf3", "drop-ssh", "sigint", "sigkill-harness", "no-ssh", "hang",
          "peer-throttle")
# peer-throttle: the peer iperf3 servers get PEER_RUN_S of every PEER_PERIOD_S (SIGSTOP/SIGCONT, what a
# cgroup cpu.max of 10 % does to them), so the receiver, not the guest, limits the cell.
PEER_PERIOD_S, PEER_RUN_S = 0.1, 0.01


INJECT_FORMAT = "<fault>@<cell-run>[!attempt][@seconds], comma-separated"


def parse_injection(entry: str | None, where: str = "entry 1") -> Injection | None:
    """One entry of XMITBENCH_INJECT; a bad one is a one-line InputError naming it."""
    if not entry:
        return None

    def bad(why: str) -> InputError:
        return InputError("XMITBENCH_INJECT", where, f"{entry!r}: {why}; expected {INJECT_FORMAT}, "
                                                      f"fault one of {', '.join(FAULTS)}")
    parts = entry.strip().split("@")
    if len(parts) not in (2, 3):
        raise bad("wrong number of '@' fields")
    if parts[0] not in FAULTS:
        raise bad(f"unknown fault {parts[0]!r}")
    cell, bang, attempt = parts[1].partition("!")
    if not cell or (bang and not (attempt.isdigit() and int(attempt) >= 1)):
        raise bad("cell run id missing or attempt not a whole number >= 1")
    try:
        after_s = float(parts[2]) if len(parts) == 3 else 1.0
    except ValueError:
        raise bad(f"seconds {parts[2]!r} not a number") from None
    if not after_s >= 0:
        raise bad(f"seconds {parts[2]!r} negative")
    return Injection(parts[0], cell, after_s, int(attempt) if attempt else None)


def parse_injections(spec: str | None) -> tuple[Injection, ...]:
    """Every entry of XMITBENCH_INJECT (comma-separated), in order; empty when unset."""
    if not spec or not spec.strip():
        return ()
    entries = spec.split(",")
    out = []
    for n, entry in enumerate(entries, 1):
        where = f"entry {n} of {len(entries)}"
        if not entry.strip():
            raise InputError("XMITBENCH_INJECT", where, f"empty entry in {spec!r}; expected {INJECT_FORMAT}")
        out.append(parse_injection(entry, where))
    return tuple(out)


class Injector:
    """Fires the faults meant for a cell from timer threads while it is measuring."""

    def __init__(self, spec: str | None = None):
        self.injections = parse_injections(spec if spec is not None else os.environ.get("XMITBENCH_INJECT"))
        self.timers: list[threading.Timer] = []
        self.peers = None                     # () -> PIDs of the peer iperf3 servers (set by the runner)
        self._stop_throttle = threading.Event()

    def _for(self, cell_run: str, attempt: int) -> list[Injection]:
        return [i for i in self.injections if i.cell_run == cell_run and i.attempt in (None, attempt)]

    def wants(self, fault: str, cell_run: str, attempt: int) -> bool:
        return any(i.fault == fault for i in self._for(cell_run, attempt))

    def arm(self, cell_run: str, attempt: int, machine, shell) -> None:
        self._stop_throttle.clear()
        for i in self._for(cell_run, attempt):
            if i.fault == "no-ssh":          # a boot fault: the runner asks `wants` when it boots
                continue
            if i.fault == "peer-throttle":
                timer = threading.Timer(i.after_s, self._throttle_peers)
            else:
                timer = threading.Timer(i.after_s, self._fire, args=(i.fault, machine, shell))
            timer.daemon = True
            timer.start()
            self.timers.append(timer)

    def disarm(self) -> None:
        self._stop_throttle.set()
        for timer in self.timers:
            timer.cancel()
            if timer.is_alive() and timer is not threading.current_thread():
                timer.join(5)
        self.timers = []

    def _throttle_peers(self) -> None:
        """Stop and continue our own peer servers (by PID) until disarmed; always leave them running."""
        try:
            while self.peers and not self._stop_throttle.is_set():
                pids = list(self.peers())      # read each period: the servers of the current cell
                self._signal(pids, signal.SIGSTOP)
                self._stop_throttle.wait(PEER_PERIOD_S - PEER_RUN_S)
                self._signal(pids, signal.SIGCONT)
                self._stop_throttle.wait(PEER_RUN_S)
        finally:   # only servers the data plane still holds (unreaped): never a recycled PID
            self._signal(self.peers() if self.peers else [], signal.SIGCONT)

    @staticmethod
    def _signal(pids, sig) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    @staticmethod
    def _fire(fault: str, machine, shell) -> None:
        try:
            if fault == "kill-qemu":
                os.kill(machine.pid, signal.SIGKILL)
            elif fault == "panic":
                shell.run_detached("echo c > /proc/sysrq-trigger")
            elif fault == "kill-iperf3":
                shell.run_detached("killall -9 iperf3")
            elif fault == "hang":
                machine.qmp().cmd("stop")  # the guest freezes; only the cell watchdog ends it
            elif fault == "drop-ssh":
                shell.client.get_transport().close()
            elif fault == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            elif fault == "sigkill-harness":
                os.kill(os.getpid(), signal.SIGKILL)
        except Exception:  # noqa: BLE001 — a failed injection shows up as a passing cell in the test
            pass
