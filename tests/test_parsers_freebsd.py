"""Pure parser tests for FreeBSD guests on fixtures in tests/fixtures/freebsd/.

FreeBSD images cannot be booted on the build machines, so every fixture reproduces the
format of the FreeBSD function that prints it (freebsd/freebsd-src), written by
tests/fixtures/freebsd/generate.py from the same printf formats / libxo calls; the last
test checks that the committed files are exactly what it renders. Numbers are made up but
consistent (FreeBSD 14 amd64 guest, 2 vCPUs, vtnet0 with 2 queue pairs on virtio_pci1, or
em0 82574 with 2 iflib queues).

  netstat_--libxo_json_-i_-d_-b_-I_vtnet0.{before,after}.json
      usr.bin/netstat/main.c (xo_open_container "statistics"), if.c intpr + show_stat
      (keys received-packets, received-errors, dropped-packets = if_iqdrops, received-bytes,
      sent-packets, send-errors, sent-bytes, collisions, and with -d a second
      dropped-packets = if_oqdrops; errors/drops only on the <Link#N> row), JSON layout
      of contrib/libxo/libxo/libxo.c (xo_do_open_container/list/instance, xo_format_value,
      xo_format_prep, xo_do_close_*, xo_finish_h).
  netstat_--libxo_json_-s_-f_inet.json
      usr.bin/netstat/inet.c tcp_stats (incl. syncache, hostcache, sack, ecn,
      tcp-signature, pmtud, "TCP connection count by state"), udp_stats, ip_stats,
      icmp_stats (output-histogram list), igmp_stats, arp_stats, in main.c protox order.
  sysctl_dev.vtnet.0.{before,after}.txt
      sbin/sysctl/sysctl.c show_var ("name: value"), subr_bus.c device_sysctl_init (%desc
      %driver %location %pnpinfo %parent; their string contents are illustrative),
      sys/dev/virtio/network/if_vtnet.c vtnet_setup_sysctl, vtnet_setup_stat_sysctl,
      vtnet_setup_queue_sysctl -> vtnet_setup_rxq_sysctl / vtnet_setup_txq_sysctl.
  sysctl_dev.em.0.iflib.txt
      sys/net/iflib.c iflib_add_device_sysctl_pre / iflib_add_device_sysctl_post
      (txq%d nodes, r_* mp_ring counters, ring_state from mp_ring_state_handler).
  vmstat_-i.vtnet.txt, vmstat_-ia.vtnet.txt, vmstat_-i.em.txt
      usr.bin/vmstat/vmstat.c dointr/print_intrcnts ("%-*s %20lu %10lu", Total row),
      names from sys/x86/x86/intr_machdep.c intrcnt_setname (padded to MAXCOMLEN 19),
      kern_intr.c event "irq%d:" + handler names; virtio_pci (virtio_pci.c) registers
      its MSI-X vectors without bus_describe_intr; em_if_msix_intr_assign "rxq%d"/"aq".
  sysctl_-n_kern.cp_times.txt
      sys/kern/kern_clock.c sysctl_kern_cp_times (CPUSTATES longs per CPU, order of
      sys/sys/resource.h CP_USER CP_NICE CP_SYS CP_INTR CP_IDLE), sysctl.c " " separator.
  lockstat_sleep_10.txt, lockstat_-p_sleep_10.txt
      cddl/contrib/opensolaris/cmd/lockstat/lockstat.c report_stats: section title
      "%s: %.0f events in %.3f seconds (%.0f events/sec)", header
      "%5s %4s %4s %4s %8s %-22s %-24s", 79 dashes, rows "%5llu %3.0f%% %3.0f%% %4.2f %8s
      %-22s %-24s" (nsec = ls_time / ls_count), and -p rows "%u %u %s %s %f %llu"
      (ls_time total); lock = stringof(lo_name) on FreeBSD (dprog_addevent).
  lockstat_-C_-s_8_sleep_3.drops.txt, lockstat_-C_sleep_10.head_lost.txt
      the same with -s 8 (report_stats: dashes and header per row, "%10llu |%s%s %-9u "
      histogram lines, "%15s %-36s %-24s" stack lines) and lockstat's stderr (drophandler
      "lockstat: warning: %s" with libdtrace dt_handle.c dt_handle_cpudrop's "%llu %sdrop%s
      on CPU %d", main's "ran out of data records (use -n for more)"); a report whose head
      (first title and header) is lost.
  lockstat_man/*.txt
      real FreeBSD outputs: the EXAMPLES of cddl/contrib/opensolaris/cmd/lockstat/lockstat.1
      (see lockstat_man/README.md).
  dtrace_vtnet_bufring.{ok,noprobe}.txt
      printa lines of harness.parsers.freebsd.VTNET_BUFRING_DROPS_D; libdtrace dt_cc.c
      "probe description %s:%s:%s:%s does not match any probes" as dtrace -s reports it.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from harness.parsers import freebsd as F
from harness.parsers.linux import LockRecord
from harness.counters.samples import delta

FIX = Path(__file__).parent / "fixtures" / "freebsd"
_spec = importlib.util.spec_from_file_location("freebsd_fixture_gen", FIX / "generate.py")
GEN = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(GEN)


def fixture(name) -> str:
    """The tool's output, without the header naming the command and its FreeBSD source."""
    return GEN.strip_header((FIX / name).read_text())


