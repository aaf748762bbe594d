"""harness.analysis on the race-reproducer run dirs (tests/fixtures/runs: bufring-race, lltx-stacking,
control-churn, real TCG runs of a Debian 6.1 guest): the new cell axes and metrics in the wide table,
each section of analysis/race_reproducers.ipynb, and the executed notebook."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.analysis import load_runs
from harness.analysis import races as X
from harness.analysis.load import churn_events, host_cpu_table, thread_kind
from harness.analysis.report import check_figure

RUNS = Path(__file__).parent / "fixtures" / "runs"
BUFRING, CHURN, LLTX = RUNS / "bufring-race", RUNS / "control-churn", RUNS / "lltx-stacking"
SMOKE, DEFAULT = RUNS / "smoke-1rep", RUNS / "default-2rep"


def _fig_ok(fig) -> None:
    import matplotlib.pyplot as plt
    assert fig is not None
    assert check_figure(fig) == []
    plt.close(fig)


# --- load: new axes and metrics, old run dirs --------------------------------------------
def test_new_axes_loaded_and_defaulted_for_old_run_dirs():
    old = load_runs(DEFAULT)
    for t in (old.cells, old.metrics):
        assert set(t["stack"]) == {"direct"} and set(t["churn"]) == {"none"} and t["traced"].all()
    assert old.cells["valid"].isna().all()
    w = load_runs(CHURN).wide(only_ok=False)
    assert set(w.churn) == {"none", "link-flap", "mtu", "queues"} and w.traced.all()
    assert w.valid.dtype == "boolean"


def test_untraced_inferred_from_cell_id(tmp_path):
    d = _probe_twin_run(tmp_path, drop_traced_column=True)
    r = load_runs(d)
    un = r.cells[r.cells.cell.str.endswith(".untraced")]
    assert len(un) == 1 and not un.traced.any() and r.cells[~r.cells.cell.str.endswith(".untraced")].traced.all()


def test_wide_conservation_churn_and_host_columns():
    w = load_runs(BUFRING).wide().set_index(["cell", "rep"])
    q1 = w.loc[("linux-deb.virtio-net.q1.p8.s1.udp.m64", 0)]
    # unexplained share = validity.conservation.unexplained_bytes / app_bytes
    assert q1.unexplained_pct == pytest.approx(57306 / 27673600 * 100)
    # host CPU: all QEMU threads over measured_s, % of one host CPU
    assert q1.host_cpu_pct == pytest.approx(16.05 / q1.measured_s * 100)
    assert np.isnan(q1.host_vcpu_pct)                      # threads unnamed: no vCPU split
    c = load_runs(CHURN).wide().set_index(["cell", "rep"])
    flap = c.loc[("linux-deb.virtio-net.q2.p4.s1.tcp.m0.churn-link-flap", 1)]
    assert flap.churn_all_recovered is False and flap.churn_events == 3 and not flap.valid
    assert c.loc[("linux-deb.virtio-net.q2.p4.s1.tcp.m0.churn-mtu", 0)].churn_recovery_s_max == 2.79


def test_host_cpu_table_and_thread_kinds():
    r = load_runs(BUFRING)
    h = host_cpu_table(r.metrics, r.cells)
    assert len(h) == 9 and set(h.kind) == {"all threads (unnamed)"} and not h.named.any()
    assert (h.pct_one_cpu > 50).all() and (h.pct_one_cpu < 250).all()
    assert thread_kind("CPU 0/TCG") == "vCPU" and thread_kind("CPU 11/KVM") == "vCPU"
    assert thread_kind("IO mon_iothread") == "I/O" and thread_kind("qemu-system-x86") == "main loop + other"
    assert host_cpu_table(load_runs(SMOKE).metrics, load_runs(SMOKE).cells).empty


def test_churn_events_per_event():
    ev = churn_events(load_runs(CHURN))
    assert len(ev) == 18 and set(ev.churn) == {"link-flap", "mtu", "queues"}
    flap1 = ev[(ev.churn == "link-flap") & (ev.rep == 1)]
    assert not flap1.recovered.any() and flap1.recovery_s.isna().all()
    mtu0 = ev[(ev.churn == "mtu") & (ev.rep == 0)].sort_values("event")
    assert mtu0.recovery_s.tolist() == [0.5, 2.79, 0.55] and mtu0.event.tolist() == [1, 2, 3]


# --- sections ----------------------------------------------------------------------------
def test_applicable_sections():
    assert {k for k, v in X.applicable(load_runs(BUFRING)).items() if not v} == {"bufring-race", "host-side view"}
    assert {k for k, v in X.applicable(load_runs(LLTX)).items() if not v} == {"lltx-stacking", "host-side view"}
    assert {k for k, v in X.applicable(load_runs(CHURN)).items() if not v} == {"control-churn", "host-side view"}
    assert all(X.applicable(load_runs(SMOKE)).values())        # nothing applies to an old smoke run


def test_bufring_single_vs_multi_queue():
    r = load_runs(BUFRING)
    t = X.bufring_table(r).set_index(["nic", "queues"])
    assert list(t.index) == [("e1000e", 1), ("virtio-net", 1), ("virtio-net", 2)]   # measured only
    assert t.loc[("virtio-net", 1), "requeues [1/Mpkt]"].startswith("88.9")
    assert t.loc[("virtio-net", 2), "requeues [1/Mpkt]"].startswith("2,187")
    assert t.loc[("virtio-net", 1), "unexplained [% of app bytes]"].startswith("+0.209")
    assert "ring drops (buf_ring/mp_ring) [packets]" not in t               # no FreeBSD cell ran
    note = X.bufring_not_measured(r)
    assert "linux e1000e q2 (skipped: e1000e has at most 1 TX queue" in note and "image unreachable" in note
    _fig_ok(X.fig_bufring(r))
    assert "ring drops" in X.bufring_missing(r)
    # the counted qdisc drops explain the q1 shortfall: what is left is below 0.1 %
    f = X._bufring_frame(r)
    q1 = f[(f.nic == "virtio-net") & (f.queues == 1) & (f.status == "ok")]
    assert (q1.unexplained_pct > 0.2).all() and (q1.silent_pct.abs() < 0.1).all()


def test_lltx_direct_vlan_vxlan_measured_gre_skipped():
    r = load_runs(LLTX)
    t = X.lltx_table(r)
    ok = t[t.status == "ok"]
    assert set(ok["stack"]) == {"direct", "vlan", "vxlan"} and set(t["stack"]) == {"direct", "vlan", "vxlan", "gre"}
    assert (ok["reps ok"] == "3/3").all() and len(ok) == 12       # 2 NICs x 2 sender counts x 3 stacks
    # the stacked device's own TX counter proves the traffic went through it; direct has none
    assert (ok[ok["stack"] != "direct"]["stacked dev TX [packets]"] != "").all()
    assert (ok[ok["stack"] == "direct"]["stacked dev TX [packets]"] == "").all()
    # this host has no 8021q: the peer took priority-tagged (VID 0) frames, and says so
    assert ok[ok["stack"] == "vlan"]["peer end"].str.startswith("vid 0 (priority-tagged)").all()
    note = X.lltx_skipped_note(r)
    assert note.startswith("48 of 72 stacked (vlan/vxlan/gre) cell runs did not run") and "terminate gre" in note
    sk = X.lltx_skipped(r)
    assert set(sk["stack"]) == {"vlan", "vxlan", "gre"} and sk["cell runs"].sum() == 48
    host = sk[sk.reason.str.startswith("the host kernel cannot terminate gre")]
    assert (host["cells (os nic p)"].iloc[0]
            == "linux e1000e p1, linux e1000e p4, linux virtio-net p1, linux virtio-net p4")
    assert sk[sk["cells (os nic p)"].str.contains("freebsd")].reason.str.startswith(
        ("image unreachable: ", "gre stacking is measured on linux only")).all()
    lk = X.lltx_lock_table(r)
    assert set(lk["stack"]) == {"direct", "vlan", "vxlan"}
    assert (lk.groupby("stack").lock.first().str.startswith("HARD_TX_LOCK")).all()   # the NIC queue's lock leads
    _fig_ok(X.fig_lltx(r))


def test_churn_sections():
    r = load_runs(CHURN)
    sv = X.churn_survival(r).set_index(["os", "churn"])
    assert sv.loc[("linux", "link-flap"), "events recovered"] == "3/6"
    assert sv.loc[("linux", "mtu"), "recovery max [s]"] == "2.79"
    assert "cannot change TX queues" in sv.loc[("freebsd", "queues"), "why failed / skipped"]
    _fig_ok(X.fig_churn_recovery(r))
    _fig_ok(X.fig_churn_impact(r))
    # churn=queues: per-queue counters lose the removed queue, interface total and peer do not
    note = X.churn_counter_note(r)
    assert note.startswith("churn queues:") and "nothing was lost" in note


def test_host_section():
    r = load_runs(CHURN)
    t = X.host_table(r)
    assert len(t) == 4 and "all QEMU threads [% host CPU]" in t
    assert "debug-threads=on" in X.host_names_note(r)
    _fig_ok(X.fig_host_cpu(r))


def _probe_twin_run(tmp_path: Path, drop_traced_column: bool = False) -> Path:
    """A copy of the control-churn fixture plus a DERIVED probe-effect twin: the churn=none cell,
    rep 0, copied as ``<cell>.untraced`` with throughput x 1.25 (no real run has twins yet)."""
    d = tmp_path / "probe"
    shutil.copytree(CHURN, d)
    base = "linux-deb.virtio-net.q2.p4.s1.tcp.m0"
    for t in ("cells", "metrics"):
        df = pd.read_parquet(d / f"{t}.parquet")
        twin = df[(df.cell == base) & (df.rep == 0)].copy()
        twin["cell"] = base + ".untraced"
        twin["traced"] = False
        # and a DERIVED warm-up of the twin's configuration (status warmup, throughput x 0.55)
        warm = twin.copy()
        warm["cell"] = base + ".untraced.warmup"
        if t == "cells":
            warm["status"] = "warmup"
        if t == "metrics":
            sel = twin.metric.isin(["throughput_bps"]) | twin.metric.str.fullmatch(r"sender\d+_bps")
            warm.loc[sel, "value"] *= 0.55
            twin.loc[sel, "value"] *= 1.25
        df = pd.concat([df, twin, warm], ignore_index=True)
        if drop_traced_column:
            df = df.drop(columns="traced")
        df.to_parquet(d / f"{t}.parquet", index=False)
    return d


def test_order_effect_compares_the_warm_up_with_later_runs(tmp_path):
    r = load_runs(_probe_twin_run(tmp_path))
    assert not X.applicable(r)["order effect"]
    assert not r.wide().cell.str.endswith(".warmup").any()       # left out of every statistic
    t = X.order_table(r)
    # later runs: the twin (1.25 x rep 0) and the traced repetitions; the warm-up is 0.55 x rep 0
    w = r.wide()
    base = "linux-deb.virtio-net.q2.p4.s1.tcp.m0"
    traced = w[w.cell == base].sort_values("rep").throughput_bps.tolist()
    later = [1.25 * traced[0]] + traced
    assert len(t) == 1 and t["later reps"].iloc[0] == len(later) == 3
    import statistics
    assert t["warm-up vs later [%]"].iloc[0] == pytest.approx((0.55 * traced[0] / statistics.median(later) - 1) * 100)


def test_probe_effect_on_a_derived_twin(tmp_path):
    r = load_runs(_probe_twin_run(tmp_path))
    assert not X.applicable(r)["probe effect"]
    t = X.probe_table(r)
    assert len(t) == 1 and t["untraced reps"].iloc[0] == 1 and t["traced reps"].iloc[0] == 2
    w = r.wide().set_index(["cell", "rep"])
    traced = w.loc["linux-deb.virtio-net.q2.p4.s1.tcp.m0"].throughput_bps.median()
    untraced = w.loc[("linux-deb.virtio-net.q2.p4.s1.tcp.m0.untraced", 0)].throughput_bps
    assert t["traced vs untraced [%]"].iloc[0] == pytest.approx((traced / untraced - 1) * 100)
    _fig_ok(X.fig_probe_effect(r))
    assert X.probe_table(load_runs(CHURN)).empty and X.fig_probe_effect(load_runs(CHURN)) is None


# --- the notebook, executed once over all race fixtures (keeps the test time small) -------
def test_race_notebook_renders_every_section(tmp_path):
    import nbformat
    from harness.analysis.report import ANALYSIS_DIR, execute_notebook, inject_parameters
    dirs = [str(p.resolve()) for p in (BUFRING, LLTX, CHURN)] + [str(_probe_twin_run(tmp_path))]
    nb = inject_parameters(nbformat.read(ANALYSIS_DIR / "race_reproducers.ipynb", as_version=4), dirs)
    execute_notebook(nb)
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outs if o.output_type == "error"]
    html = "\n".join(o.get("data", {}).get("text/html", "") for o in outs)
    figs = set(re.findall(r'class="xb-caption" data-fig="([^"]+)"', html))
    assert figs == {"bufring_race", "lltx_stacking", "churn_recovery", "churn_impact", "probe_effect", "host_cpu"}
    assert sum("image/png" in o.get("data", {}) for o in outs) == len(figs)
    for h in ("bufring-race: one TX queue", "lltx-stacking: direct vs VLAN vs VXLAN vs GRE", "control-churn:",
              "Probe effect of lock tracing", "Host-side view", "Order effect"):
        assert h in html
    assert "cannot terminate gre in the peer namespace" in html and "vid 0 (priority-tagged)" in html
    assert "Not shown:" not in html


def test_race_notebook_on_an_old_run_shows_no_section():
    import nbformat
    from harness.analysis.report import ANALYSIS_DIR, execute_notebook, inject_parameters
    nb = inject_parameters(nbformat.read(ANALYSIS_DIR / "race_reproducers.ipynb", as_version=4),
                           [str(SMOKE.resolve())])
    execute_notebook(nb)
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    html = "\n".join(o.get("data", {}).get("text/html", "") for o in outs)
    assert not [o for o in outs if o.output_type == "error"]
    assert "Sections for these runs: none." in html and "xb-caption" not in html
    assert json.dumps(html).count("<h3>") == 0


def test_named_qemu_threads_split_by_kind():
    """Runs from QEMU with -name ...,debug-threads=on: rows per thread name (DERIVED from the
    bufring fixture's unnamed total, split 2 vCPUs + I/O + main loop)."""
    r = load_runs(BUFRING)
    m = r.metrics
    tot = m[m.metric == "host_thread_cpu_s"]
    parts = {"CPU 0/TCG": 0.4, "CPU 1/TCG": 0.4, "IO mon_iothread": 0.05, "qemu-system-x86": 0.15}
    rows = []
    for name, share in parts.items():
        x = tot.copy()
        x["native_name"], x["value"] = name, x["value"] * share
        rows.append(x)
    r.metrics = pd.concat([m[m.metric != "host_thread_cpu_s"], *rows], ignore_index=True)
    h = host_cpu_table(r.metrics, r.cells)
    assert h.named.all() and h.groupby("kind").size().to_dict() == {"vCPU": 18, "I/O": 9, "main loop + other": 9}
    w = r.wide().set_index(["cell", "rep"]).loc[("linux-deb.virtio-net.q1.p8.s1.udp.m64", 0)]
    assert w.host_vcpu_pct == pytest.approx(0.8 * w.host_cpu_pct)
    assert w.host_max_thread_pct == pytest.approx(0.4 * w.host_cpu_pct)
    t = X.host_table(r)
    assert {"vCPU [% host CPU]", "I/O [% host CPU]", "busiest thread [% host CPU]"} <= set(t.columns)
    assert "debug-threads" not in X.host_names_note(r)
    _fig_ok(X.fig_host_cpu(r))
