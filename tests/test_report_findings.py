"""The findings page (harness/analysis/findings.py) and readable figures (report.label_overlaps,
fit_labels, per-cell bars grouped by NIC and queues), on real run dirs (tests/fixtures/runs) and
on a synthetic run 3x the default matrix (tests/bigmatrix.py: real rows relabelled)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import bigmatrix  # noqa: E402
from harness.analysis import findings as F  # noqa: E402
from harness.analysis import report as R  # noqa: E402
from harness.analysis.load import load_runs  # noqa: E402

RUNS = Path(__file__).parent / "fixtures" / "runs"
DEFAULT, LLTX = RUNS / "default-2rep", RUNS / "lltx-stacking"


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    return bigmatrix.write_matrix(DEFAULT, tmp_path_factory.mktemp("big") / "run", **bigmatrix.BIG)


@pytest.fixture(scope="module")
def default_shape(tmp_path_factory) -> Path:
    return bigmatrix.write_matrix(DEFAULT, tmp_path_factory.mktemp("dflt") / "run", **bigmatrix.DEFAULT_SHAPE)


# --- findings -----------------------------------------------------------------------------
def _box(f: F.Findings, os_name: str, nic: str, q: int):
    ci = next(i for i, c in enumerate(f.columns) if c.os == os_name and not c.why_empty)
    return f.boxes[(ci, (nic, q))]


def test_findings_default_run_answers_each_question():
    runs = load_runs(DEFAULT)
    f = F.findings(runs)
    assert [c.os for c in f.columns] == ["linux", "freebsd"]
    assert "not in this run's matrix" in f.columns[1].why_empty
    assert f.rows == [("e1000e", 1), ("e1000e", 2), ("virtio-net", 1), ("virtio-net", 2)]
    # e1000e has one TX queue on Linux: the box says why it is empty, from the cells table
    assert "at most 1 TX queue" in _box(f, "linux", "e1000e", 2)
    # where it serialises: the qdisc lock's share of all contended wait, recomputed from the locks table
    w = runs.wide()
    keys = w[(w.nic == "e1000e") & (w.queues == 1)][["run_id", "cell", "rep"]]
    lk = runs.locks.merge(keys, on=["run_id", "cell", "rep"])
    share = lk[lk["lock"].str.contains("qdisc")].wait_ns_total.sum() / lk.wait_ns_total.sum()
    ser, ring, verd = _box(f, "linux", "e1000e", 1)
    assert ser.topic == "serialisation" and ser.level == "warn"
    assert ser.headline == f"serialises on the qdisc lock (mostly @ __dev_queue_xmit): {share:.0%} of contended wait"
    assert f"{lk.wait_ns_total.sum() / 1e6:.3g} ms contended wait over 4 traced cell runs" in ser.detail
    assert "tracepoint lock:contention_begin/end" in ser.counters
    # full ring: per-Mpkt rates of the counters, recomputed; below the threshold on this run
    sel = w[(w.nic == "e1000e") & (w.queues == 1)]
    req = sel.tx_requeues.sum() / sel.tx_packets.sum() * 1e6
    assert ring.topic == "full ring" and ring.level == "good" and req < F.RING_EVENTS_MPKT
    assert f"tx_requeues {req:.3g}/Mpkt" in ring.detail and "no such counter on e1000e: tx_drops_ring" in ring.detail
    assert "tc -s -j qdisc" in ring.counters
    # validity was not recorded in this old run dir: said, not shown as "0 valid"
    assert verd.headline.startswith("validity not recorded for 4 cell runs")
    ser2, ring2, scal, verd2 = _box(f, "linux", "virtio-net", 2)
    assert ser2.headline == "no contended lock recorded"
    st = R.scaling_table(runs)
    eff = st[(st.nic == "virtio-net") & (st.queues == 2)].sort_values("procs").efficiency.iloc[-1]
    assert scal.headline == f"no gain from 2 queues: efficiency {eff:.2f} at p4 (<= 1/2 + 0.1)"


def test_findings_freebsd_column_says_image_unreachable():
    f = F.findings(load_runs(LLTX))
    fb = next(c for c in f.columns if c.os == "freebsd")
    assert fb.why_empty.startswith("no measured cell (")
    assert "image unreachable: https://download.freebsd.org/" in fb.why_empty
    html = F.findings_html(load_runs(LLTX))
    assert 'class="xb-empty-column"' in html and "image unreachable: https://download.freebsd.org/" in html
    # a full ring that requeues is named with its counter (e1000e under VLAN/VXLAN stacking)
    ring = _box(f, "linux", "e1000e", 1)[1]
    assert ring.level == "warn" and ring.headline.startswith("a full ring requeues") and "tx_requeues" in ring.headline
    assert "tc -s -j qdisc" in ring.counters


def test_findings_replay_only_column(tmp_path):
    """FreeBSD rows only from a replay: the column is shown, marked replay only."""
    rep = shutil.copytree(DEFAULT, tmp_path / "replay")
    for t in ("cells", "metrics", "locks"):
        df = pd.read_parquet(rep / f"{t}.parquet")
        df["os"] = "freebsd"
        df["run_id"] = "20261123-181112-99999"
        df.to_parquet(rep / f"{t}.parquet", index=False)
    man = json.loads((rep / "manifest.json").read_text())
    man.update(run_id="20261123-181112-99999", host_kind="replay", replay="recorded FreeBSD outputs")
    (rep / "manifest.json").write_text(json.dumps(man))
    f = F.findings(load_runs([DEFAULT, rep]))
    fb = [c for c in f.columns if c.os == "freebsd"]
    assert len(fb) == 1 and fb[0].replay and fb[0].note.startswith("replay only")
    assert isinstance(f.boxes[(f.columns.index(fb[0]), ("virtio-net", 1))], list)
    cov = F.kernel_coverage(load_runs(DEFAULT))
    assert list(cov.os) == ["Linux", "FreeBSD"] and cov.state.iloc[1].startswith("missing: not in this run's matrix")


def test_findings_links_are_relative_and_exist(tmp_path):
    """Links point into the run dir, relative to report.html; captures that exist are links."""
    run = shutil.copytree(DEFAULT, tmp_path / "run")
    cell = "virtio-net.q2.p4.s1.tcp.m0"
    raw = run / "raw" / cell / "r0"
    raw.mkdir(parents=True)
    (raw / "commands.sh").write_text("# the cell's commands\n")
    html = F.findings_html(load_runs(run), report_dir=run)
    assert f'href="raw/{cell}/r0/commands.sh"' in html
    assert "(not kept)" in html           # the fixture keeps no other capture: said, not linked
    for name in [t[0] for t in F.THRESHOLDS]:
        assert name in html               # thresholds shown on the page


def test_lock_role_fallback():
    assert F.lock_role("qdisc root lock/busylock (Qdisc.q.lock, Qdisc.busylock)", "__dev_queue_xmit") == ("qdisc lock", True)
    assert F.lock_role("HARD_TX_LOCK (netdev_queue._xmit_lock)", "sch_direct_xmit") == ("tx queue lock", True)
    assert F.lock_role("vtnet0-tx0", "vtnet_txq_tq_deferred") == ("tx queue lock", True)
    assert F.lock_role("socket lock (bh_lock_sock)", "tcp_v4_rcv") == ("socket lock", False)
    assert F.lock_role("lock in do_wait", "do_wait") == ("other", False)
    # lock_stat class names (6.1 lockdep)
    assert F.lock_role("&sch->root_lock_key#3") == ("qdisc lock", True)
    assert F.lock_role("&qdisc_tx_busylock") == ("qdisc lock", True)
    assert F.lock_role("_xmit_ETHER#2") == ("tx queue lock", True)
    assert F.lock_role("slock-AF_INET") == ("socket lock", False)


# --- readable figures -----------------------------------------------------------------------
CELL_FIGS = ["fig_lock_wait_per_pkt", "fig_race_rates", "fig_scaling", "fig_queue_share", "fig_conservation",
             "fig_fairness", "fig_throughput_vs_senders", "fig_usl", "fig_lock_top", "fig_contentions_vs_senders"]


def test_overlap_check_can_fail():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(range(30), range(30))
    ax.set_xticks(range(30), [f"virtio-net q{i} p4 traced" for i in range(30)])
    assert len(R.label_overlaps(fig)) >= 29
    R.fit_labels(fig)
    assert R.label_overlaps(fig) == []
    plt.close(fig)


@pytest.mark.parametrize("which", ["default-2rep", "default-shape", "3x"])
def test_figures_have_no_overlapping_labels(which, big, default_shape):
    runs = load_runs({"default-2rep": DEFAULT, "default-shape": default_shape, "3x": big}[which])
    drawn = 0
    for name in CELL_FIGS:
        fig = getattr(R, name)(runs)
        if fig is None:
            assert name == "fig_usl" and which == "default-2rep"     # 2 sender counts only
            continue
        R.fit_labels(fig)
        assert R.check_figure(fig) == [], name
        assert R.label_overlaps(fig) == [], name
        drawn += 1
        plt.close(fig)
    assert drawn >= 9


def test_per_cell_bars_grouped_by_nic_and_queues(big):
    runs = load_runs(big)
    fig = R.fig_lock_wait_per_pkt(runs)
    headers = [t.get_text() for t in fig.axes[0].texts if t.get_gid() == R.GROUP_GID]
    assert headers == [f"{n}\n{q} TX queue{'s' if q > 1 else ''}" for n in sorted(bigmatrix.BIG["nics"])
                       for q in bigmatrix.BIG["queues"]]
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(ticks) == 54 and ticks[:2] == ["p1 untraced", "p1 traced"]
    plt.close(fig)


def test_usl_drawn_on_the_default_matrix_shape(default_shape):
    """Three sender counts (workloads/default.toml): the USL fit is drawn."""
    from harness.run.workload import load_workload
    w = load_workload(Path(__file__).parent.parent / "workloads" / "default.toml")
    assert len(set(w.matrix.procs)) >= 3
    fig = R.fig_usl(load_runs(default_shape))
    assert fig is not None
    plt.close(fig)


def test_findings_and_usl_on_a_real_default_run():
    """A real `xmitbench run workloads/default.toml` (procs 1, 2, 4; tests/fixtures/runs/default-3procs)."""
    runs = load_runs(RUNS / "default-3procs")
    ut = R.usl_table(runs)
    assert len(ut) and ut.fit.all() and (ut.levels == 3).all()     # never "not drawn" on the default matrix
    fig = R.fig_usl(runs, ut)
    assert fig is not None
    plt.close(fig)
    f = F.findings(runs)
    n_valid = int(runs.wide().valid.fillna(False).astype(bool).sum())
    verdicts = [b[-1] for b in f.boxes.values() if isinstance(b, list)]
    assert sum(int(v.headline.split(" of ")[0]) for v in verdicts) == n_valid
    assert all(v.topic == "verdicts" for v in verdicts)