def by(samples, native, queue=None, cpu=None, source=None):
    hits = [s for s in samples if s.native_name == native and s.queue == queue
            and s.cpu == cpu and (source is None or s.source == source)]
    assert len(hits) == 1, (native, queue, cpu, hits)
    return hits[0]


# --------------------------------------------------------------------------- netstat -i
NETSTAT_I_BEFORE = "netstat_--libxo_json_-i_-d_-b_-I_vtnet0.before.json"
NETSTAT_I_AFTER = "netstat_--libxo_json_-i_-d_-b_-I_vtnet0.after.json"


def test_netstat_i_link_row_and_duplicate_dropped_packets():
    text = fixture(NETSTAT_I_AFTER)
    s = F.parse_netstat_interface_json(text, "vtnet0")
    # the first "dropped-packets" (if_iqdrops) is rx; plain json.loads keeps the LAST one
    assert json.loads(text)["statistics"]["interface"][0]["dropped-packets"] == 0
    assert by(s, "dropped-packets").value == 4
    assert by(s, "dropped-packets").metric == "rx_drops"
    assert by(s, "dropped-packets[2]").value == 0
    assert by(s, "dropped-packets[2]").metric == "tx_drops"
    # link row, not the inet row (903494 / 1799910 there)
    assert by(s, "received-packets").value == 903517
    assert by(s, "sent-packets").value == 1799944
    assert by(s, "sent-packets").metric == "tx_packets"
    assert by(s, "sent-bytes").value == 2710280512
    assert by(s, "sent-bytes").unit == "bytes"
    assert by(s, "mtu").kind == "gauge"
    assert {x.native_name for x in s} == {
        "mtu", "received-packets", "received-errors", "dropped-packets", "received-bytes",
        "sent-packets", "send-errors", "sent-bytes", "collisions", "dropped-packets[2]"}


def test_netstat_i_second_dropped_packets_is_output_drops():
    text = ('{"statistics": {"interface": [{"name":"em0","flags":"0x8843","mtu":1500,'
            '"network":"<Link#2>","address":"52:54:00:12:34:56","received-packets":10,'
            '"received-errors":0,"dropped-packets":7,"received-bytes":1000,'
            '"sent-packets":20,"send-errors":1,"sent-bytes":2000,"collisions":0,'
            '"dropped-packets":42}]}\n}\n')
    s = F.parse_netstat_interface_json(text, "em0")
    assert by(s, "dropped-packets").value == 7
    assert by(s, "dropped-packets[2]").value == 42
    assert by(s, "dropped-packets[2]").metric == "tx_drops"
    assert by(s, "send-errors").metric == "tx_errors"


