"""One lock vocabulary for both OSes (harness.counters.lockclass), on the lock rows the real
parsers make from the recorded fixtures: Linux ftrace hist triggers (tests/fixtures/linux)
and FreeBSD lockstat(1) reports (tests/fixtures/freebsd)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from harness.counters.lockclass import LOCK_CLASSES, lock_class
from harness.parsers import freebsd as F
from harness.parsers import linux as L

FIX = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("fb_generate", FIX / "freebsd" / "generate.py")
GEN = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(GEN)


def linux_rows():
    w = L.parse_lock_wait_hist((FIX / "linux" / "tracefs_synthetic_xb_lock_wait_hist.txt").read_text())
    st = L.parse_lock_stack_hist((FIX / "linux" / "tracefs_lock_contention_begin_hist.txt").read_text())
    return L.summarize_locks(w, st)


def freebsd_rows(name: str):
    text = GEN.strip_header((FIX / "freebsd" / name).read_text())
    return F.lockstat_to_lock_records(F.parse_lockstat(text).records)


def test_linux_rows_from_the_recorded_hist_triggers():
    got = {(r.caller, lock_class(r.lock, r.caller)) for r in linux_rows()}
    assert got == {("__dev_queue_xmit", "qdisc/ifq lock"),      # root lock + busylock; its name mentions _xmit_lock
                   ("sch_direct_xmit", "tx queue lock"),         # HARD_TX_LOCK
                   ("rtnl_lock", "other"), ("e1000_watchdog_task", "other")}


def test_freebsd_rows_from_lockstat_reports():
    got = {(r.lock, r.caller, lock_class(r.lock, r.caller)) for r in freebsd_rows("lockstat_sleep_10.txt")}
    assert got == {("vtnet0-tx0", "vtnet_txq_tq_deferred", "tx queue lock"),
                   ("vtnet0-tx1", "vtnet_txq_tq_deferred", "tx queue lock"),
                   ("vtnet0-tx0", "vtnet_tx_vq_intr", "tx queue lock"),
                   ("vtnet0-tx1", "vtnet_tx_vq_intr", "tx queue lock"),
                   ("so_snd", "sosend_generic", "socket"),
                   ("sleep mtxpool", "_sleep", "other"), ("sched lock 1", "sched_add", "other")}
    # the replay's report as the driver runs it (-s 8): vtnet1's queues
    assert {lock_class(r.lock, r.caller) for r in freebsd_rows("replay_q2_p4.senders.lockstat.txt")} == {
        "tx queue lock", "socket"}


@pytest.mark.parametrize("lock,caller,cls", [
    # Linux lockdep class names and hist-trigger names
    ("_xmit_ETHER", "", "tx queue lock"), ("&dev->_xmit_lock / _xmit_IPGRE", "", "tx queue lock"),
    ("netif_tx_lock (tx_global_lock, every _xmit_lock)", "dev_watchdog", "tx queue lock"),
    ("HARD_TX_LOCK (netdev_queue._xmit_lock) in virtio TX completion", "virtnet_poll_tx", "tx queue lock"),
    ("lock in sch_direct_xmit", "sch_direct_xmit", "tx queue lock"),
    ("qdisc root lock (Qdisc.q.lock)", "net_tx_action", "qdisc/ifq lock"),
    ("lock in __qdisc_run", "__qdisc_run", "qdisc/ifq lock"),
    ("vmxnet3 vmxnet3_tx_queue.tx_lock", "vmxnet3_tq_xmit", "ring"),
    ("socket lock (sock.sk_lock)", "lock_sock_nested", "socket"),
    ("socket lock (bh_lock_sock)", "tcp_v4_rcv", "socket"),
    # FreeBSD lo_name values
    ("vtnet1-tx3", "vtnet_txq_mq_start+0x6e", "tx queue lock"),
    ("if_snd", "if_start+0x10", "qdisc/ifq lock"),
    ("buf_ring", "drbr_enqueue+0x22", "ring"), ("0xfffff8000c7eb180", "ifmp_ring_enqueue+0x1f", "ring"),
    ("so_rcv", "soreceive_generic+0x40", "socket"), ("tcpinp", "tcp_output+0x10", "socket"),
    ("vm_page_queue_free_mtx", "vm_page_free_toq+0x12e", "other"),
])
def test_names_map_to_one_vocabulary(lock, caller, cls):
    assert lock_class(lock, caller) == cls and cls in LOCK_CLASSES


def test_lock_rows_carry_the_class():
    from harness.results.rundir import LOCK_COLUMNS, lock_row
    ctx = dict(cell="c", rep=0, os="freebsd", kernel="14.3", nic="virtio-net", queues=2, procs=4, accel="tcg")
    (r,) = [lock_row(ctx, x) for x in freebsd_rows("lockstat_sleep_10.txt") if x.lock == "so_snd"]
    assert r["lock_class"] == "socket" and r["incomplete"] is None and r["holds"] == 0
    assert set(r) | {"run_id"} == set(LOCK_COLUMNS)
