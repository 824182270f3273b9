"""The benchmark report builder (benchmarks/report.py) and the suite runner's command line, on a synthetic
pytest-benchmark json whose ratios are known exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import SEED_FILES, pytest_command, seed_command
from benchmarks.report import (
    NOTES_MARKER,
    build_markdown,
    load_rows,
    machine_description,
    merge_json,
    summarize,
    table_rows,
    write_report,
)


def _bench(name: str, group: str, role: str | None, items: int, median: float, unit: str = "samples",
           **extra_info) -> dict:
    extra = {} if role is None else {"role": role, "items": items, "unit": unit, **extra_info}
    return {"name": name, "fullname": f"benchmarks/bench_x.py::{name}", "group": group, "extra_info": extra,
            "stats": {"min": median, "max": median, "mean": median, "median": median, "rounds": 5}}


@pytest.fixture
def data() -> dict:
    return {
        "machine_info": {"cpu": {"brand_raw": "Synthetic CPU"}},
        "datetime": "2025-01-01T00:00:00+00:00",
        "benchmarks": [
            # loader group: fastmix 3200 samples in 2 s = 1600/s; references 100/s and 200/s; bound 2000/s
            _bench("test_reference_slow", "loader video", "reference", 100, 1.0),
            _bench("test_fastmix_loader", "loader video", "fastmix", 3200, 2.0),
            _bench("test_reference_fast", "loader video", "reference", 400, 2.0),
            _bench("test_decode_bound", "loader video", "bound", 1000, 0.5),
            _bench("test_fastmix_loader_w0", "loader video", "fastmix", 800, 1.0),
            # sampler group: no bound; 1e6 indices in 0.01 s = 1e8/s vs 1e6/s
            _bench("test_sampler", "sampler N=1e6", "fastmix", 10**6, 0.01, "indices"),
            _bench("test_wrs", "sampler N=1e6", "reference", 10**6, 1.0, "indices"),
            # a fastmix-only group and an untagged row
            _bench("test_alias_build", "alias build", "fastmix", 10**5, 0.004, "frames"),
            _bench("test_untagged", "misc", None, 0, 0.25),
        ],
    }


def test_items_per_second_and_ratios(data: dict) -> None:
    summaries = {s.group: s for s in summarize(load_rows(data))}
    loader = summaries["loader video"]
    rows = {r.name: r for r in loader.rows}
    assert rows["test_fastmix_loader"].items_per_s == pytest.approx(1600.0)
    assert rows["test_reference_slow"].items_per_s == pytest.approx(100.0)
    # the fastest reference (200/s) and the fastest bound (2000/s) are the denominators
    assert loader.reference.name == "test_reference_fast"
    assert loader.bound.name == "test_decode_bound"
    assert loader.ratio_to_reference(rows["test_fastmix_loader"]) == pytest.approx(8.0)
    assert loader.ratio_to_bound(rows["test_fastmix_loader"]) == pytest.approx(0.8)
    assert loader.ratio_to_reference(rows["test_fastmix_loader_w0"]) == pytest.approx(4.0)
    assert loader.ratio_to_bound(rows["test_fastmix_loader_w0"]) == pytest.approx(0.4)
    # only fastmix rows get ratios
    assert loader.ratio_to_reference(rows["test_reference_slow"]) is None
    assert loader.ratio_to_bound(rows["test_decode_bound"]) is None
    # order inside a group: fastmix (fastest first), reference, bound
    assert [r.role for r in loader.rows] == ["fastmix", "fastmix", "reference", "reference", "bound"]
    assert loader.rows[0].name == "test_fastmix_loader"

    sampler = summaries["sampler N=1e6"]
    fm = next(r for r in sampler.rows if r.role == "fastmix")
    assert sampler.ratio_to_reference(fm) == pytest.approx(100.0)
    assert sampler.bound is None and sampler.ratio_to_bound(fm) is None
    assert summaries["alias build"].reference is None
    untagged = summaries["misc"].rows[0]
    assert (untagged.role, untagged.items_per_s) == ("?", pytest.approx(4.0))


def test_table_cells(data: dict) -> None:
    lines = table_rows(summarize(load_rows(data)))
    assert lines[0] == ["group", "test", "role", "format", "median/round", "items/s", "× reference", "× bound"]
    by_name = {line[1]: line for line in lines[1:]}
    assert by_name["test_fastmix_loader"][3:] == ["", "2 s", "1.6 k samples/s", "8×", "0.8×"]
    assert by_name["test_sampler"][5:] == ["100 M indices/s", "100×", ""]
    assert by_name["test_alias_build"][4:] == ["4 ms", "25 M frames/s", "", ""]
    assert len(lines) == 1 + len(data["benchmarks"])


@pytest.fixture
def formats() -> dict:
    """A like-for-like loader group: the primary reference (the default decoder, 100/s) is slower than the
    second reference (pyav, 200/s); fastmix float32 1000/s, fastmix uint8 2400/s; bound 3000/s."""
    f32, u8 = "float32 BCHW", "uint8 BHWC"
    return {"benchmarks": [
        _bench("test_fastmix[uint8]", "loader video", "fastmix", 2400, 1.0, format=u8),
        _bench("test_fastmix[float32]", "loader video", "fastmix", 1000, 1.0, format=f32, desc="converted"),
        _bench("test_reference[pyav]", "loader video", "reference", 200, 1.0, format=f32),
        _bench("test_reference[default]", "loader video", "reference", 100, 1.0, format=f32, primary=True,
               desc="lerobot's default decoder (torchcodec)"),
        _bench("test_bound", "loader video", "bound", 3000, 1.0, format="uint8 HWC frames"),
    ]}


def test_primary_reference_and_format_mismatch(formats: dict) -> None:
    (group,) = summarize(load_rows(formats))
    rows = {r.name: r for r in group.rows}
    # the primary reference is the denominator even though the pyav reference is faster
    assert group.reference.name == "test_reference[default]"
    assert group.ratio_to_reference(rows["test_fastmix[float32]"]) == pytest.approx(10.0)
    assert group.ratio_to_reference(rows["test_fastmix[uint8]"]) == pytest.approx(24.0)
    assert group.format_mismatch(rows["test_fastmix[float32]"]) == ""
    assert group.format_mismatch(rows["test_fastmix[uint8]"]) == "uint8 BHWC vs float32 BCHW"
    by_name = {line[1]: line for line in table_rows([group])[1:]}
    assert by_name["test_fastmix[float32]"][2:] == ["fastmix", "float32 BCHW", "1 s", "1 k samples/s", "10×",
                                                    "0.333×"]
    assert by_name["test_fastmix[uint8]"][6] == "24× (uint8 BHWC vs float32 BCHW)"
    assert by_name["test_reference[default]"][2] == "reference (primary)"
    assert by_name["test_reference[pyav]"][2:4] == ["reference", "float32 BCHW"]


def test_merged_runs_not_run_rows_and_details(formats: dict, data: dict, tmp_path: Path) -> None:
    seed = {"machine_info": {"cpu": {"brand_raw": "other"}}, "benchmarks": [
        _bench("test_fork", "e2e fork", "reference", 64, 2.0, primary=True, env="seed env (lerobot 0.1.0)"),
        _bench("test_fastmix_installed", "e2e fork", "fastmix", 64, 0.5),
    ]}
    merged = merge_json([data, seed])
    assert merged["machine_info"] == data["machine_info"]  # the first run's machine
    assert [b["name"] for b in merged["benchmarks"]] == [b["name"] for b in data["benchmarks"] + seed["benchmarks"]]
    with pytest.raises(ValueError, match="at least one"):
        merge_json([])

    paths = []
    for i, part in enumerate((formats, seed)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(part))
    out = tmp_path / "RESULTS.md"
    md = write_report(paths, out, machine={"cpu": "x"}, echo=False,
                      not_run=[{"name": "test_g1", "reason": "the shared G1 dataset is missing"}])
    e2e = next(s for s in summarize(load_rows(merge_json([formats, seed]))) if s.group == "e2e fork")
    assert e2e.ratio_to_reference(next(r for r in e2e.rows if r.role == "fastmix")) == pytest.approx(4.0)
    assert "| e2e fork | test_fastmix_installed | fastmix |  | 500 ms | 128 samples/s | 4× |  |" in md
    assert "## Rows not run\n\n- test_g1: the shared G1 dataset is missing\n" in md
    assert "- loader video / test_reference[default]: lerobot's default decoder (torchcodec)\n" in md
    assert "- e2e fork / test_fork: environment: seed env (lerobot 0.1.0)\n" in md


def test_markdown_and_notes_are_kept(data: dict, tmp_path: Path) -> None:
    machine = {"cpu": "Synthetic CPU", "cores": "2 usable of 2 logical"}
    md = build_markdown(data, machine, command="python -m benchmarks --quick")
    assert "`python -m benchmarks --quick`" in md and "- cpu: Synthetic CPU" in md
    assert "| loader video | test_fastmix_loader | fastmix |  | 2 s | 1.6 k samples/s | 8× | 0.8× |" in md
    assert "Rows not run" not in md and "Row details" not in md
    assert md.rstrip().endswith(NOTES_MARKER)

    json_path = tmp_path / "b.json"
    json_path.write_text(json.dumps(data))
    out = tmp_path / "RESULTS.md"
    out.write_text("old table\n" + NOTES_MARKER + "\nHand-written: run on a quiet machine.\n")
    written = write_report(json_path, out, machine=machine, echo=False)
    assert out.read_text() == written
    assert "old table" not in written
    assert written.endswith(NOTES_MARKER + "\nHand-written: run on a quiet machine.\n")


def test_machine_description_names_the_versions() -> None:
    desc = machine_description({"cpu": {"brand_raw": "fallback"}})
    for key in ("cpu", "cores", "ram", "gpu", "python", "torch", "av", "numpy", "fastmix backend"):
        assert desc[key], key
    assert desc["torch"] != "not installed"
    assert desc["ram"].endswith("GiB")


def test_runner_command_line(tmp_path: Path) -> None:
    quick = pytest_command(tmp_path / "b.json", quick=True, keyword="sampler", extra=["-x"])
    assert "--benchmark-enable" in quick and f"--benchmark-json={tmp_path / 'b.json'}" in quick
    pairs = set(zip(quick, quick[1:], strict=False))
    assert ("-m", "not slow") in pairs and ("-k", "sampler") in pairs and quick[-1] == "-x"
    full = pytest_command(tmp_path / "b.json", quick=False, keyword=None, extra=[])
    assert "not slow" not in full and "-k" not in full  # slow (soak) benchmarks run outside --quick
    seed = seed_command("/seed/bin/python", tmp_path / "s.json", quick=True, keyword="g1")
    assert seed[:3] == ["/seed/bin/python", "-m", "pytest"] and ("-k", "g1") in set(zip(seed, seed[1:], strict=False))
    assert [Path(a).name for a in seed if a.endswith("_seed.py")] == list(SEED_FILES)
    assert all((Path(__file__).resolve().parents[1] / "benchmarks" / f).is_file() for f in SEED_FILES)


def test_skipped_benchmarks_are_recorded_as_not_run(tmp_path: Path) -> None:
    """benchmarks/conftest.py's hook writes a skipped benchmark's name and reason where the runner reads them."""
    from benchmarks.__main__ import read_not_run

    (tmp_path / "bench_x.py").write_text(
        "import pytest\n\n"
        "def test_needs_ffmpeg():\n    pytest.skip('torchcodec cannot load: no FFmpeg')\n\n"
        "def test_runs():\n    assert True\n", encoding="utf-8")
    record = tmp_path / "not_run.jsonl"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "FASTMIX_BENCH_NOT_RUN": str(record), "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "benchmarks.conftest", "-p",
                           "no:cacheprovider", "-o", "python_files=bench_*.py", str(tmp_path / "bench_x.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert read_not_run(record) == [{"name": "test_needs_ffmpeg", "reason": "torchcodec cannot load: no FFmpeg"}]
    assert read_not_run(tmp_path / "absent.jsonl") == []
