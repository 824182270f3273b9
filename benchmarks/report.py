"""Turns a pytest-benchmark json into the fastmix results table and `benchmarks/RESULTS.md`.

Every benchmark row carries `extra_info = {role: "fastmix" | "reference" | "bound", items, unit}` and a
`group` (see docs/ARCHITECTURE.md, "Contract: benchmarks"); loader rows also carry `format` (what a batch's
images are, e.g. "uint8 BHWC", "float32 BCHW"), and one reference row of a group may carry `primary: true`.
For each row: items/s = items / median round time. Within a group, each fastmix row gets `× reference` = its
items/s over the group's comparison reference (the `primary` reference row; without one, the fastest
reference row); when the two rows' formats differ the cell says so ("3.1× (uint8 BHWC vs float32 BCHW)").
`× bound` = its items/s over the fastest bound row's (loader groups: the same requests decoded by PyAV alone,
single-threaded decoder per process, in the same number of processes; sampler groups: the fastest plain
alternatives, torch.multinomial and numpy's choice).

Rows may come from several pytest-benchmark json files (the main environment's run and the seed
environment's, `merge_json`); rows that did not run are listed with their reason (`not_run` entries).

Run alone: `python -m benchmarks.report path/to/benchmark.json [more.json ...] [--out benchmarks/RESULTS.md]`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
ROLES = ("fastmix", "reference", "bound")
# Text below this line in an existing RESULTS.md is kept when the file is rewritten (hand-written notes).
NOTES_MARKER = "<!-- notes below this line are kept when the suite rewrites this file -->"


@dataclass(frozen=True)
class Row:
    """One benchmark test: its group, role and measured throughput."""

    group: str
    name: str
    role: str
    unit: str
    items: float
    median_s: float
    rounds: int
    fmt: str = ""  # output format of a loader row ("uint8 BHWC", "float32 BCHW"); "" when not stated
    primary: bool = False  # the reference row the group's fastmix rows are compared with

    @property
    def items_per_s(self) -> float:
        return self.items / self.median_s if self.median_s > 0 else float("inf")


@dataclass(frozen=True)
class GroupSummary:
    """A group's rows plus the reference and bound each fastmix row is compared with."""

    group: str
    rows: list[Row]
    reference: Row | None  # the primary reference row, else the fastest reference row
    bound: Row | None  # fastest bound row

    def ratio_to_reference(self, row: Row) -> float | None:
        return row.items_per_s / self.reference.items_per_s if self.reference and row.role == "fastmix" else None

    def format_mismatch(self, row: Row) -> str:
        """"" when `row` and the comparison reference state the same format (or either states none), else
        "<row format> vs <reference format>"."""
        ref = self.reference
        if ref is None or row.role != "fastmix" or not row.fmt or not ref.fmt or row.fmt == ref.fmt:
            return ""
        return f"{row.fmt} vs {ref.fmt}"

    def ratio_to_bound(self, row: Row) -> float | None:
        return row.items_per_s / self.bound.items_per_s if self.bound and row.role == "fastmix" else None


def load_rows(data: dict[str, Any]) -> list[Row]:
    """Rows of a pytest-benchmark json dict. A row without role/items is kept with role "?" and 1 item/round."""
    rows = []
    for b in data.get("benchmarks", []):
        extra = b.get("extra_info") or {}
        rows.append(Row(
            group=b.get("group") or "(no group)",
            name=b.get("name") or b.get("fullname", "?"),
            role=str(extra.get("role", "?")),
            unit=str(extra.get("unit", "calls")),
            items=float(extra.get("items", 1)),
            median_s=float(b["stats"]["median"]),
            rounds=int(b["stats"].get("rounds", 0)),
            fmt=str(extra.get("format", "")),
            primary=bool(extra.get("primary", False)),
        ))
    return rows


