"""`fastmix verify`: passes on a sound config, fails when the loader's draw differs from the declared weights,
when norm stats are missing, or when datasets are incompatible; writes the shares chart."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

import fastmix.demo.configs  # noqa: F401  (registers the demo configs)
from fastmix.errors import ConfigError, IncompatibleDatasetsError
from fastmix.loader.options import WorkerOptions
from fastmix.openpi import data_loader as DL
from fastmix.openpi import registry as R
from fastmix.tools import verify as V
from tests.test_data_loader import _cfg


def fake_loader_factory(sources, **kw):
    from fastmix.loader.loader import MixtureLoader
    from fastmix.testing.fakes import FakeReader

    return MixtureLoader(sources, **kw, workers=WorkerOptions(reader_factory=FakeReader))


def create_loader_with(loader_factory=fake_loader_factory, edit=None):
    """`create_data_loader` building its MixtureLoader with `loader_factory`; `edit(loader)` may then change it."""

    def create(config, **kw):
        loader = DL.create_data_loader(config, loader_factory=loader_factory, rank_world=(0, 1), **kw)
        return loader if edit is None else edit(loader)

    return create


@pytest.fixture
def fakes():
    """verify()'s dependencies: two stand-in sources (no files), their fake reader, no compatibility check."""
    from fastmix.testing.fakes import FakeSource

    sources = [FakeSource("fake/a", num_episodes=4, episode_length=10), FakeSource("fake/b", num_episodes=2, episode_length=8)]
    return dict(open_sources=lambda data_config: sources, check_compatible=lambda s: None,
                create_loader=create_loader_with())


def _with_stats(tmp_path, fakes, **kw):
    """A `_cfg` over the fake sources, with norm stats computed over them."""
    from fastmix.tools.compute_norm_stats import compute_norm_stats

    cfg = _cfg(tmp_path, **kw)
    compute_norm_stats(cfg, progress=False, open_sources=fakes["open_sources"])
    return cfg


def _run(name, n, plot, alpha=1e-3) -> int:
    parser = argparse.ArgumentParser()
    V.add_arguments(parser)
    return V.run(parser.parse_args([name, str(n), "--plot", str(plot), "--alpha", str(alpha)]))


def test_expected_shares_and_chi_square():
    np.testing.assert_allclose(V.expected_shares([10_000, 1_000], [1.0, 10.0], "per_sample"), [0.5, 0.5])
    np.testing.assert_allclose(V.expected_shares([10_000, 1_000], [1.0, 3.0], "per_dataset"), [0.25, 0.75])
    np.testing.assert_allclose(V.expected_shares([3, 1], None, "per_sample"), [0.75, 0.25])
    assert V.chi_square(np.array([50, 50]), np.array([0.5, 0.5]))[1] == pytest.approx(1.0)
    assert V.chi_square(np.array([90, 10]), np.array([0.5, 0.5]))[1] < 1e-10
    assert V.chi_square(np.array([5, 1]), np.array([1.0, 0.0])) == (np.inf, 0.0)  # drawn from a zero-weight dataset


def test_verify_passes_on_a_sound_config(tmp_path, fakes, capsys):
    cfg = _with_stats(tmp_path, fakes, name="verify_ok_cfg", weights=[1.0, 3.0], batch_size=8)
    report = V.verify(cfg, 400, plot_path=tmp_path / "shares.png", **fakes)
    assert report.ok
    out = capsys.readouterr().out
    assert "Verification passed." in out and "[FAIL]" not in out
    for name in ("datasets", "compatibility", "norm stats", "loading", "statistics", "transforms", "mixture", "prompts", "plot"):
        assert f"[PASS] {name}:" in out
    assert (tmp_path / "shares.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fake/a" in out and "v3.0" in out  # per-dataset table


def test_verify_fails_when_loader_draws_with_other_weights(tmp_path, fakes):
    def sabotaged(sources, **kw):  # a loader bug: weights applied in reverse order
        kw["dataset_weights"] = list(reversed(kw["dataset_weights"]))
        return fake_loader_factory(sources, **kw)

    cfg = _with_stats(tmp_path, fakes, name="verify_bad_cfg", weights=[1.0, 3.0], batch_size=8)
    lines = []
    report = V.verify(cfg, 400, plot_path=tmp_path / "bad.png", out=lines.append,
                      **{**fakes, "create_loader": create_loader_with(sabotaged)})
    assert not report.ok
    assert not report.check("mixture").ok and "p-value" in report.check("mixture").detail
    assert report.check("loading").ok and report.check("transforms").ok
    assert report.p_value < 1e-3 and sum(report.observed_counts) == 400
    assert lines[-1] == "Verification FAILED: mixture"


def test_verify_fails_without_norm_stats(tmp_path, fakes):
    cfg = _cfg(tmp_path, name="verify_nostats_cfg")
    report = V.verify(cfg, 40, plot_path=tmp_path / "x.png", out=lambda s: None, **fakes)
    assert not report.ok
    assert "Normalization stats not found" in report.check("norm stats").detail
    assert report.check("loading").ok  # the rest still runs (unnormalized)


def test_verify_reports_incompatible_datasets_and_wrong_normalization(tmp_path, fakes):
    def incompatible(sources):
        raise IncompatibleDatasetsError("key 'state': shape (8,) in fake/a but (9,) in fake/b")

    cfg = _with_stats(tmp_path, fakes, name="verify_incompat_cfg")
    report = V.verify(cfg, 40, plot_path=tmp_path / "y.png", out=lambda s: None,
                      **{**fakes, "check_compatible": incompatible})
    assert not report.check("compatibility").ok and "(9,) in fake/b" in report.check("compatibility").detail

    # a Normalize that does not use the config's stats is caught by the transform-stage check
    from fastmix.openpi import transforms as T

    def broken(loader):
        data_config = loader.data_config()
        stats = {k: type(v)(mean=v.mean, std=v.std, q01=v.q01 - 1.0, q99=v.q99 + 1.0) for k, v in data_config.norm_stats.items()}
        wrong = T.Normalize(stats, use_quantiles=True)

        class Disguised(T.Normalize):  # reports the config's stats but applies other ones
            def batch(self, data):
                return wrong.batch(data)

        disguised = Disguised(data_config.norm_stats, use_quantiles=True)
        loader.stages = [(n, [disguised] if n == "normalize" else ts) for n, ts in loader.stages]
        return loader

    report = V.verify(cfg, 40, plot_path=tmp_path / "z.png", out=lambda s: None,
                      **{**fakes, "create_loader": create_loader_with(edit=broken)})
    assert not report.check("transforms").ok and "not normalized with the config's norm stats" in report.check("transforms").detail


def test_num_samples_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="num_samples must be an integer >= 1, got num_samples=0"):
        V.verify(_cfg(tmp_path), 0)


