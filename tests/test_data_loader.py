"""create_data_loader: openpi's semantics and error texts, batches Observation.from_dict accepts, weighting,
epochs, resume (tests/resume_harness.py), and parity with per-sample openpi-style transforms on real generated
datasets. Fakes are injected (`open_sources=`, `loader_factory=`, `rank_world=`), nothing is monkeypatched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fastmix.errors import ConfigError
from fastmix.loader.options import WorkerOptions
from fastmix.openpi import config as C
from fastmix.openpi import data_loader as DL
from fastmix.openpi.lowdim_batch import lowdim_batch, lowdim_planner
from fastmix.openpi.torch_dataset import create_torch_dataset
from fastmix.openpi.transforms import Transform as _t_Transform
from fastmix.testing.fakes import FakeReader, FakeSource
from fastmix.tools import compute_norm_stats as cns
from tests.resume_harness import check_resume, forever


def _cfg(tmp_path, repo_ids=("fake/a", "fake/b"), *, name="dl_cfg", batch_size=4, horizon=3, weights=None, **kw):
    return C.TrainConfig(
        name=name,
        model=C.Pi0Config(pi05=True, action_horizon=horizon),
        data=C.MultiDatasetLiberoDataConfig(
            repo_ids=list(repo_ids),
            dataset_weights=weights,
            base_config=C.DataConfig(prompt_from_task=True),
            assets=C.AssetsConfig(assets_dir=str(tmp_path / "assets"), asset_id="shared"),
            model_transforms=C.ModelTransformFactory(image_resolution=None),
            **kw,
        ),
        batch_size=batch_size,
        num_workers=0,
        seed=0,
    )


def _with_stats(tmp_path, **kw) -> C.TrainConfig:
    """A `_cfg` with norm stats computed over `data_loader.open_sources` (for test_verify / test_openpi_adapter,
    which replace that attribute; the tests here inject `Injected.open_sources` instead)."""
    cfg = _cfg(tmp_path, **kw)
    cns.compute_norm_stats(cfg, progress=False)
    return cfg


@pytest.fixture
def sources() -> list[FakeSource]:
    """Two in-memory datasets: fake/a (2 episodes x 5 frames) and fake/b (1 x 4)."""
    return [FakeSource("fake/a", num_episodes=2, episode_length=5), FakeSource("fake/b", num_episodes=1, episode_length=4)]


class Injected:
    """create_data_loader / compute_norm_stats over given sources, with MixtureLoaders whose frames FakeReader
    decodes in-process; `made` records the loader arguments create_data_loader chose."""

    def __init__(self, sources: list[FakeSource]) -> None:
        self.sources = sources
        self.made: list[dict] = []

    def open_sources(self, data_config) -> list[FakeSource]:
        return self.sources

    def loader_factory(self, sources, **kw):
        from fastmix.loader.loader import MixtureLoader

        self.made.append(kw)
        return MixtureLoader(sources, **kw, workers=WorkerOptions(reader_factory=FakeReader))

    def create(self, cfg, **kw) -> DL.DataLoader:
        return DL.create_data_loader(cfg, open_sources=self.open_sources, loader_factory=self.loader_factory, **kw)

    def with_stats(self, tmp_path, **kw) -> C.TrainConfig:
        cfg = _cfg(tmp_path, **kw)
        cns.compute_norm_stats(cfg, progress=False, open_sources=self.open_sources)
        return cfg


@pytest.fixture
def fake(sources) -> Injected:
    return Injected(sources)


# ----------------------------------------------------------------------------------------------- errors


def test_local_batch_size_larger_than_dataset_error_names_sizes(tmp_path, fake):
    cfg = _cfg(tmp_path, batch_size=15)  # 10 + 4 frames
    with pytest.raises(ConfigError, match=r"Local batch size \(15\) is larger than the dataset size \(14\)\.") as e:
        fake.create(cfg, skip_norm_stats=True)
    assert "fake/a=10" in str(e.value) and "fake/b=4" in str(e.value)


def test_unknown_action_key_names_dataset(tmp_path, fake):
    cfg = _cfg(tmp_path)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, base_config=C.DataConfig(action_sequence_keys=("action",))))
    with pytest.raises(ConfigError, match=r"action_sequence_keys \['action'\] are not features of dataset 'fake/a'"):
        fake.create(cfg, skip_norm_stats=True)
    assert fake.made == []  # caught before any loader (or worker) exists


def test_argument_errors_name_values(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match="framework='tf'"):
        DL.create_data_loader(cfg, framework="tf")
    with pytest.raises(ConfigError, match="num_batches must be an integer >= 0 or None, got num_batches=-1"):
        DL.create_data_loader(cfg, num_batches=-1)
    with pytest.raises(ConfigError, match=r"batch_size \(4\) is smaller than the world size \(8\)"):
        DL.create_data_loader(cfg, skip_norm_stats=True, open_sources=lambda dc: [], rank_world=(3, 8))


def test_repo_id_not_set_error():
    with pytest.raises(ConfigError, match="Repo ID is not set"):
        DL.repo_ids_of(C.DataConfig())


# ------------------------------------------------------------------------------------ low-dim batch path


def test_lowdim_batch_matches_sources_and_prompts(tmp_path, sources):
    cfg = _cfg(tmp_path)
    dc = cfg.data.create(cfg.assets_dirs, cfg.model)
    planner = lowdim_planner(sources, dc, horizon=3)
    b = lowdim_batch(planner, np.array([10 + 3, 9, 10 + 0, 4]), dc)  # fake/b starts at global index 10
    np.testing.assert_array_equal(b["state"][0], sources[1].value("state", np.array([3]))[0])
    np.testing.assert_array_equal(b["state"][1], sources[0].value("state", np.array([9]))[0])
    assert b["actions"].shape == (4, 3, 7) and b["actions_is_pad"][0].tolist() == [False, True, True]
    np.testing.assert_array_equal(b["actions"][1], sources[0].value("actions", np.array([9, 9, 9])))  # clamped
    assert b["prompt"] == [sources[1].tasks[0], sources[0].tasks[1], sources[1].tasks[0], sources[0].tasks[0]]
    assert b["image"].shape == (4, 1, 1, 3) and b["dataset_index"].tolist() == [1, 0, 1, 0]
    assert b["episode_index"].tolist() == [0, 1, 0, 0] and b["frame_index"].tolist() == [3, 4, 0, 4]


def test_observation_from_dict_like_openpi():
    import torch

    batch = {
        "image": {"base_0_rgb": np.full((2, 4, 4, 3), 255, np.uint8)},
        "image_mask": {"base_0_rgb": np.ones(2, bool)},
        "state": np.zeros((2, 8), np.float32),
    }
    obs = DL.Observation.from_dict(batch)
    assert obs.images["base_0_rgb"].dtype == np.float32 and np.all(obs.images["base_0_rgb"] == 1.0)
    assert obs.tokenized_prompt is None
    tb = {**batch, "image": {"base_0_rgb": torch.zeros((2, 4, 5, 3), dtype=torch.uint8)}}
    tobs = DL.Observation.from_dict(tb)
    assert tuple(tobs.images["base_0_rgb"].shape) == (2, 3, 4, 5) and float(tobs.images["base_0_rgb"].min()) == -1.0
    with pytest.raises(ValueError, match="must be provided together"):
        DL.Observation.from_dict({**batch, "tokenized_prompt": np.zeros((2, 3))})


# ------------------------------------------------------------------ whole loader on in-memory fake sources


def test_yields_openpi_observation_and_actions_looping_over_epochs(tmp_path, fake):
    import torch

    cfg = fake.with_stats(tmp_path, batch_size=4)
    loader = fake.create(cfg, shuffle=True, num_batches=5)  # 14 frames -> 3 batches/epoch: loops
    assert len(loader) == 5 and loader.data_config().repo_ids == ("fake/a", "fake/b")
    items = list(loader)
    assert len(items) == 5
    obs, actions = items[0]
    assert isinstance(obs, DL.Observation)
    assert set(obs.images) == {"base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"}
    img = obs.images["base_0_rgb"]
    assert isinstance(img, torch.Tensor) and img.dtype == torch.float32 and tuple(img.shape) == (4, 3, 8, 8)
    assert float(img.min()) >= -1.0 and float(img.max()) <= 1.0
    assert obs.image_masks["right_wrist_0_rgb"].tolist() == [False] * 4
    assert tuple(obs.state.shape) == (4, 32) and tuple(actions.shape) == (4, 3, 32)
    assert not actions[..., 7:].any() and float(actions[..., :7].abs().max()) < 5  # quantile-normalized
    assert loader.state_dict()["epoch"] == 1
    assert fake.made[0]["batch_size"] == 4 and fake.made[0]["drop_last"] is True
    loader.close()


def test_jax_framework_yields_numpy(tmp_path, fake):
    cfg = fake.with_stats(tmp_path)
    with fake.create(cfg, num_batches=1, framework="jax") as loader:
        obs, actions = next(iter(loader))
    assert isinstance(actions, np.ndarray) and isinstance(obs.state, np.ndarray)
    assert obs.images["base_0_rgb"].shape == (4, 8, 8, 3)  # numpy images stay HWC, as in openpi
    with fake.create(cfg, num_batches=1, framework="jax") as loader:
        batch = next(loader.batches())  # uint8 images, as openpi's collated batch: every array writable
    zeros = batch["image"]["right_wrist_0_rgb"]  # LiberoInputs' absent camera
    assert zeros.flags.writeable and zeros.shape == (4, 8, 8, 3) and not zeros.any()
    zeros[0, 0, 0, 0] = 1  # a user may write into its batch


def test_weighted_sampling_follows_declared_weights(tmp_path, fake):
    from scipy import stats

    cfg = fake.with_stats(tmp_path, weights=[1.0, 6.0], batch_size=8)
    counts = np.zeros(2, dtype=np.int64)
    with fake.create(cfg, shuffle=True, num_batches=150, framework="jax") as loader:
        for _, meta in loader.batches(with_meta=True):
            counts += np.bincount(meta["dataset_index"], minlength=2)
    exp = np.array([10 * 1.0, 4 * 6.0]) / 34  # per_sample: share ∝ weight x frames, 10 : 24
    assert stats.chisquare(counts, exp * counts.sum()).pvalue > 1e-3
    assert fake.made[0]["dataset_weights"] == [1.0, 6.0] and fake.made[0]["weighting"] == "per_sample"


def test_sequential_without_shuffle_and_set_epoch(tmp_path, fake):
    cfg = fake.with_stats(tmp_path)
    with fake.create(cfg, num_batches=3, framework="jax") as loader:
        metas = [m for _, m in loader.batches(with_meta=True)]
    seq = [(int(d), int(i)) for m in metas for d, i in zip(m["dataset_index"], m["index"], strict=True)]
    assert seq == [(0, i) for i in range(10)] + [(1, i) for i in range(2)]  # p -> p mod N, concatenated order
    with fake.create(cfg, shuffle=True, num_batches=2, framework="jax") as loader:
        first = [m["index"].tolist() for _, m in loader.batches(with_meta=True)]
        loader.set_epoch(5)
        fifth = [m["index"].tolist() for _, m in loader.batches(with_meta=True)]
    assert first != fifth


def _batch_key(pair) -> tuple:
    _, meta = pair
    return tuple(zip(meta["dataset_index"].tolist(), meta["index"].tolist(), strict=True))


@pytest.mark.parametrize("shuffle", [True, False])
def test_state_dict_resume_continues_the_stream(tmp_path, fake, shuffle):
    """Resume mid-epoch, at the epoch boundary and in a later epoch (14 frames, batch 4: 3 batches an epoch)."""
    cfg = fake.with_stats(tmp_path)

    def make() -> DL.DataLoader:
        return fake.create(cfg, shuffle=shuffle, framework="jax")  # num_batches=None: epoch after epoch

    reference = check_resume(make, lambda dl: dl.batches(with_meta=True), epoch_length=3, key=_batch_key,
                             close=DL.DataLoader.close)
    epochs = [sorted(i for batch in reference[e * 3:(e + 1) * 3] for i in batch) for e in range(3)]
    if shuffle:
        assert len({tuple(e) for e in epochs}) == 3  # every epoch its own draw
    else:  # sequential: p -> p mod 14 over the concatenation, 12 positions an epoch
        assert [i for batch in reference[:3] for i in batch] == [(0, i) for i in range(10)] + [(1, 0), (1, 1)]


def test_resume_harness_sees_a_loader_that_forgets_its_position(tmp_path, fake):
    """The harness is not vacuous: a loader whose load_state_dict drops the position fails it."""
    cfg = fake.with_stats(tmp_path)

    def make() -> DL.DataLoader:
        loader = fake.create(cfg, shuffle=True, framework="jax")
        loader.load_state_dict = lambda state: None  # restarts at the beginning
        return loader

    with pytest.raises(AssertionError, match="resumed after 1 items"):
        check_resume(make, lambda dl: dl.batches(with_meta=True), epoch_length=3, key=_batch_key,
                     close=DL.DataLoader.close)


def test_resume_harness_on_the_sampler_and_the_mixture_loader(sources):
    """The same harness on the layers below (their own tests own the details)."""
    from fastmix.core.sampler import MixtureSampler
    from fastmix.loader.loader import MixtureLoader

    check_resume(lambda: MixtureSampler([7, 5], [1.0, 3.0], seed=3), forever, epoch_length=12)

    def make() -> MixtureLoader:
        return MixtureLoader(sources, batch_size=4, num_workers=0, seed=1, shuffle=True, drop_last=True, workers=WorkerOptions(reader_factory=FakeReader))

    check_resume(make, forever, epoch_length=3, key=lambda b: tuple(b["index"].tolist()), close=MixtureLoader.close)


def test_ranks_split_one_global_weighted_stream(tmp_path, fake):
    cfg = fake.with_stats(tmp_path, weights=[1.0, 3.0], batch_size=8)

    def draws(rank, world):
        with fake.create(cfg, shuffle=True, num_batches=2, framework="jax", rank_world=(rank, world)) as loader:
            return [(int(d), int(i)) for _, m in loader.batches(with_meta=True)
                    for d, i in zip(m["dataset_index"], m["index"], strict=True)]

    single = draws(0, 1)
    r0, r1 = draws(0, 2), draws(1, 2)
    assert len(r0) == len(r1) == 8  # local batch = 8 // 2, two batches each
    assert r0 != r1  # the reference's WeightedRandomSampler gave every rank the same draws
    assert sorted(r0 + r1) == sorted(single)
    assert fake.made[-1]["rank"] == 1 and fake.made[-1]["world_size"] == 2


def test_batch_transforms_equal_openpi_per_sample_pipeline(tmp_path, fake, sources):
    """For the same samples, the batched pipeline gives what openpi's per-sample transforms give."""
    from fastmix.openpi import transforms as T
    from fastmix.testing.fakes import fake_frame

    cfg = fake.with_stats(tmp_path, extra_delta_transform=True)
    with fake.create(cfg, shuffle=True, num_batches=2, framework="jax") as loader:
        pairs = list(loader.batches(with_meta=True))
        dc = loader.data_config()
    per_sample = T.compose([t for _, ts in DL.transform_stages(dc) for t in ts])
    for batch, meta in pairs:
        for j, (d, i) in enumerate(zip(meta["dataset_index"], meta["index"], strict=True)):
            src = sources[int(d)]
            low = src.gather_lowdim(np.array([i]), {"actions": [t / src.fps for t in range(3)]})
            item = {  # a LeRobotDataset item: float32 CHW images in [0, 1], the task as prompt
                "image": np.moveaxis(fake_frame(src.name, "image", int(i), (8, 8, 3)), -1, 0).astype(np.float32) / 255,
                "wrist_image": np.moveaxis(fake_frame(src.name, "wrist_image", int(i), (8, 8, 3)), -1, 0).astype(np.float32) / 255,
                "state": low["state"][0], "actions": low["actions"][0], "prompt": src.tasks_of(np.array([i]))[0],
            }
            ref = per_sample(item)
            np.testing.assert_allclose(batch["state"][j], ref["state"], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(batch["actions"][j], ref["actions"], rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(batch["image"]["base_0_rgb"][j], ref["image"]["base_0_rgb"])
            assert batch["prompt"][j] == ref["prompt"]


# ------------------------------------------------------------------------- real LeRobot datasets (v3.0)


@pytest.fixture(scope="module")
def real_home(tmp_path_factory):
    pytest.importorskip("fastmix.sources.lerobot_source", reason="LeRobotSource not available")
    from fastmix.testing.synth import make_dataset

    home = tmp_path_factory.mktemp("lerobot_home")
    make_dataset(home / "t/video", "t/video", num_episodes=2, episode_length=9, camera_shape=(24, 32, 3),
                 tasks=("pick", "place"))
    make_dataset(home / "t/images", "t/images", num_episodes=2, episode_length=6, camera_shape=(24, 32, 3),
                 use_videos=False, tasks=("open",), seed=1)
    return home


def test_real_datasets_batches_equal_openpi_per_sample_path(real_home, tmp_path):
    """fastmix's batches == openpi's path: LeRobotDataset item -> PromptFromLeRobotTask -> per-sample transforms."""
    from fastmix.openpi import transforms as T
    from fastmix.sources.lerobot_source import LeRobotSource

    cfg = _cfg(tmp_path, ("t/video", "t/images"), name="real_cfg", lerobot_home=str(real_home), weights=[1.0, 2.0],
               extra_delta_transform=True)
    cfg = dataclasses.replace(cfg, num_workers=1)
    cns.compute_norm_stats(cfg, progress=False)
    with DL.create_data_loader(cfg, shuffle=True, num_batches=3, framework="jax") as loader:
        pairs = list(loader.batches(with_meta=True))
        dc = loader.data_config()
    stages = [t for _, ts in DL.transform_stages(dc) for t in ts]
    delta = {"actions": [t / 10 for t in range(3)]}
    sources = [LeRobotSource(r, root=real_home / r, delta_timestamps=delta) for r in ("t/video", "t/images")]
    seen = set()
    for batch, meta in pairs:
        assert batch["image"]["base_0_rgb"].shape == (4, 24, 32, 3)
        for j, (d, i) in enumerate(zip(meta["dataset_index"], meta["index"], strict=True)):
            src = sources[int(d)]
            item = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in src[int(i)].items()}
            ref = T.compose([T.PromptFromLeRobotTask(src.tasks), *stages])(item)
            np.testing.assert_allclose(batch["state"][j], ref["state"], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(batch["actions"][j], ref["actions"], rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(batch["image"]["base_0_rgb"][j], ref["image"]["base_0_rgb"])
            np.testing.assert_array_equal(batch["image"]["left_wrist_0_rgb"][j], ref["image"]["left_wrist_0_rgb"])
            assert batch["prompt"][j] == ref["prompt"]
            seen.add(int(d))
    assert seen == {0, 1}


def test_create_torch_dataset_is_concat_of_lerobot_like_items(real_home, tmp_path):
    import torch

    cfg = _cfg(tmp_path, ("t/video", "t/images"), name="real_cfg2", lerobot_home=str(real_home))
    dc = cfg.data.create(cfg.assets_dirs, cfg.model)
    ds = create_torch_dataset(dc, 3, cfg.model)
    assert isinstance(ds, torch.utils.data.ConcatDataset) and [len(d) for d in ds.datasets] == [18, 12]
    item = ds[18 + 5]  # last frame of the image dataset's first episode
    assert item["prompt"] == "open" and tuple(item["actions"].shape) == (3, 7)
    assert item["actions_is_pad"].tolist() == [False, True, True]


def test_create_torch_dataset_opens_each_dataset_once(real_home, tmp_path, monkeypatch):
    """One open per repo id (the chunk's fps comes from the opened dataset; no second open), and the items
    equal those of a LeRobotSource opened directly with the chunk (the pinned lerobot's item, as parity tests)."""
    from fastmix.sources import lerobot_source

    opened = []
    real_init = lerobot_source.LeRobotSource.__init__

    def counting_init(self, *args, **kwargs):
        opened.append(args[0] if args else kwargs.get("root"))
        real_init(self, *args, **kwargs)

    cfg = _cfg(tmp_path, ("t/video", "t/images"), name="real_cfg3", lerobot_home=str(real_home))
    dc = cfg.data.create(cfg.assets_dirs, cfg.model)
    monkeypatch.setattr(lerobot_source.LeRobotSource, "__init__", counting_init)
    ds = create_torch_dataset(dc, 3, cfg.model)
    assert opened == ["t/video", "t/images"]
    monkeypatch.setattr(lerobot_source.LeRobotSource, "__init__", real_init)
    fps = ds.datasets[1].source.fps
    direct = lerobot_source.LeRobotSource("t/images", root=real_home / "t/images",
                                          delta_timestamps={"actions": [t / fps for t in range(3)]})
    for i in (0, 5, 11):
        got, want = ds.datasets[1][i], direct[i]
        assert set(want) <= set(got)
        for k, v in want.items():
            assert (v == got[k]).all() if hasattr(v, "shape") else v == got[k], (i, k)


def test_resolve_root_follows_the_sources_dataset_home(monkeypatch, tmp_path):
    from fastmix.sources.meta import lerobot_home

    assert DL.resolve_root("org/ds", str(tmp_path)) == tmp_path / "org/ds"
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "lr"))
    assert DL.resolve_root("org/ds", None) == tmp_path / "lr" / "org/ds" == lerobot_home() / "org/ds"
    monkeypatch.delenv("HF_LEROBOT_HOME")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert DL.resolve_root("org/ds", None) == tmp_path / "hf" / "lerobot" / "org/ds" == lerobot_home() / "org/ds"


# ------------------------------------------------------------------------- prefetch on a background thread


def test_prefetched_batches_are_not_lost_when_iteration_stops(tmp_path, fake):
    """The transforms run 2 batches ahead on a thread; stopping after 2 batches and iterating the same loader
    again continues with batch 3 of the uninterrupted stream (the prefetched ones are drawn again)."""
    cfg = fake.with_stats(tmp_path)
    ref_loader = fake.create(cfg, shuffle=True, framework="jax", num_batches=6)
    reference = [_batch_key(b) for b in ref_loader.batches(with_meta=True)]
    ref_loader.close()
    loader = fake.create(cfg, shuffle=True, framework="jax")
    try:
        assert loader.prefetch == 2
        got = []
        for item in loader.batches(with_meta=True):
            got.append(_batch_key(item))
            if len(got) == 2:
                break
        for item in loader.batches(with_meta=True):
            got.append(_batch_key(item))
            if len(got) == 6:
                break
    finally:
        loader.close()
    assert got == reference


def test_transform_error_on_the_thread_is_raised_and_the_batch_retried(tmp_path, fake):
    """A transform raising on the 3rd batch: the consumer gets the exception after batches 1-2; iterating again
    starts with exactly batch 3."""
    cfg = fake.with_stats(tmp_path)
    ref_loader = fake.create(cfg, shuffle=True, framework="jax", num_batches=5)
    reference = [_batch_key(b) for b in ref_loader.batches(with_meta=True)]
    ref_loader.close()

    class FailOnce(_t_Transform):
        calls = 0

        def __call__(self, data):
            FailOnce.calls += 1
            if FailOnce.calls == 3:
                raise RuntimeError("user transform failed on its 3rd batch")
            return data

    loader = fake.create(cfg, shuffle=True, framework="jax")
    loader.stages = [*loader.stages, ("user", [FailOnce()])]
    got = []
    try:
        with pytest.raises(RuntimeError, match="3rd batch"):
            for item in loader.batches(with_meta=True):
                got.append(_batch_key(item))
        assert got == reference[:2]
        for item in loader.batches(with_meta=True):
            got.append(_batch_key(item))
            if len(got) == 5:
                break
    finally:
        loader.close()
    assert got == reference


def test_no_prefetch_runs_on_the_callers_thread(tmp_path, fake):
    import threading

    cfg = fake.with_stats(tmp_path)
    seen = []
    loader = fake.create(cfg, shuffle=True, framework="jax", num_batches=2)
    loader.prefetch = 0
    loader.trace = lambda *a: seen.append(threading.current_thread().name)
    list(loader.batches())
    loader.close()
    assert set(seen) == {threading.current_thread().name}
