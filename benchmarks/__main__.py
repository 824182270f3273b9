"""`python -m benchmarks [--quick] [-k EXPR] [--json PATH] [--no-write]`: run the whole benchmark suite and
rewrite `benchmarks/RESULTS.md`.

Runs pytest over `benchmarks/` with `--benchmark-enable --benchmark-json`, then builds the report
(`benchmarks/report.py`): items/s for every row, per group the fastmix/reference and fastmix/bound ratios, the
machine. `--quick` sets FASTMIX_BENCH_QUICK=1 (benchmarks shrink their sizes/rounds) and skips tests marked
`slow` (the soak); without it, slow benchmarks run too.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import RESULTS_PATH, print_table, write_report

BENCH_DIR = Path(__file__).resolve().parent


def pytest_command(json_path: Path, *, quick: bool, keyword: str | None, extra: list[str]) -> list[str]:
    """The pytest command line the suite runs."""
    cmd = [sys.executable, "-m", "pytest", str(BENCH_DIR), "-q", "--benchmark-enable",
           f"--benchmark-json={json_path}", "-p", "no:cacheprovider",
           "-o", "python_files=bench_*.py"]  # benchmark modules are bench_*.py, not test_*.py
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append("--timeout=3600")  # the project-wide 300 s test timeout is for unit tests, not the soak
    if quick:
        cmd += ["-m", "not slow"]
    if keyword:
        cmd += ["-k", keyword]
    return cmd + extra


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="run fastmix's benchmark suite")
    p.add_argument("--quick", action="store_true", help="smaller sizes, no slow (soak) benchmarks; < 5 minutes")
    p.add_argument("-k", dest="keyword", default=None, help="pytest -k expression selecting benchmarks")
    p.add_argument("--json", type=Path, default=None, help="keep the pytest-benchmark json here")
    p.add_argument("--out", type=Path, default=RESULTS_PATH, help="results markdown to rewrite")
    p.add_argument("--no-write", action="store_true", help="print the table only; leave RESULTS.md alone")
    args, extra = p.parse_known_args(argv)

    env = dict(os.environ, FASTMIX_BENCH_QUICK="1" if args.quick else "0", HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix="fastmix-bench-") as tmp:
        json_path = args.json or Path(tmp) / "benchmark.json"
        cmd = pytest_command(json_path, quick=args.quick, keyword=args.keyword, extra=extra)
        print("$ " + " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, env=env, cwd=BENCH_DIR.parent)
        if not json_path.exists() or json_path.stat().st_size == 0:
            print(f"no benchmark ran (pytest exit status {rc}); RESULTS.md left as it was",
                  file=sys.stderr)
            return rc or 1
        command = "python -m benchmarks" + (" --quick" if args.quick else "") + (
            f" -k {args.keyword!r}" if args.keyword else "")
        if args.no_write:
            print_table(json_path)
        else:
            write_report(json_path, args.out, command=command)
            print(f"\nwrote {args.out}" + (f" (pytest exit status {rc}: some benchmarks failed)" if rc else ""))
    return rc


if __name__ == "__main__":
    sys.exit(main())
