"""Pure parser tests on fixtures in tests/fixtures/linux/.

Where each fixture comes from:
  captured on a Linux host (iproute2 6.1, iperf 3.12) on a veth pair with 4 TX queues in two
  network namespaces, 198.18.0.0/24, mq root with pfifo/bfifo/pfifo_fast children, then a
  tbf root:
    tc_-s_-j_qdisc_show.{before,after,tbf}.json   tc -s -j qdisc show dev xb0
    ip_-s_-j_link_show.{before,after}.json        ip -s -j link show dev xb0
    ip_-s_-s_-j_link_show.json                    ip -s -s -j link show dev xb0
    ethtool_-S.veth.txt                           ethtool -S xb0
    iperf3_-J.{tcp,tcp_P2,udp,refused}.json       iperf3 -c 127.0.0.1 -t 1 -J
                                                  [-P 2 | -u -b 10M -l 64 | no server]
    proc_net_softnet_stat.host-6.18.txt, proc_interrupts.host.txt, proc_stat.host.txt
  reproduced from the source that prints them (Linux 6.1 unless said):
    ethtool_-S.<driver>.txt: ethtool.c do_gnicstats ("     %.*s: %llu") over the strings of
      drivers/net/virtio_net.c virtnet_get_strings (rx_queue_%u_%s then tx_queue_%u_%s of
      virtnet_{rq,sq}_stats_desc), drivers/net/ethernet/intel/e1000e/ethtool.c
      e1000_gstrings_stats, drivers/net/ethernet/intel/igb/igb_ethtool.c igb_get_strings,
      drivers/net/vmxnet3/vmxnet3_ethtool.c vmxnet3_get_strings (vmxnet3_{tq,rq}_{dev,driver}
      _stats with their leading spaces, value of "Tx Queue#"/"Rx Queue#" = queue index).
    proc_interrupts.guest-*-6.1.txt: kernel/irq/proc.c show_interrupts ("%*d: ", "%10u ",
      " %8s" chip, " %*lu" hwirq, "-%-8s" handler, "  %s" action) and x86
      arch_show_interrupts for the named rows; action names from virtio_pci
      vp_request_msix_vectors, e1000e e1000_request_msix, igb igb_request_msix.
    proc_net_softnet_stat.6.1.txt: net/core/net-procfs.c softnet_seq_show, 13 x "%08x".
    tracefs_*_hist*.txt: kernel/trace/trace_events_hist.c hist_trigger_show,
      hist_trigger_entry_print, hist_trigger_print_key, hist_trigger_stacktrace_print,
      track_data_print (onmax) and event_hist_trigger_print (the trigger info line).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.parsers import iperf3 as I
from harness.parsers import linux as L
from harness.counters.samples import Sample, delta

FIX = Path(__file__).parent / "fixtures" / "linux"


def fixture(name: str) -> str:
    return (FIX / name).read_text()


def by(samples, native, queue=None, cpu=None):
    hits = [s for s in samples if s.native_name == native and s.queue == queue and s.cpu == cpu]
    assert len(hits) == 1, (native, queue, cpu, hits)
    return hits[0]


# --------------------------------------------------------------------------- delta
def test_delta_counter_gauge_new_and_reset():
    before = [Sample("x", "a", "a", 10, "count"), Sample("x", "g", "g", 7, "count", kind="gauge"),
              Sample("x", "r", "r", 100, "count"), Sample("x", "gone", "gone", 1, "count"),
              Sample("x", "a", "a", 5, "count", queue=1)]
    after = [Sample("x", "a", "a", 25, "count"), Sample("x", "g", "g", 3, "count", kind="gauge"),
             Sample("x", "r", "r", 4, "count"), Sample("x", "new", "new", 9, "count"),
             Sample("x", "a", "a", 6, "count", queue=1)]
    d = {(s.native_name, s.queue): s.value for s in delta(before, after)}
    assert d[("a", None)] == 15
    assert d[("a", 1)] == 1                 # matched per queue, not across queues
    assert d[("g", None)] == 3              # gauge: after value
    assert math.isnan(d[("r", None)])       # went backwards: reset/wrap -> NaN
    assert d[("new", None)] == 9            # only in after: counts from 0
    assert ("gone", None) not in d


def test_delta_on_real_tc_snapshots_and_reset():
    before = L.parse_tc_qdisc_json(fixture("tc_-s_-j_qdisc_show.before.json"))
    after = L.parse_tc_qdisc_json(fixture("tc_-s_-j_qdisc_show.after.json"))
    d = delta(before, after)
    assert by(d, "pfifo 8001: bytes", queue=1).value == 4063513 - 140
    assert by(d, "pfifo_fast 0: bytes", queue=0).value == 10569310 - 6507516
    assert by(d, "bfifo 8002: packets", queue=2).value == 0
    assert by(d, "mq 1: bytes").value == 38218446 - 26031485
    assert L.qdisc_totals(d)["qdisc_bytes"] == 38218446 - 26031485
    # qdisc replaced between snapshots: counters restart below the old values
    back = delta(after, before)
    assert math.isnan(by(back, "mq 1: bytes").value)
    assert by(back, "bfifo 8002: bytes", queue=2).value == 0


# --------------------------------------------------------------------------- tc
def test_tc_mq_children_get_queue_and_root_none():
    s = L.parse_tc_qdisc_json(fixture("tc_-s_-j_qdisc_show.after.json"))
    assert by(s, "mq 1: requeues").metric == "tx_requeues"
    assert {x.queue for x in s if x.native_name.startswith("pfifo_fast 0:")} == {0, 3}
    assert by(s, "bfifo 8002: bytes", queue=2).value == 13014714
    assert by(s, "pfifo 8001: backlog", queue=1).kind == "gauge"
    assert by(s, "pfifo 8001: drops", queue=1).metric == "qdisc_drops"


def test_qdisc_totals_do_not_double_count():
    s = L.parse_tc_qdisc_json(fixture("tc_-s_-j_qdisc_show.after.json"))
    t = L.qdisc_totals(s)
    # mq_dump: the root is the sum of its children, so total == root, not 2x root
    assert t["qdisc_bytes"] == 38218446 == by(s, "mq 1: bytes").value
    assert t["qdisc_packets"] == 47501
    assert sum(x.value for x in s if x.metric == "qdisc_bytes") == 2 * 38218446


def test_tc_single_root_with_drops_backlog():
    s = L.parse_tc_qdisc_json(fixture("tc_-s_-j_qdisc_show.tbf.json"))
    t = L.qdisc_totals(s)
    assert t == {"qdisc_bytes": 445703, "qdisc_packets": 436, "qdisc_drops": 3880,
                 "qdisc_overlimits": 5166, "tx_requeues": 0, "qdisc_backlog_bytes": 39596,
                 "qdisc_qlen": 38}
    assert all(x.queue is None for x in s)


def test_tc_hex_minor_and_ingress_excluded():
    text = ('[{"kind":"mq","handle":"1:","root":true,"options":{},"bytes":30,"packets":3,'
            '"drops":0,"overlimits":0,"requeues":2,"backlog":0,"qlen":0},'
            '{"kind":"fq_codel","handle":"0:","parent":"1:a","options":{},"bytes":30,"packets":3,'
            '"drops":0,"overlimits":0,"requeues":2,"backlog":0,"qlen":0},'
            '{"kind":"ingress","handle":"ffff:","parent":"ffff:fff1","options":{},"bytes":999,'
            '"packets":9,"drops":0,"overlimits":0,"requeues":0,"backlog":0,"qlen":0}]')
    s = L.parse_tc_qdisc_json(text)
    assert by(s, "fq_codel 0: requeues", queue=9).value == 2     # "1:a" is queue 9
    assert by(s, "ingress ffff: parent ffff:fff1 bytes").queue is None
    assert L.qdisc_totals(s)["qdisc_bytes"] == 30


# --------------------------------------------------------------------------- ip link
def test_ip_link_stats64_and_delta():
    before = L.parse_ip_link_json(fixture("ip_-s_-j_link_show.before.json"))
    after = L.parse_ip_link_json(fixture("ip_-s_-j_link_show.after.json"))
    d = delta(before, after)
    assert by(d, "tx.packets").value == 47507 - 25009
    assert by(d, "tx.packets").metric == "tx_packets"
    assert by(after, "tx.dropped").metric == "tx_drops"
    assert by(after, "rx.bytes").value == 4720


def test_ip_link_double_s_extra_fields():
    s = L.parse_ip_link_json(fixture("ip_-s_-s_-j_link_show.json"), ifname="xb0")
    assert by(s, "tx.carrier_changes").value == 4
    assert by(s, "rx.missed_errors").metric == "rx.missed_errors"
    assert by(s, "tx.bytes").value == 38218962


def test_ip_link_needs_one_link():
    one = fixture("ip_-s_-j_link_show.after.json").strip()
    with pytest.raises(ValueError):
        L.parse_ip_link_json("[" + one[1:-1] + "," + one[1:-1] + "]")


# --------------------------------------------------------------------------- ethtool -S
def test_ethtool_virtio_per_queue():
    s = L.parse_ethtool_stats(fixture("ethtool_-S.virtio_net.txt"), "virtio_net")
    assert by(s, "tx_queue_1_packets", queue=1).metric == "tx_packets"
    assert by(s, "tx_queue_1_packets", queue=1).value == 250017
    assert by(s, "tx_queue_0_kicks", queue=0).metric == "tx_kicks"
    assert by(s, "tx_queue_0_bytes", queue=0).unit == "bytes"
    assert by(s, "tx_queue_0_tx_timeouts", queue=0).metric == "tx_queue_0_tx_timeouts"
    assert sum(x.value for x in s if x.metric == "tx_packets") == 481234 + 250017
    assert all(x.queue is not None for x in s)


def test_ethtool_e1000e_interface_wide():
    s = L.parse_ethtool_stats(fixture("ethtool_-S.e1000e.txt"), "e1000e")
    assert len(s) == 53
    assert by(s, "tx_restart_queue").metric == "tx_restarts"
    assert by(s, "tx_restart_queue").value == 4127
    assert by(s, "tx_packets").value == 912004
    assert by(s, "tx_dropped").metric == "tx_drops"


def test_ethtool_igb_global_and_queues():
    s = L.parse_ethtool_stats(fixture("ethtool_-S.igb.txt"), "igb")
    assert by(s, "tx_queue_0_restart", queue=0).metric == "tx_restarts"
    assert by(s, "tx_queue_0_restart", queue=0).value == 31
    assert by(s, "tx_packets").queue is None            # hardware total beside per-queue rows
    assert by(s, "tx_queue_1_bytes", queue=1).value == 761871998
    assert by(s, "rx_queue_1_drops", queue=1).metric == "rx_queue_1_drops"


def test_ethtool_vmxnet3_nested_blocks():
    s = L.parse_ethtool_stats(fixture("ethtool_-S.vmxnet3.txt"), "vmxnet3")
    assert by(s, "ring full", queue=0).value == 57
    assert by(s, "ring full", queue=1).metric == "tx_ring_stalls"
    assert by(s, "drv dropped tx total/giant hdr", queue=0).value == 2
    assert by(s, "giant hdr", queue=0).value == 0
    assert by(s, "ucast pkts rx", queue=1).value == 9007
    assert by(s, "tx timeout count").queue is None
    tx = by(s, "ucast+mcast+bcast pkts tx", queue=0)
    assert (tx.metric, tx.value) == ("tx_packets", 612340 + 6 + 1)
    assert by(s, "ucast+mcast+bcast bytes rx", queue=0).value == 1057700 + 140 + 540
    assert not [x for x in s if "Queue#" in x.native_name]
    assert len({x.key for x in s}) == len(s)


def test_ethtool_real_veth_and_no_driver():
    s = L.parse_ethtool_stats(fixture("ethtool_-S.veth.txt"))
    assert len(s) == 37
    assert by(s, "peer_ifindex").kind == "gauge"
    assert by(s, "tx_queue_3_xdp_xmit", queue=3).value == 0
    # without a driver the union of tables still maps the common names
    e = L.parse_ethtool_stats(fixture("ethtool_-S.e1000e.txt"))
    assert by(e, "tx_restart_queue").metric == "tx_restarts"


# --------------------------------------------------------------------------- softnet
def test_softnet_6_1_thirteen_columns():
    s = L.parse_softnet_stat(fixture("proc_net_softnet_stat.6.1.txt"))
    assert by(s, "processed", queue=0).value == 0x4E2A1
    assert by(s, "dropped", queue=1).metric == "softnet_dropped"
    assert by(s, "dropped", queue=1).value == 3
    assert by(s, "time_squeeze", queue=0).value == 0x19
    assert by(s, "backlog_len", queue=1).kind == "gauge"
    assert not [x for x in s if x.native_name == "cpu_index"]


def test_softnet_cpu_index_column_and_old_format():
    # offline CPUs are skipped: the 13th column, not the line number, is the CPU
    text = ("0000000a 00000000 00000000 00000000 00000000 00000000 00000000 00000000 "
            "00000000 00000000 00000000 00000000 00000003\n")
    assert L.parse_softnet_stat(text)[0].queue == 3
    old = "0000000a 00000001 00000002" + " 00000000" * 8 + "\n"
    s = L.parse_softnet_stat(old)
    assert by(s, "dropped", queue=0).value == 1
    assert {x.native_name for x in s} == {"processed", "dropped", "time_squeeze",
                                          "cpu_collision", "received_rps", "flow_limit_count"}


def test_softnet_real_host_fifteen_columns():
    s = L.parse_softnet_stat(fixture("proc_net_softnet_stat.host-6.18.txt"))
    assert by(s, "processed", queue=1).value == 0x2CEC9
    assert by(s, "process_qlen", queue=0).kind == "gauge"


# --------------------------------------------------------------------------- interrupts
def test_interrupts_virtio_queue_vectors():
    s = L.parse_proc_interrupts(fixture("proc_interrupts.guest-virtio-6.1.txt"))
    out0 = by(s, "virtio0-output.0", queue=0, cpu=1)
    assert (out0.value, out0.metric) == (20112, "irq_count")
    assert by(s, "virtio0-input.1", queue=1, cpu=0).value == 9
    assert by(s, "virtio0-config", cpu=0).queue is None
    assert by(s, "virtio1-req.0", cpu=0).value == 3312     # block queue: not a net queue
    assert by(s, "LOC", cpu=1).value == 118210
    assert by(s, "ERR").cpu is None
    assert len({x.key for x in s}) == len(s)


def test_interrupts_match_and_driver_names():
    s = L.parse_proc_interrupts(fixture("proc_interrupts.guest-e1000e-igb-6.1.txt"), match="eth0")
    assert {x.native_name for x in s} == {"eth0-rx-0", "eth0-tx-0", "eth0"}
    assert by(s, "eth0-tx-0", queue=0, cpu=0).value == 52110
    igb = L.parse_proc_interrupts(fixture("proc_interrupts.guest-e1000e-igb-6.1.txt"), match="igb1")
    assert by(igb, "igb1-TxRx-1", queue=1, cpu=1).value == 1377
    assert by(igb, "igb1", cpu=0).queue is None


def test_interrupts_real_host_msix_chip_names():
    s = L.parse_proc_interrupts(fixture("proc_interrupts.host.txt"))
    assert by(s, "virtio2-output.0", queue=0, cpu=0).value == 3644
    assert by(s, "virtio3-tx", cpu=1).value == 3386         # vsock, no queue index
    assert by(s, "ACPI:Ged", cpu=0).value == 1
    assert by(s, "ACPI:Ged (irq 25)", cpu=1).value == 1
    assert by(s, "MIS").value == 0


def test_interrupts_cpu_from_header_not_column():
    # an offline CPU is missing from the header, and from every row
    text = ("           CPU0       CPU2       \n"
            " 25:          5          7   PCI-MSI 65537-edge      virtio0-input.0\n")
    s = L.parse_proc_interrupts(text)
    assert by(s, "virtio0-input.0", queue=0, cpu=2).value == 7


def test_irq_queue_names():
    assert L.irq_queue("virtio0-output.12") == 12
    assert L.irq_queue("ens3-rxtx-1") == 1
    assert L.irq_queue("eth0-TxRx-7") == 7
    assert L.irq_queue("virtio0-config") is None


# --------------------------------------------------------------------------- /proc/stat
def test_proc_stat_cpu():
    s = L.parse_proc_stat_cpu(fixture("proc_stat.host.txt"))
    per_cpu = by(s, "user", queue=0).value + by(s, "user", queue=1).value
    assert by(s, "user").value == 11952 == per_cpu
    assert by(s, "softirq", queue=1).metric == "cpu_softirq"
    assert by(s, "softirq", queue=1).value == 89
    assert by(s, "steal").unit == "jiffies"
    assert len(s) == 3 * 10


# --------------------------------------------------------------------------- locks
def test_lock_hist_strings_for_6_1_and_6_4():
    setup = dict(L.LOCK_HIST_SETUP[:1])
    assert setup["synthetic_events"] == "xb_lock_wait u64 lock_addr; u64 wait_ns"
    texts = [t for _, t in L.LOCK_HIST_SETUP]
    assert ("hist:keys=common_pid:xb_wait=common_timestamp-$xb_ts:"
            "onmatch(lock.contention_begin).xb_lock_wait($xb_addr,$xb_wait)") in texts
    assert texts[-1] == ("hist:keys=lock_addr,flags,stacktrace:vals=hitcount:"
                         "sort=hitcount.descending:size=4096")
    assert "common_stacktrace" in L.lock_hist_setup(common_stacktrace=True)[-1][1]
    # teardown removes the referencing trigger before what it references
    tear = [t for _, t in L.LOCK_HIST_TEARDOWN]
    assert tear.index("!" + texts[3]) < tear.index("!" + texts[2])
    assert tear[-1] == "!xb_lock_wait u64 lock_addr; u64 wait_ns"
    assert set(L.LOCK_HIST_READ.values()) == {"events/synthetic/xb_lock_wait/hist",
                                             "events/lock/contention_begin/hist"}


def test_lock_wait_hist_with_and_without_max():
    text = fixture("tracefs_synthetic_xb_lock_wait_hist.txt")
    w = {r.lock_addr: r for r in L.parse_lock_wait_hist(text)}
    root = w[0xFFFF8F3A41C2E0C0]
    assert (root.contentions, root.wait_ns, root.wait_ns_max) == (61, 2203991, 310442)
    assert w[0xFFFFFFFFB8F1C5A0].wait_ns_max == 88001
    nomax = L.parse_lock_wait_hist(fixture("tracefs_synthetic_xb_lock_wait_hist.nomax.txt"))
    assert len(nomax) == 5 and all(r.wait_ns_max is None for r in nomax)
    tables = L.parse_hist_tables(text)
    assert [(t.hits, t.entries, t.dropped) for t in tables] == [(134, 5, 0), (134, 5, 0)]


def test_lock_stack_hist_skips_var_table():
    st = L.parse_lock_stack_hist(fixture("tracefs_lock_contention_begin_hist.txt"))
    assert len(st) == 9
    top = st[0]
    assert (top.lock_addr, top.flags, top.hits) == (0xFFFF8F3A41C2E0C0, 1, 48)
    assert top.frames[0] == "__traceiter_contention_begin+0x56/0x90"
    assert top.frames[3] == "__dev_queue_xmit+0x7d1/0xd40"
    assert len(top.frames) == 15
    assert st[-1].frames[2] == "e1000_watchdog_task+0x5b/0x8e0 [e1000e]"
    # 6.4+ prints the key as common_stacktrace
    text = fixture("tracefs_lock_contention_begin_hist.txt")
    new = text.replace("stacktrace", "common_stacktrace")
    assert L.parse_lock_stack_hist(new) == st


def test_lock_caller_skips_plumbing():
    assert L.frame_function("__mutex_lock.constprop.0+0x189/0x8a0") == "__mutex_lock"
    assert L.frame_function("e1000_xmit_frame+0x47/0xd50 [e1000e]") == "e1000_xmit_frame"
    frames = ("__traceiter_contention_begin+0x56/0x90", "native_queued_spin_lock_slowpath+0x1/0x2",
              "_raw_spin_lock_bh+0x29/0x30", "do_raw_spin_lock+0x1/0x2", "lock_sock_nested+0x1/0x2")
    assert L.lock_caller(frames) == "lock_sock_nested"
    assert L.lock_caller(("queued_spin_lock_slowpath+0x1/0x2",)) == "unknown"
    assert L.lock_kind(1) == "spinlock" and L.lock_kind(32) == "mutex"
    assert L.lock_kind(None) == "unknown" and L.lock_kind(64) == "flags=0x40"


def test_summarize_locks_names_and_merges():
    w = L.parse_lock_wait_hist(fixture("tracefs_synthetic_xb_lock_wait_hist.txt"))
    st = L.parse_lock_stack_hist(fixture("tracefs_lock_contention_begin_hist.txt"))
    recs = L.summarize_locks(w, st, method="test")
    names = [r.lock for r in recs]
    assert names[0].startswith("qdisc root lock/busylock")
    root = recs[0]
    # root lock (48 from __dev_queue_xmit + 15 re-taken in sch_direct_xmit) + busylock (22)
    assert (root.caller, root.kind, root.contentions) == ("__dev_queue_xmit", "spinlock", 85)
    assert (root.wait_ns_total, root.wait_ns_max, root.method) == (2203991 + 803111, 310442, "test")
    xmit = next(r for r in recs if r.caller == "sch_direct_xmit")
    assert xmit.lock == "HARD_TX_LOCK (netdev_queue._xmit_lock)"
    assert (xmit.contentions, xmit.wait_ns_total) == (37 + 3 + 7, 1104312 + 120044)
    rtnl = next(r for r in recs if r.caller == "rtnl_lock")
    assert (rtnl.lock, rtnl.kind, rtnl.contentions) == ("RTNL mutex (rtnl_mutex)", "mutex-spin", 3)
    other = next(r for r in recs if r.caller == "e1000_watchdog_task")
    assert (other.lock, other.wait_ns_total, other.wait_ns_max) == (
        "lock in e1000_watchdog_task", 0, None)
    assert [r.wait_ns_total for r in recs] == sorted((r.wait_ns_total for r in recs), reverse=True)
    # wait records alone still give a record
    only = L.summarize_locks(w[:1], [])
    assert (only[0].caller, only[0].contentions) == ("unknown", 61)


def test_lock_samples():
    w = L.parse_lock_wait_hist(fixture("tracefs_synthetic_xb_lock_wait_hist.txt"))
    st = L.parse_lock_stack_hist(fixture("tracefs_lock_contention_begin_hist.txt"))
    s = L.lock_samples(L.summarize_locks(w, st))
    assert len({x.key for x in s}) == len(s)
    rtnl = [x for x in s if x.native_name.startswith("RTNL mutex")]
    assert {(x.metric, x.value, x.kind) for x in rtnl} == {
        ("lock_contentions", 3, "counter"), ("lock_wait_ns", 91002, "counter"),
        ("lock_wait_ns_max", 88001, "gauge")}
    assert all(x.source == "lock:contention hist" for x in s)


# --------------------------------------------------------------------------- iperf3
def test_iperf3_tcp():
    r = I.parse_iperf3_json(fixture("iperf3_-J.tcp.json"))
    assert (r.protocol, r.num_streams, r.error) == ("TCP", 1, None)
    assert r.sent_bytes == r.received_bytes == 3051225088
    assert r.retransmits == 0 and r.lost_packets is None
    assert r.cpu_host_system == pytest.approx(98.8140528744743)
    assert r.per_stream == [I.StreamResult(5, 3051225088, pytest.approx(24400235811.561871))]


def test_iperf3_tcp_two_streams():
    r = I.parse_iperf3_json(fixture("iperf3_-J.tcp_P2.json"))
    assert r.num_streams == 2 and r.retransmits == 6
    assert [s.socket for s in r.per_stream] == [5, 7]
    assert sum(s.bytes for s in r.per_stream) == r.sent_bytes == 3008102400


def test_iperf3_udp():
    r = I.parse_iperf3_json(fixture("iperf3_-J.udp.json"))
    assert (r.protocol, r.retransmits, r.packets, r.lost_packets) == ("UDP", None, 19515, 0)
    assert r.sent_bytes == 1248960 and r.received_bps == pytest.approx(9988773.26697931)
    s = {x.native_name: x for x in I.to_samples(r)}
    assert s["packets"].metric == "iperf_packets" and s["packets"].value == 19515
    assert "retransmits" not in s
    assert s["stream 5 bytes"].value == 1248960
    assert all(x.kind == "gauge" and x.source == "iperf3" for x in s.values())


def test_iperf3_failures():
    r = I.parse_iperf3_json(fixture("iperf3_-J.refused.json"))
    assert r.error == "unable to connect to server: Connection refused"
    assert r.sent_bytes is None and I.to_samples(r) == []
    bad = I.parse_iperf3_json("iperf3: error - unable to connect")
    assert bad.error.startswith("not iperf3 JSON")
