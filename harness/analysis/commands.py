"""`xmitbench report` and `xmitbench compare`: argparse wiring (``register``) and handlers.

Each handler returns the exit status; bad input raises harness.errors.InputError, which the
CLI prints on one line and turns into exit 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.errors import InputError


def cmd_report(args) -> int:
    from .report import ReportError, build_report
    t0 = time.monotonic()
    try:
        out = build_report(args.run_dirs, out=args.out, timeout=args.timeout, save_notebook=args.save_notebook)
    except ReportError as e:
        print(f"xmitbench: report: {e}", file=sys.stderr)
        return 1
    print(f"report: {out} ({time.monotonic() - t0:.1f} s)")
    if args.screenshot is not None:
        from .browser import BrowserError, screenshot_findings
        png = Path(args.screenshot) if args.screenshot else Path(out).with_name("findings.png")
        try:
            screenshot_findings(out, png)
        except BrowserError as e:
            print(f"xmitbench: report: screenshot: {e}", file=sys.stderr)
            return 1
        print(f"screenshot of the findings: {png}")
    return 0


def cmd_compare(args) -> int:
    from .compare import check_metric, compare_runs, format_table
    from .load import load_runs
    metrics = args.metric or ["throughput_bps"]
    for m in metrics:
        check_metric(m)
    if not 0 <= args.threshold < 10:
        raise InputError("--threshold", "", f"expected a fraction such as 0.05 (5%), got {args.threshold}")
    if not 0 < args.alpha < 1:
        raise InputError("--alpha", "", f"expected a probability in (0, 1), got {args.alpha}")
    if getattr(args, "by_kernel", False):
        return _compare_by_kernel(args, args.metric or None)
    if args.cand is None:
        raise InputError("xmitbench compare", "CAND", "give a candidate run dir (or --by-kernel)")
    base, cand = load_runs([args.base]), load_runs([args.cand])
    include_invalid = getattr(args, "include_invalid", False)
    cmp = compare_runs(base, cand, metrics, threshold=args.threshold, alpha=args.alpha, seed=args.seed,
                       include_invalid=include_invalid)
    if cmp.table.empty:
        raise InputError(args.cand, "cells", "no valid cell with status ok in common with " + str(args.base)
                         + (f"; base has {', '.join(cmp.only_base)}" if cmp.only_base else "")
                         + (f"; candidate has {', '.join(cmp.only_cand)}" if cmp.only_cand else "")
                         + (f"; {'; '.join(cmp.excluded)} (--include-invalid compares them)" if cmp.excluded else ""))
    print(f"base {', '.join(base.run_ids)}  vs  candidate {', '.join(cand.run_ids)}  "
          f"(regression: worse by > {args.threshold:.0%} AND p < {args.alpha})")
    _print_warnings(cmp, " (--include-invalid compares them)")
    if include_invalid:
        print("note: invalid cell runs included (--include-invalid)")
    print(format_table(cmp))
    for c in cmp.only_base:
        print(f"only in base: {c}")
    for c in cmp.only_cand:
        print(f"only in candidate: {c}")
    notes = sorted({n for n in cmp.table.note if n})
    for n in notes:
        print(f"note: {n}")
    if args.csv:
        cmp.table.to_csv(args.csv, index=False)
    if cmp.regressed:
        print(f"REGRESSION in {len(cmp.regressions)} cell/metric pair(s)")
        return 1
    return 0


def _print_warnings(cmp, excluded_hint: str = "") -> None:
    for w in cmp.warnings:
        print(f"warning: {w}")
    for e in cmp.excluded:
        print(f"excluded {e}{excluded_hint}")


def cmd_bench_history(args) -> int:
    from .history_bench import cmd_bench_history as run
    return run(args)


def _compare_by_kernel(args, metrics) -> int:
    """`compare RUN_DIR [RUN_DIR] --by-kernel`: every guest kernel against the oldest, cell
    configuration by configuration, with queue shares and the known mechanisms. Informational:
    exit 0 (a kernel difference is a finding, not a regression of this tool's candidate)."""
    import pandas as pd
    from .compare import (KERNEL_METRICS, compare_kernels, format_table, holds_across_reps, nonzero_reps,
                          with_config_id)
    from .load import load_runs, queue_table
    runs = load_runs([p for p in (args.base, args.cand) if p])
    res = compare_kernels(runs, metrics or KERNEL_METRICS, threshold=args.threshold, alpha=args.alpha,
                          seed=args.seed, include_invalid=getattr(args, "include_invalid", False))
    if not res:
        kernels = sorted(set(runs.wide().kernel.dropna().astype(str)))
        raise InputError(args.base, "kernel", f"--by-kernel needs cells of two kernels; found: {', '.join(kernels) or 'none'}")
    for kc in res:
        cmp = kc.comparison
        print(f"kernel {kc.base_kernel} (base) vs {kc.cand_kernel} (candidate), matched on the cell's "
              f"configuration; p from stats.ab_test (Welch t at 3-4 reps a side, Mann-Whitney from 5)")
        _print_warnings(cmp)
        print(format_table(cmp))
        wc = with_config_id(runs.wide())

        def reps(kernel, config, metric):
            return wc[(wc.kernel.astype(str) == kernel) & (wc.config == config)][metric].tolist()
        holds = [f"  {r.cell} {r.metric}: {holds_across_reps(r)}"
                 + (f"; base {nonzero_reps(reps(kc.base_kernel, r.cell, r.metric))}, candidate "
                    f"{nonzero_reps(reps(kc.cand_kernel, r.cell, r.metric))}"
                    if (r.base_median == 0) != (r.cand_median == 0) else "")
                 for _, r in cmp.table.iterrows()
                 if r.n_base and r.n_cand and (r.verdict != "no significant change"
                                                or (r.base_median == 0) != (r.cand_median == 0))]
        if holds:
            print("difference holds across repetitions?")
            print("\n".join(holds))
        seen = set()
        for cell, metric, m in kc.mechanisms:
            if m.title in seen:
                continue
            seen.add(m.title)
            print(f"mechanism ({metric}, first seen in {cell}): {m.title}\n  {m.explanation}")
            for src in m.sources:
                print(f"  source: {src}")
    q = queue_table(runs.metrics)
    if len(q):
        w = with_config_id(runs.wide())[["run_id", "cell", "rep", "kernel", "config", "queues"]]
        q = q.merge(w, on=["run_id", "cell", "rep"])
        q = q[q.queues > 1]
        if len(q):
            med = q.groupby(["config", "kernel", "queue", "source"])["share"].median().reset_index()
            print("TX queue shares (median over reps; source of the per-queue counters):")
            for (config, kernel, source), g in med.groupby(["config", "kernel", "source"]):
                shares = " / ".join(f"q{int(r.queue)} {r.share * 100:.0f}%" for _, r in g.iterrows()
                                    if not pd.isna(r.share))
                print(f"  {config}  {kernel}: {shares}  [{source}]")
    return 0


def register(subparsers) -> None:
    """Add `report`, `compare` and `bench-history` to the CLI's subparsers."""
    r = subparsers.add_parser("report", help="execute the analysis notebooks and write report.html",
                              description="Execute analysis/*.ipynb over the run dirs and write report.html "
                                          "(figures embedded) into the first run dir.")
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run dirs (or a results root holding run dirs)")
    r.add_argument("--out", help="output file (default: RUN_DIR/report.html of the first run dir)")
    r.add_argument("--timeout", type=int, default=600, help="per-cell timeout in seconds (default 600)")
    r.add_argument("--save-notebook", metavar="PATH", help="also write the executed notebook here")
    r.add_argument("--screenshot", nargs="?", const="", metavar="PNG",
                   help="also write a PNG of the findings section, rendered by headless Chromium "
                        "(default: findings.png next to report.html)")
    r.set_defaults(fn=cmd_report)

    c = subparsers.add_parser("compare", help="A/B compare two run dirs cell by cell; exit 1 on regression",
                              description="Per-cell delta with bootstrap CI and a significance test. Exit 1 if a "
                                          "metric is worse by more than the threshold AND significantly so.",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("base", metavar="BASE", help="baseline run dir")
    c.add_argument("cand", metavar="CAND", nargs="?", help="candidate run dir (optional with --by-kernel)")
    c.add_argument("--by-kernel", action="store_true",
                   help="compare the guest kernels inside the run dir(s), each against the oldest, matched on "
                        "the cell's configuration (e.g. workloads/linux-6.1-vs-6.12.toml); names known mechanisms")
    c.add_argument("--metric", action="append",
                   help="metric of the wide table, repeatable (default throughput_bps); e.g. "
                        "drops_per_mpkt, requeues_per_mpkt, lock_wait_ns_per_pkt, cpu_pct_per_gbit")
    c.add_argument("--threshold", type=float, default=0.05, help="relative change that counts (0.05 = 5%%)")
    c.add_argument("--alpha", type=float, default=0.05, help="significance level")
    c.add_argument("--seed", type=int, default=20261123, help="bootstrap seed")
    c.add_argument("--csv", type=Path, help="also write the table as CSV")
    c.add_argument("--include-invalid", action="store_true",
                   help="also compare cell runs that failed a validity check (left out and listed by default)")
    c.set_defaults(fn=cmd_compare)

    b = subparsers.add_parser("bench-history", help="time loading N synthetic run dirs and their wide table",
                              description="Build N synthetic run dirs from a real one (a nightly history) and time "
                                          "load_runs + wide_table; prints the timings and writes them as JSON.")
    b.add_argument("--runs", type=int, default=1000, help="number of run dirs (default 1000)")
    b.add_argument("--dir", help="where the synthetic run dirs go (default $TMPDIR/xmitbench-history-N; reused "
                                 "when it holds the same set)")
    b.add_argument("--template", help="run dir to copy (default tests/fixtures/runs/bufring-race)")
    b.add_argument("--repeat", type=int, default=3, help="timed trials; the fastest is the result (default 3)")
    b.add_argument("--json", help="write the timings here (default DIR/bench-history.json)")
    b.set_defaults(fn=cmd_bench_history)
