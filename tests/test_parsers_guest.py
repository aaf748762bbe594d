"""Parsers on text captured from the real Debian 6.1 guest (tests/fixtures/linux/guest/):
virtio_net with 2 queue pairs and e1000e, each after 4 pinned iperf3 senders for 4 s under
TCG with the xmitbench lock hist triggers installed; igb with 2 TX queues on QEMU 10.0.13 (how it
was captured: igb_q2/README.md)."""
from pathlib import Path

from harness.guests.linux import split_sections, SECTION
from harness.parsers import linux as P
from harness.parsers.iperf3 import parse_iperf3_json
from harness.counters.samples import delta

G = Path(__file__).parent / "fixtures" / "linux" / "guest"


def read(d, name):
    return (G / d / name).read_text()


def test_virtio_per_queue_tx_counters():
    s = P.parse_ethtool_stats(read("virtio_net_q2", "ethtool_-S.txt"), driver="virtio_net")
    tx = {(x.metric, x.queue): x.value for x in s if x.metric in ("tx_packets", "tx_bytes")}
    assert tx == {("tx_packets", 0): 10442, ("tx_bytes", 0): 552896706,
                  ("tx_packets", 1): 10558, ("tx_bytes", 1): 558015970}
    kicks = [x for x in s if x.native_name == "tx_queue_1_kicks"]
    assert kicks and kicks[0].queue == 1


def test_virtio_delta_matches_tap_side_bytes():
    before = P.parse_ethtool_stats(read("virtio_net_q2", "ethtool_-S.before.txt"), driver="virtio_net")
    after = P.parse_ethtool_stats(read("virtio_net_q2", "ethtool_-S.txt"), driver="virtio_net")
    d = [x for x in delta(before, after) if x.metric == "tx_bytes" and x.queue is not None]
    assert len(d) == 2 and all(x.value > 0 for x in d)


def test_e1000e_interface_counters_and_restart_queue():
    s = P.parse_ethtool_stats(read("e1000e", "ethtool_-S.txt"), driver="e1000e")
    by = {x.native_name: x for x in s}
    assert by["tx_packets"].value == 17117 and by["tx_packets"].queue is None
    assert by["tx_restart_queue"].metric == "tx_restarts"


def test_mq_qdisc_children_from_real_tc_json():
    s = P.parse_tc_qdisc_json(read("virtio_net_q2", "tc_-s_-j_qdisc_show.json"))
    children = {x.queue for x in s if x.queue is not None}
    assert children == {0, 1}
    tot = P.qdisc_totals(s)
    root = [x for x in s if x.queue is None and x.metric == "qdisc_packets"][0]
    assert tot["qdisc_packets"] == root.value


def test_real_lock_hist_names_the_tx_locks():
    waits = P.parse_lock_wait_hist(read("e1000e", "hist_xb_lock_wait.txt"))
    stacks = P.parse_lock_stack_hist(read("e1000e", "hist_contention_begin.txt"))
    assert sum(w.contentions for w in waits) == 22
    recs = P.summarize_locks(waits, stacks, method="m")
    top = recs[0]
    assert top.caller == "__dev_queue_xmit" and top.wait_ns_total == 40330078 and top.method == "m"
    callers = {f for st in stacks for f in st.frames}
    assert any("sch_direct_xmit" in f for f in callers)


def test_real_softnet_interrupts_proc_stat():
    sn = P.parse_softnet_stat(read("virtio_net_q2", "proc_net_softnet_stat.txt"))
    assert {x.queue for x in sn} == {0, 1}
    irq = P.parse_proc_interrupts(read("virtio_net_q2", "proc_interrupts.txt"), match="virtio1-output")
    assert {x.queue for x in irq} == {0, 1} and {x.cpu for x in irq} == {0, 1}
    st = P.parse_proc_stat_cpu(read("virtio_net_q2", "proc_stat.txt"))
    assert {x.queue for x in st if x.metric == "cpu_system"} == {None, 0, 1}


