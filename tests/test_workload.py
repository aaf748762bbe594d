"""Workload loading/validation, expansion into cells, boot-group planning and sharding."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from harness.run import workload as wmod
from harness.errors import InputError
from harness.vm.nics import NICS, qemu_supported_devices
from harness.run.plan import BOOT_S, OVERHEAD_S, parse_shard, plan
from harness.run.workload import expand, load_workload

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
QEMU_72_DEVICES = qemu_supported_devices((FIXTURES / "qemu" / "device_help_7.2.txt").read_text())

# A valid minimal workload; cases override single keys ("table.key": raw TOML value, or None
# to drop the key).
BASE = {
    "workload": {"name": '"t"', "duration_s": "2"},
    "machine": {"vcpus": "2"},
    "matrix": {"nic": '["virtio-net"]', "queues": "[1, 2]"},
}


def render(overrides: dict[str, str | None] | None = None, extra: str = "") -> str:
    tables = {t: dict(kv) for t, kv in BASE.items()}
    for dotted, raw in (overrides or {}).items():
        t, k = dotted.split(".")
        if raw is None:
            tables[t].pop(k, None)
        else:
            tables[t][k] = raw
    out = []
    for t, kv in tables.items():
        out.append(f"[{t}]")
        out += [f"{k} = {v}" for k, v in kv.items()]
        out.append("")
    return "\n".join(out) + extra


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "w.toml"
    f.write_text(text)
    return f


def wl(tmp_path: Path, overrides: dict[str, str | None] | None = None) -> wmod.Workload:
    return load_workload(write(tmp_path, render(overrides)))


# ---------------------------------------------------------------------------------------------
# Shipped workloads


def test_smoke_workload():
    w = load_workload(ROOT / "workloads" / "smoke.toml")
    runs, skipped = expand(w)
    assert w.name == "smoke" and w.machine.os == "linux"
    assert len(runs) <= 4, "integration tests rely on smoke staying tiny"
    assert [r.run_id for r in runs] == ["linux-deb.virtio-net.q1.p2.s1.tcp.m0.r0",
                                        "linux-deb.virtio-net.q2.p2.s1.tcp.m0.r0"]
    assert skipped == []
    p = plan(w, QEMU_72_DEVICES)
    assert len(p.groups) == 1 and p.groups[0].boot_key.queues == 2


def test_default_workload():
    w = load_workload(ROOT / "workloads" / "default.toml")
    runs, skipped = expand(w)
    # 5 (nic, queues) pairs x 3 procs x 3 reps (repetitions = "auto": its planned minimum), plus
    # each cell once untraced (probe effect); three sender counts so the USL fit is drawn
    assert w.repetitions_auto and w.repetitions == wmod.AUTO_MIN_REPS == 3
    assert len(runs) == 45 + 15
    assert len({r.cell.cell_id for r in runs}) == 30
    assert sorted({r.cell.procs for r in runs}) == [1, 2, 4]
    untraced = [r for r in runs if not r.cell.traced]
    assert len(untraced) == 15 and all(r.cell.cell_id.endswith(".untraced") and r.rep == 0 for r in untraced)
    # each twin runs next to its traced cell's first repetition, on the same VM, the order
    # alternating from pair to pair (ABBA): neither side always runs first
    for i, r in enumerate(runs):
        if not r.cell.traced:
            base = r.cell.cell_id[: -len(".untraced")]
            neighbours = {runs[j].cell.cell_id for j in (i - 1, i + 1) if 0 <= j < len(runs)}
            assert base in neighbours and r.cell.boot_key == next(x.cell.boot_key for x in runs if x.cell.cell_id == base)
    firsts = [not runs[i].cell.traced for i in range(len(runs) - 1)
              if runs[i].cell.cell_id.split(".untraced")[0] == runs[i + 1].cell.cell_id.split(".untraced")[0]]
    assert sorted([firsts.count(True), firsts.count(False)]) == [7, 8]
    assert [(s.cell.cell_id, s.reason) for s in skipped] == [
        ("linux-deb.e1000e.q2.p1.s1.tcp.m0", "e1000e has at most 1 TX queue on linux (e1000e driver)"),
        ("linux-deb.e1000e.q2.p2.s1.tcp.m0", "e1000e has at most 1 TX queue on linux (e1000e driver)"),
        ("linux-deb.e1000e.q2.p4.s1.tcp.m0", "e1000e has at most 1 TX queue on linux (e1000e driver)"),
    ]
    # QEMU 7.2 without a newer QEMU: the igb cells are skipped, with the reason
    p = plan(w, QEMU_72_DEVICES, qemu_unavailable="xmitbench qemu fetch failed: no network")
    assert [(g.boot_key.nic, g.boot_key.queues, len(g.runs)) for g in p.groups] == [
        ("virtio-net", 2, 6 + 18), ("e1000e", 1, 3 + 9)]
    assert sorted((s.cell.cell_id, s.reason) for s in p.skipped if s.cell.nic == "igb") == sorted(
        (f"linux-deb.igb.q{q}.p{n}.s1.tcp.m0{t}",
         "QEMU has no device igb (needs QEMU >= 8.0); xmitbench qemu fetch failed: no network")
        for q in (1, 2) for n in (1, 2, 4) for t in (".untraced", ""))
    # the planned minimum and a warm-up per boot, plus the stated allowance of 2 extra
    # repetitions per traced cell within its budget (rep_budget_s)
    rep_s = w.duration_s + w.warmup_s + OVERHEAD_S
    assert p.eta_s == 2 * BOOT_S + 2 * rep_s + 36 * rep_s + 9 * min(2 * rep_s, w.rep_budget_s - 3 * rep_s)
    # with igb (QEMU >= 8.0): 1 and 2 queues on one boot with 2 queues, as virtio-net
    p = plan(w, QEMU_72_DEVICES | {"igb"})
    assert [(g.boot_key.nic, g.boot_key.queues, len(g.runs)) for g in p.groups] == [
        ("virtio-net", 2, 6 + 18), ("e1000e", 1, 3 + 9), ("igb", 2, 6 + 18)]
    assert [s.cell.nic for s in p.skipped] == ["e1000e"] * 3


def test_sha256_and_path(tmp_path):
    import hashlib
    f = write(tmp_path, render())
    w = load_workload(f)
    assert w.path == f
    assert w.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()


def test_defaults(tmp_path):
    w = wl(tmp_path, {"workload.duration_s": None, "matrix.queues": None})
    assert (w.repetitions, w.duration_s, w.warmup_s, w.lock_stats, w.udp_bitrate) == (1, 10, 1, False, "0")
    assert w.machine == wmod.Machine(2, 1024, "auto", "linux-deb", "linux")
    assert w.matrix == wmod.Matrix((), ("virtio-net",), (1,), (1,), (1,), ("tcp",), (0,))


# ---------------------------------------------------------------------------------------------
# Cells, boot groups, repetitions


def test_cell_fields(tmp_path):
    w = wl(tmp_path, {"matrix.procs": "[4]", "matrix.streams": "[3]", "matrix.proto": '["udp"]',
                      "matrix.msg_size": "[1400]", "workload.udp_bitrate": '"500M"',
                      "workload.warmup_s": "0"})
    cell = expand(w).runs[-1].cell
    assert cell.cell_id == "linux-deb.virtio-net.q2.p4.s3.udp.m1400"
    assert (cell.nic, cell.queues, cell.procs, cell.streams, cell.proto, cell.msg_size) == (
        "virtio-net", 2, 4, 3, "udp", 1400)
    assert (cell.duration_s, cell.warmup_s, cell.udp_bitrate) == (2, 0, "500M")
    assert cell.boot_key == wmod.BootKey("linux-deb", "linux", "virtio-net", 2, 1024, "auto", 2)


def test_repetitions_interleaved_within_group(tmp_path):
    w = wl(tmp_path, {"workload.repetitions": "3", "matrix.procs": "[1, 2]"})
    runs = expand(w).runs
    assert [(r.cell.queues, r.cell.procs, r.rep) for r in runs] == [
        (q, p, rep) for rep in range(3) for q in (1, 2) for p in (1, 2)]


def test_runtime_queue_nic_boots_once_with_max_queues(tmp_path):
    w = wl(tmp_path, {"machine.vcpus": "4", "matrix.nic": '["virtio-net", "igb"]',
                      "matrix.queues": "[1, 2, 4]"})
    p = plan(w, None)
    assert [(g.boot_key.nic, g.boot_key.queues, len(g.runs)) for g in p.groups] == [
        ("virtio-net", 4, 3), ("igb", 4, 3)]


def test_fixed_queue_nic_has_the_count_its_driver_probes(tmp_path):
    # vmxnet3 sizes its TX queues at probe: rounddown_pow_of_two(min(8, online CPUs)), no ethtool -L
    w = wl(tmp_path, {"machine.vcpus": "4", "matrix.nic": '["vmxnet3"]',
                      "matrix.queues": "[1, 2, 3, 4]"})
    p = plan(w, QEMU_72_DEVICES)
    assert [(g.boot_key.queues, [r.cell.queues for r in g.runs]) for g in p.groups] == [(4, [4])]
    fixed = "vmxnet3 on linux with 4 vCPUs always has 4 TX queues (set at driver probe, no ethtool -L)"
    assert [(s.cell.cell_id, s.reason) for s in p.skipped] == [
        ("linux-deb.vmxnet3.q1.p1.s1.tcp.m0", fixed), ("linux-deb.vmxnet3.q2.p1.s1.tcp.m0", fixed),
        ("linux-deb.vmxnet3.q3.p1.s1.tcp.m0",
         "vmxnet3 on linux (vmxnet3 driver) only has power-of-two TX queue counts")]


def test_freebsd_queue_counts_need_a_boot(tmp_path, monkeypatch):
    # Queue counts are loader tunables on FreeBSD: even virtio-net boots per count; em has 2.
    monkeypatch.setitem(wmod.KNOWN_IMAGES, "freebsd-test", "freebsd")
    w = wl(tmp_path, {"machine.image": '"freebsd-test"', "matrix.nic": '["virtio-net", "e1000e"]'})
    assert w.machine.os == "freebsd"
    p = plan(w, QEMU_72_DEVICES)
    assert [(g.boot_key.nic, g.boot_key.queues) for g in p.groups] == [
        ("virtio-net", 1), ("virtio-net", 2), ("e1000e", 1), ("e1000e", 2)]
    assert p.skipped == ()
    # each FreeBSD group boots a cloud image twice (the reboot applies the loader tunables)
    from harness.run.plan import CLOUD_BOOT_S
    assert p.eta_s == 4 * 2 * CLOUD_BOOT_S + len(p.runs) * (w.duration_s + w.warmup_s + OVERHEAD_S)


def test_qemu_without_device_skips_with_reason(tmp_path):
    w = wl(tmp_path, {"workload.repetitions": "2", "matrix.nic": '["igb", "virtio-net"]'})
    p = plan(w, QEMU_72_DEVICES)
    assert [g.boot_key.nic for g in p.groups] == ["virtio-net"]
    assert [(s.cell.cell_id, s.reason) for s in p.skipped] == [
        ("linux-deb.igb.q1.p1.s1.tcp.m0", "QEMU has no device igb (needs QEMU >= 8.0)"),
        ("linux-deb.igb.q2.p1.s1.tcp.m0", "QEMU has no device igb (needs QEMU >= 8.0)")]
    # Without device information nothing is dropped.
    assert [g.boot_key.nic for g in plan(w, None).groups] == ["igb", "virtio-net"]


def test_qemu_device_help_parser():
    assert {"virtio-net-pci", "virtio-net", "e1000e", "vmxnet3", "e1000"} <= QEMU_72_DEVICES
    assert "igb" not in QEMU_72_DEVICES          # igb arrived in QEMU 8.0
    assert "Network devices:" not in QEMU_72_DEVICES
    text = 'Network devices:\nname "igb", bus PCI, desc "Intel 82576 Gigabit Ethernet Controller"\n'
    assert qemu_supported_devices(text) == {"igb"}
    for nic in NICS.values():
        assert nic.min_qemu or nic.qemu_device in QEMU_72_DEVICES


# ---------------------------------------------------------------------------------------------
# Sharding


def big_workload(tmp_path):
    return wl(tmp_path, {
        "machine.vcpus": "8", "workload.repetitions": "2",
        "matrix.nic": '["virtio-net", "e1000e", "vmxnet3", "igb"]',
        "matrix.queues": "[1, 2, 4, 8]", "matrix.procs": "[1, 2, 4]"})


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
def test_shards_partition_whole_groups(tmp_path, n):
    w = big_workload(tmp_path)
    whole = plan(w, None)
    assert len(whole.groups) == 4   # virtio-net, e1000e, vmxnet3 (8 queues with 8 vCPUs), igb
    shards = [plan(w, None, (k, n)) for k in range(1, n + 1)]

    # Union == whole, no overlap.
    all_runs = [r for s in shards for r in s.runs]
    assert Counter(all_runs) == Counter(whole.runs) and len(all_runs) == len(whole.runs)
    # Groups stay whole and keep their plan order.
    whole_groups = list(whole.groups)
    for s in shards:
        assert all(g in whole_groups for g in s.groups)
        idx = [whole_groups.index(g) for g in s.groups]
        assert idx == sorted(idx)
    # Deterministic.
    assert [plan(w, None, (k, n)) for k in range(1, n + 1)] == shards
    # Balanced as greedy longest-first promises: spread <= the longest group.
    loads = [s.eta_s for s in shards]
    assert max(loads) - min(loads) <= max(g.est_s() for g in whole.groups)
    assert sum(loads) == pytest.approx(whole.eta_s)
    # Skips are reported once, by shard 1.
    assert shards[0].skipped == whole.skipped and len(whole.skipped) > 0
    assert all(s.skipped == () for s in shards[1:])


@pytest.mark.parametrize("text, expected", [("1/1", (1, 1)), ("2/3", (2, 3)), (" 3 / 3 ", (3, 3))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["0/3", "4/3", "2/0", "a/b", "3", "", "-1/2", "1/2/3"])
def test_parse_shard_bad(text):
    with pytest.raises(InputError) as e:
        parse_shard(text)
    shown = text or '""'
    assert str(e.value) == f"--shard: {shown}: expected K/N with 1 <= K <= N, e.g. 2/3"


# ---------------------------------------------------------------------------------------------
# Bad inputs: each gives one exact line naming file, key and what is allowed.

ALL_NICS = "e1000e, igb, virtio-net, vmxnet3"
WORKLOAD_KEYS = ("cell_timeout_s, churn_count, churn_interval_s, ci_target_pct, description, duration_s, inspect, lock_stats, "
                 "max_repetitions, name, probe_effect, rep_budget_s, repetitions, require_queue_spread, retries, "
                 "shuffle_seed, udp_bitrate, warmup_after_boot, warmup_s")
BITRATE = 'expected an iperf3 -b rate as a string such as "0" (unlimited), "500M" or "1.5G"'
UDP_SIZE = 'allowed 16..65507 (iperf3 UDP datagram size, as matrix.proto has "udp")'

BAD = [
    ("unknown nic", {"matrix.nic": '["virtio-net", "e1000"]'}, "",
     f'matrix.nic[1]: unknown NIC "e1000"; allowed: {ALL_NICS}'),
    ("queues above vcpus", {"matrix.queues": "[1, 4]"}, "",
     "matrix.queues[1]: 4 is out of range; allowed 1..2 (at most machine.vcpus)"),
    ("negative duration", {"workload.duration_s": "-5"}, "",
     "workload.duration_s: -5 is out of range; allowed 1..3600"),
    ("unknown key", {"workload.durations": "3"}, "",
     f"workload.durations: unknown key; allowed: {WORKLOAD_KEYS}"),
    ("unknown table", {}, "[iperf]\nport = 5201\n",
     "iperf: unknown table; allowed tables: machine, matrix, setup, workload"),
    ("inspect not a boolean", {"workload.inspect": '"yes"'}, "",
     'workload.inspect: expected true or false, got string "yes"'),
    ("bool where int", {"machine.vcpus": "true"}, "",
     "machine.vcpus: expected an integer in 1..64, got boolean true"),
    ("queues 0", {"matrix.queues": "[0]"}, "",
     "matrix.queues[0]: 0 is out of range; allowed 1..2 (at most machine.vcpus)"),
    ("procs 0", {"matrix.procs": "[0, 1]"}, "",
     "matrix.procs[0]: 0 is out of range; allowed 1..64"),
    ("streams -1", {"matrix.streams": "[-1]"}, "",
     "matrix.streams[0]: -1 is out of range; allowed 1..128"),
    ("empty nic list", {"matrix.nic": "[]"}, "",
     f"matrix.nic: empty list; expected a non-empty list of NIC names: {ALL_NICS}"),
    ("duplicate entry", {"matrix.queues": "[1, 2, 1]"}, "",
     "matrix.queues[2]: duplicate value 1; list entries must be unique"),
    ("udp with msg_size 0", {"matrix.proto": '["tcp", "udp"]', "matrix.msg_size": "[1400, 0]"}, "",
     f"matrix.msg_size[1]: 0 is out of range; {UDP_SIZE}"),
    ("udp msg_size too big", {"matrix.proto": '["udp"]', "matrix.msg_size": "[65508]"}, "",
     f"matrix.msg_size[0]: 65508 is out of range; {UDP_SIZE}"),
    ("udp without msg_size", {"matrix.proto": '["udp"]'}, "",
     'matrix.msg_size: missing; required (iperf3 UDP datagram size, as matrix.proto has "udp"),'
     " allowed 16..65507"),
    ("tcp msg_size too big", {"matrix.msg_size": "[2000000]"}, "",
     "matrix.msg_size[0]: 2000000 is out of range; allowed 0..1048576 (0 = iperf3 default)"),
    ("bad accel", {"machine.accel": '"hvf"'}, "",
     'machine.accel: unknown accelerator "hvf"; allowed: auto, kvm, tcg'),
    ("repetitions 0", {"workload.repetitions": "0"}, "",
     'workload.repetitions: 0 is out of range; allowed 1..100 or "auto"'),
    ("repetitions a word", {"workload.repetitions": '"many"'}, "",
     'workload.repetitions: expected an integer in 1..100 or "auto", got string "many"'),
    ("repetitions a float", {"workload.repetitions": "2.5"}, "",
     'workload.repetitions: expected an integer in 1..100 or "auto", got float 2.5'),
    ("ci target without auto", {"workload.ci_target_pct": "5"}, "",
     'workload.ci_target_pct: only used with repetitions = "auto"; remove it or set repetitions = "auto"'),
    ("budget without auto", {"workload.repetitions": "3", "workload.rep_budget_s": "60"}, "",
     'workload.rep_budget_s: only used with repetitions = "auto"; remove it or set repetitions = "auto"'),
    ("ci target 0", {"workload.repetitions": '"auto"', "workload.ci_target_pct": "0"}, "",
     'workload.ci_target_pct: 0 is out of range; allowed 0.1..100 or "auto"'),
    ("ci target a word", {"workload.repetitions": '"auto"', "workload.ci_target_pct": '"tight"'}, "",
     'workload.ci_target_pct: expected a number in 0.1..100 or "auto", got string "tight"'),
    ("ci target a bool", {"workload.repetitions": '"auto"', "workload.ci_target_pct": "true"}, "",
     'workload.ci_target_pct: expected a number in 0.1..100 or "auto", got boolean true'),
    ("budget too small", {"workload.repetitions": '"auto"', "workload.rep_budget_s": "5"}, "",
     "workload.rep_budget_s: 5 is out of range; allowed 10..86400"),
    ("max below the minimum", {"workload.repetitions": '"auto"', "workload.max_repetitions": "2"}, "",
     "workload.max_repetitions: 2 is out of range; allowed 3..100"),
    ("memory too small", {"machine.memory_mib": "128"}, "",
     "machine.memory_mib: 128 is out of range; allowed 256..65536"),
    ("unknown image", {"machine.image": '"freebsd-14"'}, "",
     'machine.image: unknown image "freebsd-14"; allowed: ' + ", ".join(sorted(wmod.known_images()))),
    ("wrong type for list", {"matrix.queues": "2"}, "",
     "matrix.queues: expected a list of integers in 1..2, got integer 2"),
    ("string in int list", {"matrix.procs": '[1, "4"]'}, "",
     'matrix.procs[1]: expected an integer in 1..64, got string "4"'),
    ("float duration", {"workload.duration_s": "2.5"}, "",
     "workload.duration_s: expected an integer in 1..3600, got float 2.5"),
    ("warmup too long", {"workload.warmup_s": "61"}, "",
     "workload.warmup_s: 61 is out of range; allowed 0..60"),
    ("unknown os", {"machine.os": '"netbsd"'}, "",
     'machine.os: unknown OS "netbsd"; allowed: freebsd, linux'),
    ("os does not match image", {"machine.os": '"freebsd"'}, "",
     'machine.os: "freebsd" does not match image "linux-deb" (a linux image); allowed: linux'),
    ("unknown proto", {"matrix.proto": '["sctp"]'}, "",
     'matrix.proto[0]: unknown protocol "sctp"; allowed: tcp, udp'),
    ("proto not a string", {"matrix.proto": "[6]"}, "",
     "matrix.proto[0]: expected a protocol name, one of: tcp, udp; got integer 6"),
    ("missing name", {"workload.name": None}, "",
     'workload.name: missing; required (e.g. name = "default")'),
    ("bad name", {"workload.name": '"my run"'}, "",
     "workload.name: expected a string of 1..64 letters, digits, '.', '_' or '-' starting with "
     'a letter or digit, got string "my run"'),
    ("missing nic", {"matrix.nic": None}, "",
     'matrix.nic: missing; required (e.g. nic = ["virtio-net"])'),
    ("lock_stats not bool", {"workload.lock_stats": '"yes"'}, "",
     'workload.lock_stats: expected true or false, got string "yes"'),
    ("require_queue_spread not bool", {"workload.require_queue_spread": '"yes"'}, "",
     'workload.require_queue_spread: expected true or false, got string "yes"'),
    ("bitrate not a string", {"workload.udp_bitrate": "100"}, "",
     f"workload.udp_bitrate: {BITRATE}, got integer 100"),
    ("bitrate garbage", {"workload.udp_bitrate": '"fast"'}, "",
     f'workload.udp_bitrate: {BITRATE}, got string "fast"'),
    ("nothing runnable", {"matrix.nic": '["e1000e"]', "matrix.queues": "[2]"}, "",
     "matrix.queues: no (nic, queues) pair can run on linux; TX queue counts per NIC: e1000e 1"),
    ("nested table", {}, "[workload.extra]\nx = 1\n",
     f"workload.extra: unknown key; allowed: {WORKLOAD_KEYS}"),
    ("table given a value", {}, "\nvcpus = 2\n",   # lands in [matrix]
     "matrix.vcpus: unknown key; allowed: churn, image, msg_size, nic, procs, proto, queues, stack, streams"),
]


@pytest.mark.parametrize("overrides, extra, expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input(tmp_path, overrides, extra, expected):
    f = write(tmp_path, render(overrides, extra))
    with pytest.raises(InputError) as e:
        load_workload(f)
    assert str(e.value) == f"{f}: {expected}"
    assert "\n" not in str(e.value)


RAW_BAD = [
    ("top-level key", 'name = "x"\n' + render(),
     "name: unknown top-level key; allowed tables: machine, matrix, setup, workload"),
    ("table as scalar", 'workload = 3\n[matrix]\nnic = ["virtio-net"]\n',
     "workload: expected a table [workload], got integer 3"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in RAW_BAD], ids=[c[0] for c in RAW_BAD])
def test_bad_raw_input(tmp_path, text, expected):
    f = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_workload(f)
    assert str(e.value) == f"{f}: {expected}"


FILE_BAD = [
    ("syntax_error.toml", "line 3: TOML syntax error: Invalid value (column 14)"),
    ("unterminated_string.toml", "line 2: TOML syntax error: Illegal character '\\n' (column 21)"),
    ("not_utf8.toml", "line 3: not UTF-8 text; TOML files must be UTF-8"),
    ("does_not_exist.toml", "cannot read workload file: No such file or directory"),
]


@pytest.mark.parametrize("name, expected", FILE_BAD)
def test_bad_file(name, expected):
    f = FIXTURES / "workloads" / name
    with pytest.raises(InputError) as e:
        load_workload(f)
    assert str(e.value) == f"{f}: {expected}"
    assert e.value.path == str(f)
    assert e.value.key == ("" if name == "does_not_exist.toml" else expected.split(": ")[0])


def test_input_error_is_one_line():
    e = InputError("x.toml", "a.b", "first\nsecond  third")
    assert str(e) == "x.toml: a.b: first second third"
    assert str(InputError("x.toml", "", "gone")) == "x.toml: gone"