def test_netstat_i_delta_and_missing_interface():
    before = F.parse_netstat_interface_json(fixture(NETSTAT_I_BEFORE), "vtnet0")
    after = F.parse_netstat_interface_json(fixture(NETSTAT_I_AFTER), "vtnet0")
    d = delta(before, after)
    assert by(d, "sent-packets").value == 1799944 - 1515
    assert by(d, "received-bytes").value == 59932871 - 1603118
    assert by(d, "mtu").value == 1500                     # gauge: after value
    with pytest.raises(ValueError):
        F.parse_netstat_interface_json(fixture(NETSTAT_I_AFTER), "vtnet1")


# --------------------------------------------------------------------------- netstat -s
def test_netstat_s_tx_counters():
    s = F.parse_netstat_stats_json(fixture("netstat_--libxo_json_-s_-f_inet.json"))
    assert by(s, "tcp.sent-packets").value == 1803355
    assert by(s, "tcp.sent-packets").metric == "tcp_sent_packets"
    assert by(s, "tcp.sent-retransmitted-packets").value == 4211
    assert by(s, "tcp.sent-retransmitted-packets").metric == "tcp_retransmitted_packets"
    assert by(s, "tcp.sent-data-bytes").unit == "bytes"
    assert by(s, "tcp.sack.segment-retransmits").value == 4192
    assert by(s, "udp.output-packets").value == 58
    assert by(s, "udp.output-packets").metric == "udp_sent_datagrams"
    assert by(s, "ip.sent-packets").value == 1803461
    assert by(s, "ip.discard-no-mbufs").value == 12
    assert by(s, "ip.discard-no-mbufs").metric == "ip_out_drops_nobufs"
    # nested containers, list instances named by their "name" key, gauges
    est = by(s, "tcp.TCP connection count by state.ESTABLISHED")
    assert (est.value, est.kind) == (5, "gauge")
    assert by(s, "tcp.syncache.completed").kind == "counter"
    assert by(s, "icmp.output-histogram.destination unreachable.count").value == 3
    assert by(s, "arp.received-packers").value == 6
    assert not [x for x in s if x.native_name == "icmp.icmp-address-responses"]
    # tcp 63 + nested 36 + 11 states, udp 12, ip 29, icmp 2+1+9, igmp 16, arp 9
    assert len(s) == 63 + 36 + 11 + 12 + 29 + 12 + 16 + 9


def test_netstat_s_requires_statistics():
    with pytest.raises(ValueError):
        F.parse_netstat_stats_json('{"tcp": {"sent-packets": 1}}')


# --------------------------------------------------------------------------- sysctl vtnet
def test_sysctl_vtnet_per_queue_and_delta():
    before = F.parse_sysctl(fixture("sysctl_dev.vtnet.0.before.txt"))
    after = F.parse_sysctl(fixture("sysctl_dev.vtnet.0.after.txt"))
    tx1 = by(after, "dev.vtnet.0.txq1.opackets", queue=1)
    assert (tx1.metric, tx1.value, tx1.unit) == ("tx_packets", 887203, "packets")
    assert by(after, "dev.vtnet.0.txq0.obytes", queue=0).metric == "tx_bytes"
    assert by(after, "dev.vtnet.0.txq0.rescheduled", queue=0).metric == "tx_task_rescheduled"
    assert by(after, "dev.vtnet.0.rxq0.iqdrops", queue=0).metric == "rx_drops"
    assert by(after, "dev.vtnet.0.tx_defragged").value == 12
    assert by(after, "dev.vtnet.0.tx_defrag_failed").metric == "tx_drops_defrag_failed"
    assert by(after, "dev.vtnet.0.tx_task_rescheduled").metric == \
        "tx_task_rescheduled_at_attach"
    assert by(after, "dev.vtnet.0.act_vq_pairs").kind == "gauge"
    # strings (%desc, %pnpinfo, the empty %location) are not samples
    assert not [x for x in after if "%" in x.native_name]
    d = delta(before, after)
    assert by(d, "dev.vtnet.0.txq0.opackets", queue=0).value == 912741 - 1204
    assert by(d, "dev.vtnet.0.txq1.obytes", queue=1).value == 1332078646 - 40212
    assert sum(x.value for x in d if x.metric == "tx_packets") == \
        (912741 - 1204) + (887203 - 311)
    assert by(d, "dev.vtnet.0.act_vq_pairs").value == 2


