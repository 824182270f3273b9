"""Device stage: CPU path (fresh host tensors, float image conversion, device resolution), the training-loop
example on CPU, and — only with a GPU — pinned shm slots, per-slot streams/events and loader equality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastmix.demo.train import TrainStats, train
from fastmix.errors import ConfigError
from fastmix.loader.device import host_batch, images_to_float, resolve_device, resolve_pin_memory
from fastmix.loader.loader import MixtureLoader
from fastmix.loader.slots import SlotRing
from fastmix.testing.fakes import FakeReader, FakeSource
from tests.loader_args import grouped

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make(**kw):
    args = dict(dataset_weights=[1.0, 3.0], batch_size=8, action_horizon=4, num_workers=0, seed=1,
                reader_factory=FakeReader)
    args.update(kw)
    return MixtureLoader([FakeSource("a"), FakeSource("b", num_episodes=2)], **grouped(**args))


def test_images_to_float():
    x = torch.randint(0, 256, (2, 4, 5, 3), dtype=torch.uint8)
    y = images_to_float(x)
    assert y.shape == (2, 3, 4, 5) and y.dtype == torch.float32 and y.is_contiguous()
    assert torch.equal(y, x.permute(0, 3, 1, 2).to(torch.float32) / 255)  # torch's op on the CPU, bit for bit


def test_host_batch_copies_out_of_the_slot():
    fields = {"image": ((4, 4, 3), np.uint8), "state": ((3,), np.float32), "pad": ((2,), np.bool_)}
    with SlotRing(fields, batch_size=4, num_slots=1) as ring:
        v = ring.views(0)
        v["image"][...] = 9
        v["state"][...] = np.arange(12, dtype=np.float32).reshape(4, 3)
        v["pad"][...] = True
        out = host_batch(v, 3, ["image"], pin=False, image_dtype="uint8")
        v["image"][...] = 0  # the slot is reused: the batch must not change
        assert out["image"].shape == (3, 4, 4, 3) and int(out["image"].min()) == 9
        assert out["state"].dtype == torch.float32 and out["pad"].dtype == torch.bool
        np.testing.assert_array_equal(out["state"].numpy(), np.arange(9, dtype=np.float32).reshape(3, 3))
        fl = host_batch(v, 2, ["image"], pin=False, image_dtype="float32")
        assert fl["image"].shape == (2, 3, 4, 4) and float(fl["image"].max()) == 0.0


def test_resolve_device_and_pinning():
    assert resolve_device(None) is None and resolve_device("cpu") is None
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")
        assert resolve_pin_memory(None) is False
        with pytest.warns(RuntimeWarning, match="pin_memory"):
            assert resolve_pin_memory(True) is False


def test_train_example_on_cpu():
    seen = []
    with make(num_batches=4) as loader:
        stats = train(loader, 6, device="cpu", log_every=0, callback=lambda step, info: seen.append((step, info)))
    assert isinstance(stats, TrainStats) and stats.steps == 6 and stats.samples == 48
    assert [s for s, _ in seen] == list(range(6))  # crossed an epoch boundary (4 batches per epoch)
    assert 0.0 <= stats.data_wait_fraction <= 1.0 and stats.samples_per_s > 0
    assert np.isfinite(stats.last_loss) and len(stats.wait_s) == 6
    assert abs(stats.data_wait_s + stats.compute_s - stats.wall_s) < 0.5 * stats.wall_s + 0.05


def test_train_example_float_images():
    with make(num_batches=2, image_dtype="float32") as loader:
        stats = train(loader, 2, device="cpu", log_every=0)
    assert stats.steps == 2 and np.isfinite(stats.last_loss)


# ----------------------------------------------------------------------------------------------- CUDA only
@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("image_dtype", ["uint8", "float32"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_cuda_loader_equals_cpu_loader(image_dtype, num_workers):
    with make(num_batches=6, image_dtype=image_dtype) as cpu, \
            make(num_batches=6, image_dtype=image_dtype, device="cuda", num_workers=num_workers, prefetch=2) as gpu:
        assert gpu.pin_memory and gpu._res.pinned is None  # pinned at first iteration
        for a, b in zip(cpu, gpu, strict=False):
            assert gpu._res.pinned is not None and gpu._res.pinned.registered
            for k, v in a.items():
                if isinstance(v, torch.Tensor):
                    assert b[k].is_cuda, k
                    assert torch.equal(b[k].cpu(), v), k  # float32 images too: one table on both paths
                else:
                    assert b[k] == v


@needs_cuda
@pytest.mark.gpu
def test_slot_reuse_waits_for_the_copy_event():
    # more batches than slots, consumer keeps every batch: each must stay intact after its slot is rewritten
    with make(num_batches=8, device="cuda", prefetch=1) as gpu, make(num_batches=8) as cpu:
        kept = [b for b in gpu]
        torch.cuda.synchronize()
        for a, b in zip(cpu, kept, strict=False):
            torch.testing.assert_close(b["image"].cpu(), a["image"])
        assert all(gpu._res.stage.slot_free(s) for s in range(gpu._num_slots()))


@needs_cuda
@pytest.mark.gpu
def test_train_example_on_cuda():
    with make(num_batches=5, device="cuda") as loader:
        stats = train(loader, 5, log_every=0)
    assert stats.device.startswith("cuda") and stats.steps == 5 and 0 <= stats.data_wait_fraction <= 1
