"""`MixtureDataConfig`: three robots of different schemas (LIBERO-like: 2 cameras 256², 8-dim state, 7-dim
actions, 10 fps, video; DROID-like: 3 cameras 180×320 as images in parquet, joint 7 + gripper 1, 8-dim actions,
15 fps; ALOHA-like: 4 cameras 480×640, 14-dim state and actions, 50 fps, video), written with lerobot 0.4.4's
writer, mixed in one stream.

References, never fastmix's mixture itself: each entry's own pipeline for the same frame — lerobot's
`LeRobotDataset(...)[i]` (video_backend="pyav") with the entry's transforms applied per sample, and the entry's
own config through fastmix's single-dataset loader; shares against probabilities computed here with exact
fractions (chi-square); resume against an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from fastmix import FrameFilter, MixtureDataConfig
from fastmix.errors import ConfigError
from fastmix.openpi import transforms as T
from fastmix.openpi.data_loader import create_data_loader
from tests.mixture_robots import (
    EPISODES,
    HORIZON,
    REPOS,
    AlohaLikeDataConfig,
    assert_same_sample,
    entries,
    frame_counts,
    nested_libero,
    reference_sample,
    train_config,
    write_norm_stats,
    write_robots,
)

ROBOTS = ("libero", "droid", "aloha")
FPS = {"libero": 10, "droid": 15, "aloha": 50}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = write_robots(tmp_path_factory.mktemp("robots"))
    write_norm_stats(home / "assets" / "cotrain")
    return home


def mixture(home, weights=(1.0, 2.0, 1.0), weighting="per_sample", **kw) -> MixtureDataConfig:
    e = entries(home)
    return MixtureDataConfig(datasets=[e[r] for r in ROBOTS], dataset_weights=list(weights), weighting=weighting,
                             **kw)


def rows_of(batch: dict, n: int) -> list[dict]:
    """The per-sample dicts of a transformed batch (leaves indexed by row)."""
    def take(tree, i):
        if isinstance(tree, dict):
            return {k: take(v, i) for k, v in tree.items()}
        return tree[i] if isinstance(tree, list) else np.asarray(tree)[i]
    return [take(batch, i) for i in range(n)]


def mixture_rows(home, num_batches=5, num_workers=0, data=None, **kw) -> list[tuple[int, int, int, dict]]:
    """(dataset, episode, frame, sample) of every row of `num_batches` shuffled mixture batches."""
    cfg = train_config(home, data if data is not None else mixture(home, **kw), num_workers=num_workers)
    out = []
    with create_data_loader(cfg, shuffle=True, num_batches=num_batches, framework="pytorch") as dl:
        for batch, meta in dl.batches(with_meta=True):
            batch = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in batch.items()}
            batch["image"] = {k: v.numpy() for k, v in batch["image"].items()}
            batch["image_mask"] = {k: v.numpy() for k, v in batch["image_mask"].items()}
            for i, s in enumerate(rows_of(batch, len(meta["task"]))):
                out.append((int(meta["dataset_index"][i]), int(meta["episode_index"][i]),
                            int(meta["frame_index"][i]), s))
    return out


def check_against_lerobot(home, rows, created: dict[int, tuple[str, object]]) -> None:
    """Each (dataset, episode, frame, sample) equals LeRobotDataset's item of that frame through the entry's
    own transforms (per sample). `created`: dataset index -> (robot, the entry's created data config)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    datasets = {}
    for d, ep, frame, sample in rows:
        robot, dc = created[d]
        if robot not in datasets:
            fps = FPS["libero" if robot == "libero2" else robot]
            deltas = {k: [t / fps for t in range(HORIZON)] for k in dc.action_sequence_keys}
            ds = LeRobotDataset(REPOS[robot], root=home / REPOS[robot], video_backend="pyav", delta_timestamps=deltas)
            where = {(int(e), int(f)): i for i, (e, f) in enumerate(zip(ds.hf_dataset["episode_index"],
                                                                         ds.hf_dataset["frame_index"], strict=True))}
            datasets[robot] = (ds, where)
        ds, where = datasets[robot]
        assert_same_sample(sample, reference_sample(dc, ds[where[(ep, frame)]]), f"{robot} episode {ep} frame {frame}")


def test_every_sample_equals_its_entrys_own_pipeline_on_lerobot(home) -> None:
    """Each row equals LeRobotDataset's item of that frame through the entry's own transforms (per sample):
    its own repack, data transforms, norm stats, action chunk at its own fps, prompt, model transforms."""
    got = mixture_rows(home, num_batches=4)
    assert {d for d, *_ in got} == {0, 1, 2}
    cfg = train_config(home, None)
    e = entries(home)
    check_against_lerobot(home, got, {d: (r, e[r].create(cfg.assets_dirs, cfg.model)) for d, r in enumerate(ROBOTS)})


def test_a_multi_dataset_entry_keeps_its_own_datasets_and_transforms(home) -> None:
    """An entry that is itself a multi-dataset config (two LIBERO-like datasets, inner weights 1:3)."""
    e = entries(home)
    data = MixtureDataConfig(datasets=[nested_libero(home), e["aloha"]], dataset_weights=[3.0, 1.0],
                             weighting="per_dataset")
    cfg = train_config(home, data)
    got = mixture_rows(home, num_batches=3, data=data)
    assert {d for d, *_ in got} == {0, 1, 2}
    libero = nested_libero(home).create(cfg.assets_dirs, cfg.model)
    aloha = e["aloha"].create(cfg.assets_dirs, cfg.model)
    check_against_lerobot(home, got, {0: ("libero", libero), 1: ("libero2", libero), 2: ("aloha", aloha)})


def test_every_sample_equals_its_entrys_own_fastmix_loader(home) -> None:
    """Each row equals the row of the same frame from the entry's own config alone through fastmix's
    single-dataset loader (sequential order over the whole dataset)."""
    got = mixture_rows(home, num_batches=3)
    e = entries(home)
    own = {}
    for d, robot in enumerate(ROBOTS):
        n, lengths = EPISODES[robot]
        total = n * lengths if isinstance(lengths, int) else sum(lengths)
        cfg = train_config(home, e[robot], batch_size=2)
        rows = {}
        with create_data_loader(cfg, shuffle=False, num_batches=total // 2, framework="pytorch") as dl:
            for batch, meta in dl.batches(with_meta=True):
                batch = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in batch.items()}
                for k in ("image", "image_mask"):
                    batch[k] = {c: v.numpy() for c, v in batch[k].items()}
                for i, s in enumerate(rows_of(batch, 2)):
                    rows[(int(meta["episode_index"][i]), int(meta["frame_index"][i]))] = s
        own[d] = rows
    for d, ep, frame, sample in got:
        assert_same_sample(sample, own[d][(ep, frame)], f"{ROBOTS[d]} episode {ep} frame {frame}")


def test_zero_and_two_workers_give_the_same_batches(home) -> None:
    a = mixture_rows(home, num_batches=2, num_workers=0)
    b = mixture_rows(home, num_batches=2, num_workers=2)
    assert [x[:3] for x in a] == [x[:3] for x in b]
    for x, y in zip(a, b, strict=True):
        assert_same_sample(y[3], x[3], f"dataset {x[0]} episode {x[1]} frame {x[2]}")


def test_mixture_config_checks_its_fields(home) -> None:
    e = entries(home)
    with pytest.raises(ConfigError, match="needs datasets"):
        MixtureDataConfig(datasets=[])
    with pytest.raises(ConfigError, match=r"datasets\[1\] is not a data config factory"):
        MixtureDataConfig(datasets=[e["libero"], "robots/droid_like"])
    with pytest.raises(ConfigError, match="length"):
        MixtureDataConfig(datasets=[e["libero"], e["droid"]], dataset_weights=[1.0])
    with pytest.raises(ConfigError, match="weighting must be one of"):
        MixtureDataConfig(datasets=[e["libero"]], weighting="per_robot")
    with pytest.raises(ConfigError, match="frame_filters"):
        MixtureDataConfig(datasets=[e["libero"], e["droid"]], frame_filters=[None])
    for bad in ("int32", "uint8", 32, "f8x"):
        with pytest.raises(ConfigError, match="float_dtype must be a floating dtype"):
            MixtureDataConfig(datasets=[e["libero"]], float_dtype=bad)
    inner = MixtureDataConfig(datasets=[e["libero"]])
    with pytest.raises(ConfigError, match="itself a MixtureDataConfig"):
        MixtureDataConfig(datasets=[inner, e["droid"]])
    twice = MixtureDataConfig(datasets=[e["libero"], e["libero"]])
    cfg = train_config(home, twice)
    with pytest.raises(ConfigError, match=r"robots/libero_like.*datasets\[0\] and datasets\[1\]"):
        twice.create(cfg.assets_dirs, cfg.model)


@dataclasses.dataclass(frozen=True)
class AlohaFloat64(AlohaLikeDataConfig):
    """The ALOHA-like entry with openpi's `AlohaInputs` dtype: its data transforms give float64 state/actions."""

    def create(self, assets_dirs, model_config):
        made = super().create(assets_dirs, model_config)
        return dataclasses.replace(made, data_transforms=T.Group(inputs=[*made.data_transforms.inputs, widen]))


def widen(d: dict) -> dict:
    """Per sample: state and actions as float64."""
    return {**d, **{k: np.asarray(d[k], np.float64) for k in ("state", "actions") if k in d}}


@pytest.mark.parametrize("float_dtype", ["float32", None])
def test_one_float_dtype_in_every_batch(home, float_dtype) -> None:
    """An entry whose own pipeline gives float64 (as openpi's AlohaInputs): with float_dtype="float32" (the
    default) every batch's state/actions are float32, batches with ALOHA rows or without, the ALOHA rows its
    float64 values rounded once; with None a batch is float64 exactly when it holds ALOHA rows."""
    e = entries(home)
    aloha = AlohaFloat64(repo_id=REPOS["aloha"], assets=e["aloha"].assets, lerobot_home=e["aloha"].lerobot_home,
                         default_prompt="fold the towel")
    data = MixtureDataConfig(datasets=[e["libero"], e["droid"], aloha], dataset_weights=[4.0, 4.0, 1.0],
                             float_dtype=float_dtype)
    ref = MixtureDataConfig(datasets=[e["libero"], e["droid"], aloha], dataset_weights=[4.0, 4.0, 1.0],
                            float_dtype="float64")
    seen = set()
    with create_data_loader(train_config(home, data), shuffle=True, num_batches=12, framework="pytorch") as dl, \
            create_data_loader(train_config(home, ref), shuffle=True, num_batches=12, framework="pytorch") as wide:
        for (batch, meta), (wbatch, _) in zip(dl.batches(with_meta=True), wide.batches(with_meta=True), strict=True):
            has_aloha = bool((np.asarray(meta["dataset_index"]) == 2).any())
            want = np.float64 if float_dtype is None and has_aloha else np.float32
            for key in ("state", "actions"):
                got = batch[key].numpy()
                assert got.dtype == want, (key, got.dtype, has_aloha)
                np.testing.assert_array_equal(got, wbatch[key].numpy().astype(want))  # rounded once, from float64
            seen.add(has_aloha)
    assert seen == {True, False}, "batches with and without ALOHA rows"


def test_missing_norm_stats_name_the_entry(home) -> None:
    from fastmix.openpi.config import AssetsConfig

    e = entries(home)
    import dataclasses

    droid = dataclasses.replace(e["droid"], assets=AssetsConfig(asset_id="nowhere"))
    cfg = train_config(home, MixtureDataConfig(datasets=[e["libero"], droid]))
    with pytest.raises(ConfigError, match=r"entry 1 \(DroidLikeDataConfig: robots/droid_like\).*[Nn]orm"):
        create_data_loader(cfg, num_batches=1)


# ----------------------------------------------------------------------------------- sampling (exact shares)
DATASETS = ("libero", "libero2", "droid", "aloha")  # the flat order of the nested mixture below
DROID_FILTER = FrameFilter(trim_start=2)
ALOHA_RANGES = {0: [[0, 6]], 1: [[4, 15]]}


def nested_mixture(home, weighting: str) -> MixtureDataConfig:
    e = entries(home)
    return MixtureDataConfig(datasets=[nested_libero(home), e["droid"], e["aloha"]], dataset_weights=[1.0, 2.0, 1.0],
                             weighting=weighting, frame_filters=[None, DROID_FILTER, FrameFilter(ALOHA_RANGES)])


def kept_frames() -> dict[str, list[set[int]]]:
    """Per dataset, per episode: the frames the filters keep (computed here from their definitions)."""
    out = {r: [set(range(n)) for n in frame_counts(r)] for r in DATASETS}
    out["droid"] = [set(range(2, n)) for n in frame_counts("droid")]
    out["aloha"] = [set(range(a, b)) for (a, b), in (ALOHA_RANGES[0], ALOHA_RANGES[1])]
    return out


def expected_frame_probabilities(weighting: str) -> np.ndarray:
    """Probability of every frame of the flat concatenation, from exact fractions: entry weights (1, 2, 1), the
    LIBERO entry's inner per-sample weights (1, 3); per_sample ∝ w_entry·v_dataset per kept frame; per_dataset:
    entry share w/Σw, split inside the entry ∝ v·M (M: its kept frames), uniform over kept frames; per_episode: the
    same dataset shares, 1/E per kept episode, 1/M_e per kept frame of it."""
    w = {"libero": Fraction(1), "libero2": Fraction(1), "droid": Fraction(2), "aloha": Fraction(1)}
    v = {"libero": Fraction(1), "libero2": Fraction(3), "droid": Fraction(1), "aloha": Fraction(1)}
    kept = kept_frames()
    n = {r: sum(frame_counts(r)) for r in DATASETS}
    entry_mass = v["libero"] * n["libero"] + v["libero2"] * n["libero2"]
    share = {"libero": Fraction(1, 4) * v["libero"] * n["libero"] / entry_mass,
             "libero2": Fraction(1, 4) * v["libero2"] * n["libero2"] / entry_mass,
             "droid": Fraction(2, 4), "aloha": Fraction(1, 4)}
    total = sum(w[r] * v[r] * sum(len(k) for k in kept[r]) for r in DATASETS)
    probs = []
    for r in DATASETS:
        m = sum(len(k) for k in kept[r])
        episodes = sum(1 for k in kept[r] if k)
        for e, length in enumerate(frame_counts(r)):
            for f in range(length):
                if f not in kept[r][e]:
                    probs.append(Fraction(0))
                elif weighting == "per_sample":
                    probs.append(w[r] * v[r] / total)
                elif weighting == "per_dataset":
                    probs.append(share[r] / m)
                else:
                    probs.append(share[r] / episodes / len(kept[r][e]))
    assert sum(probs) == 1
    return np.array([float(p) for p in probs])


def draws_of(home, weighting: str, n: int = 40_000) -> np.ndarray:
    cfg = train_config(home, nested_mixture(home, weighting))
    with create_data_loader(cfg, shuffle=True, num_batches=1) as dl:
        assert [s.name for s in dl.sources] == [REPOS[r] for r in DATASETS]
        return dl.loader.sampler.next_indices(n)


def chi_square_p(draws: np.ndarray, probs: np.ndarray) -> float:
    counts = np.bincount(draws, minlength=probs.size)
    assert counts[probs == 0].sum() == 0, f"filtered frames drawn: {np.flatnonzero((probs == 0) & (counts > 0))}"
    keep = probs > 0
    return float(stats.chisquare(counts[keep], probs[keep] * draws.size).pvalue)


@pytest.mark.parametrize("weighting", ["per_sample", "per_dataset", "per_episode"])
def test_draws_follow_the_exact_probabilities_of_each_weighting(home, weighting) -> None:
    """Entry weights, a multi-dataset entry's inner weights and per-entry frame filters (trims, keep-ranges),
    per mode: every frame's draws against its exact probability (chi-square); filtered frames never drawn."""
    draws = draws_of(home, weighting)
    assert chi_square_p(draws, expected_frame_probabilities(weighting)) > 1e-3


def test_the_chi_square_check_sees_a_wrong_weighting(home) -> None:
    draws = draws_of(home, "per_dataset")
    assert chi_square_p(draws, expected_frame_probabilities("per_sample")) < 1e-6


def test_printed_mixture_counts_kept_frames(home) -> None:
    cfg = train_config(home, nested_mixture(home, "per_episode"))
    with create_data_loader(cfg, num_batches=1) as dl:
        kept = [int(k) for k in dl.mixture.kept_sizes]
    assert kept == [sum(len(s) for s in kept_frames()[r]) for r in DATASETS]


# ------------------------------------------------------------------------------------------------- resume
def _meta_run(dl, n: int) -> list[tuple[list, list]]:
    out = []
    for i, (batch, meta) in enumerate(dl.batches(with_meta=True)):
        out.append((meta["dataset_index"].tolist(), meta["index"].tolist(), batch["state"].numpy().copy()))
        if i + 1 == n:
            break
    return out


def test_resume_continues_exactly(home) -> None:
    cfg = train_config(home, mixture(home))
    with create_data_loader(cfg, shuffle=True) as dl:
        whole = _meta_run(dl, 4)
    with create_data_loader(cfg, shuffle=True) as dl:
        _meta_run(dl, 2)
        state = dl.state_dict()
    with create_data_loader(train_config(home, mixture(home), num_workers=2), shuffle=True) as dl:
        dl.load_state_dict(state)
        rest = _meta_run(dl, 2)
    for (d0, i0, s0), (d1, i1, s1) in zip(whole[2:], rest, strict=True):
        assert (d0, i0) == (d1, i1)
        np.testing.assert_array_equal(s0, s1)


def test_resume_with_changed_weights_is_an_explicit_deterministic_opt_in(home) -> None:
    with create_data_loader(train_config(home, mixture(home)), shuffle=True) as dl:
        _meta_run(dl, 2)
        state = dl.state_dict()
    changed = train_config(home, mixture(home, weights=(3.0, 1.0, 1.0), weighting="per_dataset"))
    runs = []
    for workers in (0, 2):
        cfg = train_config(home, changed.data, num_workers=workers)
        with create_data_loader(cfg, shuffle=True) as dl:
            with pytest.raises(ConfigError, match="weight"):
                dl.load_state_dict(state)
            with pytest.warns(RuntimeWarning, match="shares"):
                dl.load_state_dict(state, allow_mixture_change=True)
            assert dl.state_dict()["epoch"] == state["epoch"]
            runs.append(_meta_run(dl, 2))
    for (d0, i0, s0), (d1, i1, s1) in zip(*runs, strict=True):
        assert (d0, i0) == (d1, i1)
        np.testing.assert_array_equal(s0, s1)


# ----------------------------------------------------------------------------------------------- config layer
def test_a_mixture_config_in_fastmix_registry_and_cli(home) -> None:
    """Registered in fastmix's registry, found by name, its weights overridable from the command line."""
    from fastmix.openpi import registry

    cfg = train_config(home, mixture(home), name="cotrain_registry_test")
    registry.register(cfg)
    try:
        assert registry.get_config("cotrain_registry_test") is cfg
        picked = registry.cli(["cotrain_registry_test", "--data.dataset-weights", "3", "1", "1"])
        assert list(picked.data.dataset_weights) == [3.0, 1.0, 1.0]
        assert [type(d).__name__ for d in picked.data.datasets] == [type(d).__name__ for d in cfg.data.datasets]
    finally:
        registry.unregister("cotrain_registry_test")


def test_multi_dataset_config_passes_weighting_and_frame_filters_to_the_loader(home) -> None:
    """`MultiDatasetLiberoDataConfig(weighting="per_episode", frame_filters=...)` reaches `MixtureLoader`: its
    draws follow the exact per-episode probabilities over kept frames."""
    trim = FrameFilter(trim_start=3)
    data = nested_libero(home, weights=(1.0, 1.0))
    data = type(data)(**{**{f: getattr(data, f) for f in ("repo_ids", "assets", "lerobot_home", "base_config")},
                         "dataset_weights": [1.0, 3.0], "weighting": "per_episode",
                         "frame_filters": [trim, None]})
    with create_data_loader(train_config(home, data), shuffle=True, num_batches=1) as dl:
        assert dl.mixture.weighting == "per_episode"
        draws = dl.loader.sampler.next_indices(20_000)
    probs = []
    for d, (robot, share) in enumerate((("libero", Fraction(1, 4)), ("libero2", Fraction(3, 4)))):
        lengths = frame_counts(robot)
        for length in lengths:
            kept = range(3, length) if d == 0 else range(length)
            probs += [share / len(lengths) / len(kept) if f in kept else Fraction(0) for f in range(length)]
    assert chi_square_p(draws, np.array([float(p) for p in probs])) > 1e-3


def test_iterating_gives_openpis_observation_and_actions(home) -> None:
    """openpi's protocol (`for observation, actions in loader`) on a mixture: images float in [-1, 1] as
    `Observation.from_dict` makes them, state/actions padded to the model's action_dim, one mask per camera."""
    cfg = train_config(home, mixture(home))
    with create_data_loader(cfg, shuffle=True, num_batches=1, framework="pytorch") as dl:
        (observation, actions), = list(dl)
    assert tuple(observation.state.shape) == (8, 32) and tuple(actions.shape) == (8, HORIZON, 32)
    for key, image in observation.images.items():
        assert tuple(image.shape) == (8, 3, 224, 224), key
        assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0
    assert set(observation.image_masks) == set(observation.images)
