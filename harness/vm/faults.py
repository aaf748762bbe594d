"""Fault detection (pure: serial console text in, findings out) and fault injection for tests.

Injection is driven only by the XMITBENCH_INJECT environment variable, which the
fault-injection tests set; a normal run never has it. Format: `<fault>@<cell-run-id>` with an
optional `@<seconds>` after the measurement starts (default 1.0). `<cell-run-id>` matches the
CellRun id (e.g. `virtio-net.q1.p2.s1.tcp.m0.r0`); a trailing `!1` limits it to attempt 1, so
that a retry can succeed.
"""
from __future__ import annotations

import os
import re
import signal
import threading
from dataclasses import dataclass

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


def parse_injection(spec: str | None) -> Injection | None:
    if not spec:
        return None
    parts = spec.split("@")
    if len(parts) not in (2, 3) or parts[0] not in FAULTS:
        raise ValueError(f"XMITBENCH_INJECT={spec!r}: expected <fault>@<cell-run>[@seconds], "
                         f"fault one of {', '.join(FAULTS)}")
    cell, _, attempt = parts[1].partition("!")
    return Injection(parts[0], cell, float(parts[2]) if len(parts) == 3 else 1.0,
                     int(attempt) if attempt else None)


class Injector:
    """Fires one fault from a timer thread while a matching cell is measuring."""

    def __init__(self, spec: str | None = None):
        self.inj = parse_injection(spec if spec is not None else os.environ.get("XMITBENCH_INJECT"))
        self.timer: threading.Timer | None = None
        self.peers = None                     # () -> PIDs of the peer iperf3 servers (set by the runner)
        self._stop_throttle = threading.Event()

    def wants(self, fault: str, cell_run: str, attempt: int) -> bool:
        i = self.inj
        return bool(i and i.fault == fault and i.cell_run == cell_run and (i.attempt in (None, attempt)))

    def arm(self, cell_run: str, attempt: int, machine, shell) -> None:
        i = self.inj
        if not i or i.cell_run != cell_run or (i.attempt not in (None, attempt)) or i.fault == "no-ssh":
            return
        self._stop_throttle.clear()
        if i.fault == "peer-throttle":
            self.timer = threading.Timer(i.after_s, self._throttle_peers)
            self.timer.daemon = True
            self.timer.start()
            return
        self.timer = threading.Timer(i.after_s, self._fire, args=(i.fault, machine, shell))
        self.timer.daemon = True
        self.timer.start()

    def disarm(self) -> None:
        self._stop_throttle.set()
        if self.timer:
            self.timer.cancel()
            if self.timer.is_alive() and self.timer is not threading.current_thread():
                self.timer.join(5)
            self.timer = None

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
