"""The cell procedure and the driver contract: one source of what a cell does, for every OS;
a driver that misses a contract member is refused at registration."""
from __future__ import annotations


import pytest

from harness.counters.counting import cpu_busy_share, cpu_table, queue_table, rows_frame, tx_total
from harness.vm.faults import scan_serial
from harness.guests import BootState, driver_class, register
from harness.guests.linux import LinuxGuest
from harness.run.procedure import cell_steps, render, state_after
from harness.counters.samples import delta
from harness.run.workload import expand, parse_workload

from test_guest_contract import FIX, fb

WL = b"""[workload]
name = "t"
repetitions = 1
duration_s = 2
warmup_s = 0
lock_stats = true
[machine]
image = "linux-deb"
[matrix]
nic = ["virtio-net"]
queues = [2]
procs = [2]
"""


def _cell():
    wl = parse_workload(WL, "t.toml")
    runs, _ = expand(wl)
    return wl, runs[0].cell


@pytest.fixture
def registry(monkeypatch):
    """Drivers registered by a test leave the registry (and the OS names) as they were."""
    import harness.guests as guests
    import harness.oses as oses
    driver_class("linux")      # the built-ins first, so the copies hold them
    monkeypatch.setattr(guests, "_DRIVERS", dict(guests._DRIVERS))
    monkeypatch.setattr(oses, "_registered", list(oses._registered))


class ThirdOS(LinuxGuest):
    """A test-only OS: Linux's commands under another name, to show a driver plugs in by
    registration alone (the procedure and counting rules need no edit)."""
    os_name = "thirdos"
    STACK_DEVS = {}


def test_a_complete_third_driver_registers_and_renders_a_cell(registry):
    register(ThirdOS)
    assert driver_class("thirdos") is ThirdOS
    wl, cell = _cell()
    g = ThirdOS(None, {"ip": "/bin/ip", "tc": "/sbin/tc", "ethtool": "/sbin/ethtool", "iperf3": "/usr/bin/iperf3"})
    text = render(cell_steps(g, wl, cell))
    assert "taskset -c 1" in text and "-p 5202" in text and "lock statistics" in text
    assert g.state == BootState()      # rendering does not change the boot's state


def test_a_third_os_runs_from_a_workload_and_catalog_with_no_edit_elsewhere(registry, tmp_path, monkeypatch):
    """Registration alone makes an OS nameable by a catalog image and a workload: cells
    expand with its NIC limits, plan groups them, and the procedure renders their steps."""
    from harness.run.plan import plan as make_plan
    cat = tmp_path / "catalog.toml"
    (tmp_path / "third.qcow2").write_bytes(b"")
    cat.write_text('[[image]]\nname = "third-1"\nos = "thirdos"\nrelease = "1"\ndefault_user = "root"\n'
                   'path = "third.qcow2"\nsha256 = "' + "0" * 64 + '"\n')
    monkeypatch.setenv("XMITBENCH_CATALOG", str(cat))
    wl_text = WL.replace(b'image = "linux-deb"', b'image = "third-1"\nos = "thirdos"')
    with pytest.raises(Exception, match="thirdos"):       # not yet registered: refused, naming it
        parse_workload(wl_text, "t.toml")
    register(ThirdOS)
    wl = parse_workload(wl_text, "t.toml")
    p = make_plan(wl)
    assert [g.boot_key.os for g in p.groups] == ["thirdos"]
    cell = p.runs[0].cell
    text = render(cell_steps(driver_class("thirdos").for_plan(cell.nic, BootState()), wl, cell))
    assert "-p 5202" in text and "ethtool -L" in text


def test_a_driver_missing_a_member_is_refused_at_registration(registry):
    class Incomplete(ThirdOS):
        os_name = "incomplete"
        COUNTER_SOURCES = {"tx_queue": "ethtool -S", "interface": "ip -s -j link"}   # no cpu source
    with pytest.raises(TypeError, match=r"COUNTER_SOURCES\['cpu'\]"):
        register(Incomplete)
    from harness.guests.contract import GuestDriver

    class Bare(GuestDriver):
        os_name = "bare"
    with pytest.raises(TypeError, match="missing .*senders_script"):
        register(Bare)
    with pytest.raises(ValueError, match="no guest driver for 'bare'"):
        driver_class("bare")