# --------------------------------------------------------------------------- sysctl iflib
def test_sysctl_iflib_mp_ring_counters():
    s = F.parse_sysctl(fixture("sysctl_dev.em.0.iflib.txt"))
    drops0 = by(s, "dev.em.0.iflib.txq0.r_drops", queue=0)
    assert (drops0.metric, drops0.value, drops0.unit) == ("tx_drops_ring", 2291, "packets")
    assert by(s, "dev.em.0.iflib.txq1.r_drops", queue=1).value == 1817
    assert by(s, "dev.em.0.iflib.txq0.r_stalls", queue=0).metric == "tx_ring_stalls"
    assert by(s, "dev.em.0.iflib.txq0.r_restarts", queue=0).metric == "tx_restarts"
    enq = by(s, "dev.em.0.iflib.txq0.r_enqueues", queue=0)
    assert (enq.metric, enq.value) == ("tx_ring_enqueues", 1188402)
    assert by(s, "dev.em.0.iflib.txq1.no_desc_avail", queue=1).value == 906
    assert by(s, "dev.em.0.iflib.txq0.txq_in_use", queue=0).kind == "gauge"
    st1 = by(s, "dev.em.0.iflib.txq1.ring_state", queue=1)
    assert (st1.value, st1.kind, st1.metric) == (2, "gauge", "tx_ring_state")   # STALLED
    assert by(s, "dev.em.0.iflib.txq0.ring_state", queue=0).value == 0         # IDLE
    rx = by(s, "dev.em.0.iflib.rxq1.rxq_fl0.credits", queue=1)
    assert rx.metric == rx.native_name and rx.kind == "gauge"
    assert by(s, "dev.em.0.iflib.override_ntxds").kind == "gauge"
    assert not [x for x in s if x.native_name.endswith("driver_version")]


def test_sysctl_iflib_zero_padded_queue_and_ring_state_string():
    text = ("dev.ix.0.iflib.txq03.r_drops: 5\n"
            "dev.ix.0.iflib.txq11.r_drops: 9\n"
            "dev.ix.0.iflib.txq11.ring_state: pidx_head: -001 pidx_tail: 0002 cidx: 0002 "
            "state: ABDICATED\n"
            "dev.ix.0.iflib.txq12.ring_state: pidx_head: 0001 pidx_tail: 0001 cidx: 0001 "
            "state: UNKNOWN\n")
    s = F.parse_sysctl(text)
    assert by(s, "dev.ix.0.iflib.txq03.r_drops", queue=3).value == 5
    assert by(s, "dev.ix.0.iflib.txq11.r_drops", queue=11).metric == "tx_drops_ring"
    assert by(s, "dev.ix.0.iflib.txq11.ring_state", queue=11).value == 3
    assert math.isnan(by(s, "dev.ix.0.iflib.txq12.ring_state", queue=12).value)
    st = F.parse_ring_state("pidx_head: -001 pidx_tail: 0002 cidx: 0002 state: ABDICATED")
    assert st == {"pidx_head": 65535, "pidx_tail": 2, "cidx": 2, "state": "ABDICATED",
                  "state_code": 3}
    assert F.parse_ring_state("garbage") is None


# --------------------------------------------------------------------------- vmstat -i
def test_vmstat_i_rows_total_and_rate():
    s = F.parse_vmstat_i(fixture("vmstat_-i.vtnet.txt"))
    row = by(s, "irq27: virtio_pci1", source="vmstat -i")
    assert (row.metric, row.value, row.queue, row.kind) == ("irq_count", 458207, None,
                                                             "counter")
    assert by(s, "irq27: virtio_pci1", source="vmstat -i rate").value == 282
    assert by(s, "cpu1:timer", source="vmstat -i").value == 790127
    assert by(s, "Total", source="vmstat -i").value == 2515763
    counts = [x for x in s if x.source == "vmstat -i" and x.native_name != "Total"]
    assert sum(x.value for x in counts) == 2515763
    # -i hides the zero config vectors: roles cannot be assigned from it
    assert F.virtio_msix_roles(s, "virtio_pci1") == {}