# ------------------------------------------------------------- the registered demo config on real datasets


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    """Small LeRobot datasets (lerobot's writer) under the demo's repo ids, in a FASTMIX_HOME of their own."""
    pytest.importorskip("fastmix.sources.lerobot_source", reason="LeRobotSource not available")
    from fastmix.demo import spec
    from fastmix.testing.synth import make_dataset

    home = tmp_path_factory.mktemp("fastmix_home")
    for i, d in enumerate(spec.DEMO_DATASETS):
        make_dataset(home / "lerobot" / d.repo_id, d.repo_id, num_episodes=2 + i, episode_length=8 + 2 * i,
                     camera_shape=(24, 32, 3), use_videos=d.use_videos, tasks=(d.task,), seed=d.seed)
    return home


def test_demo_config_compute_norm_stats_then_verify_passes(demo_home, monkeypatch, tmp_path, capsys):
    from fastmix.tools import compute_norm_stats as ns

    monkeypatch.setenv("FASTMIX_HOME", str(demo_home))
    parser = argparse.ArgumentParser()
    ns.add_arguments(parser)
    assert ns.run(parser.parse_args(["fastmix_demo_native"])) == 0
    assert (demo_home / "assets" / "fastmix_demo" / "norm_stats.json").exists()
    cfg = R.get_config("fastmix_demo_native")
    cfg = R.register(dataclasses.replace(cfg, name="verify_demo_small", batch_size=8, num_workers=1))
    try:
        assert _run("verify_demo_small", 240, tmp_path / "demo.png") == 0
    finally:
        R.unregister(cfg.name)
    out = capsys.readouterr().out
    assert "Verification passed." in out and "[PASS] compatibility" in out
    assert "'put the cream cheese in the bowl'" in out  # the image dataset's task, seen as its prompt


def test_unknown_config_exit_status_2(capsys):
    from fastmix.tools import compute_norm_stats as ns

    parser = argparse.ArgumentParser()
    V.add_arguments(parser)
    assert V.run(parser.parse_args(["no_such_cfg"])) == 2
    parser = argparse.ArgumentParser()
    ns.add_arguments(parser)
    assert ns.run(parser.parse_args(["no_such_cfg"])) == 2
    assert capsys.readouterr().err.count("Config 'no_such_cfg' not found.") == 2


def test_verify_names_non_finite_data(tmp_path, fakes):
    """A NaN in one dataset's actions (episode 1, frame 3 of fake/b): the "finite data" check fails naming the
    dataset, key, episode and frame; the rest of the report still runs."""
    from fastmix.testing.fakes import FakeSource

    class WithNan(FakeSource):
        def value(self, key, rows):
            out = super().value(key, rows)
            if key == "actions":
                out[np.asarray(rows).reshape(-1) == 1 * self.episode_length + 3] = np.nan
            return out

    clean = FakeSource("fake/a", num_episodes=4, episode_length=10)
    bad = WithNan("fake/b", num_episodes=2, episode_length=8)
    deps = {**fakes, "open_sources": lambda data_config: [clean, bad]}
    cfg = _cfg(tmp_path, name="verify_nan_cfg")
    report = V.verify(cfg, 40, plot_path=tmp_path / "n.png", out=lambda s: None, **deps)
    check = report.check("finite data")
    assert not check.ok and "fake/b: actions episode 1 frame 3" in check.detail
    assert "fake/a" not in check.detail and report.check("datasets").ok
