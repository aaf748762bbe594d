"""Figures and tables for the notebooks in analysis/, and the report builder.

The notebooks stay thin: each cell calls one function here. Every figure goes through
``show(fig, caption)``, which refuses a figure without a title, axis labels with a unit in
brackets, or any plotted data, and prints the one-line caption naming the kernel mechanism
the metric reflects. ``header(runs)`` prints a red banner whenever any number comes from a
TCG (software-emulated CPU) guest.

``build_report(run_dirs)`` executes the notebooks in one kernel (each notebook's cell tagged
``parameters`` is followed by an injected cell that sets RUN_DIRS, as papermill does) and
writes ``report.html`` (nbconvert, figures embedded as data URIs, no external scripts) into
the first run dir, atomically. The kernel talks TCP on 127.0.0.1 and runs in a temporary
directory holding its connection file, removed afterwards: nothing is left in analysis/.
"""
from __future__ import annotations

import base64
import functools
import html
import io
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from harness.errors import InputError

from . import stats as S
from .load import KEY, OS_NAMES, WIDE_METRICS, Runs, load_runs, queue_table, replay_note, wait_lock_rows

REPO = Path(__file__).resolve().parent.parent.parent
ANALYSIS_DIR = REPO / "analysis"
NOTEBOOKS = ("findings.ipynb", "compare_kernels.ipynb", "tx_races.ipynb", "race_reproducers.ipynb", "lock_contention.ipynb",
             "nightly.ipynb")
CELL_COLS = ["workload", "os", "kernel", "replay", "nic", "queues", "procs", "streams", "proto", "msg_size", "stack", "churn",
             "traced"]

_CACHE: dict[tuple, Runs] = {}
_HEADER_SHOWN: set[int] = set()


class ReportError(Exception):
    """A notebook failed while building the report (one-line message)."""


# ---------------------------------------------------------------------------------------
# Opening runs from a notebook
# ---------------------------------------------------------------------------------------
def default_results_root() -> Path:
    return Path(os.environ.get("XMITBENCH_RESULTS", REPO / "results"))


RUN_DIRS_ENV = "XMITBENCH_RUN_DIRS"     # `make notebook RUN=...`: run dirs, whitespace-separated


def resolve_run_dirs(run_dirs: Sequence[str | os.PathLike] | str | None) -> list[str]:
    """RUN_DIRS as given, else $XMITBENCH_RUN_DIRS, else the newest run dir under the results root."""
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    if not run_dirs:
        run_dirs = os.environ.get(RUN_DIRS_ENV, "").split()
    if run_dirs:
        return [str(p) for p in run_dirs]
    root = default_results_root()
    found = sorted(p for p in root.glob("*/manifest.json")) if root.is_dir() else []
    if not found:
        raise InputError(root, "RUN_DIRS", "empty and no run dir under the results root; "
                                           "set RUN_DIRS in the parameters cell")
    return [str(found[-1].parent)]


def open_runs(run_dirs) -> Runs:
    """load_runs with a small cache keyed by the parquet files' mtimes, so the four
    notebooks executed in one kernel read the tables once."""
    dirs = resolve_run_dirs(run_dirs)
    key = []
    for d in dirs:
        p = Path(d)
        key.append((str(p.resolve()), tuple((f.name, f.stat().st_mtime_ns) for f in sorted(p.glob("*.parquet")))
                    if p.is_dir() else ()))
    key = tuple(key)
    if key not in _CACHE:
        if len(_CACHE) > 4:
            _CACHE.clear()
        _CACHE[key] = load_runs(dirs)
    return _CACHE[key]


# ---------------------------------------------------------------------------------------
# Display helpers (IPython imported lazily: the module also serves the CLI)
# ---------------------------------------------------------------------------------------
def _display(obj) -> None:
    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover - used outside IPython
        print(obj)
        return
    display(obj)


def _html(s: str) -> None:
    try:
        from IPython.display import HTML
    except ImportError:  # pragma: no cover
        print(re.sub(r"<[^>]+>", "", s))
        return
    _display(HTML(s))


def note(text: str) -> None:
    """A visible note (e.g. why a figure is absent)."""
    _html(f'<p class="xb-note" style="background:#fff8e1;border-left:4px solid #f0a000;padding:6px 10px">'
          f'{html.escape(text)}</p>')


def tcg_banner_html(runs: Runs) -> str:
    if not runs.emulated:
        return ""
    ids = runs.tcg_run_ids
    warn = next((m.get("warning") for m in runs.manifests.values() if m.get("warning")), "")
    return ('<div class="xb-tcg-banner" style="background:#b00020;color:#fff;padding:12px 16px;'
            'font-size:1.15em;font-weight:bold;border-radius:4px;margin:8px 0">'
            f'TCG DATA: {len(ids)} of {len(runs.manifests)} run(s) ran under accel=tcg (QEMU software CPU '
            'emulation). Throughput, CPU cost and lock waits here are NOT kernel results; they only show '
            f'that the harness and counters work.<div style="font-weight:normal;font-size:0.85em;margin-top:4px">'
            f'{html.escape(warn)} Runs: {html.escape(_ellipsis(ids))}</div></div>')


def replay_banner_html(runs: Runs) -> str:
    """Shown above everything when any row was played from recorded guest outputs."""
    ids = runs.replay_run_ids
    if not ids:
        return ""
    oses = runs.cells.loc[runs.cells.run_id.isin(ids), "os"].dropna().unique() if "os" in runs.cells else []
    what = "; ".join(sorted({str(runs.manifests[r].get("replay") or "") for r in ids} - {""}))
    return ('<div class="xb-replay-banner" style="background:#5b2c83;color:#fff;padding:12px 16px;'
            'font-size:1.15em;font-weight:bold;border-radius:4px;margin:8px 0">'
            f'{html.escape(replay_note(oses))}. Every such row is labelled REPLAY; compare and nightly '
            f'never count it as a live run.<div style="font-weight:normal;font-size:0.85em;margin-top:4px">'
            f'{html.escape(what)} Runs: {html.escape(_ellipsis(ids))}</div></div>')


def _ellipsis(items: Sequence[str], keep: int = 6) -> str:
    items = list(items)
    if len(items) <= keep:
        return ", ".join(items)
    return ", ".join(items[:3]) + f", ... ({len(items) - 5} more), " + ", ".join(items[-2:])


def header(runs: Runs) -> None:
    """TCG banner (when any data is emulated) and one line per run."""
    for b in (replay_banner_html(runs), tcg_banner_html(runs)):
        if b:
            _html(b)
    ok = runs.wide()
    if ok.empty:
        note(f"No cell with status ok in {len(runs.manifests)} run(s): nothing to plot. "
             "The validity table (tx_races) lists why cells failed or were skipped.")
    if id(runs) in _HEADER_SHOWN:     # the report runs four notebooks in one kernel: list runs once
        return
    _HEADER_SHOWN.add(id(runs))
    rt = runs.runs_table()
    cols = ["run_id", "started", "workload", "os", "kernel", "accel", "replay", "complete", "git", "ok", "failed",
            "skipped"]
    # newest first: a history's table shows its last runs, the ones a reader checks
    show_table(rt[cols].iloc[::-1], f"{len(rt)} run(s)" + (", newest first" if len(rt) > 1 else ""))


CONSTANT_OK = ("workload", "os", "kernel", "streams", "proto", "msg_size", "stack", "churn", "traced", "run_id")


def show_table(df: pd.DataFrame, title: str = "", max_rows: int = 60, drop_constant: bool = True) -> None:
    """An HTML table; configuration columns with one value in every row are left out and
    named once under the title instead (``drop_constant``)."""
    if df is None or df.empty:
        note(f"{title}: no rows" if title else "no rows")
        return
    d = df.head(max_rows)
    same = []
    if drop_constant and len(df) > 1:
        for c in CONSTANT_OK:
            if c in d and df[c].astype(str).nunique() == 1:
                same.append(f"{c} {df[c].iloc[0]}")
                d = d.drop(columns=c)
    if same:
        title = f"{title} (all rows: {', '.join(same)})" if title else f"all rows: {', '.join(same)}"
    fmt = d.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}", border=0, classes="xb-table")
    t = f'<p class="xb-table-title"><b>{html.escape(title)}</b></p>' if title else ""
    more = f"<p>({len(df) - max_rows} more rows not shown)</p>" if len(df) > max_rows else ""
    _html(t + fmt + more)


# ---------------------------------------------------------------------------------------
# Readable tick labels: measured on the figure's own renderer, not guessed
# ---------------------------------------------------------------------------------------
GROUP_GID = "xb-group"          # gid of the NIC/queue group headers above per-cell bars
LABEL_PAD_PX = 1.0              # labels closer than this (pixels at the saved dpi) count as touching


