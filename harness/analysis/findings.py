"""The findings page at the top of report.html: what the data says, per kernel x NIC x queues.

For every (OS, kernel) column and (NIC, TX queues) row it answers four questions from the
tables, each with the numbers it used, the counters they came from and links to the cell runs'
raw captures and commands.sh:

* where the TX path serialises: the TX-path lock with the most contended wait, its caller and its
  share of all contended wait (locks table);
* whether a full ring drops or requeues, and which counter says so (per million TX packets);
* multi-queue scaling efficiency (``report.scaling_table``);
* the mix of bottleneck verdicts (``harness.run.bottleneck``) and how many cell runs are valid.

Thresholds are the named constants below; the page prints them. Linux and FreeBSD stand in
columns side by side; a column with no data says why (a skipped cell's reason such as "image
unreachable: <url>", "replay only", or "not in this run's matrix").

``findings(runs)`` is pure (frames in, dataclasses out); ``findings_html`` renders them.
"""
from __future__ import annotations

import html
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from harness.counters import lockclass

from harness.run.bottleneck import RING_EVENTS_PER_MPKT

from .load import KEY, OS_NAMES, Runs, wait_lock_rows

# --- thresholds (shown on the page) -----------------------------------------------------
DOMINANT_LOCK_SHARE = 0.50       # a TX-path lock with at least this share of all contended wait is "the" point
LOCK_WAIT_NEGLIGIBLE_NS_PER_PKT = 50.0   # below this much contended wait per TX packet, locks do not limit
RING_EVENTS_MPKT = RING_EVENTS_PER_MPKT  # requeues / drops / restarts per Mpkt that count (bottleneck.py's)
SCALING_GOOD = 0.80              # efficiency X(q) / (q X(1)) at or above: the extra queues pay off
SCALING_NO_GAIN_MARGIN = 0.10    # efficiency at or below 1/q + this: no gain from the extra queues
VALID_SHARE_OK = 1.0             # every measured cell run valid, else the box is flagged

THRESHOLDS = [
    ("DOMINANT_LOCK_SHARE", DOMINANT_LOCK_SHARE, "share of all contended lock wait",
     "a TX-path lock at or above it is where the TX path serialises"),
    ("LOCK_WAIT_NEGLIGIBLE_NS_PER_PKT", LOCK_WAIT_NEGLIGIBLE_NS_PER_PKT, "ns of contended wait per TX packet",
     "below it no lock limits the TX path"),
    ("RING_EVENTS_MPKT", RING_EVENTS_MPKT, "events per million TX packets",
     "requeues, drops or restarts at or above it: a full ring acts (harness.run.bottleneck.RING_EVENTS_PER_MPKT)"),
    ("SCALING_GOOD", SCALING_GOOD, "X(q) / (q X(1))", "at or above: extra TX queues pay off"),
    ("SCALING_NO_GAIN_MARGIN", SCALING_NO_GAIN_MARGIN, "added to 1/q",
     "efficiency at or below 1/q + margin: the extra queues add nothing"),
    ("VALID_SHARE_OK", VALID_SHARE_OK, "valid / measured cell runs", "below it the box is flagged"),
]

# Ring counters of the wide table: metric -> what a non-zero value means.
RING_COUNTERS = [
    ("tx_drops_ring", "drops", "packets the driver's ring (buf_ring / mp_ring) dropped"),
    ("qdisc_drops", "drops", "packets the root qdisc dropped"),
    ("tx_requeues", "requeues", "qdisc requeues: the driver returned busy, the packet went back"),
    ("tx_restarts", "restarts", "the driver stopped a TX queue for lack of descriptors and restarted it"),
    ("tx_ring_stalls", "stalls", "the driver found its TX ring full"),
]


# --- lock vocabulary --------------------------------------------------------------------
# The TX-path roles come from the one lock vocabulary (harness.counters.lockclass), shared with
# the FreeBSD lockstat rows: tx queue lock, qdisc/ifq lock and ring are on the TX path.
_TX_PATH_CLASSES = (lockclass.TX_QUEUE, lockclass.QDISC, lockclass.RING)


def lock_role(lock: str, caller: str = "") -> tuple[str, bool]:
    """(class, on the TX path) of a recorded lock (harness.counters.lockclass.lock_class)."""
    cls = lockclass.lock_class(str(lock), str(caller or ""))
    return cls, cls in _TX_PATH_CLASSES


