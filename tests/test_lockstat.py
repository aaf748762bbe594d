"""The LOCK_STAT kernel's pieces that need no QEMU: the /proc/lock_stat parser on text captured
from the real kernel, the cross-check rule, the procedure steps, the kernel build's config
checks and cache key, and [machine] kernel validation (exit 2 on a bad bzImage)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.guests import BootState, driver_class
from harness.images import kernelbuild as K
from harness.images.guestimage import bzimage_release
from harness.parsers import linux as P
from harness.run.procedure import cell_steps
from harness.run.validity import failed_checks, lock_crosscheck
from harness.run.workload import expand, load_workload, parse_workload

ROOT = Path(__file__).resolve().parent.parent
FIX = Path(__file__).resolve().parent / "fixtures" / "linux"

WL = b"""[workload]
name = "t"
duration_s = 2
lock_stats = true
[machine]
vcpus = 2
image = "linux-lockstat"
[matrix]
nic = ["virtio-net"]
queues = [1]
procs = [4]
"""


# --- procedure ------------------------------------------------------------------------------

def test_lock_stat_is_cleared_before_and_read_after_the_snapshots_only_where_the_kernel_has_it():
    wl = parse_workload(WL, "t.toml")
    cell = expand(wl).runs[0].cell
    g = driver_class("linux").for_plan("virtio-net", BootState(lock_stat=True))
    actions = [s.action for s in cell_steps(g, wl, cell)]
    assert actions.index("lock_stat_clear") == actions.index("snapshot_before") - 1
    assert actions.index("lock_stat_read") == actions.index("snapshot_after") + 1
    steps = {s.action: s.command for s in cell_steps(g, wl, cell)}
    assert steps["lock_stat_clear"].endswith("echo 0 > /proc/lock_stat")
    assert steps["lock_stat_read"] == "cat /proc/lock_stat"
    stock = driver_class("linux").for_plan("virtio-net", BootState())        # stock kernel: none
    assert not {"lock_stat_clear", "lock_stat_read"} & {s.action for s in cell_steps(stock, wl, cell)}
    untraced = dataclasses.replace(cell, traced=False)
    assert "lock_stat_clear" not in [s.action for s in cell_steps(g, wl, untraced)]


def test_plan_shows_the_lock_stat_steps_for_the_lockstat_image():
    out = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(ROOT / "workloads/lockstat.toml")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    groups = out.stdout.split("== boot group")[1:]
    lockstat = [g for g in groups if g.lstrip().split()[1].startswith("linux-lockstat")]
    stock = [g for g in groups if g.lstrip().split()[1].startswith("linux-deb")]
    assert lockstat and stock
    assert all("echo 0 > /proc/lock_stat" in g for g in lockstat)
    assert not any("/proc/lock_stat" in g for g in stock)


# --- cross-check -----------------------------------------------------------------------------

def _counts(ls, tp, acq=1000):
    return {"lock_stat_contentions": ls, "lock_stat_acquisitions": acq, "lock_stat_classes": ["_xmit_ETHER"],
            "tracepoint_contentions": tp, "tracepoint_locks": ["HARD_TX_LOCK (netdev_queue._xmit_lock)"]}


def test_crosscheck_accepts_tracepoint_at_most_lock_stat_and_fails_beyond_with_both_numbers():
    ok = lock_crosscheck(_counts(4000, 40))
    assert ok["ok"] is True and ok["ratio"] == 0.01 and ok["contention_ratio"] == 4.0
    assert lock_crosscheck(_counts(40, 40))["ok"] is True
    bad = lock_crosscheck(_counts(10, 40))
    assert bad["ok"] is False and "tracepoint counts 40" in bad["reason"] and "lock_stat 10" in bad["reason"]
    assert failed_checks({"lock_crosscheck": bad}) == ["lock_crosscheck"]
    none = lock_crosscheck(_counts(0, 3, acq=0))
    assert none["ok"] is False and "no TX queue lock acquisitions" in none["reason"]
    assert lock_crosscheck(None) is None


def test_tx_lock_roles_by_native_class_names():
    assert P.tx_lock_role("_xmit_ETHER", "contention:5@sch_direct_xmit+0x1/0x2") == P.TX_QUEUE_LOCK
    assert P.tx_lock_role("_xmit_ETHER#2", "contention:1@dev_set_rx_mode+0x1/0x2") == P.ADDR_LIST_LOCK
    assert P.tx_lock_role("&sch->root_lock_key#3") == P.QDISC_ROOT_LOCK
    assert P.tx_lock_role("dev->qdisc_tx_busylock ?: &qdisc_tx_bu") == P.QDISC_BUSYLOCK
    assert P.tx_lock_role("&rq->__lock") is None
    assert P.tracepoint_tx_lock_role("HARD_TX_LOCK (netdev_queue._xmit_lock)") == P.TX_QUEUE_LOCK
    assert P.tracepoint_tx_lock_role("qdisc root lock/busylock (Qdisc.q.lock, Qdisc.busylock; "
                                     "_xmit_lock if the device has no qdisc)") == P.QDISC_ROOT_LOCK


def test_driver_cross_check_counts_need_both_methods():
    g = driver_class("linux").for_plan("virtio-net", BootState())
    tp = {"method": P.LOCK_METHOD, "lock": "HARD_TX_LOCK (netdev_queue._xmit_lock)", "contentions": 7}
    ls = {"method": "lock_stat", "lock": "_xmit_ETHER", "contentions": 90, "acquisitions": 5000,
          "contention_points": "contention:90@sch_direct_xmit+0x1/0x2"}
    addr = {"method": "lock_stat", "lock": "_xmit_ETHER#2", "contentions": 1, "acquisitions": 3,
            "contention_points": "contention:1@dev_set_rx_mode+0x1/0x2"}
    assert g.tx_lock_counts([tp]) is None and g.tx_lock_counts([ls]) is None
    c = g.tx_lock_counts([tp, ls, addr])
    assert (c["lock_stat_contentions"], c["lock_stat_acquisitions"], c["tracepoint_contentions"]) == (90, 5000, 7)


# --- kernel build ----------------------------------------------------------------------------

def test_fragment_options_and_what_kconfig_refused():
    frag = K.fragment_options(K.FRAGMENT.read_text())
    assert frag["CONFIG_LOCK_STAT"] == "y" and frag["CONFIG_SLUB"] == "y" and frag["CONFIG_ACPI"] == "y"
    # every module the guest init would insmod is built in by a fragment option
    assert all(frag.get(K.BUILTIN_MODULES[m][0]) == "y" for m in K.WANTED_MODULES)
    final = "CONFIG_LOCK_STAT=y\n# CONFIG_SLUB is not set\n"
    missing = K.missing_options({"CONFIG_LOCK_STAT": "y", "CONFIG_SLUB": "y"}, final)
    assert missing == ["CONFIG_SLUB=y (got unset)"]


def test_kernel_cache_key_follows_source_and_fragment():
    a = K.build_key("0" * 64, "CONFIG_LOCK_STAT=y\n")
    assert a == K.build_key("0" * 64, "CONFIG_LOCK_STAT=y\n")
    assert a != K.build_key("1" * 64, "CONFIG_LOCK_STAT=y\n")
    assert a != K.build_key("0" * 64, "CONFIG_LOCK_STAT=y\nCONFIG_VXLAN=y\n")


# --- [machine] kernel ------------------------------------------------------------------------

def _fake_bzimage(path: Path, version: str = "6.1.99-test (root@x) #1 SMP") -> Path:
    """A file with a boot protocol header: 'HdrS' at 0x202, kernel_version offset at 0x20e."""
    data = bytearray(0x600)
    data[0x202:0x206] = b"HdrS"
    data[0x20E:0x210] = (0x300).to_bytes(2, "little")
    data[0x500:0x500 + len(version)] = version.encode()
    path.write_bytes(bytes(data))
    return path


def _wl(tmp_path: Path, machine_extra: str, image: str = "linux-deb") -> Path:
    f = tmp_path / "k.toml"
    f.write_text(f'[workload]\nname = "k"\n[machine]\nimage = "{image}"\n{machine_extra}\n'
                 '[matrix]\nnic = ["virtio-net"]\n')
    return f


def test_machine_kernel_is_read_and_its_release_known(tmp_path):
    _fake_bzimage(tmp_path / "bzImage")
    (tmp_path / "mods").mkdir()
    wl = load_workload(_wl(tmp_path, 'kernel = "bzImage"\nmodules = "mods"'))
    assert wl.machine.kernel == tmp_path / "bzImage" and wl.machine.modules == tmp_path / "mods"
    assert bzimage_release(wl.machine.kernel) == "6.1.99-test"


@pytest.mark.parametrize("extra, image, key, text", [
    ('kernel = "nope/bzImage"', "linux-deb", "machine.kernel", "missing or unreadable"),
    ('kernel = "notbz"', "linux-deb", "machine.kernel", "not a bzImage"),
    ('modules = "mods"', "linux-deb", "machine.modules", "only together with machine.kernel"),
    ('kernel = "bzImage"', "linux-lockstat", "machine.kernel", 'allowed: machine.image = "linux-deb"'),
    ('kernel = "bzImage"\nmodules = "nodir"', "linux-deb", "machine.modules", "not a directory"),
])
def test_bad_machine_kernel_is_one_line_naming_the_key(tmp_path, extra, image, key, text):
    _fake_bzimage(tmp_path / "bzImage")
    (tmp_path / "notbz").write_bytes(b"\0" * 4096)
    with pytest.raises(InputError) as e:
        load_workload(_wl(tmp_path, extra, image))
    msg = str(e.value)
    assert key in msg and text in msg and "\n" not in msg


def test_bad_machine_kernel_exits_2_and_starts_nothing(tmp_path):
    f = _wl(tmp_path, 'kernel = "missing-bzImage"')
    out = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(f)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2
    assert "machine.kernel" in out.stderr and "missing-bzImage" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# --- /proc/lock_stat parser, on the real kernel's text ---------------------------------------
REAL = FIX / "lockstat_virtio_q1_p4"


def _real(name: str) -> str:
    return (REAL / name).read_text()


def test_lock_stat_class_row_and_its_points_as_printed():
    classes = P.parse_lock_stat(_real("after.lock_stat.txt"))
    x = classes[0]
    assert (x.name, x.base, x.rw) == ("_xmit_ETHER#2", "_xmit_ETHER#2", None)
    assert (x.con_bounces, x.contentions, x.acq_bounces, x.acquisitions) == (205, 514, 1280, 10675)
    # times are printed in microseconds with two decimals
    assert (x.wait_ns_min, x.wait_ns_max, x.wait_ns_total) == (2530, 18125200, 2679175140)
    assert (x.hold_ns_min, x.hold_ns_max, x.hold_ns_total) == (0, 16366680, 3037153000)
    assert [(p.role, p.count, p.symbol) for p in x.points] == [
        ("contention", 262, "virtnet_poll_tx+0x79/0x16a"), ("contention", 252, "sch_direct_xmit+0xa3/0x1f3"),
        ("contending", 434, "sch_direct_xmit+0xa3/0x1f3"), ("contending", 80, "virtnet_poll_tx+0x79/0x16a")]
    assert x.contention_ratio == pytest.approx(514 / 10675)


def test_lock_stat_read_write_rows_share_their_class_points():
    by = {c.name: c for c in P.parse_lock_stat(_real("after.lock_stat.txt"))}
    w, r = by["tasklist_lock-W"], by["tasklist_lock-R"]
    assert (w.base, w.rw, r.base, r.rw) == ("tasklist_lock", "W", "tasklist_lock", "R")
    assert (w.contentions, w.acquisitions, r.contentions, r.acquisitions) == (0, 84, 4, 79)
    assert w.points == r.points and [(p.role, p.count) for p in r.points] == [("contention", 4), ("contending", 4)]
    assert by["tk_core.seq.seqcount-R"].acquisitions == 37292


def test_lock_stat_truncated_names_subclasses_and_four_points_a_block():
    by = {c.name: c for c in P.parse_lock_stat(_real("after.lock_stat.txt"))}
    busy = by["dev->qdisc_tx_busylock ?: &qdisc_tx_b"]          # lock_stat cut the name at 37 characters
    assert (busy.contentions, busy.acquisitions) == (4, 1651)
    assert [(p.role, p.count, p.symbol) for p in busy.points] == [("contention", 4, "__dev_queue_xmit+0x30e/0x611"),
                                                                  ("contending", 4, "__dev_queue_xmit+0x30e/0x611")]
    inet = by["slock-AF_INET"]                                   # LOCKSTAT_POINTS = 4 per block
    assert [p.count for p in inet.points if p.role == "contention"] == [46, 75, 12, 30]
    assert [p.symbol for p in inet.points if p.role == "contending"][0] == "tcp_v4_rcv+0x513/0x788"
    assert by["slock-AF_INET/1"].contentions == 203               # a subclass keeps its "/1"
    assert by["(&n->timer)"].points == ()                          # uncontended: no points


def test_every_line_of_the_real_file_is_read():
    text = _real("after.lock_stat.txt")
    classes = P.parse_lock_stat(text)
    rows = [l for l in text.splitlines()[1:] if "[<" not in l and l.rstrip().endswith(tuple("0123456789"))]
    assert len(classes) == len(rows) > 50
    points = {(c.base, p) for c in classes for p in c.points}
    assert len(points) == sum("[<" in l for l in text.splitlines())


def test_lock_stat_refuses_other_text_and_versions():
    with pytest.raises(ValueError, match="not /proc/lock_stat"):
        P.parse_lock_stat("hello\n")
    with pytest.raises(ValueError, match="version 0.3"):
        P.parse_lock_stat(_real("after.lock_stat.txt").replace("version 0.4", "version 0.3", 1))


def test_real_cell_rows_and_cross_check():
    """The cell's own captures through the Linux driver: both methods' rows, the TX queue lock
    found by its points, and the cross-check numbers the run recorded."""
    g = driver_class("linux").for_plan("virtio-net", BootState())
    before = {"lock_wait": _real("before.lock_wait.txt"), "lock_stack": _real("before.lock_stack.txt")}
    after = {"lock_wait": _real("after.lock_wait.txt"), "lock_stack": _real("after.lock_stack.txt"),
             "lock_stat": _real("after.lock_stat.txt")}
    recs = g.parse_locks(before, after, P.LOCK_METHOD)
    rows = [{"lock": r.lock, "method": r.method, "contentions": r.contentions, "acquisitions": r.acquisitions,
             "contention_points": r.contention_points} for r in recs]
    ls = [r for r in recs if r.method == "lock_stat"]
    assert ls[0].lock == "_xmit_ETHER#2" and ls[0].caller == "virtnet_poll_tx" and ls[0].kind == "class"
    counts = g.tx_lock_counts(rows)
    assert counts["lock_stat_classes"] == ["_xmit_ETHER#2"]
    assert (counts["lock_stat_contentions"], counts["lock_stat_acquisitions"]) == (514, 10675)
    assert counts["tracepoint_contentions"] == 290
    check = lock_crosscheck(counts)
    assert check["ok"] is True and check["ratio"] == round(290 / 514, 4)