def _label_boxes(fig) -> list[tuple[str, object]]:
    """(text, window bbox) of every visible, non-empty tick label and group header of ``fig``."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    out = []
    for ax in fig.get_axes():
        if not ax.get_visible():
            continue
        for which, labels in (("x", ax.get_xticklabels()), ("y", ax.get_yticklabels())):
            for t in labels:
                if t.get_visible() and t.get_text().strip():
                    out.append((f"{which}:{t.get_text()!r}", t.get_window_extent(r)))
        for t in ax.texts:
            if t.get_gid() == GROUP_GID and t.get_visible():
                out.append((f"group:{t.get_text()!r}", t.get_window_extent(r)))
        for loc, t in (("center", ax.title), ("left", ax._left_title), ("right", ax._right_title)):
            if t.get_visible() and t.get_text().strip():
                out.append((f"title:{t.get_text()!r}", t.get_window_extent(r)))
        leg = ax.get_legend()
        if leg is not None and leg.get_visible():
            out.append(("legend", leg.get_window_extent(r)))
    return out


def label_overlaps(fig, pad: float = LABEL_PAD_PX) -> list[str]:
    """Pairs of tick labels / group headers whose boxes overlap (after drawing ``fig``): a
    label that covers another cannot be read. Empty: every label stands clear."""
    boxes = _label_boxes(fig)
    bad = []
    for i in range(len(boxes)):
        a_txt, a = boxes[i]
        for b_txt, b in boxes[i + 1:]:
            if (min(a.x1, b.x1) - max(a.x0, b.x0) > pad) and (min(a.y1, b.y1) - max(a.y0, b.y0) > pad):
                bad.append(f"{a_txt} overlaps {b_txt}")
    return bad


def fit_labels(fig, max_widen: int = 4) -> None:
    """Make overlapping x tick labels readable: rotate them 45 then 90 degrees, shrink the
    font, then widen the figure, re-measuring after each step (``label_overlaps``)."""
    steps = [("rot", 45), ("rot", 90), ("font", 7), ("font", 6)] + [("widen", 1.35)] * max_widen
    for kind, v in steps:
        if not label_overlaps(fig):
            return
        for ax in fig.get_axes():
            labels = [t for t in ax.get_xticklabels() if t.get_text().strip()]
            if kind == "rot":
                for t in labels:
                    t.set_rotation(v)
                    t.set_ha("right" if v < 90 else "center")
                    t.set_rotation_mode("anchor" if v < 90 else "default")
            elif kind == "font":
                for t in labels:
                    t.set_fontsize(min(t.get_fontsize(), v))
                for t in ax.texts:
                    if t.get_gid() == GROUP_GID:
                        t.set_fontsize(min(t.get_fontsize(), v))
        if kind == "widen":
            w, h = fig.get_size_inches()
            fig.set_size_inches(w * v, h)


_UNIT_RE = re.compile(r"\[[^\]]+\]|\([^)]*[/%][^)]*\)")


def check_figure(fig) -> list[str]:
    """Problems that make a figure unfit for the report (empty list: fine)."""
    problems = []
    axes = [ax for ax in fig.get_axes() if ax.get_visible() and ax.axison]
    if not axes:
        problems.append("no axes")
    title = fig._suptitle.get_text() if fig._suptitle is not None else ""
    for i, ax in enumerate(axes):
        if not (ax.get_title() or title):
            problems.append(f"axes {i}: no title")
        labels = {"x": ax.get_xlabel(), "y": ax.get_ylabel()}
        for which, label in labels.items():
            if not label:
                problems.append(f"axes {i}: no {which} label")
        # the value axis carries the unit; the other may be categories (cells, locks)
        if not any(_UNIT_RE.search(lb) for lb in labels.values() if lb):
            problems.append(f"axes {i}: neither axis label has a [unit]")
        if not (ax.lines or ax.patches or ax.collections or ax.images or ax.containers):
            problems.append(f"axes {i}: nothing plotted")
    overlaps = label_overlaps(fig) if axes else []
    if overlaps:
        problems.append(f"{len(overlaps)} overlapping labels, e.g. {overlaps[0]}")
    return problems


def show(fig, caption: str, fig_id: str, missing: str = "no data for it in these runs") -> None:
    """Display ``fig`` as an embedded PNG with its one-line caption; close it.
    ``fig`` None (nothing to plot) shows a note saying why instead of an empty figure."""
    import matplotlib.pyplot as plt
    if fig is None:
        note(f"Figure {fig_id} not drawn: {missing}.")
        return
    fit_labels(fig)
    problems = check_figure(fig)
    if problems:
        plt.close(fig)
        raise ValueError(f"figure {fig_id}: " + "; ".join(problems))
    titles = [t for t in [fig._suptitle.get_text() if fig._suptitle is not None else ""]
              + [ax.get_title() for ax in fig.get_axes()] if t]
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    try:
        from IPython.display import display
        alt = f"{'; '.join(titles)}. {caption}"
        display({"image/png": base64.b64encode(buf.getvalue()).decode()}, raw=True,
                metadata={"image/png": {"alt": alt}})
    except ImportError:  # pragma: no cover
        pass
    _html(f'<p class="xb-caption" data-fig="{html.escape(fig_id)}" style="margin:0 0 18px 0;color:#333">'
          f'<b>Figure ({html.escape(fig_id)}).</b> {html.escape(caption)}</p>')


def _new_fig(w: float = 9.5, h: float = 4.2, ncols: int = 1):
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, ncols, figsize=(w, h), squeeze=False)
    for a in ax[0]:
        a.grid(True, axis="y", alpha=0.3)
    return fig, (ax[0] if ncols > 1 else ax[0][0])


def _ylim0(ax) -> None:
    """y from 0, with headroom so the highest marker and whisker are not cut by the frame."""
    top = ax.get_ylim()[1]
    ax.set_ylim(0, top * 1.08 if top > 0 else 1.0)


def _all_zero_note(ax, *values) -> None:
    """Say so inside the axes when every plotted value (medians and CI ends) is zero."""
    v = np.concatenate([np.asarray(pd.to_numeric(pd.Series(list(x)), errors="coerce"), dtype=float)
                        for x in values]) if values else np.array([])
    if v.size and np.all(np.nan_to_num(v) == 0):
        ax.text(0.5, 0.5, "0 in every cell", transform=ax.transAxes, ha="center", va="center",
                fontsize=13, color="#555", bbox={"facecolor": "white", "edgecolor": "#999"})


def _needs_ok_cells(empty):
    """Decorator: with no cell of status ok (all failed/skipped) return ``empty()`` instead of
    plotting or tabulating nothing; the header already says why."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(runs, *a, **kw):
            if runs.wide().empty:
                return empty()
            return fn(runs, *a, **kw)
        return inner
    return wrap


_NONE = lambda: None  # noqa: E731
_EMPTY = pd.DataFrame

# ---------------------------------------------------------------------------------------
# Findings (harness/analysis/findings.py): the page at the top of the report
# ---------------------------------------------------------------------------------------
# The findings page itself is harness/analysis/findings.py (findings.show); it reads this module.


