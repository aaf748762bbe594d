"""Pausing and continuing the lock hist triggers between cells is safe on the real 6.1 guest:
50 pause/continue cycles under TCP load, the triggers stay installed, a paused trigger counts
nothing, and the guest shows no fault. (Removing and re-adding the triggers per cell hung this
guest; that is why untraced cells between traced ones pause them instead.)"""
from __future__ import annotations

import os
import shutil
import time

import pytest

from qemu_helpers import workload_toml

from harness.parsers.linux import lock_hist_pause, parse_hist_tables
from harness.run.boot import login, start_machine
from harness.run.host import Host
from harness.run.workload import expand, parse_workload
from harness.results.rundir import RunDir
from harness.vm.faults import scan_serial
from harness.vm.machine import PEER_DATA_IP

pytestmark = [pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and taps")]

CYCLES = 50
WL = workload_toml("pause", {"nic": ["e1000e"], "queues": [1], "procs": [2]},
                   {"lock_stats": True, "warmup_s": None}).encode()


HISTS = "/sys/kernel/tracing/events/lock/contention_begin/hist /sys/kernel/tracing/events/synthetic/xb_lock_wait/hist"
BETWEEN = "--- 0.2 s later ---"
CONTINUED = "--- continued ---"


def _hits(text: str) -> dict[str, int]:
    """Hits of each counting hist (the ones a pause stops), by trigger text."""
    counting = [t[: -len(":pause")] for _, t in lock_hist_pause()]
    out = {t.trigger: t.hits for t in parse_hist_tables(text) if t.trigger.split(" [")[0] in counting}
    assert len(out) == 2, out
    return out


def _paused_hits(text: str) -> tuple[dict[str, int], dict[str, int]]:
    a, b = text.split(BETWEEN)
    return _hits(a), _hits(b.split(CONTINUED)[0])


# the counting hists, then again 0.2 s later while the senders keep contending
READ_PAUSED = f"cat {HISTS}; echo '{BETWEEN}'; sleep 0.2; cat {HISTS}; echo '{CONTINUED}'"


def _cycle(guest) -> str:
    """One whole cycle as one guest command: the driver's own pause script, the paused reads,
    its continue script (set -e: a pause or continue the kernel refuses fails the command).
    Under load each SSH round trip costs ~0.4 s under TCG, and 50 cycles pay it often."""
    return f"{guest.lock_pause_script()}\n{READ_PAUSED}\n{guest.lock_continue_script()}"


def test_fifty_pause_continue_cycles_under_load(tmp_path):
    wl = parse_workload(WL, "pause.toml")
    bk = expand(wl).runs[0].cell.boot_key
    host = Host()
    built = host.build_guest(print)
    image = host.prepare_image("linux-deb", print, built, False)
    rd = RunDir.create(tmp_path / "results")
    rd.manifest["boots"] = []
    key_dir = tmp_path / "keys"
    dp = host.dataplane(rd.run_id)
    vm = None
    try:
        dp.create()
        key = host.make_key(key_dir)
        t_boot = time.monotonic()
        m, spec, boot = start_machine(host, rd, dp, key, key_dir, bk, image, "tcg", 0)
        vm = login(host, m, spec, boot, key, bk, image, "tcg", False, time.monotonic())
        g = vm.guest
        g.lock_stats_enable()
        ports = [5201, 5202]
        dp.start_servers(ports, bind=PEER_DATA_IP)
        load_s = 400       # bounded: the senders end by themselves (cycles take 1-3 s each under TCG)
        for i, p in enumerate(ports):
            g.run(f"(taskset -c {i} {g.tools['iperf3']} -c {PEER_DATA_IP} -p {p} -t {load_s} "
                  f">/dev/null 2>&1 </dev/null &)")
        mark = m.serial_size()
        frozen, first = 0, None
        t0 = time.monotonic()
        for i in range(CYCLES):
            if i == 0:      # the driver's own calls, as a cell runs them (and its state follows)
                g.lock_pause()            # set -e: a pause the kernel refuses is an error here
                assert g.state.lock_paused
                a, b = _paused_hits(g.run(READ_PAUSED))
                g.lock_continue()         # :cont of a trigger that does not match is -ENOENT: an error
            else:           # the same scripts in one round trip
                a, b = _paused_hits(g.run(_cycle(g)))
            assert a == b, f"a paused trigger counted: {a} -> {b}"
            first = first or a
            frozen += 1
            assert time.monotonic() - t0 < load_s, "cycles outlasted the load"
        assert frozen == CYCLES
        # continued triggers did count between the pauses: the load contends, so a trigger
        # that a pause failed to stop would have been seen
        assert all(b[k] > first[k] for k in first), (first, b)
        print(f"boot, tracing and load {t0 - t_boot:.1f} s; {CYCLES} cycles {time.monotonic() - t0:.1f} s; "
              f"hits paused in cycle 1 {first}, in cycle {CYCLES} {b}")
        assert not g.state.lock_paused and g.state.lock_tracing
        assert g.run("echo alive").strip() == "alive"
        assert scan_serial(m.serial_since(mark), g.SERIAL_FAULTS) == []
        # still installed: every trigger is listed (not paused) in its trigger file
        triggers = g.run("cat /sys/kernel/tracing/events/lock/contention_begin/trigger "
                         "/sys/kernel/tracing/events/lock/contention_end/trigger")
        assert triggers.count("hist:") >= 3 and "[paused]" not in triggers, triggers
    finally:
        if vm is not None:
            vm.close()
        dp.destroy()
        shutil.rmtree(key_dir, ignore_errors=True)
