"""MixtureLoader: batch contents, the sample stream (independent of num_workers), in-order delivery, epochs,
resume, transform, float images, config errors, nothing left behind; and equality with LeRobotDataset items
on real generated datasets."""

from __future__ import annotations

import os

import numpy as np
import psutil
import pytest
import torch

from fastmix.core.index_map import IndexMap
from fastmix.core.sampler import MixtureSampler
from fastmix.errors import ConfigError, IncompatibleDatasetsError
from fastmix.loader.loader import MixtureLoader
from fastmix.loader.slots import leftover_segments
from fastmix.testing.fakes import FakeReader, FakeSource, fake_frame, live_pids
from tests.loader_args import grouped

H = 5


def sources():
    return [FakeSource("ds_a", num_episodes=4, episode_length=20), FakeSource("ds_b", num_episodes=2, episode_length=15)]


def make(srcs=None, **kw):
    args = dict(dataset_weights=[1.0, 3.0], batch_size=8, action_horizon=H, num_workers=0, seed=3,
                reader_factory=FakeReader)
    args.update(kw)
    return MixtureLoader(srcs or sources(), **grouped(**args))


def as_numpy(batches):
    return [{k: (v.numpy().copy() if isinstance(v, torch.Tensor) else list(v)) for k, v in b.items()} for b in batches]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=False):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], np.ndarray):
                np.testing.assert_array_equal(x[k], y[k], err_msg=k)
            else:
                assert x[k] == y[k], k


def worker_children():
    return [p for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline()) and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def stream_two_workers():
    """The first epoch delivered by 2 spawn workers (one pool for the module)."""
    with make(num_workers=2) as loader:
        batches = as_numpy(loader)
        pids = loader.worker_pids
        assert len(pids) == 2
    return batches