# ---------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------
def varying(w: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    return [c for c in cols if c in w and w[c].astype(str).nunique() > 1]


def label_cols(w: pd.DataFrame) -> list[str]:
    """The cell-describing columns that differ in this data (always nic, queues, procs)."""
    must = ["nic", "queues", "procs"]
    return [c for c in CELL_COLS if c in must or c in varying(w, CELL_COLS)]


def _label(row, cols, multiline: bool = False) -> str:
    """"virtio-net q2 p4"; with ``multiline`` (tick labels) workload/os/kernel go on a first line."""
    head, tail, axes = [], [], []
    for c in cols:
        v = row[c]
        if c == "churn":
            txt = "no churn" if str(v) == "none" else f"churn {v}"
        elif c == "replay":
            txt = "REPLAY" if bool(v) else "live"
        elif c == "traced":
            txt = "traced" if bool(v) else "untraced"
        else:
            txt = {"queues": f"q{v}", "procs": f"p{v}", "streams": f"s{v}", "msg_size": f"m{v}"}.get(c, str(v))
        (head if c in ("workload", "os", "kernel", "replay") else axes if c in AXES else tail).append(txt)
    if multiline:
        return "\n".join(" ".join(p) for p in (head, tail, axes) if p)
    return " ".join(head + tail + axes)


def summary(w: pd.DataFrame, metric: str, by: Sequence[str] | None = None,
            seed: int = S.DEFAULT_SEED) -> pd.DataFrame:
    """Median and bootstrap 95% CI of ``metric`` over repetitions, per group."""
    by = list(by or label_cols(w))
    rows = []
    for keys, vals in w.groupby(by, sort=True, dropna=False)[metric]:     # the metric's column only
        keys = keys if isinstance(keys, tuple) else (keys,)
        s = S.summarize(vals.tolist(), seed=seed)
        rows.append({**dict(zip(by, keys)), "n": s.n, "median": s.median, "ci_lo": s.ci_lo, "ci_hi": s.ci_hi})
    out = pd.DataFrame(rows, columns=by + ["n", "median", "ci_lo", "ci_hi"])
    out["label"] = labels(out, by)
    return out


def labels(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    """``_label`` of every row (rows as dicts: iterrows builds a Series per row)."""
    cols = list(cols)
    return [_label(dict(zip(cols, t)), cols) for t in zip(*(df[c] for c in cols))] if len(df) else []


@_needs_ok_cells(_EMPTY)
def summary_table(runs: Runs, metrics: Sequence[str], by: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per cell configuration, ``median [lo, hi] (n)`` per metric."""
    w = runs.wide()
    if w.empty:
        return pd.DataFrame()
    by = list(by or label_cols(w))
    out = None
    for m in metrics:
        s = summary(w, m, by)
        unit = WIDE_METRICS.get(m, ("", True, ""))[0]
        col = f"{m} [{unit}]" if unit else m
        s[col] = [_ci_text(r) for _, r in s.iterrows()]
        s = s[by + [col]]
        out = s if out is None else out.merge(s, on=by, how="outer")
    n = w.groupby(by, dropna=False).size().rename("reps").reset_index()
    return out.merge(n, on=by, how="left")


def _ci_text(r) -> str:
    if pd.isna(r["median"]):
        return "-"
    med = f"{r['median']:.4g}"
    if pd.isna(r["ci_lo"]):
        return f"{med} (n={r['n']}, no CI)"
    return f"{med} [{r['ci_lo']:.4g}, {r['ci_hi']:.4g}] (n={r['n']})"


def _errbars(s: pd.DataFrame) -> np.ndarray:
    lo = (s["median"] - s["ci_lo"]).clip(lower=0).fillna(0).to_numpy()
    hi = (s["ci_hi"] - s["median"]).clip(lower=0).fillna(0).to_numpy()
    return np.vstack([lo, hi])


GROUP_COLS = ("workload", "os", "kernel", "replay", "nic", "queues")   # per-cell bars are grouped by these
GROUP_GAP = 0.8                  # extra x space between two groups [bar widths]
BAR_WIDTH_IN = 0.24              # figure width per bar [inches]: a one-line label turned upright fits
UPRIGHT_AFTER = 12               # more bars than this: tick labels upright from the start


def _group_label(row, gcols: Sequence[str]) -> str:
    """"virtio-net\n2 TX queues" (with workload/os/kernel on a line above when they vary)."""
    head = _label(row, [c for c in gcols if c not in ("nic", "queues")]) if any(
        c not in ("nic", "queues") for c in gcols) else ""
    q = row["queues"] if "queues" in gcols else None
    tail = [str(row["nic"])] if "nic" in gcols else []
    if q is not None and not pd.isna(q):
        tail.append(f"{int(q)} TX queue{'s' if int(q) > 1 else ''}")
    return "\n".join([x for x in [head] if x] + tail)


def cell_positions(frame: pd.DataFrame, cols: Sequence[str]):
    """x positions of per-cell rows (already sorted by ``cols``), grouped by NIC and queues (and
    os/kernel/workload when they vary): (x, [(group label, first x, last x)], tick labels of the
    remaining columns)."""
    gcols = [c for c in cols if c in GROUP_COLS]
    rest = [c for c in cols if c not in GROUP_COLS]
    x, spans, ticks, prev, pos = [], [], [], None, 0.0
    for _, r in frame.iterrows():
        key = tuple(str(r[c]) for c in gcols)
        if prev is not None and key != prev:
            pos += GROUP_GAP
        if key != prev:
            spans.append([_group_label(r, gcols), pos, pos])
        spans[-1][2] = pos
        x.append(pos)
        ticks.append(_label(r, rest, multiline=True) if rest else "")
        prev, pos = key, pos + 1
    return np.asarray(x, dtype=float), [tuple(sp) for sp in spans], ticks


def cell_axis(ax, x, spans, ticks, fontsize: float = 8) -> None:
    """Tick labels under each bar, a header per NIC/queue group above the axes, dotted lines
    between groups; the title is lifted above the headers."""
    from matplotlib.transforms import blended_transform_factory
    upright = len(x) > UPRIGHT_AFTER and any(t.strip() for t in ticks)
    if upright:                 # one line each: an upright label is as wide as its line height
        ticks = [" ".join(t.split("\n")) for t in ticks]
    ax.set_xticks(x, ticks, fontsize=fontsize, rotation=90 if upright else 0)
    tr = blended_transform_factory(ax.transData, ax.transAxes)
    lines = 1
    for i, (lb, a, b) in enumerate(spans):
        ax.text((a + b) / 2, 1.01, lb, transform=tr, ha="center", va="bottom", fontsize=fontsize, gid=GROUP_GID)
        lines = max(lines, lb.count("\n") + 1)
        if i:
            ax.axvline(a - (GROUP_GAP + 1) / 2, color="#888", lw=0.8, ls=":")
    if len(x):
        ax.set_xlim(float(x.min()) - 0.6, float(x.max()) + 0.6)
    for loc in ("center", "left", "right"):       # lift every title above the group headers
        if ax.get_title(loc):
            ax.set_title(ax.get_title(loc), loc=loc, pad=6 + 1.25 * fontsize * lines,
                         fontsize=ax.title.get_fontsize() if loc == "center" else ax._left_title.get_fontsize())


LEGEND_INSIDE_MAX = 6            # more legend entries than this: the legend goes right of the axes


def series_legend(ax, fontsize: float = 8, **kw) -> None:
    """A legend that never covers the data or the title: inside for a few series, right of the
    axes (in columns of at most 20 entries) for many."""
    n = len(ax.get_legend_handles_labels()[0])
    if n > LEGEND_INSIDE_MAX:
        ax.legend(fontsize=min(fontsize, 7), loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                  ncol=1 + (n - 1) // 20, **kw)
    else:
        ax.legend(fontsize=fontsize, **kw)


def _cells_fig_width(n: int, base: float = 9.5) -> float:
    return max(base, BAR_WIDTH_IN * n + 2.0)


def bar_by_cell(w: pd.DataFrame, metric: str, title: str, ylabel: str, scale: float = 1.0,
                ax=None, by: Sequence[str] | None = None, color: str = "C0", points: bool = False):
    """Bars (or ``points``, for an axis that should not start at 0) of the median per cell
    configuration with 95% bootstrap CI whiskers."""
    if w.empty or w[metric].isna().all():
        return None
    s = summary(w, metric, by)
    fig = None
    if ax is None:
        fig, ax = _new_fig(_cells_fig_width(len(s)))
    s[["median", "ci_lo", "ci_hi"]] = s[["median", "ci_lo", "ci_hi"]] * scale
    x, spans, ticks = cell_positions(s, [c for c in s.columns if c in CELL_COLS])
    if points:
        ax.errorbar(x, s["median"], yerr=_errbars(s), fmt="o", ms=7, capsize=5, color=color)
    else:
        ax.bar(x, s["median"].fillna(0), yerr=_errbars(s), capsize=4, color=color, alpha=0.85)
    same_n = s.n.nunique() == 1
    if not same_n:
        ticks = [f"{t}\n(n={n})" for t, n in zip(ticks, s.n)]
    ax.set_title(title)
    cell_axis(ax, x, spans, ticks)
    ax.set_xlabel("sender processes p, per NIC and TX-queue count (above); whiskers: 95% bootstrap CI of the "
                  "median" + (f"; n={s.n.iloc[0]} repetitions each" if same_n else ""))
    ax.set_ylabel(ylabel)
    _all_zero_note(ax, s["median"], s["ci_hi"])
    return fig if fig is not None else ax.figure


# ---------------------------------------------------------------------------------------
# compare_kernels
# ---------------------------------------------------------------------------------------
AXES = ["stack", "churn", "traced"]


def series_cols(w: pd.DataFrame) -> list[str]:
    other = ["workload", "os", "kernel", "streams", "proto", "msg_size"] + AXES
    return [c for c in ["workload", "os", "kernel", "nic", "queues", "streams", "proto", "msg_size"] + AXES
            if c in ("nic", "queues") or c in varying(w, other)]


def _plot_vs_procs(ax, w: pd.DataFrame, metric: str) -> None:
    """One line per configuration (series_cols): median of `metric` over repetitions vs sender
    processes, with 95 % bootstrap CI whiskers."""
    sc = series_cols(w)
    for i, (keys, g) in enumerate(w.groupby(sc, sort=True)):
        s = summary(g, metric, ["procs"])
        ax.errorbar(s.procs.astype(float), s["median"], yerr=_errbars(s), marker="o", capsize=4,
                    label=_label(dict(zip(sc, keys if isinstance(keys, tuple) else (keys,))), sc), color=f"C{i % 10}")


@_needs_ok_cells(_NONE)
def fig_throughput_vs_senders(runs: Runs):
    w = runs.wide()
    fig, ax = _new_fig()
    _plot_vs_procs(ax, w, "gbit_s")
    ax.set_title("Throughput vs concurrent sender processes")
    ax.set_xlabel("iperf3 sender processes, each pinned to its own vCPU [count]")
    ax.set_ylabel("throughput, median over reps [Gbit/s]")
    ax.set_xticks(sorted(w.procs.dropna().astype(int).unique()))
    _ylim0(ax)
    series_legend(ax, title="nic, TX queues", title_fontsize=8)
    return fig


@_needs_ok_cells(_EMPTY)
def scaling_table(runs: Runs) -> pd.DataFrame:
    """Multi-queue throughput / (queues x single-queue throughput), medians, per config."""
    w = runs.wide()
    rows = []
    grp = [c for c in ["workload", "os", "kernel", "nic", "procs", "streams", "proto", "msg_size"] if c in w]
    grp += varying(w, AXES)
    for keys, g in w.groupby(grp, sort=True):
        single = g[g.queues == 1].throughput_bps.median()
        for q, gq in g[g.queues > 1].groupby("queues"):
            rows.append({**dict(zip(grp, keys)), "queues": int(q), "single_q_gbit_s": single / 1e9,
                         "multi_q_gbit_s": gq.throughput_bps.median() / 1e9,
                         "efficiency": S.scaling_efficiency(gq.throughput_bps.median(), int(q), single)})
    return pd.DataFrame(rows)


@_needs_ok_cells(_NONE)
def fig_scaling(runs: Runs):
    t = scaling_table(runs)
    t = t[t.efficiency.notna()] if len(t) else t
    if t.empty:
        return None
    lc = [c for c in ["workload", "os", "kernel", "nic", "queues", "procs"] + AXES if c in ("nic", "queues", "procs")
          or (c in t and t[c].astype(str).nunique() > 1)]
    t = t.sort_values(lc).reset_index(drop=True)
    fig, ax = _new_fig(_cells_fig_width(len(t)))
    x, spans, ticks = cell_positions(t, lc)
    ax.bar(x, t.efficiency, color="C2")
    ax.axhline(1.0, color="k", lw=1, ls="--")
    ax.axhline(1.0 / t.queues.max(), color="C3", lw=1, ls=":", label="no gain from extra queues (1/queues)")
    ax.set_title("Multi-queue scaling efficiency")
    cell_axis(ax, x, spans, ticks)
    ax.set_xlabel("sender processes p, per NIC and TX-queue count (above)")
    ax.set_ylabel("efficiency = X(q) / (q * X(1)) [ratio]")
    ax.set_ylim(0, max(1.1, float(t.efficiency.max()) * 1.1))
    ax.legend(fontsize=8)
    return fig


@_needs_ok_cells(_EMPTY)
def usl_table(runs: Runs) -> pd.DataFrame:
    w = runs.wide()
    rows = []
    grp = [c for c in ["workload", "os", "kernel", "nic", "queues", "streams", "proto", "msg_size"] if c in w]
    grp += varying(w, AXES)
    for keys, g in w.groupby(grp, sort=True):
        f = S.fit_usl(g.procs.astype(float), g.throughput_bps / 1e9)
        rows.append({**dict(zip(grp, keys)), "levels": f.n_levels, "points": f.n_points, "fit": f.ok,
                     "lambda_gbit_s": f.lam, "sigma": f.sigma, "kappa": f.kappa, "r2": f.r2,
                     "peak_senders": f.peak_n, "message": f.message, "_fit": f})
    return pd.DataFrame(rows)


@_needs_ok_cells(_NONE)
def fig_usl(runs: Runs, table: pd.DataFrame | None = None):
    t = usl_table(runs) if table is None else table
    t = t[t.fit] if len(t) else t
    if t.empty:
        return None
    w = runs.wide()
    fig, ax = _new_fig()
    grp = [c for c in ["workload", "os", "kernel", "nic", "queues", "streams", "proto", "msg_size"] if c in w]
    grp += varying(w, AXES)
    lc = [c for c in grp if c in ("nic", "queues") or w[c].astype(str).nunique() > 1]
    for i, (_, r) in enumerate(t.iterrows()):
        g = w
        for c in grp:
            g = g[g[c] == r[c]]
        col = f"C{i % 10}"
        ax.scatter(g.procs, g.gbit_s, color=col, s=18, alpha=0.7)
        nn = np.linspace(1, max(float(g.procs.max()), 2.0), 100)
        ax.plot(nn, r["_fit"].predict(nn), color=col,
                label=f"{_label(r, lc)}: sigma={r.sigma:.3g} kappa={r.kappa:.2g} R2={r.r2:.2f}")
    ax.set_title("Universal Scalability Law fit of throughput vs senders")
    ax.set_xlabel("sender processes N [count]")
    ax.set_ylabel("throughput X(N) [Gbit/s]")
    _ylim0(ax)
    series_legend(ax)
    return fig


CONFIG_COLS = ["nic", "queues", "procs", "streams", "proto", "msg_size", "stack", "churn", "traced"]


def kernel_groups(w: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """(os, kernel, replay) of the rows, Linux first, live before replayed."""
    g = {(str(o), str(k), bool(r)) for o, k, r in zip(w.os, w.kernel, w.get("replay", pd.Series(False, index=w.index)))}
    return sorted(g, key=lambda t: (t[0] != "linux", t[2], t[0], t[1]))


def kernel_label(os_name: str, kernel: str, replay: bool) -> str:
    return f"{OS_NAMES.get(os_name, os_name)} {kernel}" + (" (REPLAY, not a kernel result)" if replay else "")


def with_config(w: pd.DataFrame) -> pd.DataFrame:
    """A ``config`` column: the cell without its image/OS (cell ids start with the image since
    the image axis exists, so Linux and FreeBSD cells only match on their configuration)."""
    w = w.copy()
    w["config"] = [".".join(str(r[c]) if c not in ("queues", "procs") else f"{c[0]}{r[c]}" for c in CONFIG_COLS
                            if c in w) for _, r in w.iterrows()] if len(w) else []
    return w


@_needs_ok_cells(_EMPTY)
def kernel_ab(runs: Runs, metric: str = "throughput_bps", threshold: float = 0.05) -> pd.DataFrame:
    """Every (os, kernel) against the first one (Linux, live), matched on the cell's
    configuration (nic, queues, procs, ...). Replayed rows take part, labelled as such."""
    from .compare import compare_frames
    w = with_config(runs.wide())
    groups = kernel_groups(w)
    if len(groups) < 2:
        return pd.DataFrame()

    def rows(g):
        return w[(w.os.astype(str) == g[0]) & (w.kernel.astype(str) == g[1]) & (w.replay.astype(bool) == g[2])]
    ref = groups[0]
    out = []
    for g in groups[1:]:
        t = compare_frames(rows(ref), rows(g), [metric], threshold=threshold, match_on="config",
                           include_replay=True).table
        t.insert(0, "candidate", kernel_label(*g))
        t.insert(0, "baseline", kernel_label(*ref))
        out.append(t)
    return pd.concat(out, ignore_index=True)


def mechanisms_table(runs: Runs) -> pd.DataFrame:
    """Known kernel mechanisms (analysis/mechanisms.py) behind the differences between the
    kernels of these runs (compare.compare_kernels), one row per mechanism and metric, with
    the configurations it was seen in and its sources."""
    from .compare import compare_kernels
    rows: dict[tuple, dict] = {}
    for kc in compare_kernels(runs):
        for config, metric, m in kc.mechanisms:
            r = rows.setdefault((kc.base_kernel, kc.cand_kernel, metric, m.title), {
                "baseline": kc.base_kernel, "candidate": kc.cand_kernel, "metric": metric, "mechanism": m.title,
                "cells": [], "explanation": m.explanation, "sources": " | ".join(m.sources)})
            r["cells"].append(config.split(".direct")[0])
    return pd.DataFrame([{**r, "cells": ", ".join(r["cells"])} for r in rows.values()])


KVK_METRICS = [("gbit_s", "throughput [Gbit/s]"), ("cpu_pct_per_gbit", "CPU cost [% of one CPU per Gbit/s]"),
               ("cpu_busy_pct", "guest CPU busy [% of one CPU]")]


@_needs_ok_cells(_NONE)
def fig_kernel_vs_kernel(runs: Runs):
    """Linux against FreeBSD (every OS/kernel present), cell configuration by configuration:
    throughput, CPU cost per Gbit/s and CPU busy, medians with 95% bootstrap CIs."""
    w = with_config(runs.wide())
    groups = kernel_groups(w)
    if len(groups) < 2:
        return None
    cfg_cols = [c for c in CONFIG_COLS if c in w and (c in ("nic", "queues", "procs") or w[c].astype(str).nunique() > 1)]
    cfg = w.drop_duplicates("config").sort_values(cfg_cols)[["config"] + cfg_cols].reset_index(drop=True)
    configs = list(cfg.config)
    x0, spans, ticks = cell_positions(cfg, cfg_cols)
    import matplotlib.pyplot as plt
    # one metric per row, the cells along a shared x axis grouped by NIC and queues
    fig, axes = plt.subplots(len(KVK_METRICS), 1, figsize=(_cells_fig_width(len(configs), 10),
                                                           2.9 * len(KVK_METRICS) + 0.6), sharex=True)
    width = 0.8 / len(groups)
    for ai, (ax, (metric, ylabel)) in enumerate(zip(axes, KVK_METRICS)):
        ax.grid(True, axis="y", alpha=0.3)
        for i, g in enumerate(groups):
            sel = w[(w.os.astype(str) == g[0]) & (w.kernel.astype(str) == g[1]) & (w.replay.astype(bool) == g[2])]
            s = summary(sel, metric, ["config"]).set_index("config").reindex(configs)
            x = x0 + (i - (len(groups) - 1) / 2) * width
            ax.bar(x, s["median"].fillna(0), width, yerr=_errbars(s.reset_index()), capsize=3, color=f"C{i}",
                   hatch="//" if g[2] else None, alpha=0.85, label=kernel_label(*g))
        ax.set_title(ylabel.split(" [")[0], loc="left", fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel("sender processes p, per NIC and TX-queue count; whiskers: 95% CI" if ai == len(axes) - 1 else
                      "(cells as below)")
        # the axes share x (one tick formatter): headers on the top axes, tick labels on the bottom one
        if ai == 0:
            cell_axis(ax, x0, spans, ticks)
        elif ai == len(axes) - 1:
            cell_axis(ax, x0, [], ticks)
        ax.tick_params(axis="x", labelbottom=ai == len(axes) - 1)
    fig.subplots_adjust(hspace=0.45)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle("Kernel against kernel" + (" (hatched: REPLAY of recorded outputs, not a kernel result)"
                                            if any(g[2] for g in groups) else ""))
    return fig


def absent_metrics_table(runs: Runs) -> pd.DataFrame:
    """Metrics one OS's rows carry and another's cannot, with the guest driver's reason
    (GuestDriver.ABSENT_METRICS): the "no such counter on <OS>" entries of a comparison."""
    from harness.guests import driver_class
    w = runs.wide()
    rows = []
    oses = sorted(set(w.os.astype(str))) if len(w) else []
    for o in oses:
        mine, others = w[w.os.astype(str) == o], w[w.os.astype(str) != o]
        try:
            table = driver_class(o).ABSENT_METRICS
        except ValueError:
            continue
        for metric, why in table.items():
            if metric in w and others[metric].notna().any() and mine[metric].isna().all():
                rows.append({"os": OS_NAMES.get(o, o), "metric": metric,
                             "entry": f"no such counter on {OS_NAMES.get(o, o)}", "why": why})
    return pd.DataFrame(rows, columns=["os", "metric", "entry", "why"])


def ab_display(t: pd.DataFrame) -> pd.DataFrame:
    """A compare table made readable: n as base/cand, delta with its CI in one column."""
    if t is None or t.empty:
        return pd.DataFrame()

    def num(v):
        return "-" if pd.isna(v) else f"{v:.4g}"

    def pct(v):
        return "-" if pd.isna(v) else f"{v:+.1f}%"
    out = pd.DataFrame({
        **{c: t[c] for c in ("baseline", "candidate") if c in t},
        "cell": t.cell, "metric": [f"{m} [{u}]" for m, u in zip(t.metric, t.unit)],
        "n base/cand": [f"{a}/{b}" for a, b in zip(t.n_base, t.n_cand)],
        "base median": t.base_median.map(num), "cand median": t.cand_median.map(num),
        "delta [95% CI]": [pct(d) + ("" if pd.isna(lo) else f" [{pct(lo)}, {pct(hi)}]")
                           for d, lo, hi in zip(t.delta_pct, t.delta_ci_lo_pct, t.delta_ci_hi_pct)],
        "test": t.test, "p": t.p_value.map(lambda v: "-" if pd.isna(v) else f"{v:.3g}"),
        "Cliff's delta": t.cliffs_delta.map(lambda v: "-" if pd.isna(v) else f"{v:+.2f}"),
        "verdict": t.verdict,
    })
    return out


# ---------------------------------------------------------------------------------------
# tx_races
# ---------------------------------------------------------------------------------------
RACE_RATES = [("requeues_per_mpkt", "qdisc requeues"), ("drops_per_mpkt", "drops (qdisc + ring)"),
              ("restarts_per_mpkt", "TX queue restarts"), ("ring_stalls_per_mpkt", "TX ring full")]


@_needs_ok_cells(_NONE)
def fig_race_rates(runs: Runs):
    w = runs.wide()
    rates = [(m, lb) for m, lb in RACE_RATES if w[m].notna().any()]
    if not rates:
        return None
    s0 = summary(w, rates[0][0])
    fig, ax = _new_fig(_cells_fig_width(len(s0), 10), 4.4)
    width = 0.8 / len(rates)
    lc0 = [c for c in s0.columns if c in CELL_COLS]
    x, spans, ticks = cell_positions(s0, lc0)
    allv = []
    for i, (m, lb) in enumerate(rates):
        s = summary(w, m)
        allv += s["median"].tolist() + s["ci_hi"].tolist()
        ax.bar(x + (i - (len(rates) - 1) / 2) * width, s["median"], width, yerr=_errbars(s),
               capsize=3, label=lb, color=f"C{i}")
    ax.set_title("Transmit-path back-pressure events, normalised")
    same_n = s0.n.nunique() == 1
    cell_axis(ax, x, spans, ticks if same_n else [f"{t}\n(n={n})" for t, n in zip(ticks, s0.n)])
    ax.set_xlabel("sender processes p, per NIC and TX-queue count (above); whiskers: 95% bootstrap CI"
                  + (f"; n={s0.n.iloc[0]} repetitions each" if same_n else ""))
    ax.set_ylabel("events per million TX packets [1/Mpkt]")
    ax.legend(fontsize=8)
    _all_zero_note(ax, allv)
    return fig


@_needs_ok_cells(_NONE)
def fig_queue_share(runs: Runs):
    qt = queue_table(runs.metrics)
    w = runs.wide()
    if qt.empty:
        return None
    qt = qt.merge(w[KEY + label_cols(w)], on=KEY, how="inner")
    qt = qt[qt.queues > 1]
    if qt.empty:
        return None
    lc = label_cols(w)
    med = qt.groupby(lc + ["queue"], dropna=False)["share"].median().reset_index()
    cfgs = med[lc].drop_duplicates().sort_values(lc).reset_index(drop=True)
    fig, ax = _new_fig(_cells_fig_width(len(cfgs)))
    x, spans, ticks = cell_positions(cfgs, lc)
    bottom = np.zeros(len(cfgs))
    for q in sorted(med.queue.dropna().unique()):
        vals = []
        for _, c in cfgs.iterrows():
            sel = med[(med[lc] == c.values).all(axis=1) & (med.queue == q)]
            vals.append(float(sel.share.iloc[0]) * 100 if len(sel) else 0.0)
        ax.bar(x, vals, bottom=bottom, label=f"TX queue {int(q)}", color=f"C{int(q) % 10}")
        bottom += np.array(vals)
    ax.axhline(50, color="k", lw=0.8, ls=":")
    ax.set_title("Share of TX packets per queue (median over reps)")
    cell_axis(ax, x, spans, ticks)
    ax.set_xlabel("sender processes p, per NIC and TX-queue count (above), multi-queue cells")
    ax.set_ylabel("share of the cell's TX packets [%]")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)   # stacked to 100 %: inside it covers bars
    return fig


@_needs_ok_cells(_NONE)
def fig_fairness(runs: Runs):
    w = runs.wide()
    w = w[w.n_senders > 1]
    if w.empty or w.jain.isna().all():
        return None
    fig = bar_by_cell(w, "jain", "Fairness between sender processes (Jain's index)",
                      "Jain index over per-sender throughput [0-1]", color="C4", points=True)
    ax = fig.axes[0]
    lo = float(np.nanmin(np.r_[w.jain.to_numpy(dtype=float), 1.0]))
    ax.set_ylim(max(0.0, min(0.9, lo - 0.05)), 1.01)
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="1 = equal shares")
    ax.legend(fontsize=8, loc="lower right")
    return fig


@_needs_ok_cells(_NONE)
def fig_conservation(runs: Runs):
    w = runs.wide()
    if w.conservation_ratio.isna().all():
        return None
    lc = label_cols(w)
    cfg = w[lc].drop_duplicates().sort_values(lc).reset_index(drop=True)
    fig, ax = _new_fig(_cells_fig_width(len(cfg)))
    xs, spans, ticks = cell_positions(cfg, lc)
    for i, (_, c) in enumerate(cfg.iterrows()):
        sel = w[(w[lc] == c.values).all(axis=1)]
        ax.scatter(np.full(len(sel), xs[i]) + np.linspace(-0.15, 0.15, len(sel)), sel.conservation_ratio,
                   color="C0", s=24)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_title("Byte conservation: NIC TX bytes / application bytes (each dot one rep)")
    cell_axis(ax, xs, spans, ticks)
    ax.set_xlabel("sender processes p, per NIC and TX-queue count (above)")
    ax.set_ylabel("NIC bytes / app bytes, header-corrected [ratio]")
    v = w.conservation_ratio.dropna()
    pad = max(0.02, float((v - 1).abs().max()) * 1.3) if len(v) else 0.05
    ax.set_ylim(1 - pad, 1 + pad)
    return fig


@_needs_ok_cells(_EMPTY)
def race_table(runs: Runs) -> pd.DataFrame:
    return summary_table(runs, ["requeues_per_mpkt", "drops_per_mpkt", "restarts_per_mpkt", "ring_stalls_per_mpkt",
                                "jain", "conservation_ratio"])


def _verdict_counts(x: pd.Series) -> str:
    """Bottleneck verdicts of a group of cell runs, most frequent first ("tx_path 3, peer 1")."""
    c = x.dropna().astype(str).value_counts()
    return ", ".join(f"{k} {n}" for k, n in c.items()) if len(c) else "-"


def validity_table(runs: Runs) -> pd.DataFrame:
    """Per run and configuration: measured / failed / skipped cell runs, how many are valid
    (harness.run.validity.is_valid), their bottleneck verdicts, and the reported properties beside
    (conservation failures, idle queues, saturated senders: a CPU-bound sender is not a failure).
    Newest run first (a history's report shows its first rows)."""
    w = runs.wide(only_ok=False)
    keys = ["run_id"] + label_cols(w)
    if w.empty:
        return pd.DataFrame(columns=keys)
    ok = w.status == "ok"
    flags = pd.DataFrame({
        "ok": ok, "failed": w.status == "failed", "skipped": w.status == "skipped",
        "conservation_fail": ok & (w.conservation_ok == False).fillna(False),  # noqa: E712
        "queue_spread_idle": ok & (w.queue_spread_ok == False).fillna(False),  # noqa: E712 — reported
        "_valid": ok & w.valid.fillna(False).astype(bool), "_known": ok & w.valid.notna(),
        "sender_saturated": ok & (w.saturated == True).fillna(False),  # noqa: E712 — informational
    }, index=w.index).astype(int)
    t = pd.concat([w[keys], flags], axis=1).groupby(keys, sort=True).sum()
    t["valid"] = [f"{v} of {n}" if n and k else "-" for v, n, k in zip(t._valid, t.ok, t._known)]
    b = w[ok & w.bottleneck.notna()].assign(bottleneck=lambda d: d.bottleneck.astype(str))
    counts = b.groupby(keys + ["bottleneck"], sort=True).size().rename("n").reset_index()
    counts = counts.sort_values(keys + ["n"], ascending=[True] * len(keys) + [False], kind="stable")
    counts["s"] = counts.bottleneck + " " + counts.n.astype(str)
    t["bottleneck"] = counts.groupby(keys, sort=True)["s"].agg(", ".join).reindex(t.index).fillna("-")
    r = w[w.reason.notna() & (w.reason.astype(str) != "")]
    t["reason"] = (r.groupby(keys, sort=True)["reason"].agg(lambda x: "; ".join(sorted(set(x.astype(str))))[:160])
                   .reindex(t.index).fillna(""))
    t = t.reset_index().sort_values("run_id", ascending=False, kind="stable")
    return t[keys + ["ok", "failed", "skipped", "conservation_fail", "queue_spread_idle", "valid", "bottleneck",
                     "sender_saturated", "reason"]].reset_index(drop=True)


def repetitions_table(runs: Runs) -> pd.DataFrame:
    """Per run and cell: repetitions run, measured (ok) and valid, the 95 % Student-t CI
    half-width of throughput over the valid ones (the rule `repetitions = "auto"` stops on,
    harness.counters.confidence) and why the repetitions stopped (cells.reps_stop). Newest run first."""
    w = runs.wide(only_ok=False)
    if w.empty:
        return pd.DataFrame()
    c = runs.cells
    stop = c.dropna(subset=["reps_stop"]).groupby(["run_id", "cell"])["reps_stop"].last()
    w = w[w.status != "skipped"]
    keys = ["run_id", "cell"]
    ok = w.status == "ok"
    valid = ok & w.valid.fillna(False).astype(bool)
    g = pd.DataFrame({"reps": w.rep, "measured": ok.astype(int), "valid": valid.astype(int)}, index=w.index)
    t = pd.concat([w[keys], g], axis=1).groupby(keys, sort=True).agg(reps=("reps", "nunique"),
                                                                     measured=("measured", "sum"),
                                                                     valid=("valid", "sum"))
    ci = w[valid].groupby(keys, sort=True)["throughput_bps"].agg(lambda x: S.t_ci_rel_pct(x.tolist()))
    t["throughput CI ±% (valid)"] = [round(v[1], 1) if isinstance(v, tuple) and v[0] >= 2 else None
                                     for v in ci.reindex(t.index)]
    t["stop"] = stop.reindex(t.index).astype(object).where(lambda x: x.notna(), "-")
    t = t.reset_index().sort_values("run_id", ascending=False, kind="stable").reset_index(drop=True)
    t[["reps", "measured", "valid"]] = t[["reps", "measured", "valid"]].astype(int)
    return t


# ---------------------------------------------------------------------------------------
# lock_contention
# ---------------------------------------------------------------------------------------
@_needs_ok_cells(_EMPTY)
def lock_summary(runs: Runs, top: int = 12) -> pd.DataFrame:
    """Per (lock, caller, kind): total contentions and wait over all cells, mean per cell-rep."""
    lk = wait_lock_rows(runs.locks)
    if lk.empty:
        return pd.DataFrame()
    ok = runs.wide()[KEY]
    lk = lk.merge(ok, on=KEY, how="inner")
    if lk.empty:
        return pd.DataFrame()
    n = len(ok)
    g = lk.groupby(["lock", "caller", "kind"], dropna=False).agg(
        contentions=("contentions", "sum"), wait_ms_total=("wait_ns_total", lambda s: s.sum() / 1e6),
        wait_us_max=("wait_ns_max", lambda s: s.max() / 1e3), cells=("cell", "nunique"),
        method=("method", "first")).reset_index()
    g["wait_ms_per_cell_rep"] = g.wait_ms_total / n
    return g.sort_values("wait_ms_total", ascending=False).head(top).reset_index(drop=True)


@_needs_ok_cells(_NONE)
def fig_lock_top(runs: Runs, top: int = 10):
    t = lock_summary(runs, top)
    if t.empty:
        return None
    fig, ax = _new_fig(10, 0.45 * len(t) + 1.6)
    y = np.arange(len(t))[::-1]
    labels = [f"{_short(r.lock, 48)}  @ {r.caller} ({r.kind})" for _, r in t.iterrows()]
    ax.barh(y, t.wait_ms_total, color="C3")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_title(f"Top {len(t)} contended locks by total wait, all cells and reps")
    ax.set_xlabel("total wait time [ms]")
    ax.set_ylabel("lock @ acquiring caller (lock kind)")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def _short(s: str, n: int) -> str:
    s = str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


@_needs_ok_cells(_NONE)
def fig_lock_wait_per_pkt(runs: Runs):
    w = runs.wide()
    if w.lock_wait_ns_per_pkt.isna().all():
        return None
    return bar_by_cell(w, "lock_wait_ns_per_pkt", "Contended-lock wait per TX packet",
                       "lock wait per TX packet [ns/packet]", color="C3")


@_needs_ok_cells(_NONE)
def fig_contentions_vs_senders(runs: Runs):
    w = runs.wide()
    if w.lock_contentions.isna().all():
        return None
    fig, ax = _new_fig()
    _plot_vs_procs(ax, w, "lock_contentions")
    ax.set_title("Contended lock acquisitions vs sender processes")
    ax.set_xlabel("iperf3 sender processes [count]")
    ax.set_ylabel("contentions per cell run, median [count]")
    ax.set_xticks(sorted(w.procs.dropna().astype(int).unique()))
    _ylim0(ax)
    series_legend(ax)
    _all_zero_note(ax, w.lock_contentions)
    return fig


@_needs_ok_cells(_EMPTY)
def lock_cell_table(runs: Runs, top_per_cell: int = 3) -> pd.DataFrame:
    lk = wait_lock_rows(runs.locks)
    if lk.empty:
        return pd.DataFrame()
    ok = runs.wide()[KEY]
    lk = lk.merge(ok, on=KEY, how="inner")
    g = lk.groupby(["cell", "lock", "caller", "kind"], dropna=False).agg(
        reps=("rep", "nunique"), contentions=("contentions", "sum"),
        wait_ms=("wait_ns_total", lambda s: s.sum() / 1e6)).reset_index()
    g = g.sort_values(["cell", "wait_ms"], ascending=[True, False]).groupby("cell").head(top_per_cell)
    g["lock"] = g["lock"].map(lambda s: _short(s, 60))
    return g.reset_index(drop=True)


@_needs_ok_cells(_EMPTY)
def lock_class_table(runs: Runs) -> pd.DataFrame:
    """Per (OS, lock class): contentions, wait and hold time summed over the ok cells, in the
    one vocabulary of harness.counters.lockclass (tx queue lock, qdisc/ifq lock, ring, socket,
    other), so Linux lock:contention rows and FreeBSD lockstat rows line up. ``incomplete``
    counts the cell runs whose lock numbers are incomplete (lockstat warnings, cut reports)."""
    lk = wait_lock_rows(runs.locks)
    if lk.empty:
        return pd.DataFrame()
    lk = lk.merge(runs.wide()[KEY], on=KEY, how="inner")
    if lk.empty:
        return pd.DataFrame()
    lk = lk.assign(_run=list(zip(lk.run_id, lk.cell, lk.rep)))
    keys = ["os", "lock_class"]
    g = lk.groupby(keys, dropna=False).agg(
        contentions=("contentions", "sum"), wait_ms=("wait_ns_total", lambda s: s.sum() / 1e6),
        holds=("holds", "sum"), hold_ms=("hold_ns_total", lambda s: s.sum() / 1e6),
        cell_runs=("_run", "nunique")).reset_index()
    inc = lk[lk["incomplete"].notna()].groupby(keys, dropna=False)["_run"].nunique().rename("incomplete")
    g = g.join(inc, on=keys).fillna({"incomplete": 0})
    g["incomplete"] = g["incomplete"].astype(int)
    return g.sort_values(["os", "wait_ms"], ascending=[True, False]).reset_index(drop=True)


def lock_methods(runs: Runs) -> list[str]:
    m = {str(v.get("lock_method")) for v in runs.manifests.values() if v.get("lock_method")}
    if not runs.locks.empty:
        m |= set(runs.locks["method"].dropna().astype(str))
    return sorted(m)


# ---------------------------------------------------------------------------------------
# nightly
# ---------------------------------------------------------------------------------------
@_needs_ok_cells(_EMPTY)
def history(runs: Runs, metric: str) -> pd.DataFrame:
    """Per (run, cell config): median and CI of ``metric``, with the run's start time."""
    w = runs.wide()
    rt = runs.runs_table()[["run_id", "started"]]
    lc = label_cols(w)
    s = summary(w, metric, ["run_id"] + lc)
    s = s.merge(rt, on="run_id", how="left").sort_values(["started", "run_id"])
    s["cfg"] = labels(s, lc)
    return s


STEP_ALPHA = 0.01
STEP_MIN_SEGMENT = 3
BAND_K = 3.0


def history_steps(runs: Runs, metric: str, alpha: float = STEP_ALPHA, min_segment: int = STEP_MIN_SEGMENT,
                  scale: float = 1.0, unit: str = "") -> pd.DataFrame:
    """Level shifts in each cell configuration's per-run median of ``metric`` over the runs in
    time order (``stats.detect_steps``: circular binary segmentation of winsorized values,
    permutation p). One row per step: the first run at the new level, the run before it, medians
    of the segments either side, change, p, and the harness git revision either side."""
    cols = ["metric", "cfg", "first run at new level", "previous run", "before", "after", "change [%]", "p", "kind",
            "runs before/after", "git before -> after"]
    if len(runs.manifests) < 2 * min_segment:
        return pd.DataFrame(columns=cols)
    h = history(runs, metric)
    if h.empty:
        return pd.DataFrame(columns=cols)
    rt = runs.runs_table().set_index("run_id")
    rows = []
    for cfg, g in h.groupby("cfg", sort=True):
        g = g.reset_index(drop=True)
        for st in S.detect_steps(g["median"].to_numpy(dtype=float), min_segment=min_segment, alpha=alpha):
            now, prev = g.run_id.iloc[st.index], g.run_id.iloc[st.index - 1]
            rows.append({"metric": metric, "cfg": cfg, "first run at new level": now, "previous run": prev,
                         "before": f"{st.median_before * scale:.4g}{unit}",
                         "after": f"{st.median_after * scale:.4g}{unit}",
                         "change [%]": st.rel_change * 100, "p": st.p_value, "kind": st.kind,
                         "runs before/after": f"{st.n_before}/{st.n_after}",
                         "git before -> after": f"{rt.git.get(prev, '')} -> {rt.git.get(now, '')}"})
    return pd.DataFrame(rows, columns=cols)


def history_steps_all(runs: Runs, metrics: Sequence[tuple[str, float, str]]) -> pd.DataFrame:
    """``history_steps`` of several (metric, scale, unit) pairs in one table."""
    parts = [history_steps(runs, m, scale=sc, unit=u) for m, sc, u in metrics]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def steps_missing_note(runs: Runs, min_segment: int = STEP_MIN_SEGMENT) -> str:
    n = len(runs.manifests)
    if n < 2 * min_segment:
        return (f"Step detection needs at least {2 * min_segment} runs ({min_segment} either side of a step), "
                f"{n} loaded.")
    return (f"No level shift in any cell configuration over {n} runs (false-alarm level {STEP_ALPHA} per "
            "series never reached): the series stay within their noise.")


@_needs_ok_cells(_NONE)
def fig_history(runs: Runs, metric: str, title: str, ylabel: str, scale: float = 1.0, steps: bool = True,
                alpha: float = STEP_ALPHA, min_segment: int = STEP_MIN_SEGMENT, k: float = BAND_K):
    """Per-run medians (95% CI whiskers) of every cell configuration in time order. With
    ``steps``: the noise band (median +- k x 1.4826 MAD, ``stats.noise_band``) of each segment
    between detected level shifts is shaded, and each shift (``stats.detect_steps``) is a
    vertical dashed line just before the first run at the new level."""
    if len(runs.manifests) < 2:
        return None
    h = history(runs, metric)
    h = h[h["median"].notna()]
    if h.empty:
        return None
    fig, ax = _new_fig(10.5, 4.4)
    order = list(dict.fromkeys(h.sort_values(["started", "run_id"]).run_id))
    xpos = {r: i for i, r in enumerate(order)}
    marks: dict[float, list[tuple[float, str]]] = {}
    for i, (cfg, g) in enumerate(h.groupby("cfg", sort=True)):
        color = f"C{i % 10}"
        g = g.assign(_x=g.run_id.map(xpos)).sort_values("_x").reset_index(drop=True)
        x = g["_x"].to_numpy(dtype=float)
        ax.errorbar(x, g["median"] * scale, yerr=_errbars(g) * scale, marker="o", ms=4, capsize=3,
                    label=cfg, color=color)
        if not steps:
            continue
        found = S.detect_steps(g["median"].to_numpy(dtype=float), min_segment=min_segment, alpha=alpha)
        for a, b in S.segments(len(g), found):
            band = S.noise_band(g["median"].iloc[a:b], k=k)
            if math.isnan(band.lo):
                continue
            ax.fill_between([x[a] - 0.4, x[b - 1] + 0.4], band.lo * scale, band.hi * scale, color=color,
                            alpha=0.12, lw=0)
        for st in found:
            xs = x[st.index] - 0.5
            ax.axvline(xs, color=color, ls="--", lw=1.3)
            marks.setdefault(xs, []).append((st.rel_change * 100, color))
    for xs, ms in marks.items():        # one label per step position, however many cells stepped there
        ch = [c for c, _ in ms]
        txt = (f"{ch[0]:+.1f}%" if len(ms) == 1 else
               f"{len(ms)} cells {min(ch):+.1f}%" + (f" to {max(ch):+.1f}%" if max(ch) - min(ch) >= 0.05 else ""))
        ax.annotate(txt, (xs, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10), textcoords="offset points",
                    fontsize=7, color=ms[0][1] if len(ms) == 1 else "k")
    step = max(1, len(order) // 12)
    ticks = list(range(0, len(order), step))
    rt = runs.runs_table().set_index("run_id")
    ax.set_xticks(ticks, [pd.Timestamp(rt.started.get(order[t])).strftime("%m-%d %H:%M")
                          if not pd.isna(rt.started.get(order[t])) else order[t] for t in ticks],
                  rotation=30, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(f"run start (UTC), {len(order)} runs in time order"
                  + (f"; shaded: median +- {k:g} sigma (MAD) per segment; dashed: level shift" if steps else ""))
    ax.set_ylabel(ylabel)
    _ylim0(ax)
    series_legend(ax, fontsize=7)
    _all_zero_note(ax, h["median"], h["ci_hi"])
    return fig


@_needs_ok_cells(lambda: ("no cell with status ok", pd.DataFrame()))
def latest_vs_previous(runs: Runs, metrics: Sequence[str] = ("throughput_bps",), window: int = 5,
                       threshold: float = 0.05) -> tuple[str, pd.DataFrame]:
    """The newest run against the repetitions pooled from up to ``window`` earlier runs of
    the same workload. Returns (description, compare table)."""
    from .compare import compare_frames
    rt = runs.runs_table()
    if len(rt) < 2:
        return ("needs at least 2 runs", pd.DataFrame())
    latest = rt.iloc[-1]
    prev = rt.iloc[:-1]
    same = prev[prev.workload == latest.workload]
    prev = (same if len(same) else prev).tail(window)
    w = runs.wide()
    t = compare_frames(w[w.run_id.isin(prev.run_id)], w[w.run_id == latest.run_id], list(metrics),
                       threshold=threshold).table
    desc = (f"latest run {latest.run_id} vs {len(prev)} earlier run(s) of workload {latest.workload!r} "
            f"pooled ({', '.join(prev.run_id)})")
    return desc, t


# ---------------------------------------------------------------------------------------
# Building the report
# ---------------------------------------------------------------------------------------
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block data_png scoped -%}
<div class="jp-RenderedImage jp-OutputArea-output">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}" alt="{{ (output | get_metadata('alt', 'image/png')) or 'figure' | escape_html }}" class="xb-figure">
</div>
{%- endblock data_png -%}
{%- block extra_css -%}
<style type="text/css">
main { max-width: 1250px; margin: 0 auto; }
table.xb-table { border-collapse: collapse; font-size: 12px; margin-bottom: 12px; }
table.xb-table th, table.xb-table td { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right; }
table.xb-table th { background: #f3f3f3; }
</style>
{%- endblock extra_css -%}
"""


def inject_parameters(nb, run_dirs: Sequence[str], report_dir: str | os.PathLike | None = None):
    """Papermill convention: after the cell tagged ``parameters`` insert one tagged
    ``injected-parameters`` that sets RUN_DIRS and REPORT_DIR, the directory report.html goes to
    (added at the top when there is none)."""
    import nbformat
    src = (f"# Parameters\nRUN_DIRS = {list(map(str, run_dirs))!r}\n"
           f"REPORT_DIR = {str(report_dir) if report_dir else None!r}\n")
    new = nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]})
    cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    idx = next((i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])), -1)
    cells.insert(idx + 1, new)
    nb.cells = cells
    return nb


def _combined(run_dirs: Sequence[str], notebooks: Sequence[Path], title: str, report_dir: str | None = None):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["title"] = title
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    shown = list(run_dirs) if len(run_dirs) <= 10 else [*run_dirs[:5], f"... {len(run_dirs) - 8} more ...",
                                                           *run_dirs[-3:]]
    dirs_md = "\n".join(f"- `{d}`" if not d.startswith("...") else f"- {d}" for d in shown)
    toc = "\n".join(f"{i + 1}. {p.stem.replace('_', ' ')}" for i, p in enumerate(notebooks))
    nb.cells.append(nbformat.v4.new_markdown_cell(
        f"# {title}\n\nGenerated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by `xmitbench report` from "
        f"{len(run_dirs)} run dir(s):\n\n{dirs_md}\n\nSections:\n\n{toc}"))
    for p in notebooks:
        sub = inject_parameters(nbformat.read(p, as_version=4), run_dirs, report_dir)
        for c in sub.cells:
            c.metadata["xb_notebook"] = p.name
            nb.cells.append(c)
    return nb


def execute_notebook(nb, timeout: int = 600):
    """Execute ``nb`` in a fresh python3 kernel.

    The kernel talks TCP on 127.0.0.1 only (set here, whatever a Jupyter config says: with the
    ipc transport the kernel binds ``kernel-ipc-<n>`` sockets in its working directory) and runs
    in a temporary directory that also holds its connection file; the directory is removed
    afterwards, so nothing the kernel or a notebook writes relative to its cwd is left behind
    (the notebooks find their data through RUN_DIRS and the harness package, not the cwd).
    """
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    tmp = Path(tempfile.mkdtemp(prefix="xmitbench-kernel-"))
    try:
        km = AsyncKernelManager(kernel_name="python3", transport="tcp", ip="127.0.0.1",
                                connection_file=str(tmp / f"kernel-{uuid.uuid4().hex}.json"))
        # --log-level=ERROR drops the kernel's "unencrypted TCP" warning (it listens on 127.0.0.1 only)
        client = NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3",
                                extra_arguments=["--log-level=ERROR"], resources={"metadata": {"path": str(tmp)}})
        # the kernel imports the same harness package as this process (not another checkout's
        # editable install found on the kernel's own path)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in
                                                               os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        try:
            client.execute(env=env)
        except CellExecutionError as e:
            where = "?"
            for c in nb.cells:
                for o in c.get("outputs", []):
                    if o.get("output_type") == "error":
                        where = c.metadata.get("xb_notebook", "?")
                        break
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            last = re.sub(r"\x1b\[[0-9;]*m", "", lines[-1]) if lines else "cell failed"
            raise ReportError(f"notebook {where} failed: {last}") from None
        return nb
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def to_html(nb) -> str:
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    exp = HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"xb_report.html.j2": _TEMPLATE})],
                       template_file="xb_report.html.j2", exclude_input=True, exclude_input_prompt=True,
                       exclude_output_prompt=True)
    body, _ = exp.from_notebook_node(nb)
    return body


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def build_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
                 notebooks: Sequence[str | os.PathLike] | None = None, timeout: int = 600,
                 save_notebook: str | os.PathLike | None = None) -> Path:
    """Execute the notebooks over ``run_dirs`` and write report.html (default: into the
    first run dir). Bad run dirs raise InputError before any kernel starts."""
    runs = load_runs(run_dirs)                      # validates every dir up front
    runs.check_tables()                             # metrics/locks too (load_runs reads them on use)
    dirs = [str(Path(p).resolve()) for p in runs.paths]   # the kernel runs in analysis/
    nbs = [Path(p) for p in notebooks] if notebooks else [ANALYSIS_DIR / n for n in NOTEBOOKS]
    for p in nbs:
        if not p.exists():
            raise InputError(p, "", "notebook not found")
    out_path = Path(out) if out else Path(dirs[0]) / "report.html"
    kernels = sorted({str(k) for k in runs.cells.kernel.dropna()}) if "kernel" in runs.cells else []
    title = f"xmitbench report: {len(dirs)} run(s), kernel {', '.join(kernels) or '?'}"
    nb = _combined(dirs, nbs, title, str(out_path.resolve().parent))
    execute_notebook(nb, timeout=timeout)
    if save_notebook:
        import nbformat
        nbformat.write(nb, str(save_notebook))
    try:
        _atomic_write(out_path, to_html(nb))
    except OSError as e:
        raise InputError(out_path, "", f"cannot write the report: {e.strerror or e}") from None
    return out_path