def test_vmstat_i_iflib_queue_vectors():
    s = F.parse_vmstat_i(fixture("vmstat_-i.em.txt"))
    assert by(s, "irq27: em0:rxq1", queue=1, source="vmstat -i").value == 298771
    assert by(s, "irq26: em0:rxq0", queue=0, source="vmstat -i").value == 310922
    assert by(s, "irq28: em0:aq", source="vmstat -i").queue is None


def test_vmstat_ia_virtio_vector_roles():
    s = F.parse_vmstat_i(fixture("vmstat_-ia.vtnet.txt"))
    assert by(s, "???", source="vmstat -i").value == 0
    assert by(s, "stray irq30", source="vmstat -i").value == 0
    roles = F.virtio_msix_roles(s, "virtio_pci1")
    assert roles == {"irq26: virtio_pci1": ("config", None),
                     "irq27: virtio_pci1": ("rx", 0), "irq28: virtio_pci1": ("tx", 0),
                     "irq29: virtio_pci1": ("rx", 1), "irq30: virtio_pci1": ("tx", 1)}
    tx = [by(s, n, source="vmstat -i").value for n, r in roles.items() if r[0] == "tx"]
    assert tx == [611, 577]
    # virtio_pci0 is vtblk (config + one virtqueue): not a vtnet layout
    assert F.virtio_msix_roles(s, "virtio_pci0") == {}


# --------------------------------------------------------------------------- cp_times
def test_cp_times_per_cpu_and_total():
    s = F.parse_cp_times(fixture("sysctl_-n_kern.cp_times.txt"))
    assert len(s) == 15
    intr1 = by(s, "intr", queue=1)
    assert (intr1.metric, intr1.value, intr1.unit) == ("cpu_irq", 4020, "ticks")
    assert by(s, "sys", queue=0).metric == "cpu_system"
    assert by(s, "idle").value == 198217 + 201921
    assert by(s, "nice").value == 12
    assert len(F.parse_cp_times("kern.cp_times: 1 2 3 4 5 0 0 0 0 0\n", ncpu=1)) == 10
    with pytest.raises(ValueError):
        F.parse_cp_times("1 2 3 4 5 6\n")
    with pytest.raises(ValueError):
        F.parse_cp_times(fixture("sysctl_-n_kern.cp_times.txt"), ncpu=4)


# --------------------------------------------------------------------------- lockstat
def test_lockstat_report_rows():
    rep = F.parse_lockstat(fixture("lockstat_sleep_10.txt"))
    recs = rep.records
    assert len(recs) == 8 and rep.problems() == []
    assert [(s.title, s.events, s.rows, s.coverage) for s in rep.sections] == [
        ("Adaptive mutex spin", 1840, 5, 1.0), ("Adaptive mutex block", 78, 2, 1.0), ("Spin lock spin", 9, 1, 1.0)]
    first = recs[0]
    assert first == F.LockstatRecord("Adaptive mutex spin", None, 912, 3071, 912 * 3071,
                                     "vtnet0-tx0", "vtnet_txq_tq_deferred+0x2d", 0.0)
    assert [r.section for r in recs].count("Adaptive mutex block") == 2
    spaced = next(r for r in recs if r.caller == "_sleep+0x1e5")
    assert (spaced.lock, spaced.count, spaced.nsec) == ("sleep mtxpool", 38, 501)
    spin = recs[-1]
    assert (spin.section, spin.lock, spin.nsec) == ("Spin lock spin", "sched lock 1", 570)


def test_lockstat_parseable_has_exact_totals():
    rep = F.parse_lockstat(fixture("lockstat_-p_sleep_10.txt"))
    recs = rep.records
    assert len(recs) == 8 and rep.sections == [] and rep.problems() == []     # -p prints no titles
    r = recs[5]
    assert (r.section, r.event, r.count, r.total_ns, r.nsec, r.lock, r.caller) == (
        "Adaptive mutex block", 1, 57, 1460001, 25614, "vtnet0-tx0",
        "vtnet_txq_tq_deferred+0x2d")
    assert recs[4].lock == "sleep mtxpool"
    # the report's count x average is low by the truncation of the average
    normal = F.parse_lockstat(fixture("lockstat_sleep_10.txt")).records
    assert normal[5].total_ns == 57 * 25614 == 1459998 < recs[5].total_ns


