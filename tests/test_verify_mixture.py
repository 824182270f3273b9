"""`fastmix verify` of a `MixtureDataConfig`, and the split of a multi-dataset entry's share over kept frames.

Three generated robots (tests/mixture_robots.py, lerobot 0.4.4's writer) and a nested LIBERO entry of two
datasets. References: exact probabilities written out here by hand (fractions from the datasets' episode
lengths, the weights and the filters' definitions), never fastmix's own mixture tables.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from fastmix import FrameFilter, MixtureDataConfig
from fastmix.openpi import transforms as T
from fastmix.openpi.config import AssetsConfig, DataConfig
from fastmix.openpi.data_loader import create_data_loader
from fastmix.tools.verify import verify
from tests.mixture_robots import (
    REPOS,
    AlohaLikeDataConfig,
    DroidLikeDataConfig,
    entries,
    frame_counts,
    nested_libero,
    train_config,
    write_norm_stats,
    write_robots,
)

DATASETS = ("libero", "libero2", "droid", "aloha")  # the flat order of the mixtures below
PER_ENTRY_CHECKS = ("datasets", "compatibility", "finite data", "loading", "statistics", "transforms", "prompts")
LIBERO_TRIM = FrameFilter(trim_start=5)  # only on the first dataset of the nested LIBERO entry
ALOHA_RANGES = {0: [[0, 6]], 1: [[4, 15]]}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = write_robots(tmp_path_factory.mktemp("robots"))
    write_norm_stats(home / "assets" / "cotrain")
    return home


def filtered_mixture(home, weighting: str, weights=(1.0, 2.0, 1.0)) -> MixtureDataConfig:
    """LIBERO entry (libero, libero2; inner per-sample weights 1, 3) with libero trimmed by 5 frames per
    episode; DROID; ALOHA keeping episode 0 frames 0-5 and episode 1 frames 4-14."""
    e = entries(home)
    return MixtureDataConfig(datasets=[nested_libero(home), e["droid"], e["aloha"]], dataset_weights=list(weights),
                             weighting=weighting, frame_filters={REPOS["libero"]: LIBERO_TRIM,
                                                                 REPOS["aloha"]: FrameFilter(ALOHA_RANGES)})


def kept_frames() -> dict[str, list[set[int]]]:
    """Per dataset, per episode: the frames kept, from the filters' definitions."""
    out = {r: [set(range(n)) for n in frame_counts(r)] for r in DATASETS}
    out["libero"] = [set(range(5, n)) for n in frame_counts("libero")]
    out["aloha"] = [set(range(a, b)) for (a, b), in (ALOHA_RANGES[0], ALOHA_RANGES[1])]
    return out


def exact_dataset_shares(weighting: str, weights=(1, 2, 1)) -> dict[str, Fraction]:
    """Per dataset, by hand: per_sample ∝ w_entry·v·M (M kept frames); per_dataset / per_episode: entry share
    w/Σw, the LIBERO entry's split ∝ v·M over its two datasets."""
    kept = {r: sum(len(s) for s in k) for r, k in kept_frames().items()}
    w = {"libero": weights[0], "libero2": weights[0], "droid": weights[1], "aloha": weights[2]}
    v = {"libero": 1, "libero2": 3, "droid": 1, "aloha": 1}
    if weighting == "per_sample":
        total = sum(w[r] * v[r] * kept[r] for r in DATASETS)
        return {r: Fraction(w[r] * v[r] * kept[r], total) for r in DATASETS}
    sw = sum(weights)
    inner = v["libero"] * kept["libero"] + v["libero2"] * kept["libero2"]
    return {"libero": Fraction(weights[0], sw) * Fraction(v["libero"] * kept["libero"], inner),
            "libero2": Fraction(weights[0], sw) * Fraction(v["libero2"] * kept["libero2"], inner),
            "droid": Fraction(weights[1], sw), "aloha": Fraction(weights[2], sw)}


