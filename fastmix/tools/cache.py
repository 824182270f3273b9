"""The `fastmix cache list` and `fastmix cache clear [--dataset NAME]` commands: the low-dim store's entries and
the metadata mirrors of remote datasets.

`list` prints, for the low-dim store and then the remote metadata mirrors (`$FASTMIX_CACHE/remote/`), one line
per entry of the current user (dataset, size, last use, whether a live process uses it, dataset root or URL,
entry directory) under the directory and its size bound. `clear` removes the entries (all, or those of one
dataset: its name as opened, e.g. a repo id, or its root directory or URL) that no live process uses or
builds, and says what it removed and what it kept. Entries of other users are never touched.
Policy: `fastmix.sources.cache_dir`, `fastmix.sources.remote_mirror`.
"""

from __future__ import annotations

import argparse
import os
import time

from fastmix.errors import ConfigError
from fastmix.sources import cache_dir, remote_mirror
from fastmix.sources.store import cache_root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{list,clear}")
    sub.add_parser("list", help="list this user's low-dim store entries and remote metadata mirrors",
                   description="list this user's low-dim store entries and remote metadata mirrors: dataset, "
                   "size, last use, in use, dataset root or URL, entry directory")
    clear = sub.add_parser("clear", help="remove low-dim store entries and remote metadata mirrors no live "
                           "process uses", description="remove this user's low-dim store entries and remote "
                           "metadata mirrors that no live process uses (they are rebuilt on the next open)")
    clear.add_argument("--dataset", metavar="NAME", default=None,
                       help="only the entries of this dataset (its name or repo id, or its root directory or URL)")


def _row(e: cache_dir.Entry, used: bool | None = None) -> str:
    last = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_use))
    cols = [e.dataset or "?", cache_dir.format_size(e.size), last]
    if used is not None:
        cols.append("in use" if used else "-")
    return "  ".join([f"{cols[0]:<32}", f"{cols[1]:>10}", *cols[2:], e.root or "?", str(e.path)])


def _sections() -> list[tuple[str, os.PathLike, int | None, str]]:
    """(title, directory, bound in bytes or None, the bound's variable) of each kind of entry."""
    return [("low-dim store", cache_root(), cache_dir.cache_max(), cache_dir.ENV_MAX),
            ("remote metadata", remote_mirror.mirror_base(), remote_mirror.meta_max(), remote_mirror.ENV_MAX)]


def _header(title: str, root: os.PathLike, bound: int | None, env: str) -> str:
    limit = "no bound" if bound is None else f"bound {cache_dir.format_size(bound)}"
    return f"{title} {root} ({limit}, {env})"


def _matches(e: cache_dir.Entry, name: str) -> bool:
    return e.dataset == name or (e.root is not None and (
        e.root == name.rstrip("/") or os.path.realpath(os.path.expanduser(name)) == e.root))


def _plural(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def run(args: argparse.Namespace) -> int:
    sections = [(title, root, bound, env, *cache_dir.entries(root)) for title, root, bound, env in _sections()]
    if args.action == "list":
        for title, root, bound, env, found, others in sections:
            note = f"; {_plural(others)} of other users left alone" if others else ""
            total = sum(e.size for e in found)
            print(f"{_header(title, root, bound, env)}: {_plural(len(found))}, {cache_dir.format_size(total)}{note}")
            if found:
                print("  ".join([f"{'dataset':<32}", f"{'size':>10}", f"{'last use':<16}", "in use", "root", "entry"]))
            for e in reversed(found):  # most recently used first
                print(_row(e, cache_dir.in_use(e.path)))
        return 0
    if args.dataset is not None:
        chosen = [[e for e in found if _matches(e, args.dataset)] for *_, found, _ in sections]
        if not any(chosen):
            names = sorted({e.dataset for *_, found, _ in sections for e in found if e.dataset})
            raise ConfigError(f"no low-dim store entry of dataset {args.dataset!r} in {sections[0][1]} (nor a "
                              f"remote metadata mirror in {sections[1][1]}); their entries are of: "
                              f"{', '.join(names) if names else '(none)'}")
    else:
        chosen = [found for *_, found, _ in sections]
    for (title, root, bound, env, _, others), picked in zip(sections, chosen, strict=True):
        if args.dataset is not None and not picked:
            continue
        note = f"; {_plural(others)} of other users left alone" if others else ""
        removed = [e for e in picked if cache_dir.remove_entry(e.path)]
        kept = [e for e in picked if e not in removed]
        freed = cache_dir.format_size(sum(e.size for e in removed))
        print(f"{_header(title, root, bound, env)}: removed {_plural(len(removed))} ({freed}){note}")
        for e in removed:
            print(f"  removed  {_row(e)}")
        for e in kept:
            why = "in use by a live process" if cache_dir.in_use(e.path) else "could not be removed"
            print(f"  kept ({why})  {_row(e)}")
    return 0