def test_cell_steps_reflect_the_state_they_will_run_in():
    wl, cell = _cell()
    g = driver_class("linux").for_plan("virtio-net", BootState())
    steps = cell_steps(g, wl, cell)
    assert [s.action for s in steps][:2] == ["lock_install", "set_queues"]
    snap = next(s for s in steps if s.action == "snapshot_before").command
    assert "lock_wait" in snap     # the snapshot runs after the lock_install step
    g.state.lock_tracing = True
    assert "lock_install" not in [s.action for s in cell_steps(g, wl, cell)]


def test_untraced_cell_between_traced_ones_pauses_the_lock_statistics():
    """Twins run next to their traced cell: after tracing is installed an untraced cell pauses
    the counting triggers (never removes them), and the next traced cell continues them."""
    import dataclasses
    wl, cell = _cell()
    twin = dataclasses.replace(cell, cell_id=cell.cell_id + ".untraced", traced=False)
    g = driver_class("linux").for_plan("virtio-net", BootState(lock_tracing=True))
    steps = cell_steps(g, wl, twin)
    pause = next(s for s in steps if s.action == "lock_pause")
    assert ":pause" in pause.command and "!" not in pause.command      # paused, not removed
    snap = next(s for s in steps if s.action == "snapshot_before").command
    assert "lock_wait" not in snap       # the untraced cell reads no lock hists
    g.state = state_after(g, wl, twin)
    assert g.state.lock_paused and g.state.lock_tracing
    steps = cell_steps(g, wl, cell)
    assert [s.action for s in steps][0] == "lock_continue" and ":cont" in steps[0].command
    assert "lock_wait" in next(s for s in steps if s.action == "snapshot_before").command
    assert not state_after(g, wl, cell).lock_paused
    fb_guest = driver_class("freebsd").for_plan("virtio-net", BootState(lock_tracing=True))
    fb_steps = cell_steps(fb_guest, wl, twin)        # lockstat runs inside traced cells only
    senders = next(s for s in fb_steps if s.action == "senders").command
    assert "lockstat" not in senders and "lockstat" in next(
        s for s in cell_steps(fb_guest, wl, cell) if s.action == "senders").command


@pytest.mark.parametrize("os_name, line, kind", [("linux", "[  1.0] Kernel panic - not syncing: x", "panic"),
                                                  ("freebsd", "panic: page fault", "panic"),
                                                  ("freebsd", "Fatal trap 12: page fault while in kernel mode",
                                                   "fatal_trap")])
def test_serial_faults_come_from_the_driver(os_name, line, kind):
    assert [f.kind for f in scan_serial(line, driver_class(os_name).SERIAL_FAULTS)] == [kind]
    other = "freebsd" if os_name == "linux" else "linux"
    assert scan_serial(line, driver_class(other).SERIAL_FAULTS) == [] or kind == "panic"


def _freebsd_frame():
    g = driver_class("freebsd")(None, iface="vtnet0")
    raw = lambda w: {"sysctl_dev": fb(f"sysctl_dev.vtnet.0.{w}.txt"),
                     "netstat_i": fb(f"netstat_--libxo_json_-i_-d_-b_-I_vtnet0.{w}.json"),
                     "cp_times": fb("sysctl_-n_kern.cp_times.txt")}
    before = g.parse_snapshot(raw("before"))
    after = g.parse_snapshot(raw("after"))
    # cp_times: one fixture; make the after reading later by 100 ticks per CPU of each mode
    after = [s if s.source != "kern.cp_times" else s.__class__(**{**s.__dict__, "value": s.value + 100})
             for s in after]
    return rows_frame(delta(before, after), "r", "c", 0)