def summarize(rows: list[Row]) -> list[GroupSummary]:
    """Groups in first-seen order; inside a group: fastmix rows, then reference, then bound."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    order = {role: i for i, role in enumerate(ROLES)}
    out = []
    for g, rs in groups.items():
        rs = sorted(rs, key=lambda r: (order.get(r.role, len(ROLES)), -r.items_per_s))
        refs = [r for r in rs if r.role == "reference"]
        bounds = [r for r in rs if r.role == "bound"]
        primary = [r for r in refs if r.primary]
        out.append(GroupSummary(g, rs, (primary or [None])[0] or max(refs, key=lambda r: r.items_per_s, default=None),
                                max(bounds, key=lambda r: r.items_per_s, default=None)))
    return out


def _fmt_rate(x: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g} {suffix}"
    return f"{x:.3g}"


def _fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def _fmt_ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.3g}×"


def table_rows(summaries: list[GroupSummary]) -> list[list[str]]:
    """Header + one line per benchmark: group, test, role, format, median time, items/s, × reference, × bound.

    The reference cell of a fastmix row whose format differs from the reference's names both formats."""
    lines = [["group", "test", "role", "format", "median/round", "items/s", "× reference", "× bound"]]
    for s in summaries:
        for r in s.rows:
            ref = _fmt_ratio(s.ratio_to_reference(r))
            mismatch = s.format_mismatch(r)
            role = r.role + (" (primary)" if r.primary else "")
            lines.append([s.group, r.name, role, r.fmt, _fmt_time(r.median_s),
                          f"{_fmt_rate(r.items_per_s)} {r.unit}/s", f"{ref} ({mismatch})" if mismatch else ref,
                          _fmt_ratio(s.ratio_to_bound(r))])
    return lines


def format_text_table(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_markdown_table(lines: list[list[str]]) -> str:
    head, *body = lines
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body]
    return "\n".join(out)


def _cpu_model(fallback: str = "") -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return fallback or platform.processor() or platform.machine()


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - a missing package is reported as such
        return "not installed"


def machine_description(benchmark_machine_info: dict[str, Any] | None = None) -> dict[str, str]:
    """CPU model, cores (usable / logical), RAM, GPU, OS, python / torch / av / numpy / lerobot versions, backend."""
    info = benchmark_machine_info or {}
    cpu = info.get("cpu") or {}
    desc: dict[str, str] = {"cpu": _cpu_model(cpu.get("brand_raw", ""))}
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    desc["cores"] = f"{usable} usable of {os.cpu_count()} logical"
    try:
        import psutil

        desc["ram"] = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        desc["ram"] = "unknown"
    try:
        import torch

        desc["gpu"] = (", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
                       if torch.cuda.is_available() else "none")
    except ImportError:
        desc["gpu"] = "unknown (torch not installed)"
    desc["os"] = platform.platform()
    desc["python"] = platform.python_version()
    for pkg in ("torch", "av", "numpy", "lerobot", "pytest-benchmark"):
        desc[pkg] = _version(pkg)
    try:
        import fastmix

        desc["fastmix backend"] = fastmix.backend()
    except Exception as e:  # noqa: BLE001 - the report still renders without the package
        desc["fastmix backend"] = f"unavailable ({type(e).__name__})"
    return desc


def resource_lines(data: dict[str, Any]) -> list[str]:
    """One line per benchmark that recorded resource use (RSS / fds in extra_info: the soaks)."""
    lines = []
    for b in data.get("benchmarks", []):
        x = b.get("extra_info") or {}
        if "rss_start_mib" in x:
            lines.append(f"- {b.get('name')}: {x.get('batches', '?')} batches after warm-up, process-tree RSS "
                         f"{x['rss_start_mib']} → {x['rss_end_mib']} MiB (peak {x['rss_peak_mib']} MiB, "
                         f"growth {100 * float(x['rss_growth']):+.2f} %, limit +5 %); /dev/shm empty after close")
        elif "rss_mib" in x and x["rss_mib"]:
            rss, fds = x["rss_mib"], x.get("fds") or ["?"]
            lines.append(f"- {b.get('name')}: {x.get('duration_s', '?')} s, {x.get('epochs', '?')} epochs, "
                         f"process-tree RSS sampled at {x.get('sample_t_s')} s: {rss} MiB "
                         f"(steady start {rss[1] if len(rss) > 1 else rss[0]} → end {rss[-1]} MiB); open fds "
                         f"{fds[1] if len(fds) > 1 else fds[0]} → {fds[-1]}; processes {x.get('procs')}")
        elif isinstance(x.get("memory"), dict):  # bench_scale: per-frame memory of 1 and 4 ranks
            parts = [f"{k}: init {v['init_s']} s, RSS {v['rss_B_per_frame_after_init']} B/frame after init, "
                     f"{v['rss_B_per_frame_after_touch']} after touching every row (USS "
                     f"{v['uss_B_per_frame_after_touch']}), PSS of all ranks {v['pss_sum_B_per_frame_all_ranks']} "
                     f"B/frame" for k, v in x["memory"].items()]
            lines.append(f"- {b.get('name')}: " + "; ".join(parts))
    return lines


def detail_lines(data: dict[str, Any]) -> list[str]:
    """One line per benchmark whose extra_info describes it (`desc`, and `env` for rows run elsewhere)."""
    lines = []
    for b in data.get("benchmarks", []):
        x = b.get("extra_info") or {}
        if x.get("desc") or x.get("env"):
            text = "; ".join(str(t) for t in (x.get("desc"), x.get("env") and f"environment: {x['env']}") if t)
            lines.append(f"- {b.get('group') or '(no group)'} / {b.get('name')}: {text}")
    return lines