# --- data model -------------------------------------------------------------------------
@dataclass
class Link:
    text: str
    path: Path | None         # absolute; None: not kept in the run dir


@dataclass
class Finding:
    topic: str                # serialisation | full ring | scaling | verdicts
    headline: str
    detail: str
    level: str = "info"       # info | good | warn | none
    counters: str = ""        # where the numbers come from (counter names, method)
    links: list[Link] = field(default_factory=list)


@dataclass
class Column:
    os: str
    kernel: str | None
    replay: bool
    title: str
    why_empty: str = ""       # non-empty: no data; the reason
    note: str = ""            # e.g. "replay only"


@dataclass
class Findings:
    columns: list[Column]
    rows: list[tuple[str, int]]                       # (nic, queues)
    boxes: dict[tuple[int, tuple[str, int]], list[Finding] | str]   # str: why the box is empty
    kernels: list[str]
    kernel_sources: list[str]
    lock_methods: list[str]
    emulated: bool
    run_ids: list[str]


# --- computing --------------------------------------------------------------------------
def _skip_reasons(cells: pd.DataFrame) -> list[str]:
    r = cells.reason.dropna().astype(str)
    r = r[r != ""]
    counts = r.value_counts()
    return [f"{k}" + (f" ({n} cell runs)" if n > 1 else "") for k, n in counts.items()]


def _columns(runs: Runs, w_all: pd.DataFrame) -> list[Column]:
    ok = w_all[w_all.status == "ok"]
    cols: list[Column] = []
    oses = ["linux", "freebsd"] + sorted(set(w_all.os.dropna().astype(str)) - {"linux", "freebsd"})
    workloads = sorted({str((m.get("workload") or {}).get("name")) for m in runs.manifests.values()})
    for o in oses:
        name = OS_NAMES.get(o, o)
        mine = ok[ok.os.astype(str) == o]
        live = mine[~mine.replay.astype(bool)]
        if len(live):
            for k in sorted(set(live.kernel.astype(str))):
                cols.append(Column(o, k, False, f"{name} {k}"))
            continue
        if len(mine):                       # only replayed rows: shown, marked as such
            for k in sorted(set(mine.kernel.astype(str))):
                cols.append(Column(o, k, True, f"{name} {k} (REPLAY)",
                                   note=f"replay only: no live {name} run loaded; these rows are recorded "
                                        f"{name} outputs played back, a test of the pipeline, not a {name} result"))
            continue
        rest = w_all[w_all.os.astype(str) == o]
        if len(rest):
            reasons = _skip_reasons(rest.drop_duplicates("cell"))
            st = ", ".join(f"{n} {s}" for s, n in rest.drop_duplicates(["cell", "rep"]).status.value_counts().items())
            why = f"no measured cell ({st}): " + ("; ".join(reasons[:3]) if reasons else "no reason recorded")
        elif o in ("linux", "freebsd"):
            why = f"not in this run's matrix (workload {', '.join(workloads)} has no {name} image)"
        else:
            continue
        cols.append(Column(o, None, False, name, why_empty=why))
    return cols


def _raw_links(runs: Runs, rows: pd.DataFrame, files: Sequence[str], limit: int = 4) -> list[Link]:
    """Links to the raw captures of the cell runs behind a finding (first rep of each cell)."""
    links: list[Link] = []
    raw = runs.cells.set_index(KEY)["raw_dir"] if "raw_dir" in runs.cells else pd.Series(dtype=object)
    raw = raw[~raw.index.duplicated(keep="last")]
    for (run_id, cell), g in rows.groupby(["run_id", "cell"], sort=True):
        rep = int(g.rep.min())
        d = raw.get((run_id, cell, rep))
        base = runs.run_dir(run_id)
        rdir = base / d if isinstance(d, str) and d else base / "raw" / cell / f"r{rep}"
        short = _short_cell(cell)
        for f in files:
            p = rdir / f
            links.append(Link(f"{short} r{rep} {f}", p if p.exists() else None))
        if len(links) >= limit * len(files):
            break
    return links


