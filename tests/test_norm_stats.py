"""Norm stats: RunningStats as openpi computes it, openpi's norm_stats.json format, the compute-norm-stats command."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest

from fastmix.errors import ConfigError, DatasetFormatError, FastmixError, MissingFileError
from fastmix.openpi import norm_stats as ns
from fastmix.testing.fakes import FakeSource
from fastmix.tools import compute_norm_stats as cns


def test_running_stats_mean_std_match_numpy_across_batches_with_widening_range():
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=i, scale=1 + i, size=(50 + 10 * i, 3, 4)) for i in range(5)]  # range grows each batch
    rs = ns.RunningStats()
    for b in batches:
        rs.update(b)
    flat = np.concatenate([b.reshape(-1, 4) for b in batches])
    s = rs.get_statistics()
    assert rs.count == len(flat)
    np.testing.assert_allclose(s.mean, flat.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(s.std, flat.std(axis=0), rtol=1e-8)


def test_running_stats_quantiles_within_a_histogram_bin_of_exact():
    rng = np.random.default_rng(1)
    data = rng.uniform(-3, 5, size=(20_000, 2))
    rs = ns.RunningStats()
    for chunk in np.array_split(data, 7):
        rs.update(chunk)
    s = rs.get_statistics()
    width = (data.max(0) - data.min(0)) / ns.RunningStats.NUM_BINS
    # openpi's quantile: the left edge of the first bin whose cumulative count reaches q*count; each of the
    # (up to 6) re-binnings when the range widens moves counts by at most one bin (to the old left edges).
    for q, got in [(0.01, s.q01), (0.99, s.q99)]:
        exact = np.quantile(data, q, axis=0)
        assert np.all(np.abs(got - exact) <= 8 * width), (q, got, exact)


def test_running_stats_single_batch_quantile_is_left_bin_edge():
    # 100 values 0..99 in one batch: 5000 bins over [0-1e-10, 99+1e-10]; q01 target count = 1 -> bin of value 0.
    rs = ns.RunningStats()
    rs.update(np.arange(100, dtype=np.float64)[:, None])
    s = rs.get_statistics()
    assert s.q01[0] == pytest.approx(-1e-10, abs=1e-12)
    edges = np.linspace(-1e-10, 99 + 1e-10, 5001)
    # q99 target = 99: the 99th value (98) is the first to reach it; its bin's left edge is <= 98 < next edge.
    assert edges[np.searchsorted(edges, 98, side="right") - 1] == pytest.approx(s.q99[0])
    assert s.mean[0] == pytest.approx(49.5) and s.std[0] == pytest.approx(np.arange(100).std())


def test_running_stats_errors_name_values():
    rs = ns.RunningStats()
    rs.update(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"less than 2 vectors \(got 1\)"):
        rs.get_statistics()
    with pytest.raises(ValueError, match="length 2 do not match the running stats' length 3"):
        rs.update(np.zeros((4, 2)))


def test_save_load_roundtrip_in_openpi_json_format(tmp_path):
    stats = {
        "state": ns.NormStats(mean=[1.0, 2.0], std=[0.5, 0.25], q01=[-1.0, -2.0], q99=[3.0, 4.0]),
        "actions": ns.NormStats(mean=[0.0], std=[1.0]),
    }
    path = ns.save(tmp_path / "asset", stats)
    assert path == tmp_path / "asset" / "norm_stats.json"
    raw = json.loads(path.read_text())
    assert raw == {
        "norm_stats": {
            "state": {"mean": [1.0, 2.0], "std": [0.5, 0.25], "q01": [-1.0, -2.0], "q99": [3.0, 4.0]},
            "actions": {"mean": [0.0], "std": [1.0], "q01": None, "q99": None},
        }
    }
    assert path.read_text().startswith('{\n  "norm_stats"')  # indent=2 like openpi's model_dump_json
    back = ns.load(tmp_path / "asset")
    np.testing.assert_array_equal(back["state"].q99, [3.0, 4.0])
    assert back["actions"].q01 is None


def test_load_reads_openpi_written_file(tmp_path):
    # Exactly what openpi's pydantic serializer writes.
    (tmp_path / "norm_stats.json").write_text(
        '{\n  "norm_stats": {\n    "state": {\n      "mean": [\n        0.5\n      ],\n      "std": [\n        2.0\n'
        '      ],\n      "q01": [\n        -1.0\n      ],\n      "q99": [\n        1.0\n      ]\n    }\n  }\n}'
    )
    s = ns.load(tmp_path)["state"]
    assert (s.mean[0], s.std[0], s.q01[0], s.q99[0]) == (0.5, 2.0, -1.0, 1.0)


def test_load_missing_and_malformed_name_the_path(tmp_path):
    with pytest.raises(MissingFileError, match=str(tmp_path / "norm_stats.json")):
        ns.load(tmp_path)
    for bad in ('{"stats": {}}', "not json", '{"norm_stats": {"state": {"mean": [1]}}}',
                '{"norm_stats": {"state": {"mean": ["x"], "std": [1]}}}', '{"norm_stats": [1]}'):
        (tmp_path / "norm_stats.json").write_text(bad)
        with pytest.raises(DatasetFormatError, match="malformed norm stats file .*norm_stats.json"):
            ns.load(tmp_path)


def test_missing_norm_stats_message_has_reference_text_and_command():
    msg = ns.missing_norm_stats_message("my_cfg", "/a/b/norm_stats.json")
    assert msg.startswith("Normalization stats not found at /a/b/norm_stats.json")
    assert "`fastmix compute-norm-stats my_cfg`" in msg


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    cns.add_arguments(parser)
    args = parser.parse_args(["cfg", "--max-frames", "100"])
    assert (args.config_name, args.max_frames, args.batch_size, args.workers) == ("cfg", 100, None, None)
    args = parser.parse_args(["cfg", "--workers", "3", "--batch-size", "64"])
    assert (args.workers, args.batch_size) == (3, 64)


# ------------------------------------------------------------------------------- compute-norm-stats command


def _fake_config(tmp_path, name="ns_fake_cfg", horizon=3, **data_kw):
    from fastmix.openpi import config as C

    return C.TrainConfig(
        name=name,
        model=C.Pi0Config(pi05=True, action_horizon=horizon),
        data=C.MultiDatasetLiberoDataConfig(
            repo_ids=["fake/a", "fake/b"],
            base_config=C.DataConfig(prompt_from_task=True),
            assets=C.AssetsConfig(assets_dir=str(tmp_path / "assets"), asset_id="shared"),
            **data_kw,
        ),
        batch_size=4,
    )


@pytest.fixture
def fake_sources():
    return [FakeSource("fake/a", num_episodes=3, episode_length=10), FakeSource("fake/b", num_episodes=2, episode_length=7)]


def _compute(cfg, sources, **kw):
    """compute_norm_stats with the sources injected (no LeRobot roots), in this process."""
    kw.setdefault("workers", 1)
    return cns.compute_norm_stats(cfg, progress=False, open_sources=lambda data_config: sources, **kw)


def _expected_arrays(sources, horizon):
    states, actions = [], []
    for s in sources:
        rows = np.arange(s.num_frames)
        states.append(s.value("state", rows))
        ep, frame = rows // s.episode_length, rows % s.episode_length
        # an action chunk repeats the episode's last action past its end (LeRobot's clamped padding)
        chunk_rows = ep[:, None] * s.episode_length + np.minimum(frame[:, None] + np.arange(horizon), s.episode_length - 1)
        actions.append(s.value("actions", chunk_rows.ravel()).reshape(len(rows), horizon, -1))
    return np.concatenate(states).astype(np.float64), np.concatenate(actions).astype(np.float64)


def test_compute_norm_stats_over_whole_mixture(tmp_path, fake_sources):
    cfg = _fake_config(tmp_path)
    path = _compute(cfg, fake_sources, batch_size=7)
    assert path == tmp_path / "assets" / "shared" / "norm_stats.json"
    stats = ns.load(path.parent)
    state, actions = _expected_arrays(fake_sources, 3)
    np.testing.assert_allclose(stats["state"].mean, state.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["state"].std, state.std(0), rtol=1e-5)
    flat = actions.reshape(-1, actions.shape[-1])
    np.testing.assert_allclose(stats["actions"].mean, flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["actions"].std, flat.std(0), rtol=1e-5)
    # histogram quantiles (openpi's lossy re-binning as the range grows): within the data's range, ordered
    assert np.all(state.min(0) - 1e-6 <= stats["state"].q01) and np.all(stats["state"].q01 < stats["state"].q99)
    assert np.all(stats["state"].q99 <= state.max(0) + 1e-6)


def test_compute_norm_stats_counts_delta_actions(tmp_path, fake_sources):
    cfg = _fake_config(tmp_path, horizon=2, extra_delta_transform=True)
    stats = ns.load(_compute(cfg, fake_sources, batch_size=5).parent)
    state, actions = _expected_arrays(fake_sources, 2)
    actions[..., :6] -= state[:, None, :6]  # openpi: stats of the actions the model sees (deltas)
    np.testing.assert_allclose(stats["actions"].mean, actions.reshape(-1, 7).mean(0), rtol=1e-5, atol=1e-4)


def _run_cli(monkeypatch, tmp_path, sources, argv, name="ns_fake_cli") -> int:
    """`fastmix compute-norm-stats` (the CLI entry point) on a registered fake config over `sources` (the
    command opens sources itself: data_loader.open_sources is the one thing replaced)."""
    from fastmix import cli
    from fastmix.openpi import data_loader
    from fastmix.openpi import registry as R

    monkeypatch.setattr(data_loader, "open_sources", lambda data_config: sources)
    cfg = R.register(_fake_config(tmp_path, name=name))
    try:
        return cli.main(["compute-norm-stats", name, "--workers", "1", *argv])
    finally:
        R.unregister(cfg.name)


def test_compute_norm_stats_max_frames_and_cli(tmp_path, fake_sources, capsys, monkeypatch):
    assert _run_cli(monkeypatch, tmp_path, fake_sources, ["--max-frames", "20", "--batch-size", "8"]) == 0
    assert "norm_stats.json" in capsys.readouterr().out
    stats = ns.load(tmp_path / "assets" / "shared")
    state, _ = _expected_arrays(fake_sources, 3)
    assert np.all(stats["state"].mean >= state.min(0)) and np.all(stats["state"].mean <= state.max(0))
    cfg = _fake_config(tmp_path)
    with pytest.raises(ConfigError, match="max_frames must be an integer >= 2 or None, got max_frames=1"):
        _compute(cfg, fake_sources, max_frames=1)
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1, got batch_size=0"):
        _compute(cfg, fake_sources, batch_size=0)


@pytest.mark.parametrize("argv, message", [(["--max-frames", "1"], "max_frames must be an integer >= 2 or None, got max_frames=1"),
                                           (["--batch-size", "0"], "batch_size=0")])
def test_bad_arguments_are_one_error_line_exit_2(tmp_path, fake_sources, capsys, monkeypatch, argv, message):
    assert _run_cli(monkeypatch, tmp_path, fake_sources, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastmix compute-norm-stats: error:") and message in err and "Traceback" not in err


class _Poisoned(FakeSource):
    """A FakeSource whose `key` holds `value` (NaN, inf) at one (episode, frame)."""

    def __init__(self, name, *, key, episode, frame, value, **kw) -> None:
        super().__init__(name, **kw)
        self.bad_key, self.bad_row, self.bad_value = key, episode * self.episode_length + frame, value

    def value(self, key, rows):
        out = super().value(key, rows)
        if key == self.bad_key:
            out[np.asarray(rows) == self.bad_row, 1] = self.bad_value
        return out


@pytest.mark.parametrize("key, value, batch_size", [("actions", np.nan, 4), ("state", np.inf, 256),
                                                    ("actions", -np.inf, 256)])
def test_non_finite_values_name_dataset_episode_frame_key_and_write_nothing(tmp_path, key, value, batch_size):
    sources = [FakeSource("fake/a", num_episodes=3, episode_length=10),
               _Poisoned("fake/b", key=key, episode=1, frame=4, value=value, num_episodes=2, episode_length=7)]
    with pytest.raises(DatasetFormatError) as info:
        _compute(_fake_config(tmp_path), sources, batch_size=batch_size)
    msg = str(info.value)
    assert f"dataset 'fake/b', episode 1, frame 4: key '{key}' is not finite" in msg, msg
    assert f"raw feature(s) '{key}'" in msg and "nothing was written" in msg
    assert not (tmp_path / "assets" / "shared" / "norm_stats.json").exists()


def test_non_finite_value_through_the_cli_exits_2_without_writing(tmp_path, capsys, monkeypatch):
    sources = [_Poisoned("fake/a", key="actions", episode=0, frame=9, value=np.nan, num_episodes=3,
                         episode_length=10)]
    assert _run_cli(monkeypatch, tmp_path, sources, []) == 2
    err = capsys.readouterr().err
    assert "dataset 'fake/a', episode 0, frame 9: key 'actions' is not finite" in err and "Traceback" not in err
    assert not (tmp_path / "assets" / "shared" / "norm_stats.json").exists()


def test_norm_stats_errors_are_fastmix_errors(tmp_path):
    """Everything the CLI can meet is a FastmixError (and still the ValueError / FileNotFoundError it was)."""
    for exc in (MissingFileError, DatasetFormatError, ConfigError):
        assert issubclass(exc, FastmixError)
    with pytest.raises(ConfigError, match="less than 2 vectors"):
        ns.RunningStats().get_statistics()
    rs = ns.RunningStats()
    rs.update(np.zeros((3, 2)))
    with pytest.raises(DatasetFormatError, match="length 3"):
        rs.update(np.zeros((3, 3)))


# ------------------------------------------------------- the passes over real datasets, in N processes


@pytest.fixture(scope="module")
def large_home(tmp_path_factory):
    """lerobot home with "a" (v3.0, 1500 frames in 7 episodes, 2 data files) and "b" (v2.1, 700 frames in 4
    episodes): state (8) and actions (7) float32 standard-normal, cameras "image" and "wrist_image"."""
    from fastmix.testing.large import make_large_dataset

    home = tmp_path_factory.mktemp("ns_home")
    make_large_dataset(home / "a", num_frames=1500, num_episodes=7, num_data_files=2, seed=1,
                       cameras=("image", "wrist_image"), threads=1)
    make_large_dataset(home / "b", num_frames=700, num_episodes=4, version="v2.1", seed=2,
                       cameras=("image", "wrist_image"), threads=1)
    return home


def _large_config(home, tmp_path, *, batch_size, horizon=5, delta=True, name="ns_large"):
    from fastmix.openpi import config as C

    return C.TrainConfig(
        name=name, model=C.Pi0Config(pi05=True, action_horizon=horizon), batch_size=batch_size,
        data=C.MultiDatasetLiberoDataConfig(
            repo_ids=["a", "b"], extra_delta_transform=delta,
            base_config=C.DataConfig(prompt_from_task=True, lerobot_home=str(home)),
            assets=C.AssetsConfig(assets_dir=str(tmp_path / "assets"), asset_id="large")))


def _parquet_frames(root):
    """(state float32 (F, 8), actions float32 (F, 7), episode int64 (F,)) of a dataset in index order, read with
    pyarrow straight from its data files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(f) for f in sorted((root / "data").rglob("*.parquet"))]).sort_by("index")
    col = lambda k: np.stack(table.column(k).to_numpy(zero_copy_only=False)).astype(np.float32)  # noqa: E731
    return col("state"), col("actions"), table.column("episode_index").to_numpy()


