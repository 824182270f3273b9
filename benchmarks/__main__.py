"""`python -m benchmarks [--quick] [-k EXPR] [--json PATH] [--no-write] [--no-seed] [--seed-python PY]`: run
the whole benchmark suite and rewrite `benchmarks/RESULTS.md`.

1. lerobot's default decoder (torchcodec) needs the system FFmpeg: when torchcodec cannot load, the runner
   installs FFmpeg with apt-get (as root, or `sudo -n`) and says so; if that fails, the rows that need it are
   reported as not run, with the reason.
2. Runs pytest over `benchmarks/` with `--benchmark-enable --benchmark-json` (main environment).
3. Runs the seed-environment benchmarks (`benchmarks/bench_*_seed.py`: the real G1 v2.1 data against the
   pinned lerobot; end to end against the openpi fork's own `create_data_loader`; a three-robot mixture against
   the fork's own loaders, one per robot, side by side) with the seed env's python
   (`--seed-python`, else the one `bash tests/seed/make-env` builds or reuses), this checkout's fastmix first
   on PYTHONPATH. When the seed env cannot be had, those rows are reported as not run, with the reason.
4. Builds the report from both runs (`benchmarks/report.py`): items/s for every row, per group the
   fastmix/reference and fastmix/bound ratios, the rows not run, the machine.

`--quick` sets FASTMIX_BENCH_QUICK=1 (benchmarks shrink their sizes/rounds) and skips tests marked `slow` (the
soak); without it, slow benchmarks run too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import RESULTS_PATH, print_table, write_report

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SEED_FILES = ("bench_g1_seed.py", "bench_e2e_seed.py", "bench_mixture_seed.py")
SEED_ROWS = ("test_reference_lerobot_v21", "test_fastmix_loader_g1[float32]", "test_fastmix_loader_g1[uint8]",
             "test_fork_create_data_loader", "test_fastmix_installed", "test_fork_loaders_side_by_side",
             "test_fastmix_mixture_config")


def torchcodec_loads(python: str = sys.executable) -> str | None:
    """None when `python` can load torchcodec's decoders (FFmpeg found); else the error's last line."""
    probe = subprocess.run([python, "-c", "from torchcodec.decoders import VideoDecoder"], capture_output=True,
                           text=True)
    if probe.returncode == 0:
        return None
    lines = [ln for ln in probe.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {probe.returncode}"


def ensure_system_ffmpeg() -> str | None:
    """Make lerobot's default decoder usable: when torchcodec cannot load and `ffmpeg` is missing, install the
    system FFmpeg with apt-get (saying so). Returns None when torchcodec loads, else why it still does not."""
    if importlib.util.find_spec("torchcodec") is None:
        return "torchcodec is not installed"
    problem = torchcodec_loads()
    if problem is None or shutil.which("ffmpeg") is not None:
        return problem
    print("benchmarks: torchcodec (lerobot's default decoder) cannot load the system FFmpeg; installing it with "
          "apt-get install ffmpeg", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "ffmpeg"]):
        done = subprocess.run(sudo + cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return f"torchcodec cannot load ({problem}) and `{' '.join(sudo + cmd)}` failed: {done.stderr[-300:]}"
    return torchcodec_loads()


def find_seed_python(explicit: str | None) -> tuple[str | None, str]:
    """(the seed env's python, "") or (None, why not): `explicit`, else what tests/seed/make-env prints."""
    if explicit:
        return (explicit, "") if Path(explicit).exists() else (None, f"--seed-python {explicit} does not exist")
    make_env = REPO / "tests" / "seed" / "make-env"
    if not make_env.exists():
        return None, f"{make_env} is missing"
    print(f"$ bash {make_env}", flush=True)
    done = subprocess.run(["bash", str(make_env)], stdout=subprocess.PIPE, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None, f"tests/seed/make-env failed (exit status {done.returncode}; see its output above)"
    return lines[-1].strip(), ""


def seed_command(python: str, json_path: Path, *, quick: bool, keyword: str | None) -> list[str]:
    """The pytest command line of the seed-environment benchmarks."""
    cmd = [python, "-m", "pytest", *(str(BENCH_DIR / f) for f in SEED_FILES), "-q", "--benchmark-enable",
           f"--benchmark-json={json_path}", "-p", "no:cacheprovider", "-o", "python_files=bench_*.py",
           "--rootdir", str(REPO)]
    if keyword:
        cmd += ["-k", keyword]
    return cmd


def run_seed(args: argparse.Namespace, json_path: Path, env: dict[str, str]) -> tuple[int, list[dict]]:
    """Run the seed-environment benchmarks; (pytest exit status, not-run entries when they could not run)."""
    def not_run(reason: str) -> list[dict]:
        print(f"benchmarks: seed-environment rows not run: {reason}", file=sys.stderr, flush=True)
        return [] if args.keyword else [{"name": n, "reason": reason} for n in SEED_ROWS]

    python, why = find_seed_python(args.seed_python)
    if python is None:
        return 0, not_run(why)
    probe = subprocess.run([python, "-c", "import pytest_benchmark, openpi.training.data_loader, "
                            "lerobot.common.datasets"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return 0, not_run(f"the seed env at {python} lacks a package ({last}); rebuild it with "
                          "bash tests/seed/make-env")
    seed_env = dict(env, FASTMIX_BENCH_SEED="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    cmd = seed_command(python, json_path, quick=args.quick, keyword=args.keyword)
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, env=seed_env, cwd=REPO)
    if rc == 5:  # nothing selected (-k)
        return 0, []
    return rc, []


def read_not_run(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
    p.add_argument("--no-seed", action="store_true", help="skip the seed-environment benchmarks (listed as not run)")
    p.add_argument("--seed-python", default=None, help="the seed env's python (default: tests/seed/make-env's)")
    args, extra = p.parse_known_args(argv)

    ffmpeg_problem = ensure_system_ffmpeg()
    if ffmpeg_problem:
        print(f"benchmarks: lerobot's default decoder is unavailable ({ffmpeg_problem}); its rows are reported "
              "as not run", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="fastmix-bench-") as tmp:
        not_run_path = Path(tmp) / "not_run.jsonl"
        env = dict(os.environ, FASTMIX_BENCH_QUICK="1" if args.quick else "0", HF_HUB_OFFLINE="1",
                   FASTMIX_BENCH_NOT_RUN=str(not_run_path))
        json_path = args.json or Path(tmp) / "benchmark.json"
        cmd = pytest_command(json_path, quick=args.quick, keyword=args.keyword, extra=extra)
        print("$ " + " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, env=env, cwd=REPO)
        seed_json = json_path.with_name(json_path.stem + "_seed.json")
        if args.no_seed:
            seed_rc, seed_missing = 0, ([] if args.keyword else
                                        [{"name": n, "reason": "--no-seed given"} for n in SEED_ROWS])
        else:
            seed_rc, seed_missing = run_seed(args, seed_json, env)
        jsons = [j for j in (json_path, seed_json) if j.exists() and j.stat().st_size > 0]
        if not jsons:
            print(f"no benchmark ran (pytest exit status {rc}); RESULTS.md left as it was", file=sys.stderr)
            return rc or seed_rc or 1
        not_run = read_not_run(not_run_path) + seed_missing
        command = "python -m benchmarks" + (" --quick" if args.quick else "") + (
            f" -k {args.keyword!r}" if args.keyword else "")
        if args.no_write:
            print_table(jsons, not_run=not_run)
        else:
            write_report(jsons, args.out, command=command, not_run=not_run)
            status = rc or seed_rc
            print(f"\nwrote {args.out}" + (f" (pytest exit status {status}: some benchmarks failed)"
                                            if status else ""))
    return rc or seed_rc


if __name__ == "__main__":
    sys.exit(main())