def exact_frame_probabilities(weighting: str) -> np.ndarray:
    """Every frame of the flat concatenation: its dataset's share, then uniform over kept frames (per_sample,
    per_dataset) or 1/E per kept episode and uniform inside it (per_episode); 0 for a dropped frame."""
    share, kept, probs = exact_dataset_shares(weighting), kept_frames(), []
    for r in DATASETS:
        m, eps = sum(len(k) for k in kept[r]), sum(1 for k in kept[r] if k)
        for e, length in enumerate(frame_counts(r)):
            for f in range(length):
                if f not in kept[r][e]:
                    probs.append(Fraction(0))
                else:
                    probs.append(share[r] / m if weighting != "per_episode" else share[r] / eps / len(kept[r][e]))
    assert sum(probs) == 1
    return np.array([float(p) for p in probs])


@pytest.mark.parametrize("weighting", ["per_dataset", "per_episode"])
def test_a_multi_dataset_entry_is_split_over_its_kept_frames(home, weighting) -> None:
    """The LIBERO entry's share is split ∝ v·M (kept frames), not v·N (all frames): the loader's exact
    per-dataset shares equal the hand-computed fractions, and 40 000 draws fit every frame's exact probability
    (chi-square); dropped frames are never drawn. Before the fix libero had 1/4·36/84 instead of 1/4·21/69."""
    with create_data_loader(train_config(home, filtered_mixture(home, weighting)), shuffle=True, num_batches=1) as dl:
        assert [s.name for s in dl.sources] == [REPOS[r] for r in DATASETS]
        shares = np.asarray(dl.mixture.shares, dtype=np.float64)
        draws = dl.loader.sampler.next_indices(40_000)
    want = exact_dataset_shares(weighting)
    np.testing.assert_allclose(shares, [float(want[r]) for r in DATASETS], rtol=1e-12)
    probs = exact_frame_probabilities(weighting)
    counts = np.bincount(draws, minlength=probs.size)
    assert counts[probs == 0].sum() == 0
    assert stats.chisquare(counts[probs > 0], probs[probs > 0] * draws.size).pvalue > 1e-3


@pytest.mark.parametrize("weighting", ["per_sample", "per_dataset", "per_episode"])
def test_verify_checks_shares_per_entry_dataset_and_episode(home, weighting, tmp_path) -> None:
    """`verify` of the filtered nested mixture passes in each mode; its expected per-dataset shares equal the
    hand-computed fractions; it tests entries, the datasets inside the LIBERO entry, episodes and filters, and
    reports each entry's norm stats asset."""
    lines: list[str] = []
    report = verify(train_config(home, filtered_mixture(home, weighting), batch_size=32), 512, out=lines.append,
                    plot_path=tmp_path / "p.png")
    assert report.ok, "\n".join(lines)
    want = exact_dataset_shares(weighting)
    np.testing.assert_allclose(report.expected_shares, [float(want[r]) for r in DATASETS], rtol=1e-12)
    assert sum(report.observed_counts) == 512
    names = [c.name for c in report.checks]
    assert "mixture entries" in names and "episodes" in names and "frame filters" in names
    assert any(n.startswith("datasets of entry 0") for n in names)
    assert sum(n.startswith("norm stats entry") for n in names) == 3
    assert report.plot_path == tmp_path / "p.png" and report.plot_path.stat().st_size > 0
    assert "asset 'droid'" in report.check("norm stats entry 1 (DroidLikeDataConfig: robots/droid_like)").detail
    labels = [f"entry 0 (MultiDatasetLiberoDataConfig: {REPOS['libero']}, {REPOS['libero2']})",
              f"entry 1 (DroidLikeDataConfig: {REPOS['droid']})", f"entry 2 (AlohaLikeDataConfig: {REPOS['aloha']})"]
    for label in labels:  # the single-config checks, per entry
        for check in PER_ENTRY_CHECKS:
            assert f"{check} {label}" in names, f"no check {check!r} of {label}: {names}"
    assert "entry outputs" in names and "final batch" in names