def test_lockstat_wide_average_and_long_lock_name():
    text = ("\nAdaptive mutex block: 3 events in 1.000 seconds (3 events/sec)\n\n"
            "Count indv cuml rcnt     nsec Lock                   Caller                  \n"
            + "-" * 79 + "\n"
            "    3 100% 100% 0.00 123456789 a very long lock name here tcp_output+0x10\n"
            + "-" * 79 + "\n")
    (r,) = F.parse_lockstat(text).records
    assert (r.nsec, r.lock, r.caller) == (123456789, "a very long lock name here",
                                          "tcp_output+0x10")


def test_lockstat_to_lock_records_shape():
    recs = F.lockstat_to_lock_records(F.parse_lockstat(fixture("lockstat_-p_sleep_10.txt")).records)
    assert all(isinstance(r, LockRecord) for r in recs)
    top = recs[0]
    assert top == LockRecord("vtnet0-tx0", "vtnet_txq_tq_deferred", "Adaptive mutex spin",
                             912, 2800925, None, F.LOCKSTAT_METHOD)
    block = next(r for r in recs if r.kind == "Adaptive mutex block"
                 and r.lock == "vtnet0-tx0")
    assert (block.contentions, block.wait_ns_total) == (57, 1460001)
    # rows differing only by caller offset are added up
    two = [F.LockstatRecord("Adaptive mutex spin", 0, 2, 10, 20, "vtnet0-tx0", "f+0x1", 0.0),
           F.LockstatRecord("Adaptive mutex spin", 0, 3, 10, 30, "vtnet0-tx0", "f+0x9", 0.0)]
    (m,) = F.lockstat_to_lock_records(two)
    assert (m.caller, m.contentions, m.wait_ns_total) == ("f", 5, 50)
    s = F.lockstat_samples(recs)
    w = by(s, "vtnet0-tx0 | vtnet_txq_tq_deferred | Adaptive mutex spin: wait_ns_total")
    assert (w.metric, w.value, w.unit) == ("lock_wait_ns", 2800925, "ns")


MAN = FIX / "lockstat_man"


def test_lockstat_man_example1_keeps_every_row_and_the_section_counts():
    """lockstat.1 Example 1 (real output; the page left rows out, marked "[...]"): every
    printed row is kept, each section keeps the event count its title states, and the
    coverage says how much of it the printed rows hold."""
    rep = F.parse_lockstat(fixture(MAN / "lockstat.1_example1_sleep_5.txt"))
    spin, block = rep.sections
    assert (spin.title, spin.events, spin.seconds, spin.rows) == ("Adaptive mutex spin", 41411, 5.011, 17)
    assert spin.printed == sum(r.count for r in rep.records if r.section == spin.title) == 37898
    assert spin.coverage == pytest.approx(37898 / 41411)
    assert (block.events, block.rows, block.printed, block.coverage) == (10, 6, 10, 1.0)
    assert rep.records[0] == F.LockstatRecord("Adaptive mutex spin", None, 13750, 72, 13750 * 72,
                                              "vm_page_queue_free_mtx", "vm_page_free_toq+0x12e", 0.0)
    assert all(r.quantity == "wait" for r in rep.records)
    s = {x.native_name: (x.metric, x.value, x.unit, x.kind) for x in F.lockstat_section_samples(rep)}
    assert s["Adaptive mutex spin: events"] == ("lockstat_section_events", 41411, "count", "gauge")
    assert s["Adaptive mutex spin: printed rows' events / events"][:3] == ("lockstat_coverage", 37898 / 41411, "ratio")
    assert s["Adaptive mutex block: printed rows' events / events"][1] == 1.0
    (cut,) = rep.problems()        # the block section is whole; the spin section is not
    assert cut.startswith("lockstat Adaptive mutex spin: printed rows hold 37898 of the section's 41411 events (92%)")


