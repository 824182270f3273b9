"""uint8 → float32 conversion by value table (`fastmix.kernels.pixels`) against the reference operations themselves:
torch's `to(float32) / 255` (the loader's float32 images) and openpi's `Observation.from_dict` formula
(`x.astype(float32) / 255.0 * 2.0 - 1.0` in numpy, `x.to(float32).permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0` in torch),
bit for bit, native kernel and numpy fallback (FASTMIX_BACKEND=numba switches the extension off)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastmix.kernels import pixels
from fastmix.loader.device import host_batch, images_to_float
from fastmix.loader.readers import FloatStore
from fastmix.openpi.observation import Observation, observation_float


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


@pytest.fixture(params=["native", "numpy"])
def kernel(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setenv("FASTMIX_BACKEND", "numba")  # the switch turns the extension off: numpy indexing
        assert pixels._kernel() is None
    elif pixels._kernel() is None:
        pytest.skip("no native lut_u8_to_f32 (FASTMIX_BACKEND=numba, or the extension is not built)")
    return request.param


def test_tables_equal_the_reference_ops_on_every_byte() -> None:
    x = torch.arange(256, dtype=torch.uint8)
    unit = x.to(torch.float32) / 255  # torch's op (the loader's float32 images)
    openpi_torch = x.to(torch.float32) / 255.0 * 2.0 - 1.0
    openpi_np = x.numpy().astype(np.float32) / 255.0 * 2.0 - 1.0  # openpi's Observation.from_dict
    assert pixels.unit_table().dtype == pixels.openpi_table().dtype == np.float32
    np.testing.assert_array_equal(_bits(pixels.unit_table()), _bits(unit.numpy()))
    np.testing.assert_array_equal(_bits(pixels.openpi_table()), _bits(openpi_torch.numpy()))
    np.testing.assert_array_equal(_bits(pixels.openpi_table()), _bits(openpi_np))
    for table in (pixels.unit_table(), pixels.openpi_table()):
        assert not table.flags.writeable  # one home, not to be edited in place
        with pytest.raises(ValueError):
            table[0] = 1.0


def test_images_to_float_is_the_table_and_torch_op() -> None:
    """The device stage's conversion (run on CUDA, checked here on the CPU) gives the table's values, which
    are torch's `to(float32) / 255` as the CPU computes it."""
    x = torch.from_numpy(np.arange(256 * 3, dtype=np.int64).reshape(1, 16, 16, 3).astype(np.uint8))
    got = images_to_float(x)
    ref = x.permute(0, 3, 1, 2).to(torch.float32).div(255.0)
    assert got.dtype == torch.float32 and got.is_contiguous() and torch.equal(got, ref)


def test_float_store_writes_the_table_transposed(kernel) -> None:
    """The store hook the float32 reader stack hands the frame reader: one uint8 (H, W, C) frame into a float32
    (C, H, W) row, a uint8 row as is, a frame of another shape a ValueError."""
    frame = np.random.default_rng(3).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    dest = np.full((3, 3, 5, 7), np.nan, np.float32)
    FloatStore(pixels.unit_table())(dest, 1, frame)
    ref = torch.from_numpy(frame).permute(2, 0, 1).to(torch.float32).div(255.0).numpy()
    np.testing.assert_array_equal(_bits(dest[1]), _bits(ref))
    assert np.isnan(dest[0]).all() and np.isnan(dest[2]).all()
    u8 = np.zeros((2, 5, 7, 3), np.uint8)
    FloatStore(pixels.unit_table())(u8, 0, frame)
    np.testing.assert_array_equal(u8[0], frame)
    with pytest.raises(ValueError, match="float32 output expects"):
        FloatStore(pixels.unit_table())(np.zeros((1, 3, 7, 5), np.float32), 0, frame)


