"""fastmix's batched `DroidInputs` / `AlohaInputs`: which openpi transforms `batched` replaces with them, what that
does to the loader's image format and decode size, their errors, and their image handling against the frames
themselves. Their equality with openpi's own transforms, byte for byte on both openpi trees, is asserted in the
seed tests (`tests/seed/test_data_configs.py::test_policy_transforms_run_batched_with_the_trees_bytes`, and the
DROID / ALOHA / mixture pipelines there and in `tests/seed/test_mixture_configs.py`): openpi is not importable
here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from fastmix.errors import ConfigError
from fastmix.openpi import transforms as T
from fastmix.openpi.data_loader import raw_image_dtype
from fastmix.openpi.transforms.batched import batched

ALOHA_CAMS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")


def _openpi_like(module: str, name: str, bases: tuple = (), namespace: dict | None = None, **fields: Any) -> Any:
    """An instance of a frozen dataclass named and placed as openpi's `module.name`, with `fields`."""
    cls = dataclasses.make_dataclass(name, list(fields), bases=bases, frozen=True, namespace=namespace or {})
    cls.__module__ = module
    cls.__call__ = lambda self, data: data
    return cls(**fields)


def droid_like(**fields: Any) -> Any:
    return _openpi_like("openpi.policies.droid_policy", "DroidInputs", **fields)


def aloha_like(cameras: tuple[str, ...] = ALOHA_CAMS, **fields: Any) -> Any:
    return _openpi_like("openpi.policies.aloha_policy", "AlohaInputs",
                        namespace={"EXPECTED_CAMERAS": cameras},  # a class attribute, as openpi's ClassVar
                        **fields)


def test_openpis_droid_and_aloha_inputs_become_batched():
    droid = batched(droid_like(model_type="pi05"))
    aloha = batched(aloha_like(adapt_to_pi=False))
    assert droid == T.DroidInputs("pi05") and aloha == T.AlohaInputs(adapt_to_pi=False)


@pytest.mark.parametrize("make", [
    lambda: droid_like(model_type="pi0", extra=1),  # a field openpi's class lacks
    lambda: aloha_like(adapt_to_pi=True, extra=1),
    lambda: aloha_like(cameras=("cam_high", "cam_top"), adapt_to_pi=True),  # other expected cameras
    lambda: _openpi_like("openpi.policies.droid_policy", "MyDroidInputs", model_type="pi0"),  # a user's class
    lambda: _openpi_like("my_policies", "AlohaInputs", adapt_to_pi=True),
], ids=["droid_extra_field", "aloha_extra_field", "aloha_cameras", "other_name", "other_module"])
def test_anything_else_stays_per_sample(make):
    t = make()
    assert batched(t) is t


def _stages(*data: Any) -> list[tuple[str, list]]:
    return [("repack", [T.RepackTransform({"images": {"cam_high": "top"}, "state": "s"})]), ("data", list(data)),
            ("normalize", [T.Normalize(None)]), ("model", [T.InjectDefaultPrompt("x"), T.ResizeImages(224, 224),
                                                         T.PadStatesAndActions(32)])]


@pytest.mark.parametrize("openpi_t", [droid_like(model_type="pi0_fast"), aloha_like(adapt_to_pi=True)],
                         ids=["droid", "aloha"])
def test_batched_entries_get_uint8_frames_decoded_at_model_size(openpi_t):
    per_sample = _stages(openpi_t, T.DeltaActions(T.make_bool_mask(6, -1, 6, -1)))
    assert (raw_image_dtype(per_sample), T.decode_size(per_sample)) == ("float32", None)
    replaced = _stages(batched(openpi_t), T.DeltaActions(T.make_bool_mask(6, -1, 6, -1)))
    assert (raw_image_dtype(replaced), T.decode_size(replaced)) == ("uint8", (224, 224))


def _frames(rng: np.random.Generator, n: int = 3, hw: tuple[int, int] = (6, 10)) -> np.ndarray:
    return rng.integers(0, 256, (n, *hw, 3), dtype=np.uint8)


def _as_lerobot(frames: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W) in [0, 1], as lerobot's decoders give frames."""
    return np.moveaxis(frames, -1, 1).astype(np.float32) / np.float32(255)