def _reference_parts(home, horizon, entries):
    """[(state float32 (n, 8), action chunks float32 (n, horizon, 7))] per (dataset, delta, trim_start, trim_end)
    of `entries`, read independently: frames in index order, each chunk the next `horizon` actions of its episode
    (the last one repeated past the end), deltas on the first 6 dims in float32 as DeltaActions computes them;
    only the frames the trims keep (their chunks read past the trimmed frames)."""
    parts = []
    for name, delta, trim_start, trim_end in entries:
        state, actions, episode = _parquet_frames(home / name)
        rows = np.arange(len(state))
        first = np.array([np.flatnonzero(episode == e).min() for e in episode])
        last = np.array([np.flatnonzero(episode == e).max() for e in episode])
        chunk = actions[np.minimum(rows[:, None] + np.arange(horizon), last[:, None])]
        if delta:
            chunk[..., :6] -= state[:, None, :6]
        keep = (rows >= first + trim_start) & (rows <= last - trim_end)
        parts.append((state[keep], chunk[keep]))
    return parts


def _reference_stats(parts, batch_size, *, across: bool):
    """RunningStats (np.histogram form, tests/test_stats_kernels.py) of `parts` fed batches of `batch_size`
    frames in order: `across` (one mixture) cuts the concatenation into batches; else each part (a pooled
    entry) is cut on its own, its last batch shorter."""
    from tests.test_stats_kernels import RunningStats as Reference

    out = {}
    for key, idx in (("state", 0), ("actions", 1)):
        ref = Reference()
        runs = [np.concatenate([p[idx] for p in parts])] if across else [p[idx] for p in parts]
        for values in runs:
            for i in range(0, len(values), batch_size):
                ref.update(values[i:i + batch_size])
        out[key] = ref.get_statistics()
    return out


