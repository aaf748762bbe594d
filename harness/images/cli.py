"""``xmitbench images list|fetch|verify``: the public image catalog from the command line."""
from __future__ import annotations

import sys


def register(images_subparsers) -> None:
    """Add ``list``, ``fetch`` and ``verify`` to the ``images`` sub-command."""
    help_catalog = "a user catalog TOML added to the built-in one (default: $XMITBENCH_CATALOG)"
    ls = images_subparsers.add_parser("list", help="list catalog images and their cache state")
    ls.add_argument("--catalog", metavar="FILE", help=help_catalog)
    ls.set_defaults(fn=cmd_list)
    f = images_subparsers.add_parser("fetch", help="download and verify a catalog image")
    f.add_argument("name")
    f.add_argument("--allow-unverified", action="store_true",
                   help="use the image even without a matching publisher checksum (recorded as unverified)")
    f.add_argument("--catalog", metavar="FILE", help=help_catalog)
    f.set_defaults(fn=cmd_fetch)
    v = images_subparsers.add_parser("verify", help="re-check a fetched image against its checksum")
    v.add_argument("name")
    v.add_argument("--catalog", metavar="FILE", help=help_catalog)
    v.set_defaults(fn=cmd_verify)


def cmd_list(args) -> int:
    from harness.images.catalog import read_marker, load_catalog
    cat = load_catalog(args.catalog)
    for img in cat:
        m = read_marker(img)
        state = "not fetched" if not m else "fetched" if m.get("verified") else "fetched UNVERIFIED"
        print(f"{img.name:<16} {img.os:<8} {img.release:<7} {state:<18} {img.url or img.path}")
    return 0


def cmd_fetch(args) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn, TimeRemainingColumn
    from harness.images.catalog import ImageFetchError, fetch, load_catalog
    img = load_catalog(args.catalog).get(args.name, "images fetch")
    with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(img.file_name, total=None)
        try:
            got = fetch(img, progress=lambda done, total: bar.update(task, completed=done, total=total),
                        allow_unverified=args.allow_unverified)
        except ImageFetchError as e:
            print(f"xmitbench: {e}", file=sys.stderr)
            return 1
    if not got.verified:
        print(f"xmitbench: WARNING: {img.name} is UNVERIFIED ({got.reason}); every result row records it",
              file=sys.stderr)
    how = f"verified {got.source_digest}" if got.verified else "unverified"
    print(f"{img.name}: {got.path} sha256 {got.sha} ({how})")
    return 0


def cmd_verify(args) -> int:
    from harness.images.catalog import load_catalog, verify
    img = load_catalog(args.catalog).get(args.name, "images verify")
    ok = verify(img)
    print(f"{img.name}: {'verified' if ok else 'NOT verified (not fetched, changed, or fetched unverified)'}")
    return 0 if ok else 1
