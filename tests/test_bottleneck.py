"""The bottleneck verdict (harness.run.bottleneck), pure: every verdict from inputs that go through
the real parsers and counting rules. The guest CPU readings start from the recorded guest
/proc/stat (tests/fixtures/linux/guest) and FreeBSD kern.cp_times fixtures, the interval is
added per mode, and the pair is parsed, differenced (samples.delta) and split by
counting.cpu_split, as in a run; qdisc rows come from the recorded tc -s -j fixtures; iperf3's
CPU figures from the recorded iperf3 -J output; host thread and peer CPU from /proc stat lines
through validity.host_thread_cpu and peer.peer_metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.run import bottleneck as B
from harness.counters.counting import rows_frame
from harness.parsers.freebsd import parse_cp_times
from harness.parsers.iperf3 import parse_iperf3_json
from harness.parsers.linux import parse_proc_stat_cpu, parse_tc_qdisc_json
from harness.parsers.peer import peer_metrics, snmp_counters
from harness.counters.samples import delta
from harness.run.validity import failed_checks, host_thread_cpu, is_valid, queue_spread

FIX = Path(__file__).parent / "fixtures"
LINUX = FIX / "linux"
PROC_STAT = (LINUX / "guest/virtio_net_q2/proc_stat.txt").read_text()
IPERF3 = parse_iperf3_json((LINUX / "iperf3_-J.tcp.json").read_text())
MODES = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
RUN_S = 10.0
MEASURED_S = 10.0


def _advance(text: str, per_cpu: dict[int, dict[str, int]]) -> str:
    """The /proc/stat text after an interval: per CPU, jiffies added to the named modes (the
    all-CPU line gets the sum)."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if f and f[0].startswith("cpu"):
            cpus = per_cpu if f[0] == "cpu" else {int(f[0][3:]): per_cpu.get(int(f[0][3:]), {})}
            for cpu, add in cpus.items():
                for mode, n in (add if f[0] != "cpu" else {}).items():
                    f[1 + MODES.index(mode)] = str(int(f[1 + MODES.index(mode)]) + n)
            if f[0] == "cpu":
                for add in per_cpu.values():
                    for mode, n in add.items():
                        f[1 + MODES.index(mode)] = str(int(f[1 + MODES.index(mode)]) + n)
            line = " ".join(f)
        out.append(line)
    return "\n".join(out)


def guest_cpu(per_cpu: dict[int, dict[str, int]]):
    return delta(parse_proc_stat_cpu(PROC_STAT), parse_proc_stat_cpu(_advance(PROC_STAT, per_cpu)))


KERNEL_BUSY = {"user": 30, "system": 800, "softirq": 150, "idle": 20}     # of 1000 jiffies = 10 s
USER_BUSY = {"user": 800, "system": 150, "softirq": 20, "idle": 30}
HALF_IDLE = {"user": 20, "system": 300, "softirq": 80, "idle": 600}


def _stat_line(pid: int, name: str, utime: int, stime: int) -> str:
    # /proc/<pid>/task/<tid>/stat: pid (comm) state ppid ... field 14 utime, 15 stime
    rest = ["S"] + ["0"] * 10 + [str(utime), str(stime)] + ["0"] * 30
    return f"{pid} ({name}) " + " ".join(rest)


def host_rows(busy_s: dict[str, float]) -> list[dict]:
    """host_thread_cpu_s rows as the runner writes them, from two readings of thread stat lines."""
    names = ["CPU 0/TCG", "CPU 1/TCG", "qemu-system-x86", "IO mon_iothread", "call_rcu"]
    before = {str(i): _stat_line(100 + i, n, 1000, 500) for i, n in enumerate(names)}
    after = {str(i): _stat_line(100 + i, n, 1000 + int(busy_s.get(n, 0.0) * 100), 500) for i, n in enumerate(names)}
    b, a = host_thread_cpu(before), host_thread_cpu(after)
    return [{"source": B.HOST_CPU_SOURCE, "native_name": n, "metric": "host_thread_cpu_s", "value": a[n] - b[n],
             "queue": None} for n in a]


SNMP = ("Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n"
        "Udp: {indg} 0 {inerr} 39 {rcvbuf} 0 0 0 0\n"
        "TcpExt: SyncookiesSent TCPToZeroWindowAdv TCPRcvQDrop TCPBacklogDrop\n"
        "TcpExt: 0 {zw} 0 0\n")