def test_lockstat_hold_sections_are_holds_not_waits():
    """lockstat.1 Example 2 (`-H -D 10`): hold sections measure how long a lock was held.
    They become holds/hold_ns_total, never contentions or lock_wait_ns; -D 10 printed 41 %
    and 33 % of the stated events, which problems() names."""
    rep = F.parse_lockstat(fixture(MAN / "lockstat.1_example2_-H_-D_10_sleep_1.txt"))
    assert [(s.title, s.events, s.rows) for s in rep.sections] == [
        ("Adaptive mutex hold", 109589, 10), ("R/W writer hold", 64314, 10)]
    assert [round(s.coverage, 2) for s in rep.sections] == [0.41, 0.33]
    assert {r.quantity for r in rep.records} == {"hold"}
    locks = F.lockstat_to_lock_records(rep.records)
    assert all(r.contentions == 0 and r.wait_ns_total == 0 for r in locks)
    pvh = [r for r in locks if r.lock == "pvh_global_lock" and r.caller == "pmap_enter"]
    assert [(r.kind, r.holds, r.hold_ns_total) for r in pvh] == [("R/W writer hold", 4668, 4668 * 3313)]
    assert sum(r.holds for r in locks) == sum(s.printed for s in rep.sections)
    s = F.lockstat_samples(locks)
    assert {x.metric for x in s} == {"lock_holds", "lock_hold_ns"}
    assert [p.split(":")[0] for p in rep.problems()] == ["lockstat Adaptive mutex hold", "lockstat R/W writer hold"]
    # the same in -p form: the event number (32 = Adaptive mutex hold) says hold
    (p,) = F.parse_lockstat("32 8998 0xfffff8000c7eb180 uma_dbg_getslab+0xd4 0.000000 5551766\n").records
    assert (p.section, p.quantity, p.total_ns) == ("Adaptive mutex hold", "hold", 5551766)


def test_lockstat_stack_layout_rows_and_histograms():
    """lockstat.1 Example 3 (-s 50): a header per row, then a time histogram and the stack;
    only the rows are lock numbers."""
    rep = F.parse_lockstat(fixture(MAN / "lockstat.1_example3_-H_-f_tcp_input_-s_50_-D_10_sleep_1.txt"))
    assert [(r.count, r.nsec, r.lock, r.caller) for r in rep.records] == [
        (32, 1631, "0xfffff800686f50d8", "tcp_do_segment+0x284b"), (29, 4851, "0xfffff800686f50d8", "sowakeup+0xf8")]
    (sec,) = rep.sections
    assert (sec.events, sec.printed) == (68, 61) and rep.errors == [] and rep.warnings == []


def test_lockstat_rows_before_any_title_are_an_error_not_no_contention():
    rep = F.parse_lockstat(fixture("lockstat_-C_sleep_10.head_lost.txt"))
    assert rep.records[0].section == "Adaptive mutex block"      # rows after the next title are kept
    assert len(rep.records) == 3
    assert rep.errors == ["lockstat: 5 row(s) before any section title, not counted (the report's start is missing)"]
    assert rep.errors[0] in rep.problems()
    # text that is not lockstat's report at all (the shell could not run it)
    bad = F.parse_lockstat("sh: /usr/sbin/lockstat: not found\n")
    assert bad.records == [] and len(bad.problems()) == 1 and "not found" in bad.problems()[0]
    assert F.parse_lockstat("").problems() == []       # lockstat prints nothing when nothing was recorded


def test_lockstat_stderr_warnings_mark_the_numbers_incomplete():
    """lockstat.c drophandler ("lockstat: warning: " + libdtrace's drop message) and main
    ("ran out of data records (use -n for more)"), captured with 2>&1 before the report."""
    rep = F.parse_lockstat(fixture("lockstat_-C_-s_8_sleep_3.drops.txt"))
    assert rep.warnings == ["lockstat: warning: 3417 aggregation drops on CPU 1",
                            "lockstat: warning: ran out of data records (use -n for more)"]
    assert rep.problems() == rep.warnings
    assert len(rep.records) == 7 and all(s.coverage == 1.0 for s in rep.sections)
    fatal = F.parse_lockstat("lockstat: failed to enable probes: DTrace requires additional privileges\n")
    assert fatal.errors and fatal.problems() == fatal.errors


