"""harness.analysis on real run dirs (tests/fixtures/runs, made by `xmitbench run` under TCG):
loading and counting rules, `compare` on a real slower configuration and on two runs of the
same configuration, and the executed-notebook HTML report."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.analysis import compare_runs, load_runs
from analysis_helpers import cli
from harness.analysis.load import root_qdisc
from harness.errors import InputError

RUNS = Path(__file__).parent / "fixtures" / "runs"
SMOKE, DEFAULT = RUNS / "smoke-1rep", RUNS / "default-2rep"
BASE_A, BASE_B, SLOW = RUNS / "udp-base-a", RUNS / "udp-base-b", RUNS / "udp-slow"


# --- load --------------------------------------------------------------------------------
def test_load_one_and_many():
    one = load_runs(DEFAULT)
    assert len(one.manifests) == 1 and one.emulated
    assert set(one.cells.status) == {"ok", "skipped"}
    many = load_runs([BASE_A, BASE_B, SLOW])
    assert len(many.run_ids) == 3 and many.metrics.run_id.nunique() == 3
    assert len(many.wide()) == 30                            # 3 runs x 2 cells x 5 reps
    # a results root expands to the run dirs under it (README.md lists them)
    assert len(load_runs(RUNS).run_ids) == 9


def test_old_schema_without_cpu_column_loads():
    r = load_runs(SMOKE)
    assert "cpu" in r.metrics and r.metrics.cpu.isna().all()
    w = r.wide()
    assert len(w) == 2 and (w.rep == 0).all()


def test_wide_counting_rules():
    r = load_runs([BASE_A])
    m, w = r.metrics, r.wide().set_index(["cell", "rep"])
    key = ("virtio-net.q2.p2.s1.udp.m1400", 0)
    sel = m[(m.cell == key[0]) & (m.rep == key[1])]
    # mq root already sums its children: the wide table uses the root, never root + children
    qp = sel[(sel.source == "tc -s -j qdisc") & (sel.metric == "qdisc_packets")]
    root = qp[qp.queue.isna()].value.sum()
    assert root == qp[qp.queue.notna()].value.sum()
    assert w.loc[key, "qdisc_packets"] == root
    # per-queue ethtool rows summed for tx_packets
    eth = sel[(sel.source == "ethtool -S") & (sel.metric == "tx_packets") & sel.queue.notna()]
    assert len(eth) == 2 and w.loc[key, "tx_packets"] == eth.value.sum()
    # Jain over the two senders
    snd = sel[sel.metric.str.fullmatch(r"sender\d+_bps")].value.to_numpy()
    assert w.loc[key, "jain"] == pytest.approx(snd.sum() ** 2 / (2 * (snd ** 2).sum()))
    assert w.loc[key, "gbit_s"] == pytest.approx(sel[sel.metric == "throughput_bps"].value.iloc[0] / 1e9)


def test_wide_e1000e_interface_totals_and_root_qdisc():
    r = load_runs(DEFAULT)
    w = r.wide()
    e = w[(w.nic == "e1000e") & (w.procs == 4) & (w.rep == 1)].iloc[0]
    m = r.metrics
    sel = m[(m.cell == e.cell) & (m.rep == 1)]
    link = sel[(sel.source == "ip -s -j link") & (sel.metric == "tx_packets")].value.iloc[0]
    assert e.tx_packets == link                              # no per-queue rows: interface total
    assert e.tx_requeues == root_qdisc(m, "tx_requeues").loc[(r.run_ids[0], e.cell, 1)]
    assert e.requeues_per_mpkt == pytest.approx(e.tx_requeues / e.tx_packets * 1e6)
    assert e.lock_wait_ns_per_pkt == pytest.approx(e.lock_wait_ns / e.tx_packets)
    assert e.cpu_pct_per_gbit == pytest.approx(e.cpu_busy_pct / e.gbit_s)
    assert 0 < e.cpu_busy_pct <= 200                         # 2 vCPUs
    # virtio_net has no restart counter: NaN (not measured), not 0
    assert w[w.nic == "virtio-net"].tx_restarts.isna().all()
    # skipped cells stay in the unfiltered table, without numbers
    allw = r.wide(only_ok=False)
    assert (allw.status == "skipped").sum() == 4 and allw[allw.status == "skipped"].throughput_bps.isna().all()


def test_bad_input_is_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_runs(tmp_path / "nope")
    with pytest.raises(InputError, match="no manifest.json"):
        load_runs(tmp_path)
    d = tmp_path / "run"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"run_id": "x"}))
    with pytest.raises(InputError) as e:
        load_runs(d)
    assert "metrics.parquet" in str(e.value) and "\n" not in str(e.value)


def test_copied_run_dir_keeps_runs_apart(tmp_path):
    shutil.copytree(SMOKE, tmp_path / "a")
    shutil.copytree(SMOKE, tmp_path / "b")
    r = load_runs([tmp_path / "a", tmp_path / "b"])
    assert len(r.run_ids) == 2 and r.metrics.run_id.nunique() == 2


# --- compare on real runs ----------------------------------------------------------------
def test_compare_same_configuration_not_flagged():
    c = compare_runs(load_runs(BASE_A), load_runs(BASE_B), ["throughput_bps"])
    assert len(c.table) == 2 and not c.regressed
    assert set(c.table.test) == {"mann-whitney"}             # 5 reps a side
    assert (c.table.p_value > 0.05).all()
    assert any("tcg" in w for w in c.warnings)


def test_compare_flags_real_slower_configuration():
    c = compare_runs(load_runs(BASE_A), load_runs(SLOW), ["throughput_bps"])
    assert c.regressed
    reg = c.regressions.iloc[0]
    assert reg.cell == "virtio-net.q2.p2.s1.udp.m1400"
    assert reg.delta_pct < -50 and reg.p_value < 0.05 and reg.delta_ci_hi_pct < 0
    assert reg.cliffs_delta == -1.0
    # the other direction is an improvement, not a regression
    back = compare_runs(load_runs(SLOW), load_runs(BASE_A), ["throughput_bps"])
    assert not back.regressed and "improvement" in set(back.table.verdict)


def test_compare_cli_exit_codes(capsys):
    assert cli("compare", str(BASE_A), str(BASE_B)) == 0
    assert cli("compare", str(BASE_A), str(SLOW), "--metric", "throughput_bps", "--threshold", "0.05") == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "mann-whitney" in out and "virtio-net.q2.p2.s1.udp.m1400" in out
    # a threshold larger than the slowdown: significant but not a regression
    assert cli("compare", str(BASE_A), str(SLOW), "--threshold", "0.9") == 0
    # one or two reps: the table says so instead of a p-value
    assert cli("compare", str(SMOKE), str(SMOKE)) == 0
    assert "insufficient reps" in capsys.readouterr().out


def _with_invalid(src: Path, dst: Path, cell: str) -> Path:
    """A copy of a run dir whose `cell` was limited by the peer (a bottleneck outside the path
    under test) in every rep."""
    import pandas as pd
    shutil.copytree(src, dst)
    c = pd.read_parquet(dst / "cells.parquet")
    if "valid" not in c:
        c["valid"] = c.status.eq("ok")
    bad = c.cell == cell
    v = [json.loads(x) if x else {} for x in c.loc[bad, "validity"]]
    c.loc[bad, "validity"] = [json.dumps({**x, "bottleneck": {"verdict": "peer", "reason": "test"}}) for x in v]
    c.loc[bad, "valid"] = False
    c.to_parquet(dst / "cells.parquet")
    return dst


def test_compare_leaves_out_invalid_cells_unless_asked(tmp_path, capsys):
    cell = "virtio-net.q2.p2.s1.udp.m1400"
    slow = _with_invalid(SLOW, tmp_path / "slow", cell)
    # the regressed cell is invalid in the candidate: left out, listed, no regression verdict
    assert cli("compare", str(BASE_A), str(slow), "--threshold", "0.05") == 0
    out = capsys.readouterr().out
    assert "excluded candidate: 5 of 10 cell runs invalid, left out (bottleneck 5)" in out
    assert cell not in out.split("excluded")[0]
    # asked for: compared, and the regression is back
    assert cli("compare", str(BASE_A), str(slow), "--threshold", "0.05", "--include-invalid") == 1
    out = capsys.readouterr().out
    assert "invalid cell runs included" in out and "REGRESSION" in out
    # every common cell invalid: a clear input error that names the way out
    both = _with_invalid(tmp_path / "slow", tmp_path / "slow2", "virtio-net.q1.p2.s1.udp.m1400")
    with pytest.raises(InputError, match="--include-invalid"):
        cli("compare", str(BASE_A), str(both))


def test_compare_cli_bad_input(tmp_path):
    with pytest.raises(InputError, match="unknown metric"):
        cli("compare", str(BASE_A), str(SLOW), "--metric", "bogus")
    with pytest.raises(InputError, match="does not exist"):
        cli("compare", str(tmp_path / "missing"), str(SLOW))
    with pytest.raises(InputError, match="no valid cell with status ok in common"):
        cli("compare", str(BASE_A), str(DEFAULT))


# --- report ------------------------------------------------------------------------------
FIGS_ALWAYS = {"throughput_vs_senders", "cpu_per_gbit", "race_rates", "sender_fairness", "conservation",
               "lock_wait_per_packet", "contentions_vs_senders"}
FIGS_HISTORY = {"history_throughput", "history_requeues", "history_lock_wait"}


def _figs(html: str) -> set[str]:
    return set(re.findall(r'class="xb-caption" data-fig="([^"]+)"', html))


def _check_html(html: str) -> None:
    assert "xb-tcg-banner" in html and "NOT kernel results" in html
    assert "Traceback" not in html and "No description has been provided" not in html
    assert not re.search(r'<script[^>]+src="http', html)     # self-contained: no CDN scripts
    n_png = len(re.findall(r'<img [^>]*src="data:image/png;base64,', html))
    assert n_png == len(_figs(html))                          # every figure has its caption, and vice versa


def _listing(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_report_default_run_dir(tmp_path):
    from harness.analysis.report import ANALYSIS_DIR
    run = tmp_path / "default-2rep"
    shutil.copytree(DEFAULT, run)
    before = _listing(ANALYSIS_DIR)
    assert cli("report", str(run)) == 0
    # the kernel's connection file and any ipc sockets live in a temp dir, removed afterwards
    assert _listing(ANALYSIS_DIR) - before == set()
    out = run / "report.html"
    html = out.read_text()
    _check_html(html)
    figs = _figs(html)
    assert FIGS_ALWAYS | {"scaling_efficiency", "queue_share", "top_locks"} <= figs
    assert "usl_fit not drawn" in html and "needs &gt;= 3 distinct sender counts" in html
    assert "Only one OS/kernel" in html
    assert not FIGS_HISTORY & figs and "a history needs at least 2 runs, 1 loaded" in html
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []   # no temp file left


def test_report_one_rep_and_many_runs(tmp_path):
    from harness.analysis.report import build_report
    one = build_report([SMOKE], out=tmp_path / "one.html")
    html = one.read_text()
    _check_html(html)
    assert FIGS_ALWAYS <= _figs(html) and "n=1, no CI" in html
    assert "needs at least 2 runs" in html
    many = build_report([BASE_A, BASE_B, SLOW], out=tmp_path / "many.html")
    html = many.read_text()
    _check_html(html)
    assert FIGS_ALWAYS | FIGS_HISTORY | {"top_locks", "queue_share"} <= _figs(html)
    assert "regression" in html                                # latest (slow) vs the two base runs
    assert "udp-ab@" in html                                   # two workload files: not pooled


def test_report_bad_input_before_any_kernel(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        cli("report", str(tmp_path / "missing"))


def test_notebook_runs_standalone(tmp_path):
    import nbformat
    from harness.analysis.report import ANALYSIS_DIR, execute_notebook, inject_parameters
    nb = inject_parameters(nbformat.read(ANALYSIS_DIR / "tx_races.ipynb", as_version=4), [str(SMOKE.resolve())])
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert tags.index(["injected-parameters"]) == tags.index(["parameters"]) + 1
    execute_notebook(nb)
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outs) >= 3
    assert np.any(["xb-tcg-banner" in o.get("data", {}).get("text/html", "") for o in outs])


def test_kernel_runs_in_a_removed_temp_dir(tmp_path):
    """A notebook writing relative to its cwd leaves nothing in analysis/; the kernel's temp dir
    (cwd and connection file) is gone afterwards and the kernel talked TCP on 127.0.0.1."""
    import nbformat
    from harness.analysis.report import ANALYSIS_DIR, execute_notebook
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os, json, glob\n"
        "open('stray.txt', 'w').write('x')\n"
        "from ipykernel.connect import get_connection_file\n"
        "cf = get_connection_file()\n"
        "print(json.dumps({'cwd': os.getcwd(), 'cf': cf, 'conn': json.load(open(cf))}))")]
    before = _listing(ANALYSIS_DIR)
    execute_notebook(nb)
    info = json.loads(nb.cells[0].outputs[0]["text"])
    assert _listing(ANALYSIS_DIR) - before == set()
    assert Path(info["cf"]).parent == Path(info["cwd"]) and not Path(info["cwd"]).exists()
    assert info["conn"]["transport"] == "tcp" and info["conn"]["ip"] == "127.0.0.1"


def test_failing_notebook_is_reported_not_written(tmp_path):
    import nbformat
    from harness.analysis.report import ReportError, build_report
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("RUN_DIRS = []", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("raise RuntimeError('boom in cell')")]
    bad = tmp_path / "bad.ipynb"
    nbformat.write(nb, str(bad))
    out = tmp_path / "r.html"
    with pytest.raises(ReportError, match=r"bad.ipynb failed: RuntimeError: boom in cell"):
        build_report([SMOKE], out=out, notebooks=[bad])
    assert not out.exists()