def _assert_equal_stats(got, want):
    """Histogram quantiles bit for bit; mean and std to float64 rounding (sums in another order)."""
    for key in ("state", "actions"):
        np.testing.assert_allclose(got[key].mean, want[key].mean, rtol=1e-12, atol=1e-15, err_msg=key)
        np.testing.assert_allclose(got[key].std, want[key].std, rtol=1e-12, atol=1e-15, err_msg=key)
        np.testing.assert_array_equal(got[key].q01, want[key].q01, err_msg=key)
        np.testing.assert_array_equal(got[key].q99, want[key].q99, err_msg=key)


@pytest.mark.parametrize("batch_size, delta", [(32, True), (100, False)])
def test_two_pass_stats_equal_the_reference_and_do_not_depend_on_workers(large_home, tmp_path, batch_size, delta):
    """2200 frames of a v3.0 and a v2.1 dataset (lerobot layouts): the file written with 1, 2 and 3 processes
    (fork) and 2 spawned ones is the same byte for byte, and its numbers are the reference's (the last batch
    shorter: 2200 is no multiple of 32)."""
    config = _large_config(large_home, tmp_path, batch_size=batch_size, delta=delta)
    files = {}
    for workers, ctx in ((1, None), (2, None), (3, "fork"), (2, "spawn")):
        path = cns.compute_norm_stats(config, progress=False, workers=workers, mp_context=ctx)
        files[(workers, ctx)] = path.read_bytes()
    assert len(set(files.values())) == 1, "the file depends on the number of processes"
    parts = _reference_parts(large_home, 5, [("a", delta, 0, 0), ("b", delta, 0, 0)])
    _assert_equal_stats(ns.load(path.parent), _reference_stats(parts, batch_size, across=True))