def _short_cell(cell: str) -> str:
    """"linux-deb.virtio-net.q1.p4.s1.tcp.m0.untraced" -> "q1.p4.untraced" (the row names the rest)."""
    parts = str(cell).split(".")
    keep = [p for p in parts if re.fullmatch(r"[qp]\d+", p) or p in ("untraced", "vlan", "vxlan", "gre")
            or p.startswith("churn")]
    return ".".join(keep) or str(cell)


def _serialisation(runs: Runs, box: pd.DataFrame) -> Finding:
    traced = box[box.traced.astype(bool)] if "traced" in box else box
    lk = wait_lock_rows(runs.locks)
    methods = sorted(set(lk.method.dropna().astype(str))) if len(lk) and "method" in lk else []
    if traced.empty:
        return Finding("serialisation", "no traced cell run", "lock statistics are taken in traced cells only",
                       "none")
    lk = lk.merge(traced[KEY], on=KEY, how="inner") if len(lk) else lk
    pkts = float(traced.tx_packets.sum())
    wait_total = float(lk.wait_ns_total.sum()) if len(lk) else 0.0
    per_pkt = wait_total / pkts if pkts else math.nan
    counters = "locks table: wait_ns_total, contentions" + (f"; method {'; '.join(methods)}" if methods else "")
    links = _raw_links(runs, traced, ["after.lock_wait.txt", "commands.sh"], limit=2)
    if lk.empty or wait_total <= 0:
        return Finding("serialisation", "no contended lock recorded",
                       f"{len(traced)} traced cell runs, {pkts:.0f} TX packets, 0 ns contended wait",
                       "good", counters, links)
    g = lk.groupby(["lock", "caller"], dropna=False).agg(wait=("wait_ns_total", "sum"),
                                                         n=("contentions", "sum")).reset_index()
    g[["role", "tx"]] = [lock_role(a, b) for a, b in zip(g["lock"], g["caller"])]
    g = g.sort_values("wait", ascending=False)
    top_all = g.iloc[0]
    tx = g[g.tx.astype(bool)]
    role_share = g.groupby("role").wait.sum() / wait_total
    roles = ", ".join(f"{r} {s:.0%}" for r, s in role_share.sort_values(ascending=False).items())
    detail = (f"{wait_total / 1e6:.3g} ms contended wait over {len(traced)} traced cell runs = "
              f"{per_pkt:.3g} ns per TX packet; by role: {roles}")
    if not math.isnan(per_pkt) and per_pkt < LOCK_WAIT_NEGLIGIBLE_NS_PER_PKT:
        return Finding("serialisation", f"locks do not limit: {per_pkt:.3g} ns wait/packet "
                                        f"< {LOCK_WAIT_NEGLIGIBLE_NS_PER_PKT:g}", detail, "good", counters, links)
    if tx.empty:
        return Finding("serialisation", f"no TX-path lock contended; top lock {top_all['lock']} "
                                        f"@ {top_all.caller} ({top_all.wait / wait_total:.0%} of wait)",
                       detail, "info", counters, links)
    # the TX-path role with the most wait (summed over its locks and callers) decides; within it the
    # (lock, caller) with the most wait is named
    role = role_share[[r for r in role_share.index if r in set(tx.role)]].idxmax()
    share = float(role_share[role])
    t = tx[tx.role == role].iloc[0]
    # the cell where this lock waited longest: its captures are the ones to read first
    per_cell = lk[(lk["lock"] == t["lock"]) & (lk.caller == t.caller)].groupby(KEY).wait_ns_total.sum()
    worst = per_cell.idxmax()
    links = _raw_links(runs, traced.merge(pd.DataFrame([worst], columns=KEY), on=KEY),
                       ["after.lock_wait.txt", "after.lock_stack.txt", "commands.sh"], limit=1) + links
    other = "" if top_all.tx else (f"; top lock overall {top_all['lock']} @ {top_all.caller} "
                                   f"({top_all.role}, {top_all.wait / wait_total:.0%}, not the TX path)")
    detail += (f"; top {role}: {t['lock']} @ {t.caller}, {t.wait / wait_total:.0%} of wait, {t.n:.0f} contentions, "
               f"largest in {_short_cell(worst[1])} rep {worst[2]}" + other)
    what = f"{role} (mostly @ {t.caller})"
    if share >= DOMINANT_LOCK_SHARE:
        return Finding("serialisation", f"serialises on the {what}: {share:.0%} of contended wait", detail, "warn",
                       counters, links)
    return Finding("serialisation", f"no dominant point: top TX-path role {what} has {share:.0%} of wait "
                                    f"(< {DOMINANT_LOCK_SHARE:.0%})", detail, "info", counters, links)