@pytest.mark.parametrize("shape", [(3, 5, 7, 3), (2, 4, 4, 1), (1, 3, 9, 4), (4, 16, 8, 3)])
def test_unit_float_equals_torch_ops(kernel, shape) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    x.reshape(-1)[:256] = np.arange(256, dtype=np.uint8)[: min(256, x.size)]  # every byte value seen
    ref = torch.from_numpy(x).permute(0, 3, 1, 2).to(torch.float32).div(255.0).numpy()
    got = pixels.to_float(x, pixels.unit_table(), chw=True)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_array_equal(_bits(got), _bits(ref))


def test_openpi_float_equals_openpi_formula_numpy_and_torch(kernel) -> None:
    x = np.random.default_rng(1).integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8)
    x[0, 0, 0] = [0, 255, 128]
    ref_np = x.astype(np.float32) / 255.0 * 2.0 - 1.0  # openpi's numpy path (HWC)
    ref_torch = (torch.from_numpy(x).to(torch.float32).permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0).numpy()
    np.testing.assert_array_equal(_bits(observation_float(x, "jax")), _bits(ref_np))
    np.testing.assert_array_equal(_bits(observation_float(x, "pytorch")), _bits(ref_torch))


def test_all_byte_values_openpi() -> None:
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    ref = (torch.from_numpy(x).to(torch.float32).permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0).numpy()
    np.testing.assert_array_equal(_bits(observation_float(x, "pytorch")), _bits(ref))


def test_broadcast_constant_image_is_a_fill() -> None:
    zeros = np.broadcast_to(np.zeros((), np.uint8), (3, 4, 5, 3))  # LiberoInputs' absent camera
    got = observation_float(zeros, "pytorch")
    ref = (torch.zeros((3, 4, 5, 3), dtype=torch.uint8).to(torch.float32).permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0)
    assert got.shape == (3, 3, 4, 5) and got.flags.c_contiguous
    np.testing.assert_array_equal(_bits(got), _bits(ref.numpy()))
    assert observation_float(zeros, "jax").shape == (3, 4, 5, 3)


@pytest.mark.parametrize("backend", ["native", "numba"])
def test_host_batch_float32_equals_torch_ops(backend, monkeypatch) -> None:
    monkeypatch.setenv("FASTMIX_BACKEND", backend)
    rng = np.random.default_rng(2)
    views = {"cam": rng.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8),
             "state": rng.normal(size=(5, 4)).astype(np.float32)}
    out = host_batch(views, 4, ["cam"], pin=False, image_dtype="float32")
    ref = torch.from_numpy(views["cam"][:4]).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    assert out["cam"].shape == (4, 3, 6, 7) and out["cam"].is_contiguous()
    assert torch.equal(out["cam"], ref)
    assert torch.equal(out["state"], torch.from_numpy(views["state"][:4]))
    views["cam"][:] = 0  # the batch owns its memory: rewriting the slot changes nothing
    assert torch.equal(out["cam"], ref)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="uint8 images"):
        pixels.to_float(np.zeros((2, 3, 3), np.uint8), pixels.unit_table(), chw=True)
    with pytest.raises(ValueError, match="float32"):
        pixels.to_float(np.zeros((1, 2, 2, 3), np.uint8), pixels.unit_table(), chw=True, out=np.empty((1, 2, 2, 3), np.float32))


def test_stand_in_from_dict_equals_observation_float() -> None:
    """fastmix's stand-in `Observation.from_dict` (openpi's formula, literally) and the table agree."""
    x = np.random.default_rng(4).integers(0, 256, size=(2, 4, 6, 3), dtype=np.uint8)
    obs = Observation.from_dict({"image": {"cam": x}, "image_mask": {"cam": np.ones(2, bool)},
                                 "state": np.zeros((2, 3), np.float32)})
    np.testing.assert_array_equal(_bits(obs.images["cam"]), _bits(observation_float(x, "jax")))
    assert observation_float(x[0, 0], "jax").shape == (6, 3)  # other ranks: the table, same layout
    np.testing.assert_array_equal(_bits(observation_float(x[0, 0], "jax")), _bits(obs.images["cam"][0, 0]))