def test_real_iperf3_json_from_guest():
    r = parse_iperf3_json(read("virtio_net_q2", "iperf3_-J.tcp.json"))
    assert r.error is None and r.protocol == "TCP" and r.sent_bytes > 0


def test_split_sections():
    text = f"{SECTION}a\n1\n2\n{SECTION}b\n{SECTION}c\nx\n"
    assert split_sections(text) == {"a": "1\n2\n", "b": "", "c": "x\n"}


def test_lock_hist_delta_between_two_readings():
    waits = P.parse_lock_wait_hist(read("e1000e", "hist_xb_lock_wait.txt"))
    stacks = P.parse_lock_stack_hist(read("e1000e", "hist_contention_begin.txt"))
    # same reading twice: nothing happened in between
    assert P.lock_hist_delta(waits, waits, stacks, stacks) == ([], [])
    # from empty tables: everything is new
    w, s = P.lock_hist_delta([], waits, [], stacks)
    assert sum(x.contentions for x in w) == 22 and sum(x.hits for x in s) == sum(x.hits for x in stacks)
    # a lock that gained 2 waits of 100 ns in total
    grown = [P.LockWait(waits[0].lock_addr, waits[0].contentions + 2, waits[0].wait_ns + 100)] + waits[1:]
    w, _ = P.lock_hist_delta(waits, grown, stacks, stacks)
    assert w == [P.LockWait(waits[0].lock_addr, 2, 100, None)]


# igb (82576) with 2 TX queues on QEMU 10.0.13: captured from a real run (igb_q2/README.md)
def test_igb_real_per_queue_tx_counters_and_restarts():
    before = P.parse_ethtool_stats(read("igb_q2", "ethtool_-S.before.txt"), driver="igb")
    after = P.parse_ethtool_stats(read("igb_q2", "ethtool_-S.txt"), driver="igb")
    d = delta(before, after)
    tx = {(x.metric, x.queue): x.value for x in d if x.queue is not None and x.metric.startswith("tx_")}
    assert tx == {("tx_packets", 0): 222199, ("tx_bytes", 0): 334966437, ("tx_restarts", 0): 0,
                  ("tx_packets", 1): 245914, ("tx_bytes", 1): 370689760, ("tx_restarts", 1): 0}
    restart = [x for x in after if x.native_name == "tx_queue_1_restart"]
    assert len(restart) == 1 and restart[0].metric == "tx_restarts" and restart[0].queue == 1
    hw = {x.native_name: x for x in d if x.queue is None}
    # the hardware totals beside them carry no queue, so per-queue sums never count them twice
    assert hw["tx_packets"].metric == "tx_packets" and hw["tx_packets"].value == 19459 - 4753
    assert {x.queue for x in after if x.native_name.startswith("rx_queue_")} == {0, 1}


def test_igb_real_mq_requeues_and_queue_interrupts():
    before = P.parse_tc_qdisc_json(read("igb_q2", "tc_-s_-j_qdisc_show.before.json"))
    after = P.parse_tc_qdisc_json(read("igb_q2", "tc_-s_-j_qdisc_show.json"))
    d = delta(before, after)
    root = [x for x in d if x.queue is None and x.metric == "tx_requeues"]
    assert len(root) == 1 and root[0].value > 0
    assert {x.queue for x in d if x.metric == "tx_requeues" and x.queue is not None} == {0, 1}
    assert P.qdisc_totals(d)["qdisc_packets"] == sum(x.value for x in d if x.metric == "qdisc_packets"
                                                     and x.queue is not None)
    irq = P.parse_proc_interrupts(read("igb_q2", "proc_interrupts.txt"), match="xb0")
    tx = {(x.native_name, x.queue, x.cpu): x.value for x in irq if "-tx-" in x.native_name and x.value}
    assert tx == {("xb0-tx-0", 0, 0): 5616, ("xb0-tx-1", 1, 1): 5749}
