"""Two Debian releases as guests, per-queue TX counters across a driver's renames, and the
kernel-against-kernel comparison. Pure: fixtures only (real captures, named in their READMEs);
the real build + boot of the 6.12 guest is tests/test_releases_qemu.py."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.analysis import mechanisms as M
from harness.counters import counting as C
from harness.counters.samples import delta
from harness.images import aptstate as A
from harness.images import guestimage as G
from harness.images.local import LOCAL_IMAGES
from harness.parsers import linux as L
from harness.run import validity as V

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures"
F612 = FIX / "linux-6.12"


# --------------------------------------------------------------------------- aptstate
def test_sources_are_signed_by_the_archive_keyring():
    text = A.sources_text("trixie")
    lines = text.splitlines()
    assert [l.split()[4] for l in lines] == ["trixie", "trixie-updates", "trixie-security"]
    assert all(f"signed-by={A.KEYRING}" in l and l.startswith("deb [arch=amd64 ") for l in lines)
    assert "debian-security" in lines[2]


@pytest.mark.parametrize("name,want", [("13", "13"), ("trixie", "13"), (" Bookworm ", "12"), ("12", "12")])
def test_normalize_release(name, want):
    assert A.normalize_release(name) == want


def test_unknown_release_names_the_allowed_values():
    with pytest.raises(ValueError) as e:
        A.normalize_release("14")
    assert "'14'" in str(e.value) and "12 (bookworm)" in str(e.value) and "13 (trixie)" in str(e.value)


@pytest.mark.parametrize("fixture,want", [("debian-12", "12"), ("debian-13", "13"), ("ubuntu-24.04", ""),
                                          ("missing", "")])
def test_host_release_from_os_release(monkeypatch, fixture, want):
    monkeypatch.setenv("XMITBENCH_OS_RELEASE", str(FIX / "os-release" / fixture))
    assert A.host_release() == want


def _etc_apt_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(Path("/etc/apt").rglob("*")):
        if p.is_file():
            h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


def test_private_state_lives_under_the_cache_and_leaves_etc_apt_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("XMITBENCH_OS_RELEASE", str(FIX / "os-release" / "debian-12"))
    before = _etc_apt_digest()
    st = A.apt_state("trixie", tmp_path, update=False)
    assert st.private and st.release == "13" and st.root == tmp_path / "apt" / "trixie"
    assert st.env()["APT_CONFIG"] == str(tmp_path / "apt" / "trixie" / "apt.conf")
    conf = (st.root / "apt.conf").read_text()
    assert f'Dir::Etc::SourceList "{st.root}/sources.list";' in conf
    assert 'Acquire::AllowInsecureRepositories "false";' in conf
    assert (st.root / "sources.list").read_text() == A.sources_text("trixie")
    # apt itself reads the private state: its sources, not the host's
    out = st.run(["apt-config", "dump", "Dir::Etc::SourceList"]).stdout
    assert str(st.root / "sources.list") in out
    assert _etc_apt_digest() == before
    # the host's release uses the host's apt state (no APT_CONFIG of ours)
    host = A.apt_state("12", tmp_path, update=False)
    assert not host.private and host.env().get("APT_CONFIG") != st.env()["APT_CONFIG"]


def test_not_debian_without_a_release_is_an_apt_state_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XMITBENCH_OS_RELEASE", str(FIX / "os-release" / "ubuntu-24.04"))
    with pytest.raises(A.AptStateError):
        A.apt_state(None, tmp_path, update=False)


# --------------------------------------------------------------------------- images
def test_local_images_per_release():
    assert {"linux-deb", "linux-deb-12", "linux-deb-13"} <= set(LOCAL_IMAGES)
    assert LOCAL_IMAGES["linux-deb-13"].builder == "harness.images.bootimage:linux_deb_13_image"
    assert G.release_of_image("linux-deb-13") == "13" and G.release_of_image("freebsd-14.3") is None
    assert G.image_name(None) == "linux-deb" and G.image_name("trixie") == "linux-deb-13"


def _touch(root: Path, rel: str, data: bytes = b"x") -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_merge_usr_links_top_dirs_into_usr(tmp_path):
    # Debian 13 layout: everything under usr/, plus one stray top-level file a package kept
    _touch(tmp_path, "usr/bin/busybox")
    _touch(tmp_path, "usr/sbin/tc")
    _touch(tmp_path, "usr/lib/x86_64-linux-gnu/libc.so.6")
    _touch(tmp_path, "usr/lib64/ld-linux-x86-64.so.2")
    _touch(tmp_path, "lib/x86_64-linux-gnu/libstray.so.1", b"stray")
    assert G.merge_usr(tmp_path) is True
    for d in G.MERGED_USR_DIRS:
        assert (tmp_path / d).is_symlink() and str((tmp_path / d).readlink()) == f"usr/{d}"
    assert (tmp_path / "bin" / "busybox").is_file()
    assert (tmp_path / "lib64" / "ld-linux-x86-64.so.2").is_file()
    assert (tmp_path / "usr/lib/x86_64-linux-gnu/libstray.so.1").read_bytes() == b"stray"
    assert G.find_tools(tmp_path, ("tc", "busybox")) == {"tc": "/usr/sbin/tc", "busybox": "/usr/bin/busybox"}


def test_merge_usr_leaves_a_split_usr_tree(tmp_path):
    _touch(tmp_path, "bin/busybox")
    _touch(tmp_path, "sbin/tc")
    assert G.merge_usr(tmp_path) is False
    assert not (tmp_path / "bin").is_symlink()
    assert G.find_tools(tmp_path, ("tc",)) == {"tc": "/sbin/tc"}
    with pytest.raises(G.ImageBuildError, match="lacks ethtool"):
        G.find_tools(tmp_path, ("ethtool",))


@pytest.mark.parametrize("layout", ["lib/modules", "usr/lib/modules"])
def test_kernel_modules_dir_both_layouts(tmp_path, layout):
    (tmp_path / layout / "6.12.118+deb13-amd64" / "kernel").mkdir(parents=True)
    assert G.kernel_modules_dir(tmp_path).name == "6.12.118+deb13-amd64"


def test_kernel_modules_dir_missing(tmp_path):
    with pytest.raises(G.ImageBuildError, match="usr/lib/modules"):
        G.kernel_modules_dir(tmp_path)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_images_build_unknown_release_is_bad_input():
    p = _cli("images", "build", "linux-deb", "--release", "14")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "--release" in p.stderr and "bookworm" in p.stderr
    p = _cli("images", "build", "linux-deb-13", "--release", "bookworm")
    assert p.returncode == 2 and "contradicts" in p.stderr


# --------------------------------------------------------------------------- 6.12 counters
def _fix(name: str) -> str:
    return (F612 / name).read_text()


def test_ethtool_6_12_virtio_short_queue_names():
    s = L.parse_ethtool_stats(_fix("virtio_net.q2.after.ethtool_S.txt"), "virtio_net")
    by = {x.native_name: x for x in s}
    assert by["tx0_kicks"].queue == 0 and by["tx0_kicks"].metric == "tx_kicks"
    assert by["tx1_kicks"].queue == 1 and by["tx1_kicks"].value == 4645
    assert by["rx1_drops"].queue == 1
    assert by["tx_kicks"].queue is None      # the device-wide sum keeps queue None
    # 6.12 has no per-queue packets or bytes in ethtool -S
    assert not [x for x in s if x.metric in ("tx_packets", "tx_bytes")]


def _frame(prefix: str, fixdir: Path, driver: str) -> pd.DataFrame:
    rows = []
    for sec, parse in (("ethtool_S", lambda t: L.parse_ethtool_stats(t, driver)), ("tc_qdisc", L.parse_tc_qdisc_json),
                       ("ip_link", L.parse_ip_link_json)):
        b = parse((fixdir / f"{prefix}.before.{sec}.txt").read_text())
        a = parse((fixdir / f"{prefix}.after.{sec}.txt").read_text())
        rows += delta(b, a)
    return C.rows_frame(rows, "r", "c", 0)


def test_queue_table_6_12_takes_the_mq_children():
    m = _frame("virtio_net.q2", F612, "virtio_net")
    q = C.queue_table(m)
    assert list(q.queue) == [0, 1]
    assert set(q.source) == {"tc -s -j qdisc"} and set(q.native_name) == {"fq_codel 0: packets"}
    # real deltas of the two children (parent :1 and :2) of the capture
    assert list(q.tx_packets) == [543745 - 460782, 214690 - 1]
    assert (q.tx_packets > 0).all() and q.share.sum() == pytest.approx(1.0)
    assert C.queue_source(m) == "tc -s -j qdisc"
    per_q, pkts, nbytes = C.tx_for_conservation(m)
    assert per_q == {0: 82963.0, 1: 214689.0}
    assert pkts > 0 and nbytes > 0       # the interface counters: 6.12 ethtool -S has no totals


def test_queue_table_prefers_the_driver_where_it_has_per_queue_counters():
    # 6.1 virtio_net: tx_queue_N_packets present; the mq children (also there) are not used
    rows = (L.parse_ethtool_stats("NIC statistics:\n     tx_queue_0_packets: 10\n     tx_queue_1_packets: 30\n",
                                  "virtio_net")
            + L.parse_tc_qdisc_json((F612 / "virtio_net.q2.after.tc_qdisc.txt").read_text()))
    q = C.queue_table(C.rows_frame(rows))
    assert set(q.source) == {"ethtool -S"} and list(q.tx_packets) == [10, 30]
    assert list(q.native_name) == ["tx_queue_0_packets", "tx_queue_1_packets"]
    assert list(q.share) == [0.25, 0.75]


def test_queue_table_empty_has_the_columns():
    q = C.queue_table(C.rows_frame([]))
    assert q.empty and {"source", "native_name", "share"} <= set(q.columns)


def test_a_queue_without_counters_is_a_named_reason():
    v = V.queue_spread({0: 100.0}, 2, required=False, source="tc -s -j qdisc")
    assert v["missing_queues"] == [1] and v["ok"] is None
    assert "queue(s) 1" in v["reason"] and "tc -s -j qdisc" in v["reason"]
    assert V.failed_checks({"conservation": {"ok": True}, "queue_spread": v}) == []
    req = V.queue_spread({0: 100.0}, 2, required=True)
    assert "queue_counters_missing" in V.failed_checks({"conservation": {"ok": True}, "queue_spread": req})
    ok = V.queue_spread({0: 60.0, 1: 40.0}, 2, source="tc -s -j qdisc")
    assert ok["ok"] is True and "missing_queues" not in ok and ok["source"] == "tc -s -j qdisc"


# --------------------------------------------------------------------------- mechanisms
def test_mechanism_for_requeues_between_6_1_and_6_12():
    found = M.explain("requeues_per_mpkt", "virtio_net", "6.1.0-57-amd64", "6.12.118+deb13-amd64")
    assert [m.since for m in found] == [(6, 11)]
    assert "BQL" in found[0].title and any("sch_generic.c" in s for s in found[0].sources)
    assert M.explain("requeues_per_mpkt", "virtio_net", "6.12.118+deb13-amd64", "6.1.0-57-amd64") == found
    assert M.explain("requeues_per_mpkt", "e1000e", "6.1.0-57-amd64", "6.12.118+deb13-amd64") == []
    assert M.explain("requeues_per_mpkt", "virtio_net", "6.12.1", "6.12.118+deb13-amd64") == []
    assert M.explain("throughput_bps", "virtio_net", "6.1.0-57-amd64", "6.12.118+deb13-amd64") == []
    assert M.kernel_version("6.12.118+deb13-amd64") == (6, 12) and M.kernel_version("14.3-RELEASE") == (14, 3)


def test_kernel_order_is_by_version():
    from harness.analysis.compare import kernel_order
    assert kernel_order(["6.12.118+deb13-amd64", "6.1.0-57-amd64", "6.12.118+deb13-amd64"]) == \
        ["6.1.0-57-amd64", "6.12.118+deb13-amd64"]


class _Runs:
    """The one thing compare_kernels reads of a Runs: its wide table."""
    def __init__(self, w):
        self._w = w

    def wide(self):
        return self._w


def _wide(kernel, requeues, gbit, driver="virtio_net", nic="virtio-net"):
    image = "linux-deb-13" if kernel.startswith("6.12") else "linux-deb-12"
    return pd.DataFrame([{"run_id": "r", "cell": f"{image}.{nic}.q2.p4.s1.tcp.m0", "rep": i, "os": "linux",
                          "kernel": kernel, "nic": nic, "driver": driver, "queues": 2, "procs": 4, "streams": 1,
                          "proto": "tcp", "msg_size": 0, "stack": "direct", "churn": "none", "traced": True,
                          "accel": "tcg", "replay": False, "valid": True, "failed_checks": [],
                          "throughput_bps": g * 1e9, "requeues_per_mpkt": r, "lock_wait_ns_per_pkt": 10.0 + i,
                          "cpu_pct_per_gbit": 100.0 + i}
                         for i, (r, g) in enumerate(zip(requeues, gbit))])


def test_compare_kernels_matches_configs_across_images_and_names_the_mechanism():
    from harness.analysis.compare import compare_kernels
    from harness.analysis.report import mechanisms_table
    w = pd.concat([_wide("6.12.118+deb13-amd64", [390.0, 420.0, 455.0], [1.0, 1.05, 0.98]),
                   _wide("6.1.0-57-amd64", [0.0, 0.0, 0.0], [1.02, 0.99, 1.01])], ignore_index=True)
    [kc] = compare_kernels(_Runs(w))
    assert (kc.base_kernel, kc.cand_kernel) == ("6.1.0-57-amd64", "6.12.118+deb13-amd64")
    t = kc.comparison.table.set_index("metric")
    assert t.loc["requeues_per_mpkt", "cell"] == "virtio-net.q2.p4.s1.tcp.m0.direct.none.True"
    assert t.loc["requeues_per_mpkt", "test"] == "welch" and t.loc["requeues_per_mpkt", "base_median"] == 0
    assert not any(x.startswith("kernel differs") for x in kc.comparison.warnings)
    assert [(m, mech.since) for _, m, mech in kc.mechanisms] == [("requeues_per_mpkt", (6, 11))]
    mt = mechanisms_table(_Runs(w))
    assert list(mt.metric) == ["requeues_per_mpkt"] and "BQL" in mt.mechanism.iloc[0]
    assert mt.cells.iloc[0] == "virtio-net.q2.p4.s1.tcp.m0"


def test_compare_kernels_needs_two_kernels():
    from harness.analysis.compare import compare_kernels
    assert compare_kernels(_Runs(_wide("6.1.0-57-amd64", [0.0] * 3, [1.0] * 3))) == []


def test_unreachable_archive_is_one_line_and_exit_1(tmp_path):
    """apt-get update only warns (exit 0) when the mirror is down: the build must still fail,
    on one line, and must not mark the empty lists as fresh."""
    env = {**__import__("os").environ, "XMITBENCH_CACHE": str(tmp_path),
           "XMITBENCH_OS_RELEASE": str(FIX / "os-release" / "debian-12"),
           "XMITBENCH_DEBIAN_MIRROR": "http://127.0.0.1:9/debian",
           "XMITBENCH_DEBIAN_SECURITY_MIRROR": "http://127.0.0.1:9/debian-security"}
    p = subprocess.run([sys.executable, "-m", "harness.cli", "images", "build", "linux-deb-13"],
                       capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stderr.strip().count("\n") == 0 and "Debian 13 (trixie)" in p.stderr and "127.0.0.1:9" in p.stderr
    assert not (tmp_path / "apt" / "trixie" / "state" / "updated").exists()


def test_real_cross_release_run_compares_two_kernels():
    """A real run of linux-6.1-vs-6.12 (TCG, 3 reps, 4 s; tests/fixtures/linux-6.12/README.md)."""
    from harness.analysis.compare import compare_kernels
    from harness.analysis.load import load_runs
    runs = load_runs([F612 / "run-linux-6.1-vs-6.12"])
    w = runs.wide()
    assert sorted(set(w.kernel)) == ["6.1.0-57-amd64", "6.12.118+deb13-amd64"]
    assert runs.runs_table().kernel.iloc[0] == "6.1.0-57-amd64,6.12.118+deb13-amd64"
    [kc] = compare_kernels(runs)
    t = kc.comparison.table
    # every configuration measured on both kernels is matched (e1000e q2 is skipped on Linux)
    assert set(t.cell.str.split(".direct").str[0]) == {
        "e1000e.q1.p1.s1.tcp.m0", "e1000e.q1.p4.s1.tcp.m0", "virtio-net.q1.p1.s1.tcp.m0",
        "virtio-net.q1.p4.s1.tcp.m0", "virtio-net.q2.p1.s1.tcp.m0", "virtio-net.q2.p4.s1.tcp.m0"}
    assert (t.n_base == 3).all() and (t.n_cand == 3).all()
    # 6.1 virtio_net never requeued; 6.12 did, and the BQL entry is named for it (virtio_net only)
    rq = w[(w.driver == "virtio_net")].groupby("kernel").tx_requeues.sum()
    assert rq["6.1.0-57-amd64"] == 0 and rq["6.12.118+deb13-amd64"] > 0
    assert {m.since for _, metric, m in kc.mechanisms if metric == "requeues_per_mpkt"} == {(6, 11)}
    assert all(cell.startswith("virtio-net") for cell, _, _ in kc.mechanisms)
    # per-queue TX: the driver's counters on 6.1, the mq children on 6.12; both queues used at p4
    q = C.queue_table(runs.metrics).merge(w[["run_id", "cell", "rep", "kernel", "queues", "procs"]])
    q2 = q[(q.queues == 2) & (q.procs == 4)]
    assert set(q2[q2.kernel.str.startswith("6.1.")].source) == {"ethtool -S"}
    assert set(q2[q2.kernel.str.startswith("6.12.")].source) == {"tc -s -j qdisc"}
    assert (q2.tx_packets > 0).all()
