"""What the analysis tests share: the analysis subcommands run in-process, as the CLI runs them."""
from __future__ import annotations

import argparse

from harness.analysis.commands import register


def cli(*argv: str) -> int:
    """`xmitbench <analysis command> ...` in this process; returns its exit status."""
    ap = argparse.ArgumentParser(prog="xmitbench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    register(sub)
    args = ap.parse_args(list(argv))
    return args.fn(args)
