"""uint8 → float32 conversion by value table (`fastmix.kernels.pixels`) against the reference operations themselves:
torch's `images_to_float` ops (`to(float32) / 255`) and openpi's `Observation.from_dict` formula
(`x.astype(float32) / 255.0 * 2.0 - 1.0` in numpy, `x.to(float32).permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0` in torch),
bit for bit, native kernel and numpy fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastmix.kernels import pixels
from fastmix.openpi.data_loader import observation_float
from fastmix.loader.device import float_table, host_batch


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


@pytest.fixture(params=["native", "numpy"])
def kernel(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(pixels, "_KERNEL", None)
    elif pixels._KERNEL is None:
        pytest.skip("fastmix.kernels._native has no lut_u8_to_f32 (extension not built)")
    return request.param


@pytest.mark.parametrize("shape", [(3, 5, 7, 3), (2, 4, 4, 1), (1, 3, 9, 4), (4, 16, 8, 3)])
def test_unit_float_equals_torch_ops(kernel, shape) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    x.reshape(-1)[:256] = np.arange(256, dtype=np.uint8)[: min(256, x.size)]  # every byte value seen
    ref = torch.from_numpy(x).permute(0, 3, 1, 2).to(torch.float32).div(255.0).numpy()
    got = pixels.to_float(x, float_table(), chw=True)
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


def test_host_batch_float32_equals_torch_ops() -> None:
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
        pixels.to_float(np.zeros((2, 3, 3), np.uint8), float_table(), chw=True)
    with pytest.raises(ValueError, match="float32"):
        pixels.to_float(np.zeros((1, 2, 2, 3), np.uint8), float_table(), chw=True, out=np.empty((1, 2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="256 float32 values"):
        pixels.value_table(lambda x: x.astype(np.float64))