def test_max_frames_draw_is_the_same_for_any_number_of_workers(large_home, tmp_path):
    config = _large_config(large_home, tmp_path, batch_size=16)
    one = cns.compute_norm_stats(config, progress=False, workers=1, max_frames=999, seed=3).read_bytes()
    two = cns.compute_norm_stats(config, progress=False, workers=2, max_frames=999, seed=3).read_bytes()
    other = cns.compute_norm_stats(config, progress=False, workers=2, max_frames=999, seed=4).read_bytes()
    assert one == two != other


@pytest.mark.parametrize("name, episodes", [("a", None), ("b", None), ("a", [1, 2, 5])])
def test_chunk_gather_equals_gather_lowdim(large_home, name, episodes):
    """The contiguous-run read gives what LeRobotSource.gather_lowdim gives (action chunks clamped to each
    episode, pads), for dense and sparse ascending rows, over a selection of episodes too."""
    from fastmix.sources.lerobot_source import LeRobotSource
    from fastmix.tools.norm_stats_reader import ChunkGather

    src = LeRobotSource(name, root=large_home / name, episodes=episodes)
    dts = {"actions": [t / src.fps for t in range(6)]}
    fast = ChunkGather(src, dts)
    assert fast.offsets is not None  # the fast path applies to lerobot's layouts
    rng = np.random.default_rng(0)
    n = len(src)
    for rows in (np.arange(n), np.arange(10, min(n, 400)), np.sort(rng.choice(n, n // 3, replace=False)),
                 np.array([n - 1])):
        want, got = src.gather_lowdim(rows, dts), fast.gather(rows)
        assert sorted(want) == sorted(got)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
            assert got[k].dtype == want[k].dtype, k


def test_non_finite_value_in_a_worker_process_names_where(tmp_path):
    """A NaN met by a forked worker: the same one-line error as in one process, nothing written."""
    sources = [FakeSource("fake/a", num_episodes=3, episode_length=10),
               _Poisoned("fake/b", key="state", episode=1, frame=2, value=np.nan, num_episodes=2, episode_length=7)]
    with pytest.raises(DatasetFormatError, match="dataset 'fake/b', episode 1, frame 2: key 'state' is not finite"):
        cns.compute_norm_stats(_fake_config(tmp_path), progress=False, open_sources=lambda dc: sources,
                               batch_size=2, workers=3, mp_context="fork")
    assert not (tmp_path / "assets" / "shared" / "norm_stats.json").exists()


def test_bad_workers_and_context_are_one_line_errors(tmp_path, fake_sources):
    with pytest.raises(ConfigError, match="workers must be an integer >= 1, got workers=0"):
        _compute(_fake_config(tmp_path), fake_sources, workers=0)
    with pytest.raises(ConfigError, match="mp_context must be one of .*got mp_context='threads'"):
        _compute(_fake_config(tmp_path), fake_sources, mp_context="threads")


# ------------------------------------------------------------------ a mixture of data configs (issue 22)


def _mixture_config(home, tmp_path, assets, *, trim=(0, 0), batch_size=20):
    """A MixtureDataConfig of two LIBERO-style entries: "a" with delta actions (asset assets[0], trims `trim`),
    "b" without (asset assets[1])."""
    from fastmix import FrameFilter
    from fastmix.openpi import config as C
    from fastmix.openpi.mixture_config import MixtureDataConfig

    def entry(repo, delta, asset):
        return C.MultiDatasetLiberoDataConfig(
            repo_ids=[repo], extra_delta_transform=delta,
            base_config=C.DataConfig(prompt_from_task=True, lerobot_home=str(home)),
            assets=C.AssetsConfig(assets_dir=str(tmp_path / "assets"), asset_id=asset))

    filters = [FrameFilter(trim_start=trim[0], trim_end=trim[1]) if trim != (0, 0) else None, None]
    return C.TrainConfig(name="ns_mixture", model=C.Pi0Config(pi05=True, action_horizon=5), batch_size=batch_size,
                         data=MixtureDataConfig(datasets=[entry("a", True, assets[0]), entry("b", False, assets[1])],
                                                dataset_weights=[1.0, 2.0], frame_filters=filters))


def test_mixture_of_data_configs_one_file_per_asset(large_home, tmp_path):
    """Each entry's asset from that entry's frames through its own transforms (delta actions on "a" only), its
    frame filter respected (trims): each file equals the reference of that entry alone; 1 and 2 processes give
    the same bytes."""
    config = _mixture_config(large_home, tmp_path, ("asset_a", "asset_b"), trim=(3, 2))
    paths = cns.compute_norm_stats(config, progress=False, workers=2)
    assert paths == [tmp_path / "assets" / a / "norm_stats.json" for a in ("asset_a", "asset_b")]
    two = [p.read_bytes() for p in paths]
    assert [p.read_bytes() for p in cns.compute_norm_stats(config, progress=False, workers=1)] == two
    for path, entry in zip(paths, [("a", True, 3, 2), ("b", False, 0, 0)], strict=True):
        _assert_equal_stats(ns.load(path.parent), _reference_stats(_reference_parts(large_home, 5, [entry]), 20,
                                                                   across=False))


def test_mixture_entries_sharing_an_asset_are_pooled(large_home, tmp_path):
    """Two entries with one asset id: one file, the entries' frames pooled in entry order (each entry's own
    batches and transforms)."""
    config = _mixture_config(large_home, tmp_path, ("shared", "shared"), batch_size=32)
    paths = cns.compute_norm_stats(config, progress=False, workers=3)
    assert paths == [tmp_path / "assets" / "shared" / "norm_stats.json"]
    parts = _reference_parts(large_home, 5, [("a", True, 0, 0), ("b", False, 0, 0)])
    _assert_equal_stats(ns.load(paths[0].parent), _reference_stats(parts, 32, across=False))


def test_frame_filters_of_a_plain_config_are_respected(large_home, tmp_path):
    from fastmix import FrameFilter

    config = _large_config(large_home, tmp_path, batch_size=25)
    data = dataclasses.replace(config.data, frame_filters={"a": FrameFilter(trim_start=1, trim_end=4)})
    config = dataclasses.replace(config, data=data)
    path = cns.compute_norm_stats(config, progress=False, workers=2)
    parts = _reference_parts(large_home, 5, [("a", True, 1, 4), ("b", True, 0, 0)])
    _assert_equal_stats(ns.load(path.parent), _reference_stats(parts, 25, across=True))