def peer_rows(server_cpu_s: float = 0.3, rcvbuf_errors: int = 0, rx_packets: float = 1e6) -> list[dict]:
    before = {"servers": {"5201": _stat_line(900, "iperf3", 0, 0)},
              "net": SNMP.format(indg=100, inerr=0, rcvbuf=0, zw=0)}
    after = {"servers": {"5201": _stat_line(900, "iperf3", int(server_cpu_s * 50), int(server_cpu_s * 50))},
             "net": SNMP.format(indg=100 + rx_packets, inerr=rcvbuf_errors, rcvbuf=rcvbuf_errors, zw=3)}
    rows = [{"source": s, "native_name": n, "metric": m, "value": v, "queue": None}
            for m, v, u, s, n in peer_metrics(before, after)]
    return rows + [{"source": "peer ip -s -j link (tap)", "native_name": "stats64.rx.packets",
                    "metric": "peer_rx_packets", "value": rx_packets, "queue": None},
                   {"source": "peer ip -s -j link (tap)", "native_name": "stats64.rx.dropped",
                    "metric": "peer_rx_dropped", "value": 0.0, "queue": None}]


def qdisc(requeues: int = 0):
    before = (LINUX / "tc_-s_-j_qdisc_show.before.json").read_text()
    after = json.loads((LINUX / "tc_-s_-j_qdisc_show.after.json").read_text())
    after[0]["requeues"] += requeues                 # the root mq (its children sum into it)
    return delta(parse_tc_qdisc_json(before), parse_tc_qdisc_json(json.dumps(after)))


def tx_rows(packets: float = 1e6) -> list[dict]:
    return [{"source": "ip -s -j link", "native_name": "stats64.tx.packets", "metric": "tx_packets",
             "value": packets, "queue": None}]


def judge(cpu=None, host=None, peer=None, requeues=0, lock_wait_ns=None, rate_limited=False, iperf3=(IPERF3,),
          sender_cpus=(0, 1)):
    rows = list(guest_cpu(cpu if cpu is not None else {0: KERNEL_BUSY, 1: KERNEL_BUSY}))
    rows += qdisc(requeues) + tx_rows() + host_rows(host or {"CPU 0/TCG": 9.5, "CPU 1/TCG": 9.5,
                                                             "qemu-system-x86": 2.0})
    rows += peer if peer is not None else peer_rows()
    if lock_wait_ns is not None:
        rows.append({"source": "lock:contention hist", "native_name": "xb_lock_wait.wait_ns", "metric": "lock_wait_ns",
                     "value": lock_wait_ns, "queue": None})
    inp = B.inputs_from_rows(rows_frame(rows), list(sender_cpus), list(iperf3), MEASURED_S, RUN_S,
                             rate_limited=rate_limited)
    return B.decide(inp)


def test_kernel_bound_senders_are_the_tx_path():
    b = judge()
    assert b["verdict"] == "tx_path", b
    d = b["inputs"]["derived"]
    assert d["sender_busy"] >= B.SENDER_BUSY and d["kernel_share_of_busy"] >= B.KERNEL_SHARE
    # every number used is recorded, and the thresholds beside it
    assert set(b["inputs"]["sender_cpus"]) == {"0", "1"} and b["thresholds"] == B.THRESHOLDS
    assert b["inputs"]["iperf3_cpu_pct"]["host_system"] == [round(IPERF3.cpu_host_system, 2)]
    assert b["inputs"]["host_threads"]["CPU 0/TCG"]["kind"] == "vcpu"
    assert b["inputs"]["host_threads"]["qemu-system-x86"]["kind"] == "io"
    json.dumps(b)       # it goes into cells.validity as JSON
    v = {"conservation": {"ok": True}, "bottleneck": b}
    assert is_valid(v) and failed_checks(v) == []


def test_user_bound_senders_are_the_application():
    b = judge(cpu={0: USER_BUSY, 1: USER_BUSY})
    assert b["verdict"] == "application", b
    assert not is_valid({"conservation": {"ok": True}, "bottleneck": b})
    assert failed_checks({"conservation": {"ok": True}, "bottleneck": b}) == ["bottleneck"]


def test_lock_wait_share_names_the_tx_lock():
    # senders busy 98 % of 10 s on 2 CPUs = 19.6 CPU-s; 6 s of lock wait is above a fifth of it
    b = judge(lock_wait_ns=6e9)
    assert b["verdict"] == "tx_lock", b
    assert b["inputs"]["derived"]["lock_wait_share"] >= B.LOCK_WAIT_SHARE
    assert is_valid({"conservation": {"ok": True}, "bottleneck": b})      # inside the path
    # the same cell with little lock wait is the TX path
    assert judge(lock_wait_ns=1e8)["verdict"] == "tx_path"