def test_freebsd_driver_reports_lock_problems_by_name():
    from harness.guests import BootState, driver_class
    g = driver_class("freebsd").for_plan("virtio-net", BootState())
    drops = fixture("lockstat_-C_-s_8_sleep_3.drops.txt")
    assert g.lock_problems({}, {}, {"lockstat": drops})[1] == "lockstat: warning: ran out of data records (use -n for more)"
    assert g.lock_problems({}, {}, {"lockstat": fixture("lockstat_sleep_10.txt")}) == []
    assert g.lock_problems({}, {}, {}) == ["lockstat: no lockstat section in the sender output"]
    recs = g.parse_locks({}, {}, "m", {"lockstat": drops})
    assert recs and all(r.method == F.LOCKSTAT_METHOD for r in recs)
    # the driver runs lockstat without -D (every row) and reads its stderr from the same file
    g.state.lock_tracing = True
    script = g.senders_script([5201], 2, "198.18.0.1", 2, 1, 1, "tcp", 0)
    line = next(l for l in script.splitlines() if "lockstat" in l and "sleep" in l)
    assert " -D " not in line and line.endswith("> /tmp/xb/lockstat.txt 2>&1 &")


# --------------------------------------------------------------------------- dtrace
def test_dtrace_bufring_drops_ok():
    samples, reason = F.parse_dtrace_bufring_drops(fixture("dtrace_vtnet_bufring.ok.txt"))
    assert reason is None
    drops = by(samples, "fbt::vtnet_txq_mq_start:return arg1 == ENOBUFS")
    assert (drops.metric, drops.value, drops.kind) == ("tx_drops_ring", 3187, "gauge")
    calls = by(samples, "fbt::vtnet_txq_mq_start:entry")
    assert (calls.metric, calls.value) == ("tx_if_transmit_calls", 1843221)


def test_dtrace_bufring_drops_probe_missing():
    samples, reason = F.parse_dtrace_bufring_drops(
        fixture("dtrace_vtnet_bufring.noprobe.txt"))
    assert samples == []
    assert "fbt::vtnet_txq_mq_start:entry does not match any probes" in reason


def test_dtrace_bufring_drops_errors_and_warnings():
    samples, reason = F.parse_dtrace_bufring_drops(
        "dtrace: failed to initialize dtrace: DTrace device not available on system\n")
    assert samples == [] and "DTrace device not available" in reason
    samples, reason = F.parse_dtrace_bufring_drops(
        "dtrace: 12 aggregation drops on CPU 1\n"
        "xb_vtnet_mq_start_calls 10\nxb_vtnet_bufring_drops 2\n")
    assert len(samples) == 2 and reason == "12 aggregation drops on CPU 1"
    samples, reason = F.parse_dtrace_bufring_drops("xb_vtnet_mq_start_calls 10\n")
    assert len(samples) == 1 and reason == "missing: xb_vtnet_bufring_drops"


def test_dtrace_script_text():
    d = F.VTNET_BUFRING_DROPS_D
    assert "fbt::vtnet_txq_mq_start:return\n/arg1 == 55/" in d      # ENOBUFS
    assert d.splitlines()[8] == "fbt::vtnet_txq_mq_start:entry"       # "line 9" above
    assert 'printa("xb_vtnet_bufring_drops %@u\\n", @drops);' in d
    assert F.vtnet_bufring_drops_d(10).endswith("tick-10s\n{\n\texit(0);\n}\n")
    assert F.vtnet_bufring_drops_d() == d


# --------------------------------------------------------------------------- fixtures
def test_fixtures_are_what_generate_py_renders():
    rendered = GEN.render_all()
    for name, text in rendered.items():
        on_file = (FIX / name).read_text()
        assert on_file == GEN.with_header(name, text), name
        # every fixture names its command and the freebsd-src file(s) whose format it follows
        head = [l for l in on_file.splitlines() if l.startswith(GEN.HEADER_PREFIX)]
        assert len(head) == 2 and "`" in head[0] and "format from freebsd-src: " in head[1], name
        assert fixture(name) == text, name
    on_disk = {p.name for p in FIX.iterdir() if p.suffix in (".txt", ".json")}
    assert on_disk == set(rendered)
