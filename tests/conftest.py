"""Slow builds start in the background when the session starts, and the tests that need them run last.

A fresh machine builds the LOCK_STAT kernel, the Debian cloud image, the Debian 13 guest and
fetches Debian 13's QEMU: many minutes, much of it downloading. Background threads run
those builds (`nice`, so the measuring tests keep the CPUs) while the other tests run, in two
chains: the Debian 13 ones one after another (they share one private apt state), the kernel
beside them; the tests that use them are moved to the end and wait
for their build first (the `prebuilt` fixture). On a warm cache each build is a cache hit
in seconds. A build that fails here is built again by the test itself, which then reports
the real error. Only what this session started is stopped, by PID."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# test file -> the build it needs (CLI arguments); the tests run in this order, last of all
PREBUILDS: dict[str, list[str]] = {
    "test_igb_qemu.py": ["qemu", "fetch"],
    "test_releases_qemu.py": ["images", "build", "linux-deb-13"],
    "test_lockstat_qemu.py": ["images", "build", "linux-lockstat"],
    "test_cloud_image_qemu.py": ["images", "build", "debian-cloud"],
}
# builds that run one after another (a shared apt state); each chain has a thread of its own
CHAINS = [["test_igb_qemu.py", "test_releases_qemu.py", "test_cloud_image_qemu.py"], ["test_lockstat_qemu.py"]]


class _Prebuilds:
    def __init__(self, files: list[str]):
        self.files = files
        self.done = {f: threading.Event() for f in files}
        self.result: dict[str, str] = {}
        self.procs: list[subprocess.Popen] = []
        self.stopped = False
        self.log_dir = Path(tempfile.mkdtemp(prefix="xmitbench-prebuild-"))
        self.threads = [threading.Thread(target=self._run, args=([f for f in chain if f in files],),
                                         name=f"prebuild-{i}", daemon=True) for i, chain in enumerate(CHAINS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, chain: list[str]) -> None:
        for f in chain:
            if self.stopped:
                break
            log = self.log_dir / (f.removesuffix(".py") + ".log")
            try:
                with open(log, "w") as out:
                    proc = subprocess.Popen(["nice", "-n", "19", sys.executable, "-m", "harness.cli",
                                             *PREBUILDS[f]], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
                    self.procs.append(proc)
                    rc = proc.wait()
                self.result[f] = f"exit {rc} ({' '.join(PREBUILDS[f])}; log {log})"
            except OSError as e:
                self.result[f] = f"not started: {e}"
            finally:
                self.done[f].set()
        for f in chain:     # stopped early: nobody waits forever
            self.done[f].set()

    def stop(self) -> None:
        self.stopped = True
        for proc in self.procs:     # each build is a session of its own: its make/mmdebstrap go too
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


_prebuilds: _Prebuilds | None = None


def pytest_collection_modifyitems(session, config, items):
    global _prebuilds
    order = list(PREBUILDS)
    needed = [f for f in order if any(Path(str(i.fspath)).name == f for i in items)]
    # the tests that use a slow build run last, in the order the builds finish
    items.sort(key=lambda i: order.index(Path(str(i.fspath)).name) + 1 if Path(str(i.fspath)).name in needed else 0)
    if needed and os.geteuid() == 0 and not config.option.collectonly:
        _prebuilds = _Prebuilds(needed)
        _prebuilds.start()


def pytest_sessionfinish(session, exitstatus):
    if _prebuilds is not None:
        _prebuilds.stop()


@pytest.fixture(scope="module")
def prebuilt(request):
    """Wait for this test file's background build; returns what happened to it (or None)."""
    name = Path(str(request.fspath)).name
    if _prebuilds is None or name not in _prebuilds.done:
        return None
    _prebuilds.done[name].wait()
    return _prebuilds.result.get(name)