def test_busy_io_thread_is_host_io():
    b = judge(host={"CPU 0/TCG": 9.5, "CPU 1/TCG": 9.5, "qemu-system-x86": 9.8})
    assert b["verdict"] == "host_io", b
    assert b["inputs"]["derived"]["host_io_thread"] == "qemu-system-x86"
    assert not is_valid({"conservation": {"ok": True}, "bottleneck": b})
    # a busy vCPU thread is not host I/O
    assert judge(host={"CPU 0/TCG": 10.0, "CPU 1/TCG": 10.0, "qemu-system-x86": 1.0})["verdict"] == "tx_path"


def test_peer_cpu_or_peer_drops_name_the_peer():
    b = judge(peer=peer_rows(server_cpu_s=9.6))
    assert b["verdict"] == "peer" and "host CPU" in b["reason"], b
    b = judge(peer=peer_rows(rcvbuf_errors=5000))
    assert b["verdict"] == "peer" and "dropped" in b["reason"], b
    assert b["inputs"]["peer_udp_rcvbuf_errors"] == 5000
    assert not is_valid({"conservation": {"ok": True}, "bottleneck": b})
    # iperf3's own remote CPU figure counts too (the server's rusage)
    hot = parse_iperf3_json((LINUX / "iperf3_-J.tcp.json").read_text().replace('"remote_total":\t43.5', '"remote_total":\t97.5'))
    assert hot.cpu_remote_total > 90 and judge(iperf3=(hot,))["verdict"] == "peer"


def test_zero_windows_are_recorded_not_judged():
    b = judge()
    assert b["inputs"]["peer_tcp_zero_window_adv"] == 3 and b["verdict"] == "tx_path"


def test_requeues_with_idle_cpu_are_the_ring_or_link():
    b = judge(cpu={0: HALF_IDLE, 1: HALF_IDLE}, requeues=500)
    assert b["verdict"] == "ring_link", b
    assert b["inputs"]["tx_requeues"] == 500 and b["inputs"]["derived"]["ring_events_per_mpkt"] >= B.RING_EVENTS_PER_MPKT
    # the same requeues on a CPU-bound sender: a symptom of the TX path, not its limit
    assert judge(requeues=500)["verdict"] == "tx_path"


def test_idle_sender_without_events_is_undetermined():
    b = judge(cpu={0: HALF_IDLE, 1: HALF_IDLE})
    assert b["verdict"] == "undetermined" and "40%" in b["reason"], b
    paced = judge(cpu={0: HALF_IDLE, 1: HALF_IDLE}, rate_limited=True)
    assert paced["verdict"] == "undetermined" and "iperf3 -b" in paced["reason"]
    assert is_valid({"conservation": {"ok": True}, "bottleneck": paced})
    # no per-CPU rows at all: said so
    assert judge(cpu={}, sender_cpus=(7,))["verdict"] == "undetermined"


def test_busy_over_the_snapshot_interval_is_scaled_to_the_run():
    # 89 % busy over a 3.49 s sender command around a 3 s iperf3 run: CPU-bound while it ran
    inp = {"sender_cpus": {"0": {"busy": 0.89, "kernel": 0.80, "user": 0.09, "softirq": 0.1, "steal": 0.0,
                                 "idle": 0.11}}, "measured_s": 3.49, "run_s": 3.0}
    b = B.decide(inp)
    assert b["verdict"] == "tx_path" and b["inputs"]["derived"]["sender_busy_interval"] == 0.89, b
    assert B.decide({**inp, "run_s": 3.49})["verdict"] == "undetermined"


def test_freebsd_cp_times_split_kernel_from_user():
    """FreeBSD has no softirq state: sys + intr is kernel time. The recorded kern.cp_times is the
    before reading; the after adds a kernel-bound interval on CPU 0 and 1."""
    text = [l for l in (FIX / "freebsd/sysctl_-n_kern.cp_times.txt").read_text().splitlines() if not l.startswith("#")][0]
    vals = [int(x) for x in text.split()]
    after = list(vals)
    for cpu in (0, 1):          # CPUSTATES: user nice sys intr idle
        after[cpu * 5 + 0] += 20
        after[cpu * 5 + 2] += 900
        after[cpu * 5 + 3] += 60
        after[cpu * 5 + 4] += 20
    rows = delta(parse_cp_times(text), parse_cp_times(" ".join(map(str, after))))
    b = B.decide(B.inputs_from_rows(rows_frame(rows), [0, 1], [], MEASURED_S, RUN_S))
    assert b["verdict"] == "tx_path", b
    assert b["inputs"]["sender_cpus"]["0"]["softirq"] == 0.0