def test_verify_fails_draws_of_another_weighting(home, tmp_path) -> None:
    """The loader draws per_sample while the config declares per_dataset: the entries' chi-square fails."""
    declared = train_config(home, filtered_mixture(home, "per_dataset"), batch_size=32)
    drawn = train_config(home, filtered_mixture(home, "per_sample"), batch_size=32)
    lines: list[str] = []
    report = verify(declared, 1024, out=lines.append, plot_path=tmp_path / "p.png",
                    create_loader=lambda _cfg, **kw: create_data_loader(drawn, **kw))
    assert not report.ok
    assert not report.check("mixture entries").ok, "\n".join(lines)


def test_verify_names_a_missing_entry_asset_and_its_command(home, tmp_path) -> None:
    """An entry whose asset is missing: its norm stats check fails naming the asset and compute-norm-stats."""
    e = entries(home)
    data = MixtureDataConfig(datasets=[e["libero"], e["droid"], e["aloha"]])
    cfg = train_config(home, data, name="cotrain_no_stats", batch_size=32)
    (home / "assets" / "cotrain_no_stats").mkdir(parents=True, exist_ok=True)
    write_norm_stats(home / "assets" / "cotrain_no_stats")
    (home / "assets" / "cotrain_no_stats" / "aloha" / "norm_stats.json").unlink()
    lines: list[str] = []
    report = verify(cfg, 64, out=lines.append, plot_path=tmp_path / "p.png")
    bad = [c for c in report.checks if c.name.startswith("norm stats") and not c.ok]
    assert len(bad) == 1 and "aloha" in bad[0].name, "\n".join(lines)
    assert "asset 'aloha' missing" in bad[0].detail and "compute-norm-stats" in bad[0].detail
    assert not report.ok


# ------------------------------------------------------------------------------- fastmix equivalence --config
def entry_shares(weighting: str) -> list[float]:
    s = exact_dataset_shares(weighting)
    return [float(s["libero"] + s["libero2"]), float(s["droid"]), float(s["aloha"])]


@pytest.mark.parametrize("weighting", ["per_sample", "per_dataset", "per_episode"])
def test_equivalence_of_a_mixture_config_passes_in_each_mode(home, weighting) -> None:
    """The loader's sampler and WeightedRandomSampler over the exact probabilities both fit them (per entry,
    dataset, episode, frame; coverage) and each other; the expected entry shares are the hand-computed ones."""
    from fastmix.tools.equivalence_mixture import check_mixture_config

    r = check_mixture_config(train_config(home, filtered_mixture(home, "per_sample")), draws=100_000,
                             weighting=weighting)
    assert r.passed, r.format()
    assert r.weighting == weighting and r.zero_probability_draws == 0
    np.testing.assert_allclose(r.expected_shares, entry_shares(weighting), rtol=1e-12)
    assert {t.name for t in r.tests} >= {"fastmix vs expected (episodes)", "fastmix vs expected (frames)",
                                         "fastmix vs reference (entries)", "reference vs expected (datasets)"}


def test_equivalence_fails_a_sampler_of_another_weighting(home) -> None:
    """The sampler of the per_sample loader checked against the per_dataset declaration fails."""
    from fastmix.tools.equivalence_mixture import check_mixture_config

    with create_data_loader(train_config(home, filtered_mixture(home, "per_sample")), num_batches=1) as dl:
        wrong = dl.loader.sampler
        r = check_mixture_config(train_config(home, filtered_mixture(home, "per_dataset")), draws=100_000,
                                 sampler=wrong)
    assert not r.passed
    assert {t.name: t.p_value for t in r.tests}["fastmix vs expected (entries)"] < 1e-6


