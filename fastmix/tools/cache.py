"""The `fastmix cache list` and `fastmix cache clear [--dataset NAME]` commands: the low-dim store's entries.

`list` prints one line per entry of the current user (dataset, size, last use, whether a live process uses it,
dataset root, entry directory) under the cache directory and its size bound. `clear` removes the entries
(all, or those of one dataset: its name as opened, e.g. a repo id, or its root directory) that no live process
uses or builds, and says what it removed and what it kept. Entries of other users are never touched.
Policy: `fastmix.sources.cache_dir`.
"""

from __future__ import annotations

import argparse
import os
import time

from fastmix.errors import ConfigError
from fastmix.sources import cache_dir
from fastmix.sources.store import cache_root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{list,clear}")
    sub.add_parser("list", help="list this user's low-dim store entries", description="list this user's "
                   "low-dim store entries: dataset, size, last use, in use, dataset root, entry directory")
    clear = sub.add_parser("clear", help="remove low-dim store entries no live process uses",
                           description="remove this user's low-dim store entries that no live process uses "
                           "(they are rebuilt on the next open)")
    clear.add_argument("--dataset", metavar="NAME", default=None,
                       help="only the entries of this dataset (its name or repo id, or its root directory)")


def _row(e: cache_dir.Entry, used: bool | None = None) -> str:
    last = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_use))
    cols = [e.dataset or "?", cache_dir.format_size(e.size), last]
    if used is not None:
        cols.append("in use" if used else "-")
    return "  ".join([f"{cols[0]:<32}", f"{cols[1]:>10}", *cols[2:], e.root or "?", str(e.path)])


def _header(root: os.PathLike) -> str:
    bound = cache_dir.cache_max()
    limit = "no bound" if bound is None else f"bound {cache_dir.format_size(bound)}"
    return f"low-dim store {root} ({limit}, {cache_dir.ENV_MAX})"


def _matches(e: cache_dir.Entry, name: str) -> bool:
    return e.dataset == name or (e.root is not None and os.path.realpath(os.path.expanduser(name)) == e.root)


def run(args: argparse.Namespace) -> int:
    root = cache_root()
    found, others = cache_dir.entries(root)
    note = f"; {others} entr{'y' if others == 1 else 'ies'} of other users left alone" if others else ""
    if args.action == "list":
        total = sum(e.size for e in found)
        print(f"{_header(root)}: {len(found)} entr{'y' if len(found) == 1 else 'ies'}, "
              f"{cache_dir.format_size(total)}{note}")
        if found:
            print("  ".join([f"{'dataset':<32}", f"{'size':>10}", f"{'last use':<16}", "in use", "root", "entry"]))
        for e in reversed(found):  # most recently used first
            print(_row(e, cache_dir.in_use(e.path)))
        return 0
    if args.dataset is not None:
        chosen = [e for e in found if _matches(e, args.dataset)]
        if not chosen:
            names = sorted({e.dataset for e in found if e.dataset})
            raise ConfigError(f"no low-dim store entry of dataset {args.dataset!r} in {root}; its entries are of: "
                              f"{', '.join(names) if names else '(none)'}")
    else:
        chosen = found
    removed = [e for e in chosen if cache_dir.remove_entry(e.path)]
    kept = [e for e in chosen if e not in removed]
    freed = cache_dir.format_size(sum(e.size for e in removed))
    print(f"{_header(root)}: removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} ({freed}){note}")
    for e in removed:
        print(f"  removed  {_row(e)}")
    for e in kept:
        why = "in use by a live process" if cache_dir.in_use(e.path) else "could not be removed"
        print(f"  kept ({why})  {_row(e)}")
    return 0