def test_snmp_pairs_parse():
    c = snmp_counters(SNMP.format(indg=5, inerr=1, rcvbuf=2, zw=4))
    assert c[("Udp", "RcvbufErrors")] == 2 and c[("TcpExt", "TCPToZeroWindowAdv")] == 4


@pytest.mark.parametrize("required, fails", [(False, False), (True, True)])
def test_queue_spread_fails_only_when_the_workload_requires_it(required, fails):
    qs = queue_spread({0: 1000, 1: 2}, 2, required)
    v = {"conservation": {"ok": True}, "queue_spread": qs, "bottleneck": judge()}
    assert qs["ok"] is False and ("queue_spread" in failed_checks(v)) == fails and is_valid(v) != fails


def test_sender_saturation_is_no_longer_a_veto():
    # an older run dir's validity: saturated, no bottleneck verdict
    v = {"conservation": {"ok": True}, "sender_saturation": {"saturated": True, "cpu_busy": {"0": 0.99}}}
    assert is_valid(v) and failed_checks(v) == []
    assert not is_valid({"conservation": {"ok": False}})


def _fake_proc(root: Path, qemu_pid: int, threads: dict[int, tuple[str, int]], others: dict[int, tuple[str, int]]):
    """A /proc tree: QEMU's own tasks (/proc/<pid>/task/<tid>/stat) and other processes
    (/proc/<pid>/comm + stat), e.g. kthreadd's vhost-net workers. Values: (comm, utime ticks)."""
    for tid, (name, ut) in threads.items():
        d = root / str(qemu_pid) / "task" / str(tid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "stat").write_text(_stat_line(tid, name, ut, 0))
    (root / str(qemu_pid) / "comm").write_text("qemu-system-x86\n")
    (root / str(qemu_pid) / "stat").write_text(_stat_line(qemu_pid, "qemu-system-x86", 0, 0))
    for pid, (name, ut) in others.items():
        d = root / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "comm").write_text(name + "\n")
        (d / "stat").write_text(_stat_line(pid, name, ut, 0))
    (root / "self").mkdir(exist_ok=True)      # non-numeric entries are not processes


@pytest.mark.parametrize("kthread", [True, False], ids=["vhost-kthread", "vhost-user-thread"])
def test_busy_vhost_worker_is_host_io(tmp_path, kthread):
    """Under KVM (vhost=on) the packets move in the vhost-net worker ``vhost-<qemu pid>``: a
    kernel thread before Linux 6.4 (outside QEMU's task list), a QEMU thread since. Both are
    read by host.qemu_thread_stats and judged as host I/O; another QEMU's worker is not ours."""
    from harness.run.host import qemu_thread_stats
    qemu = 4242
    own = {qemu: ("qemu-system-x86", 100), 4243: ("CPU 0/KVM", 100), 4244: ("CPU 1/KVM", 100)}
    worker = {5000: ("vhost-4242", 100)}
    stranger = {5001: ("vhost-999", 100), 5002: ("kworker/0:1", 100)}

    def read(extra_ticks: int) -> dict[str, str]:
        root = tmp_path / f"proc{extra_ticks}"
        cpu = {"CPU 0/KVM": 950, "CPU 1/KVM": 950, "vhost-4242": 980, "vhost-999": 990}
        bump = lambda d: {k: (n, t + (cpu.get(n, 0) if extra_ticks else 0)) for k, (n, t) in d.items()}  # noqa: E731
        _fake_proc(root, qemu, bump({**own, **(worker if not kthread else {})}),
                   bump({**(worker if kthread else {}), **stranger}))
        return qemu_thread_stats(qemu, proc=root)

    b, a = host_thread_cpu(read(0)), host_thread_cpu(read(1))
    assert "vhost-4242" in a and "vhost-999" not in a and "kworker/0:1" not in a
    rows = [{"source": B.HOST_CPU_SOURCE, "native_name": n, "metric": "host_thread_cpu_s", "value": a[n] - b[n],
             "queue": None} for n in a]
    rows += list(guest_cpu({0: KERNEL_BUSY, 1: KERNEL_BUSY})) + qdisc() + tx_rows() + peer_rows()
    v = B.decide(B.inputs_from_rows(rows_frame(rows), [0, 1], [IPERF3], MEASURED_S, RUN_S))
    assert v["inputs"]["host_threads"]["vhost-4242"]["kind"] == "io"
    assert v["verdict"] == "host_io" and v["inputs"]["derived"]["host_io_thread"] == "vhost-4242", v


def test_thread_stats_of_no_or_a_gone_qemu_are_empty(tmp_path):
    from harness.run.host import qemu_thread_stats
    assert qemu_thread_stats(None, proc=tmp_path) == {}
    assert qemu_thread_stats(31337, proc=tmp_path) == {}