def not_run_lines(data: dict[str, Any]) -> list[str]:
    """One line per row that did not run (`not_run`: [{"name", "reason"}]), with its reason."""
    return [f"- {x.get('name', '?')}: {x.get('reason', 'no reason given')}" for x in data.get("not_run", [])]


def merge_json(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One pytest-benchmark dict from several runs: the first part's machine_info and datetime, every part's
    benchmarks (in order) and not_run entries."""
    if not parts:
        raise ValueError("merge_json needs at least one pytest-benchmark dict, got none")
    merged = {k: v for k, v in parts[0].items() if k not in ("benchmarks", "not_run")}
    merged["benchmarks"] = [b for p in parts for b in p.get("benchmarks", [])]
    merged["not_run"] = [x for p in parts for x in p.get("not_run", [])]
    return merged


def build_markdown(data: dict[str, Any], machine: dict[str, str], *, command: str = "python -m benchmarks",
                   notes: str = "") -> str:
    """The full RESULTS.md text for one pytest-benchmark json."""
    summaries = summarize(load_rows(data))
    when = data.get("datetime") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    parts = [
        "# fastmix benchmark results",
        "",
        f"Generated by `{command}` on {when}. Regenerate with the same command; do not edit the tables by hand.",
        "items/s = items per round / median round time. `format`: what a row's batches hold (image dtype and "
        "layout). `× reference`: a fastmix row's items/s over its group's primary reference row (marked "
        "`reference (primary)`; without one, the fastest reference row) in the same run; where the formats "
        "differ the cell names both. `× bound`: over the fastest bound row of its group (loader groups: the "
        "same requests decoded by PyAV alone, single-threaded decoder per process, in the same number of "
        "processes — not a limit on what a loader could do; sampler groups: the fastest plain alternative).",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in machine.items()],
        "",
        "## Results",
        "",
        format_markdown_table(table_rows(summaries)),
        "",
    ]
    missing = not_run_lines(data)
    if missing:
        parts += ["## Rows not run", "", *missing, ""]
    details = detail_lines(data)
    if details:
        parts += ["## Row details", "", *details, ""]
    resources = resource_lines(data)
    if resources:
        parts += ["## Resource checks", "", *resources, ""]
    parts += [
        NOTES_MARKER,
    ]
    text = "\n".join(parts) + "\n"
    return text + (notes.lstrip("\n") if notes else "")


def existing_notes(path: Path) -> str:
    """The hand-written text after NOTES_MARKER in an existing results file ("" when none)."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    _, sep, tail = text.partition(NOTES_MARKER)
    return tail if sep else ""


def read_json(paths: Path | list[Path]) -> dict[str, Any]:
    """The pytest-benchmark dict of one json file, or of several merged (`merge_json`)."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    return merge_json([json.loads(Path(p).read_text(encoding="utf-8")) for p in paths])


def write_report(json_path: Path | list[Path], out: Path = RESULTS_PATH, *, command: str = "python -m benchmarks",
                 machine: dict[str, str] | None = None, echo: bool = True,
                 not_run: list[dict[str, str]] | None = None) -> str:
    """Read `json_path` (one or several files, merged), print the table (when `echo`), rewrite `out` keeping its
    notes; `not_run` adds rows that did not run with their reasons. Returns the markdown."""
    data = read_json(json_path)
    data["not_run"] = [*data.get("not_run", []), *(not_run or [])]
    machine = machine or machine_description(data.get("machine_info"))
    md = build_markdown(data, machine, command=command, notes=existing_notes(out))
    if echo:
        print(format_text_table(table_rows(summarize(load_rows(data)))))
        for line in not_run_lines(data):
            print("not run " + line[2:])
        print("\nmachine: " + "; ".join(f"{k}: {v}" for k, v in machine.items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(md, encoding="utf-8")
    tmp.replace(out)
    return md


def print_table(json_path: Path | list[Path], not_run: list[dict[str, str]] | None = None) -> None:
    """Print the results table of `json_path` (one or several files) without writing anything."""
    data = read_json(json_path)
    print(format_text_table(table_rows(summarize(load_rows(data)))))
    for line in not_run_lines({"not_run": [*data.get("not_run", []), *(not_run or [])]}):
        print("not run " + line[2:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path, nargs="+", help="pytest-benchmark json files (--benchmark-json output)")
    p.add_argument("--out", type=Path, default=RESULTS_PATH, help="markdown file to rewrite")
    args = p.parse_args(argv)
    write_report(args.json, args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