def test_batch_contents_match_the_sources():
    srcs = sources()
    with make(srcs) as loader:
        batch = next(iter(loader))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (8, 8, 8, 3)
    assert batch["state"].dtype == torch.float32 and batch["state"].shape == (8, 8)
    assert batch["actions"].shape == (8, H, 7) and batch["actions_is_pad"].dtype == torch.bool
    for key in ("dataset_index", "index", "episode_index", "frame_index"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (8,)
    assert isinstance(batch["task"], list) and batch["prompt"] == batch["task"] and len(batch["task"]) == 8
    for i in range(8):
        src = srcs[int(batch["dataset_index"][i])]
        row = int(batch["index"][i])
        for cam in ("image", "wrist_image"):
            np.testing.assert_array_equal(batch[cam][i].numpy(), fake_frame(src.name, cam, row, (8, 8, 3)))
        np.testing.assert_array_equal(batch["state"][i].numpy(), src.value("state", np.array([row]))[0])
        ep, frame = divmod(row, src.episode_length)
        want = np.minimum(frame + np.arange(H), src.episode_length - 1) + ep * src.episode_length
        np.testing.assert_array_equal(batch["actions"][i].numpy(), src.value("actions", want))
        np.testing.assert_array_equal(batch["actions_is_pad"][i].numpy(), frame + np.arange(H) >= src.episode_length)
        assert batch["task"][i] == src.tasks_of(np.array([row]))[0]
        assert int(batch["episode_index"][i]) == ep and int(batch["frame_index"][i]) == frame


def test_sample_stream_is_the_samplers_in_order():
    srcs = sources()
    with make(srcs) as loader:
        got = as_numpy(loader)
    sampler = MixtureSampler([len(s) for s in srcs], [1.0, 3.0], seed=3, rank=0, world_size=1)
    imap = IndexMap([len(s) for s in srcs])
    assert len(got) == len(sampler) // 8
    for b in got:
        d, local = imap.to_local(sampler.next_indices(8))
        np.testing.assert_array_equal(b["dataset_index"], d)
        np.testing.assert_array_equal(b["index"], local)


def test_same_stream_whatever_num_workers(stream_two_workers):
    with make() as loader:
        inline = as_numpy(loader)
    assert_batches_equal(inline, stream_two_workers)


def test_epochs_advance_and_set_epoch_replays():
    with make() as loader:
        e0 = as_numpy(loader)
        assert loader.epoch == 1 and loader.state_dict()["batch"] == 0
        e1 = as_numpy(loader)
        assert not all(np.array_equal(a["index"], b["index"]) for a, b in zip(e0, e1, strict=False))
        loader.set_epoch(0)
        assert_batches_equal(as_numpy(loader), e0)


def resume_harness(stop_epoch: int, stop_batch: int, workers_after: int, stream):
    """Consume up to (stop_epoch, stop_batch), save, resume in a fresh loader (other num_workers): the rest of
    the stream equals the uninterrupted one."""
    per_epoch = len(stream[0])
    with make() as loader:
        for _ in range(stop_epoch):
            as_numpy(loader)
        it = iter(loader)
        for _ in range(stop_batch):
            next(it)
        state = loader.state_dict()
    with make(num_workers=workers_after) as fresh:
        fresh.load_state_dict(state)
        rest = as_numpy(fresh)
    if stop_batch == per_epoch:
        assert rest == [] or len(rest) == per_epoch
        if rest:
            assert_batches_equal(rest, stream[stop_epoch + 1])
    else:
        assert_batches_equal(rest, stream[stop_epoch][stop_batch:])


@pytest.fixture(scope="module")
def two_epochs():
    with make() as loader:
        return [as_numpy(loader), as_numpy(loader)]


@pytest.mark.parametrize("stop_epoch,stop_batch", [(0, 3), (1, 5), (0, 0)])
def test_resume_exactly(two_epochs, stop_epoch, stop_batch):
    resume_harness(stop_epoch, stop_batch, 0, two_epochs)


def test_resume_with_other_num_workers(two_epochs):
    resume_harness(0, 4, 1, two_epochs)


def test_resume_at_end_of_epoch(two_epochs):
    per_epoch = len(two_epochs[0])
    with make() as loader:
        it = iter(loader)
        for _ in range(per_epoch):
            next(it)
        state = loader.state_dict()
    assert state["epoch"] == 1 and state["batch"] == 0
    with make() as fresh:
        fresh.load_state_dict(state)
        assert_batches_equal(as_numpy(fresh), two_epochs[1])


def test_abandoned_iteration_continues_from_consumed_batch(two_epochs):
    with make(num_workers=1, prefetch=3) as loader:
        it = iter(loader)
        first = as_numpy([next(it), next(it)])
        del it  # workers still hold prefetched work for this iterator
        rest = as_numpy(loader)
    assert_batches_equal(first + rest, two_epochs[0])


def test_superseded_iterator_raises():
    with make() as loader:
        it = iter(loader)
        next(it)
        iter(loader)
        with pytest.raises(RuntimeError, match="superseded"):
            next(it)


def test_num_batches_drop_last_and_len():
    with make(num_batches=3) as loader:
        assert len(loader) == 3 and len(as_numpy(loader)) == 3
    total = 80 + 30
    with make(batch_size=32) as loader:
        assert len(loader) == total // 32
    with make(batch_size=32, drop_last=False) as loader:
        got = as_numpy(loader)
        assert len(loader) == -(-total // 32) and [len(b["task"]) for b in got] == [32, 32, 32, total - 96]
        assert got[-1]["image"].shape[0] == total - 96


def test_transform_runs_on_the_assembled_batch():
    def tf(batch):
        batch["n"] = len(batch["task"])
        batch["state"] = batch["state"] * 2
        return batch

    with make(transform=tf) as plain_loader, make() as loader:
        b = next(iter(plain_loader))
        ref = next(iter(loader))
    assert b["n"] == 8
    torch.testing.assert_close(b["state"], ref["state"] * 2)


@pytest.mark.parametrize("zero_copy", [True, False])
def test_training_thread_only_hands_out(monkeypatch, zero_copy):
    """CPU output: planning (sampler draws, low-dim gather) and the hand-out preparation (lending the slot, or
    the copy out of it) run on the pipeline thread, never on the thread calling next(); the transform runs on
    the consumer's thread."""
    import threading

    from fastmix.loader import lending, pipeline, plan

    threads: dict[str, set[str]] = {"plan": set(), "copy": set(), "transform": set()}
    real_plan, real_copy, real_lend = plan.BatchPlanner.plan, pipeline.host_batch, lending.SlotLender.lend

    def traced_plan(self, *a, **kw):
        threads["plan"].add(threading.current_thread().name)
        return real_plan(self, *a, **kw)

    def traced_copy(*a, **kw):
        threads["copy"].add(threading.current_thread().name)
        return real_copy(*a, **kw)

    def traced_lend(self, *a, **kw):
        threads["copy"].add(threading.current_thread().name)
        return real_lend(self, *a, **kw)

    def transform(batch):
        threads["transform"].add(threading.current_thread().name)
        return batch

    monkeypatch.setattr(plan.BatchPlanner, "plan", traced_plan)
    monkeypatch.setattr(pipeline, "host_batch", traced_copy)
    monkeypatch.setattr(lending.SlotLender, "lend", traced_lend)
    me = threading.current_thread().name
    with make(num_workers=2, num_batches=5, transform=transform, zero_copy=zero_copy) as loader:
        assert len(list(loader)) == 5
    assert threads["plan"] == threads["copy"] == {"fastmix-pipeline"}
    assert threads["transform"] == {me}


def test_float_images():
    with make(image_dtype="float32") as fl, make() as u8:
        a, b = next(iter(fl)), next(iter(u8))
    assert a["image"].dtype == torch.float32 and a["image"].shape == (8, 3, 8, 8)
    torch.testing.assert_close(a["image"], b["image"].permute(0, 3, 1, 2).float() / 255)


def test_batch_survives_slot_reuse():
    with make(prefetch=1) as loader:
        batches = list(loader)  # more batches than slots: each must own its memory
    with make() as loader:
        again = as_numpy(loader)
    assert_batches_equal(as_numpy(batches), again)


def test_explicit_delta_timestamps_and_action_keys():
    srcs = sources()
    with make(srcs, action_horizon=None, delta_timestamps={"actions": [-0.1, 0.0, 0.1]}) as loader:
        b = next(iter(loader))
    assert b["actions"].shape == (8, 3, 7)
    with make(srcs, action_keys=["state", "actions"]) as loader:
        b = next(iter(loader))
    assert b["state"].shape == (8, H, 8) and b["state_is_pad"].shape == (8, H)


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=1000), "larger than the mixture"),
    (dict(action_keys=["joint_torque"]), "unknown key 'joint_torque'"),
    (dict(dataset_weights=[1.0]), r"dataset_weights length \(1\) must match"),
    (dict(image_dtype="float16"), "image_dtype"),
    (dict(num_workers=-1), "num_workers"),
    (dict(prefetch=0), "prefetch"),
    (dict(batch_size=0), "batch_size"),
    (dict(delta_timestamps={"image": [0.0]}, action_horizon=None), "camera key 'image'"),
    (dict(mp_context="fork"), "fork"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make(**kwargs)


def test_duplicate_and_incompatible_sources():
    with pytest.raises(ConfigError, match="duplicate"):
        make([FakeSource("x"), FakeSource("x")])
    with pytest.raises(IncompatibleDatasetsError, match="state"):
        make([FakeSource("x"), FakeSource("y", state_dim=9)])
    with pytest.raises(IncompatibleDatasetsError, match="wrist_image"):
        make([FakeSource("x"), FakeSource("y", cameras=("image",))])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_device_without_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        make(device="cuda")


def test_nothing_left_after_close_and_gc():
    before = set(leftover_segments(pid=os.getpid()))
    loader = make(num_workers=1)
    it = iter(loader)
    next(it)
    pids = loader.worker_pids
    assert pids and loader.shm_name in leftover_segments()
    loader.close()
    assert live_pids(pids) == []
    assert set(leftover_segments(pid=os.getpid())) == before
    with pytest.raises(RuntimeError, match="closed"):
        iter(loader)
    # garbage collection of a started loader
    loader = make(num_workers=1)
    it = iter(loader)
    next(it)
    pids = loader.worker_pids
    del loader, it  # no reference cycle: freed at once, without gc.collect()
    assert live_pids(pids) == []
    assert set(leftover_segments(pid=os.getpid())) == before
    assert worker_children() == []


# --------------------------------------------------------------------------- real datasets vs LeRobotDataset
@pytest.fixture(scope="module")
def real_mixture(request, tmp_path_factory):
    """(video root, image-in-parquet root): tests/conftest.py's video_ds / image_ds, else generated here."""
    pytest.importorskip("fastmix.sources.lerobot_source", reason="LeRobotSource (reader issue) not available")
    try:
        return request.getfixturevalue("video_ds"), request.getfixturevalue("image_ds")
    except pytest.FixtureLookupError:
        from fastmix.testing.synth import make_dataset

        base = tmp_path_factory.mktemp("loader_real")
        return (make_dataset(base / "v", "loader/v", num_episodes=3, episode_length=20, camera_shape=(32, 32, 3)),
                make_dataset(base / "i", "loader/i", num_episodes=2, episode_length=15, camera_shape=(32, 32, 3),
                             use_videos=False, seed=1))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_matches_lerobot_dataset_items(real_mixture, num_workers):
    video_root, image_root = real_mixture
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from fastmix.sources.lerobot_source import LeRobotSource

    roots = [video_root, image_root]
    srcs = [LeRobotSource(root=r) for r in roots]
    if srcs[0].camera_keys != srcs[1].camera_keys or any(
            srcs[0].camera_shape(k) != srcs[1].camera_shape(k) for k in srcs[0].camera_keys):
        srcs = [LeRobotSource(root=video_root)]
        roots = [video_root]
    horizon = 4
    with MixtureLoader(srcs, dataset_weights=[1.0, 3.0][: len(srcs)], batch_size=6, action_horizon=horizon,
                       num_workers=num_workers, seed=11, num_batches=2) as loader:
        batches = list(loader)
    refs = {}
    for d, (src, root) in enumerate(zip(srcs, roots, strict=False)):
        action_key = [k for k in src.lowdim_keys if k in ("action", "actions")][0]
        refs[d] = (LeRobotDataset(src.name, root=root, video_backend="pyav",
                                  delta_timestamps={action_key: [t / src.fps for t in range(horizon)]}), action_key)
    checked = 0
    for batch in batches:
        for i in range(len(batch["task"])):
            ds, action_key = refs[int(batch["dataset_index"][i])]
            item = ds[int(batch["index"][i])]  # full datasets: the index column is the row
            for cam in srcs[0].camera_keys:
                want = item[cam].permute(1, 2, 0).numpy()  # float CHW [0,1] → HWC
                got = batch[cam][i].numpy().astype(np.float32) / 255
                assert np.abs(want - got).max() <= 1 / 255 + 1e-6, (cam, int(batch["dataset_index"][i]), item["index"])
            for key in srcs[0].lowdim_keys:
                np.testing.assert_array_equal(batch[key][i].numpy(), item[key].numpy().astype(np.float32), err_msg=key)
            np.testing.assert_array_equal(batch[f"{action_key}_is_pad"][i].numpy(), item[f"{action_key}_is_pad"].numpy())
            assert batch["task"][i] == item["task"]
            for key in ("episode_index", "frame_index", "index"):
                assert int(batch[key][i]) == int(item[key]), key
            checked += 1
    assert checked == 12



def _pil_resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Independent reference of openpi's resize_with_pad for one uint8 HWC image: PIL bilinear to the
    aspect-preserving size, centred on a zero canvas."""
    from PIL import Image

    h, w = image.shape[:2]
    ratio = max(w / width, h / height)
    rh, rw = int(h / ratio), int(w / ratio)
    small = np.asarray(Image.fromarray(image).resize((rw, rh), resample=Image.BILINEAR))
    canvas = np.zeros((height, width, image.shape[2]), dtype=np.uint8)
    top, left = (height - rh) // 2, (width - rw) // 2
    canvas[top:top + rh, left:left + rw] = small
    return canvas


@pytest.mark.parametrize("num_workers", [0, 2])
def test_decode_time_resize_equals_pil_on_the_native_frames(video_ds, image_ds, num_workers):
    """resize_images=(40, 56): the slot holds every camera of every source (video and PNG, 64x64 native) at
    40x56, each frame equal to PIL's resize-with-pad of the native frame the same loader decodes without it."""
    from fastmix.sources.lerobot_source import LeRobotSource

    srcs = [LeRobotSource(root=video_ds), LeRobotSource(root=image_ds)]
    kw = dict(dataset_weights=[1.0, 1.0], batch_size=6, action_horizon=3, seed=4, num_batches=3,
              num_workers=num_workers)
    with MixtureLoader(srcs, **grouped(**kw)) as native_loader, MixtureLoader(srcs, resize_images=(40, 56), **grouped(**kw)) as loader:
        native, resized = as_numpy(list(native_loader)), as_numpy(list(loader))
    assert len(native) == len(resized) == 3
    for a, b in zip(native, resized, strict=True):
        np.testing.assert_array_equal(a["index"], b["index"])
        for key in ("image", "wrist_image"):
            assert b[key].shape == (6, 40, 56, 3) and b[key].dtype == np.uint8
            want = np.stack([_pil_resize_with_pad(f, 40, 56) for f in a[key]])
            np.testing.assert_array_equal(b[key], want)
    from fastmix.kernels.resize import native_geometry_ok

    assert native_geometry_ok((64, 64, 3), 40, 56)  # the workers resized these frames natively, equal to PIL
    with pytest.raises(ConfigError, match="resize_images"):
        MixtureLoader(srcs, resize_images=(40,), **grouped(**kw))