def _native_names(runs: Runs, box: pd.DataFrame, metric: str, limit: int = 2) -> str:
    m = runs.metrics
    if m.empty or "native_name" not in m:
        return metric
    sel = m[(m.metric == metric) & m.run_id.isin(box.run_id.unique()) & m.cell.isin(box.cell.unique())]
    pairs = sel[["source", "native_name"]].dropna().drop_duplicates().head(limit + 1)
    if pairs.empty:
        return metric
    names = [f"{s}: {n}" for s, n in pairs.head(limit).itertuples(index=False)]
    return f"{metric} ({'; '.join(names)}{', ...' if len(pairs) > limit else ''})"


def _full_ring(runs: Runs, box: pd.DataFrame) -> Finding:
    pkts = float(box.tx_packets.sum())
    driver = ", ".join(sorted(set(box.driver.dropna().astype(str)))) if "driver" in box else "?"
    rates, parts, absent = {}, [], []
    for metric, kind, _ in RING_COUNTERS:
        if metric not in box or box[metric].isna().all():
            absent.append(metric)
            continue
        v = float(box[metric].sum())
        rates[metric] = v / pkts * 1e6 if pkts else math.nan
        parts.append(f"{metric} {rates[metric]:.3g}/Mpkt ({v:.0f})")
    detail = (f"over {len(box)} cell runs, {pkts:.0f} TX packets: " + ", ".join(parts)
              + (f"; no such counter on {driver}: {', '.join(absent)}" if absent else ""))
    counters = "; ".join(_native_names(runs, box, m) for m in rates) or "none"
    links = _raw_links(runs, box, ["after.tc_qdisc.txt", "after.ethtool_S.txt"], limit=1)
    hit = {m: r for m, r in rates.items() if not math.isnan(r) and r >= RING_EVENTS_MPKT}
    if not rates:
        return Finding("full ring", f"no ring counter on {driver}", detail, "none", counters, links)
    kinds = {m: k for m, k, _ in RING_COUNTERS}
    if hit:
        worst = max(hit, key=hit.get)
        m_rows = box.assign(_r=box[worst] / box.tx_packets).sort_values("_r", ascending=False)
        links = _raw_links(runs, m_rows.head(1), ["after.tc_qdisc.txt", "after.ethtool_S.txt", "commands.sh"],
                           limit=1)
        drops = [m for m in hit if kinds[m] == "drops"]
        reqs = [m for m in hit if kinds[m] != "drops"]
        verb = ("drops" if drops and not reqs else "requeues" if reqs and not drops else "drops and requeues")
        return Finding("full ring", f"a full ring {verb}: " + ", ".join(f"{m} {hit[m]:.3g}/Mpkt" for m in hit)
                       + f" (>= {RING_EVENTS_MPKT:g})", detail, "warn", counters, links)
    top = max(rates, key=lambda m: -1 if math.isnan(rates[m]) else rates[m])
    return Finding("full ring", f"ring not a limit: every ring counter < {RING_EVENTS_MPKT:g}/Mpkt "
                                f"(highest {top} {rates[top]:.3g})", detail, "good", counters, links)