def test_freebsd_gets_cpu_busy_and_queue_shares_by_the_same_rules():
    m = _freebsd_frame()
    cpu = cpu_table(m)
    assert len(cpu) == 1 and cpu.cpu_busy_pct.notna().all()
    # 5 modes x +100 ticks per CPU: busy = user+nice+sys+intr = 4 of 5 modes
    assert cpu.cpu_busy_pct.iloc[0] == pytest.approx(80.0 * cpu.ncpus.iloc[0])
    assert set(cpu_busy_share(m)) == {0, 1}
    q = queue_table(m)
    assert list(q.queue) == [0, 1] and q.share.sum() == pytest.approx(1.0)
    assert tx_total(m, "tx_packets").iloc[0] == (912741 - 1204) + (887203 - 311)


def test_linux_tx_total_prefers_per_queue_then_driver_then_interface():
    rows = [{"source": "ip -s -j link", "native_name": "tx.packets", "metric": "tx_packets", "value": 7.0,
             "queue": None, "cpu": None}]
    assert tx_total(rows_frame(rows), "tx_packets").iloc[0] == 7.0
    rows.append({"source": "ethtool -S", "native_name": "tx_packets", "metric": "tx_packets", "value": 9.0,
                 "queue": None, "cpu": None})
    assert tx_total(rows_frame(rows), "tx_packets").iloc[0] == 9.0
    rows += [{"source": "ethtool -S", "native_name": f"tx_queue_{i}_packets", "metric": "tx_packets",
              "value": 2.0, "queue": i, "cpu": None} for i in (0, 1)]
    assert tx_total(rows_frame(rows), "tx_packets").iloc[0] == 4.0


def test_analysis_reads_older_run_dirs_and_refuses_a_newer_schema(tmp_path):
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from harness.analysis.load import load_runs
    from harness.results.rundir import SCHEMA_VERSION
    old = FIX / "runs" / "smoke-1rep"
    assert "schema_version" not in json.loads((old / "manifest.json").read_text())   # a version-1 run dir
    assert len(load_runs([old]).wide()) > 0
    new = tmp_path / "future"
    shutil.copytree(old, new)
    man = json.loads((new / "manifest.json").read_text())
    man["schema_version"] = SCHEMA_VERSION + 1
    (new / "manifest.json").write_text(json.dumps(man))
    p = subprocess.run([sys.executable, "-m", "harness.cli", "summary", str(new)], capture_output=True, text=True,
                       cwd=Path(__file__).parent.parent, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "manifest.json" in lines[0] and "schema_version" in lines[0] and "newer" in lines[0]


def test_lock_method_text_per_accel_is_pinned():
    """The text recorded per boot (manifest boots[].lock_method) and on every locks row
    (method): Linux names the CPU flags that decide which qspinlock path traces (see
    harness.vm.machine); FreeBSD's lockstat does not depend on them."""
    from harness.vm.machine import build_argv, cpu_model
    assert driver_class("linux").lock_method("kvm") == (
        "tracepoint lock:contention_begin/end, KVM with -cpu host,kvm-pv-unhalt=on,enforce "
        "(PV qspinlock __pv_queued_spin_lock_slowpath: every slowpath waiter)")
    assert driver_class("linux").lock_method("tcg") == (
        "tracepoint lock:contention_begin/end, TCG with -cpu max,-hypervisor (native qspinlock slowpath)")
    for accel in ("kvm", "tcg"):
        assert f"-cpu {cpu_model(accel)}" in driver_class("linux").lock_method(accel)   # the flags it names are the argv's
        assert driver_class("freebsd").lock_method(accel) == \
            "lockstat(1): DTrace lockstat provider, contention events (-C)"
    from test_machine_and_validity import spec
    argv = build_argv(spec(accel="kvm"))
    assert argv[argv.index("-cpu") + 1] == "host,kvm-pv-unhalt=on,enforce" and "tap,id=data,fds=3:4:5:6,vhost=on" in argv