def test_equivalence_cli_takes_a_mixture_config(home, tmp_path, capsys) -> None:
    """`fastmix equivalence --config FILE.py:NAME --weighting all --json`: one PASS per mode, exit status 0."""
    import argparse
    import json

    from fastmix.tools import equivalence, user_configs

    f = tmp_path / "my_mix.py"
    f.write_text("from pathlib import Path\nfrom tests.test_verify_mixture import filtered_mixture, train_config\n"
                 f"CONFIG = train_config(Path({str(home)!r}), filtered_mixture(Path({str(home)!r}), 'per_dataset'), "
                 "name='v_mix_cli')\n")
    parser = argparse.ArgumentParser()
    equivalence.add_arguments(parser)
    args = parser.parse_args(["--config", f"{f}:v_mix_cli", "--weighting", "all", "--draws", "50000", "--json"])
    try:
        assert equivalence.run(args) == 0
    finally:
        user_configs.forget_loaded()
    out = json.loads(capsys.readouterr().out)
    assert [o["weighting"] for o in out] == ["per_sample", "per_dataset", "per_episode"]
    assert all(o["verdict"] == "PASS" for o in out)


def test_kept_mask_of_overlapping_ranges_unknown_keys_and_trims() -> None:
    """verify's own reading of a filter, against sets written by hand: overlapping ranges united, an unlisted
    episode keeps nothing, an ignored unknown key does nothing, trims cut each episode's ends."""
    from fastmix.tools.verify_mixture import EpisodeLayout, kept_mask

    class Rows:  # episodes 3 (6 frames) and 7 (5 frames), rows in episode, frame order
        def frame_positions(self):
            return np.array([3] * 6 + [7] * 5), np.array([*range(6), *range(5)])

    layout = EpisodeLayout(Rows())
    flt = FrameFilter({"3": [[0, 3], [2, 5]], "99": [[0, 1]]}, trim_start=1, unknown_episodes="ignore")
    want = [f in {1, 2, 3, 4} for f in range(6)] + [False] * 5
    assert kept_mask(flt, layout).tolist() == want
    trim = FrameFilter(trim_start=1, trim_end=2)
    assert kept_mask(trim, layout).tolist() == [f in {1, 2, 3} for f in range(6)] + [f in {1, 2} for f in range(5)]
    assert layout.position(np.array([7, 7, 4]), np.array([4, 5, 0])).tolist() == [10, -1, -1]


# ------------------------------------------------------------------ per-entry checks: defects planted in one entry
ALOHA_LABEL = f"entry 2 (AlohaLikeDataConfig: {REPOS['aloha']})"


def copy_home(home, tmp_path):
    """A copy of the robots' home (datasets and norm stats) to plant a defect in."""
    import shutil

    dst = tmp_path / "home"
    shutil.copytree(home, dst)
    return dst


def three_robots(home, aloha=None) -> MixtureDataConfig:
    e = entries(home)
    return MixtureDataConfig(datasets=[e["libero"], e["droid"], aloha or e["aloha"]], weighting="per_dataset")


def failed(report) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.ok}


def test_verify_of_a_clean_mixture_passes_every_per_entry_check(home, tmp_path) -> None:
    """The three robots as they were written: every check passes, the per-entry ones included, and the final
    batch names each key's dtype and per-row shape (state padded to the model's action_dim)."""
    lines: list[str] = []
    report = verify(train_config(home, three_robots(home), batch_size=16), 96, out=lines.append,
                    plot_path=tmp_path / "p.png")
    assert report.ok, "\n".join(lines)
    assert sum(c.name.startswith("transforms entry") for c in report.checks) == 3
    assert "state float32 (32,)" in report.check("final batch").detail
    assert "every entry gives the same" in report.check("entry outputs").detail