def _scaling(runs: Runs, st: pd.DataFrame, col: Column, nic: str, q: int, box: pd.DataFrame) -> Finding | None:
    if q <= 1:
        return None
    if st.empty:
        return Finding("scaling", "no single-queue cell to scale from", "", "none")
    sel = st[(st.os.astype(str) == col.os) & (st.kernel.astype(str) == str(col.kernel)) & (st.nic == nic)
             & (st.queues == q)]
    if "traced" in sel and sel.traced.astype(str).nunique() > 1:
        sel = sel[sel.traced.astype(bool)]
    sel = sel[sel.efficiency.notna()]
    if sel.empty:
        return Finding("scaling", f"no matching 1-queue cell for {nic}", "efficiency needs the same senders at q1",
                       "none")
    sel = sel.sort_values("procs")
    parts = [f"p{int(r.procs)}: {r.efficiency:.2f} ({r.multi_q_gbit_s:.3g} vs {q} x {r.single_q_gbit_s:.3g} Gbit/s)"
             for r in sel.itertuples()]
    top = sel.iloc[-1]          # the most senders: where a shared serialisation point shows
    eff = float(top.efficiency)
    if eff >= SCALING_GOOD:
        head, lvl = f"scales: efficiency {eff:.2f} at p{int(top.procs)} (>= {SCALING_GOOD:g})", "good"
    elif eff <= 1 / q + SCALING_NO_GAIN_MARGIN:
        head, lvl = (f"no gain from {q} queues: efficiency {eff:.2f} at p{int(top.procs)} "
                     f"(<= 1/{q} + {SCALING_NO_GAIN_MARGIN:g})"), "warn"
    else:
        head, lvl = f"partial scaling: efficiency {eff:.2f} at p{int(top.procs)}", "info"
    return Finding("scaling", head, "; ".join(parts), lvl,
                   "throughput_bps (iperf3 end.sum_sent), median over repetitions",
                   _raw_links(runs, box.drop_duplicates(["run_id", "cell"]), ["iperf3_0.json"], limit=4))


def _verdicts(runs: Runs, box: pd.DataFrame, box_all: pd.DataFrame) -> Finding:
    n = len(box)
    valid = int(box.valid.fillna(False).astype(bool).sum()) if "valid" in box else 0
    vc = box.bottleneck.dropna().astype(str).value_counts()
    mix = ", ".join(f"{k} {c}" for k, c in vc.items()) or "no verdict recorded"
    st = box_all.drop_duplicates(["run_id", "cell", "rep"]).status.value_counts()
    failed, skipped = int(st.get("failed", 0)), int(st.get("skipped", 0))
    reasons = _skip_reasons(box_all[box_all.status == "failed"])
    share = valid / n if n else 0.0
    lvl = "good" if share >= VALID_SHARE_OK and not failed else "warn"
    if "valid" not in box or box.valid.isna().all():
        vtxt, lvl = f"validity not recorded for {n} cell runs", "none"
    else:
        vtxt = f"{valid} of {n} valid"
    if len(vc):
        head = f"{vtxt}; bottleneck {vc.index[0]}" + (f" in {vc.iloc[0]} of {n}" if vc.iloc[0] < n else "")
    else:
        head = f"{vtxt}; no bottleneck verdict recorded (run dir from before verdicts)"
    detail = (f"verdicts: {mix}" + (f"; {failed} failed ({'; '.join(reasons[:2])})" if failed else "")
              + (f"; {skipped} skipped" if skipped else "")
              + "".join(f"; e.g. {r}" for r in sorted(set(box.bottleneck_reason.dropna().astype(str)))[:1]))
    cells = box.drop_duplicates(["run_id", "cell"])
    links = _raw_links(runs, cells, ["commands.sh"], limit=8)
    return Finding("verdicts", head, detail, lvl, "cells table: status, valid, validity.bottleneck", links)


def findings(runs: Runs) -> Findings:
    from .report import scaling_table
    w_all = runs.wide(only_ok=False)
    w_all = w_all[w_all.status.isin(["ok", "failed", "skipped"])]   # warm-ups are not findings
    cols = _columns(runs, w_all)
    rows = sorted({(str(n), int(q)) for n, q in zip(w_all.nic, w_all.queues) if not pd.isna(q)},
                  key=lambda t: (t[0], t[1]))
    st = scaling_table(runs)
    boxes: dict = {}
    for ci, col in enumerate(cols):
        if col.why_empty:
            continue
        mine = w_all[(w_all.os.astype(str) == col.os)]
        for nic, q in rows:
            b_all = mine[(mine.nic == nic) & (mine.queues == q)]
            box = b_all[(b_all.status == "ok") & (b_all.kernel.astype(str) == str(col.kernel))
                        & (b_all.replay.astype(bool) == col.replay)]
            if box.empty:
                reasons = _skip_reasons(b_all.drop_duplicates("cell"))
                boxes[(ci, (nic, q))] = ("; ".join(reasons[:2]) if reasons else "not in this run's matrix")
                continue
            fs = [_serialisation(runs, box), _full_ring(runs, box)]
            sc = _scaling(runs, st, col, nic, q, box)
            if sc is not None:
                fs.append(sc)
            fs.append(_verdicts(runs, box, b_all))
            boxes[(ci, (nic, q))] = fs
    c = runs.cells
    kernels = sorted(set(c.kernel.dropna().astype(str))) if "kernel" in c else []
    sources = sorted({str((m.get("guest_image") or {}).get("kernel_source")) for m in runs.manifests.values()
                      if (m.get("guest_image") or {}).get("kernel_source")})
    methods = sorted(set(runs.locks.method.dropna().astype(str))) if len(runs.locks) else []
    return Findings(cols, rows, boxes, kernels, sources, methods, runs.emulated, runs.run_ids)


