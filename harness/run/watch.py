"""What watches one cell attempt: a watchdog that stops our own QEMU when the cell overruns,
and the serial console since the attempt began. It names why an attempt failed, and whether
the VM can take the next cell or must be rebooted."""
from __future__ import annotations

import threading

from harness.run.cell import CellFailure
from harness.vm.faults import scan_serial


class AttemptWatch:
    def __init__(self, machine, shell, serial_faults, limit_s: float):
        self.machine, self.shell, self.patterns, self.limit_s = machine, shell, serial_faults, limit_s
        self.expired = threading.Event()
        self._timer = threading.Timer(limit_s, self._expire)
        self._timer.daemon = True
        self.mark = 0
        self.faults: list = []

    def _expire(self) -> None:   # stop our own QEMU by PID; the cell's commands then fail
        self.expired.set()
        self.machine.kill()

    def __enter__(self) -> "AttemptWatch":
        self.mark = self.machine.serial_size()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def check_serial(self) -> None:
        """A kernel fault on the console during a cell that otherwise finished fails it."""
        faults = scan_serial(self.machine.serial_since(self.mark), self.patterns)
        if faults:
            raise CellFailure(f"guest kernel {faults[0].kind}: {faults[0].line}")

    def failure_reason(self, e: BaseException) -> str:
        """Why the attempt failed, most specific first: watchdog, kernel fault, QEMU gone."""
        reason = f"{type(e).__name__}: {e}"
        self.machine.settle(3.0)  # a dying QEMU drops SSH a moment before its exit status is visible
        self.faults = scan_serial(self.machine.serial_since(self.mark), self.patterns)
        if self.expired.is_set():
            return f"cell timed out after {self.limit_s} s (QEMU stopped by the watchdog); {reason}"
        if self.faults:
            return f"guest kernel {self.faults[0].kind}: {self.faults[0].line}"
        if not self.machine.alive():
            return f"{self.machine.exit_reason()}; during: {reason}"
        return reason

    def vm_usable(self) -> bool:
        """After a failure: may the next cell use this VM, or must it be rebooted?"""
        if not self.machine.alive() or self.faults:
            return False
        try:
            self.shell.run("true", timeout=10)
            return True
        except Exception:  # noqa: BLE001
            return False