def test_verify_names_nan_state_in_one_entrys_dataset(home, tmp_path) -> None:
    """NaN in ALOHA's observation.state from frame 3 of episode 1 (the parquet rewritten): the ALOHA entry's
    finite-data and statistics checks fail naming dataset, key, episode and frame; the mixture's final batch
    names entry, dataset, key, episode and frame of a drawn NaN row; the other entries' checks pass."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dst = copy_home(home, tmp_path)
    (path,) = (dst / REPOS["aloha"] / "data").rglob("*.parquet")
    table = pq.read_table(path)
    state = table.column("observation.state").to_pylist()
    ep, fr = table.column("episode_index").to_pylist(), table.column("frame_index").to_pylist()
    state = [[float("nan")] * len(s) if (e, f) >= (1, 3) else s for s, e, f in zip(state, ep, fr, strict=True)]
    column = pa.array(state, type=table.schema.field("observation.state").type)
    pq.write_table(table.set_column(table.schema.get_field_index("observation.state"), "observation.state", column),
                   path)
    lines: list[str] = []
    report = verify(train_config(dst, three_robots(dst), batch_size=16), 256, out=lines.append,
                    plot_path=tmp_path / "p.png")
    bad = failed(report)
    assert f"{REPOS['aloha']}: observation.state episode 1 frame 3" in bad[f"finite data {ALOHA_LABEL}"], lines
    assert "state" in bad[f"statistics {ALOHA_LABEL}"]
    assert f"{ALOHA_LABEL}, dataset '{REPOS['aloha']}', key 'state': episode 1 frame" in bad["final batch"]
    assert [name for name in bad if name.startswith("finite data")] == [f"finite data {ALOHA_LABEL}"], bad
    assert report.check(f"transforms {ALOHA_LABEL}").ok  # NaN in, NaN out: normalized as the stats say


def test_verify_names_a_wrong_shaped_key_inside_an_entry(home, tmp_path) -> None:
    """A LIBERO entry of two datasets whose second one has a 9-dim state (written by lerobot's writer): the
    entry's compatibility check fails naming the dataset and the key; the other entries' pass."""
    from fastmix.openpi.config import AssetsConfig, DataConfig, MultiDatasetLiberoDataConfig
    from fastmix.testing.robots import LIBERO_LIKE, RobotSchema, make_robot_dataset

    dst = copy_home(home, tmp_path)
    odd = RobotSchema(LIBERO_LIKE.cameras, {"state": 9, "actions": 7}, fps=LIBERO_LIKE.fps, tasks=LIBERO_LIKE.tasks)
    make_robot_dataset(dst / "robots/libero_state9", "robots/libero_state9", odd, num_episodes=2, episode_length=8)
    libero = MultiDatasetLiberoDataConfig(repo_ids=[REPOS["libero"], "robots/libero_state9"],
                                          assets=AssetsConfig(asset_id="libero"), lerobot_home=str(dst),
                                          base_config=DataConfig(prompt_from_task=True))
    e = entries(dst)
    data = MixtureDataConfig(datasets=[libero, e["droid"], e["aloha"]])
    lines: list[str] = []
    report = verify(train_config(dst, data, batch_size=16), 96, out=lines.append, plot_path=tmp_path / "p.png")
    label = f"entry 0 (MultiDatasetLiberoDataConfig: {REPOS['libero']}, robots/libero_state9)"
    detail = failed(report)[f"compatibility {label}"]
    assert "robots/libero_state9" in detail and "state" in detail and "(9,)" in detail, detail
    assert report.check(f"compatibility {ALOHA_LABEL}").ok
    assert not report.ok


@dataclasses.dataclass(frozen=True)
class AddEffort:
    """A user's per-sample transform that leaves an extra key in the sample (a bug for a mixture)."""

    def __call__(self, d: dict) -> dict:
        return {**d, "effort": np.zeros(14, np.float32)}


@dataclasses.dataclass(frozen=True)
class AlohaWithEffort(AlohaLikeDataConfig):
    def create(self, assets_dirs, model_config):
        dc = super().create(assets_dirs, model_config)
        return dataclasses.replace(dc, data_transforms=T.Group(inputs=[*dc.data_transforms.inputs, AddEffort()]))


def test_verify_names_an_entry_whose_transforms_give_other_keys(home, tmp_path) -> None:
    """The ALOHA entry's data transforms leave an extra key: its own pipeline passes every single-config check,
    "entry outputs" fails naming the entry and the key, and the mixture's loading fails naming both entries."""
    aloha = AlohaWithEffort(repo_id=REPOS["aloha"], assets=AssetsConfig(asset_id="aloha"), lerobot_home=str(home),
                            default_prompt="fold the towel")
    lines: list[str] = []
    report = verify(train_config(home, three_robots(home, aloha), batch_size=16), 96, out=lines.append,
                    plot_path=tmp_path / "p.png")
    bad = failed(report)
    label = f"entry 2 (AlohaWithEffort: {REPOS['aloha']})"
    assert f"keys only in {label}: ['effort']" in bad["entry outputs"], bad
    assert "different keys" in bad["loading"] and label in bad["loading"]
    assert all(report.check(f"{c} {label}").ok for c in PER_ENTRY_CHECKS), bad


@dataclasses.dataclass(frozen=True)
class SetPrompt:
    prompt: str

    def __call__(self, d: dict) -> dict:
        return {**d, "prompt": self.prompt}


@dataclasses.dataclass(frozen=True)
class ConsumePrompt:
    """Per sample, as openpi's TokenizePrompt: `prompt` replaced by (stand-in) tokens."""

    def __call__(self, d: dict) -> dict:
        out = {k: v for k, v in d.items() if k != "prompt"}
        out["tokens"] = np.frombuffer(str(d["prompt"]).encode()[:8].ljust(8), np.uint8).copy()
        return out


@dataclasses.dataclass(frozen=True)
class DroidTokenized(DroidLikeDataConfig):
    wrong_prompt: str | None = None

    def create(self, assets_dirs, model_config):
        dc = super().create(assets_dirs, model_config)
        extra = ([SetPrompt(self.wrong_prompt)] if self.wrong_prompt else []) + [ConsumePrompt()]
        return dataclasses.replace(dc, data_transforms=T.Group(inputs=[*dc.data_transforms.inputs, *extra]))


@pytest.mark.parametrize("wrong_prompt", [None, "wave hello"])
def test_verify_checks_the_prompts_an_entry_tokenizes(home, tmp_path, wrong_prompt) -> None:
    """An entry whose transforms replace `prompt` by tokens (as openpi's TokenizePrompt does): its prompt check
    reads the prompts as they entered that transform — its dataset's tasks pass; a prompt rewritten to another
    text before it is tokenized fails, naming the entry, the dataset and the prompt."""
    droid = DroidTokenized(repo_id=REPOS["droid"], assets=AssetsConfig(asset_id="droid"), lerobot_home=str(home),
                           base_config=DataConfig(prompt_from_task=True), wrong_prompt=wrong_prompt)
    e = entries(home)
    data = MixtureDataConfig(datasets=[e["libero"], droid])
    lines: list[str] = []
    report = verify(train_config(home, data, batch_size=16), 64, out=lines.append, plot_path=tmp_path / "p.png")
    check = report.check(f"prompts entry 1 (DroidTokenized: {REPOS['droid']})")
    if wrong_prompt is None:
        assert check.ok, "\n".join(lines)
        assert any("'put the marker in the cup' x" in line for line in lines)
    else:
        assert not check.ok and f"{REPOS['droid']}: 'wave hello'" in check.detail, check.detail
    assert "keys only in entry 1" in report.check("entry outputs").detail  # `tokens` instead of `prompt`


@pytest.mark.parametrize("wrong_prompt", [None, "wave hello"])
def test_verify_of_a_single_config_checks_the_prompts_it_tokenizes(home, tmp_path, wrong_prompt) -> None:
    """The same entry as a single config (the single-config checks the entries share): its tasks pass, a prompt
    rewritten before it is tokenized fails naming the dataset and the prompt."""
    droid = DroidTokenized(repo_id=REPOS["droid"], assets=AssetsConfig(asset_id="droid"), lerobot_home=str(home),
                           base_config=DataConfig(prompt_from_task=True), wrong_prompt=wrong_prompt)
    lines: list[str] = []
    report = verify(train_config(home, droid, batch_size=16), 64, out=lines.append, plot_path=tmp_path / "p.png")
    check = report.check("prompts")
    if wrong_prompt is None:
        assert report.ok, "\n".join(lines)
    else:
        assert not check.ok and f"{REPOS['droid']}: 'wave hello'" in check.detail, check.detail