# --- rendering --------------------------------------------------------------------------
_COLORS = {"warn": "#fdecea", "good": "#e8f5e9", "info": "#f4f6fb", "none": "#f3f3f3"}
_BORDER = {"warn": "#c62828", "good": "#2e7d32", "info": "#1f4e96", "none": "#999"}


def _href(p: Path, base: Path) -> str:
    return html.escape(os.path.relpath(p, base).replace(os.sep, "/"), quote=True)


def _links_html(links: list[Link], base: Path) -> str:
    out, seen = [], set()
    for ln in links:
        if ln.text in seen:
            continue
        seen.add(ln.text)
        out.append(f'<a href="{_href(ln.path, base)}">{html.escape(ln.text)}</a>' if ln.path
                   else f'<span title="not kept in this run dir">{html.escape(ln.text)} (not kept)</span>')
    return ", ".join(out)


def _finding_html(f: Finding, base: Path) -> str:
    e = html.escape
    links = _links_html(f.links, base)
    return (f'<div class="xb-finding" data-topic="{e(f.topic)}" style="background:{_COLORS[f.level]};'
            f'border-left:4px solid {_BORDER[f.level]};padding:4px 8px;margin:0 0 6px 0;text-align:left">'
            f'<div><span style="color:#555;font-size:11px;text-transform:uppercase">{e(f.topic)}</span> '
            f'<b>{e(f.headline)}</b></div>'
            f'<div style="font-size:11.5px;color:#333">{e(f.detail)}</div>'
            + (f'<div style="font-size:11px;color:#555">counters: <code>{e(f.counters)}</code></div>' if f.counters else "")
            + (f'<div style="font-size:11px">captures: {links}</div>' if links else "")
            + "</div>")