def aloha_batch(rng: np.random.Generator, cams: tuple[str, ...], convert=lambda f: f) -> tuple[dict, dict]:
    frames = {c: _frames(rng) for c in cams}
    return frames, {"images": {c: convert(f) for c, f in frames.items()},
                    "state": rng.random((3, 14), dtype=np.float32),
                    "actions": rng.random((3, 4, 14), dtype=np.float32)}


@pytest.mark.parametrize("convert", [lambda f: f, _as_lerobot, lambda f: np.moveaxis(f, -1, 1)],
                         ids=["uint8_hwc", "float_chw", "uint8_chw"])
def test_aloha_images_are_the_frames_in_every_input_format(convert):
    frames, batch = aloha_batch(np.random.default_rng(0), ("cam_high", "cam_low", "cam_right_wrist"), convert)
    before = {k: np.array(v) for k, v in batch["images"].items()}
    out = T.AlohaInputs().batch(batch)
    assert np.array_equal(out["image"]["base_0_rgb"], frames["cam_high"])
    assert np.array_equal(out["image"]["right_wrist_0_rgb"], frames["cam_right_wrist"])
    left = out["image"]["left_wrist_0_rgb"]  # zero-filled, masked out
    assert left.shape == frames["cam_high"].shape and left.dtype == np.uint8 and not left.any()
    assert out["image_mask"]["left_wrist_0_rgb"].tolist() == [False] * 3
    assert out["image_mask"]["right_wrist_0_rgb"].tolist() == [True] * 3
    assert sorted(out["image"]) == ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"]  # cam_low dropped
    assert all(np.array_equal(batch["images"][k], v) for k, v in before.items())  # input left alone


@pytest.mark.parametrize("convert", [lambda f: f, _as_lerobot], ids=["uint8_hwc", "float_chw"])
@pytest.mark.parametrize(("model_type", "names", "masks"), [
    ("pi05", ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"), (True, True, False)),
    ("pi0_fast", ("base_0_rgb", "base_1_rgb", "wrist_0_rgb"), (True, True, True)),
])
def test_droid_cameras_and_masks_per_model_type(convert, model_type, names, masks):
    rng = np.random.default_rng(1)
    exterior, wrist = _frames(rng), _frames(rng)
    out = T.DroidInputs(model_type).batch({
        "observation/exterior_image_1_left": convert(exterior), "observation/wrist_image_left": convert(wrist),
        "observation/joint_position": rng.random((3, 7), dtype=np.float32),
        "observation/gripper_position": rng.random(3, dtype=np.float32), "prompt": [b"a", "b", "c"]})
    assert tuple(out["image"]) == names and tuple(out["image_mask"]) == names
    assert [bool(out["image_mask"][n].all()) for n in names] == list(masks)
    images = [out["image"][n] for n in names]
    assert np.array_equal(images[0], exterior) and not images[names.index("base_1_rgb" if model_type == "pi0_fast"
                                                                            else "right_wrist_0_rgb")].any()
    assert np.array_equal(out["image"][names[2] if model_type == "pi0_fast" else names[1]], wrist)
    assert out["state"].shape == (3, 8) and out["prompt"] == ["a", "b", "c"]


def test_errors_name_the_cameras_and_the_model_type():
    rng = np.random.default_rng(2)
    _, batch = aloha_batch(rng, ("cam_high", "cam_top"))
    with pytest.raises(ConfigError, match=r"cameras \['cam_top'\] are not among the expected"):
        T.AlohaInputs().batch(batch)
    _, batch = aloha_batch(rng, ("cam_low",))
    with pytest.raises(ConfigError, match="'cam_high' is missing"):
        T.AlohaInputs().batch(batch)
    with pytest.raises(ConfigError, match="unsupported model type 'pi1'"):
        T.DroidInputs("pi1").batch({"observation/exterior_image_1_left": _frames(rng),
                                    "observation/wrist_image_left": _frames(rng),
                                    "observation/joint_position": np.zeros((3, 7), np.float32),
                                    "observation/gripper_position": np.zeros((3, 1), np.float32)})