def findings_html(runs: Runs, report_dir: str | os.PathLike | None = None) -> str:
    """The findings section as one HTML block (``report_dir``: where report.html is written, so
    the links to captures are relative to it)."""
    from .report import tcg_banner_html
    e = html.escape
    F = findings(runs)
    base = Path(report_dir) if report_dir else runs.run_dir(F.run_ids[0])
    n_data = sum(1 for c in F.columns if not c.why_empty)
    n_empty = len(F.columns) - n_data
    empty_w = 18 if n_data else 100 / max(1, n_empty)
    data_w = (88 - empty_w * n_empty) / max(1, n_data)
    head = "".join(f'<th style="width:{empty_w if c.why_empty else data_w:.0f}%;text-align:left;padding:6px;'
                   f'background:#eef1f6">{e(c.title)}'
                   + (f'<div style="font-weight:normal;font-size:11px;color:#5b2c83">{e(c.note)}</div>' if c.note else "")
                   + "</th>" for c in F.columns)
    body = []
    for ri, (nic, q) in enumerate(F.rows):
        tds = [f'<th style="width:12%;text-align:left;vertical-align:top;padding:6px">{e(nic)}<br>'
               f'{q} TX queue{"s" if q > 1 else ""}</th>']
        for ci, col in enumerate(F.columns):
            if col.why_empty:
                if ri == 0:
                    tds.append(f'<td class="xb-empty-column" rowspan="{len(F.rows)}" style="vertical-align:top;'
                               f'padding:8px;background:#f3f3f3;color:#444;text-align:left"><b>No data:</b> {e(col.why_empty)}</td>')
                continue
            box = F.boxes.get((ci, (nic, q)), "not in this run's matrix")
            if isinstance(box, str):
                tds.append(f'<td style="vertical-align:top;padding:6px;color:#555;text-align:left"><i>{e(box)}</i></td>')
            else:
                tds.append('<td style="vertical-align:top;padding:6px;text-align:left">'
                           + "".join(_finding_html(f, base) for f in box) + "</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    left = ' style="text-align:left"'
    thr = "".join(f"<tr><td{left}><code>{e(n)}</code></td><td>{v:g}</td><td{left}>{e(u)}</td><td{left}>{e(why)}</td></tr>"
                  for n, v, u, why in THRESHOLDS)
    glance = []
    for (ci, (nic, q)), box in F.boxes.items():
        if isinstance(box, list):
            for f in box:
                if f.level == "warn":
                    glance.append(f"<li><b>{e(F.columns[ci].title)}, {e(nic)}, {q} TX queue{'s' if q > 1 else ''}"
                                  f"</b>: {e(f.headline)}</li>")
    for c in F.columns:
        if c.why_empty:
            glance.append(f"<li><b>{e(c.title)}</b>: no data: {e(c.why_empty)}</li>")
        elif c.note:
            glance.append(f"<li><b>{e(c.title)}</b>: {e(c.note)}</li>")
    n_good = sum(1 for b in F.boxes.values() if isinstance(b, list) for f in b if f.level == "good")
    runs_line = ", ".join(F.run_ids[:6]) + (f" ... ({len(F.run_ids)} runs)" if len(F.run_ids) > 6 else "")
    return (
        '<section id="xb-findings" class="xb-findings">'
        "<h2>Findings</h2>"
        + tcg_banner_html(runs)
        + '<p style="margin:6px 0 2px 0"><b>At a glance</b> (red boxes below; ' + f"{n_good} findings within "
        "their thresholds, green):</p>"
        + ('<ul class="xb-glance" style="margin:0 0 8px 0">' + "".join(glance) + "</ul>" if glance
           else "<p>nothing beyond the thresholds.</p>")
        + f'<p>Kernel release(s): <b>{e(", ".join(F.kernels) or "none measured")}</b>'
        + (f" (from {e(', '.join(F.kernel_sources))})" if F.kernel_sources else "")
        + f"; lock statistics: {e('; '.join(F.lock_methods) or 'none recorded')}; runs: {e(runs_line)}. "
        "What the data says per kernel, NIC and TX-queue count, from the tables with the thresholds listed "
        "below the grid (harness/analysis/findings.py). Each box pools the cell runs of one kernel, NIC and TX-queue count (all sender counts; traced cells for "
        "locks). Links open the raw captures and the exact commands (commands.sh) of the cell runs behind it.</p>"
        '<table class="xb-findings-table" style="border-collapse:collapse;width:100%;font-size:12.5px">'
        f'<tr><th style="background:#eef1f6"></th>{head}</tr>' + "".join(body) + "</table>"
        '<details open style="margin:8px 0"><summary>Thresholds used on this page</summary>'
        '<table class="xb-table"><tr><th>name</th><th>value</th><th>unit</th><th>meaning</th></tr>'
        + thr + "</table></details></section>")


def kernel_coverage(runs: Runs) -> pd.DataFrame:
    """One row per OS (Linux, FreeBSD, others present) and kernel: measured cell runs, or why
    there are none (a skipped cell's reason, replay only, not in the matrix)."""
    w_all = runs.wide(only_ok=False)
    w_all = w_all[w_all.status.isin(["ok", "failed", "skipped"])]
    rows = []
    for c in _columns(runs, w_all):
        sel = w_all[(w_all.os.astype(str) == c.os) & (w_all.status == "ok")]
        if c.kernel is not None:
            sel = sel[(sel.kernel.astype(str) == c.kernel) & (sel.replay.astype(bool) == c.replay)]
        rows.append({"os": OS_NAMES.get(c.os, c.os), "kernel": c.kernel or "-",
                     "measured cell runs": 0 if c.why_empty else len(sel),
                     "cells": 0 if c.why_empty else sel.cell.nunique(),
                     "state": ("missing: " + c.why_empty) if c.why_empty else (c.note or "live")})
    return pd.DataFrame(rows, columns=["os", "kernel", "measured cell runs", "cells", "state"])


def show(runs: Runs, report_dir: str | os.PathLike | None = None) -> None:
    """The findings grid in a notebook: per kernel (columns, Linux then FreeBSD) x NIC x TX queues."""
    from .report import _html
    _html(findings_html(runs, report_dir))
