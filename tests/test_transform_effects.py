"""Pixel-effect declarations checked against behaviour, and `decode_size` against the rule it replaces.

A transform declaring "keep" must hand on every camera image bit-identical (wherever repacking puts it);
`ResizeImages` declares its size; anything that declares nothing is "change". `decode_size` over the stages
`transform_stages` builds must give what the hand-kept type list of `data_loader.decode_time_resize` gave.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from fastmix.openpi import config as C
from fastmix.openpi import data_loader as DL
from fastmix.openpi import transforms as T
from fastmix.openpi.norm_stats import NormStats
from fastmix.openpi.transforms.batched import batched
from fastmix.openpi.transforms.effects import PixelEffect, decode_size, pixel_effect_of

B, H, W = 4, 12, 16
MASK = T.make_bool_mask(6, -1)


def _raw_batch(seed: int = 0) -> dict:
    """A batch as the loader gathers it: LeRobot keys, uint8 (B, H, W, 3) cameras, prompts as list[str]."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, size=(B, H, W, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, size=(B, H, W, 3), dtype=np.uint8),
        "state": rng.normal(size=(B, 8)).astype(np.float32),
        "actions": rng.normal(size=(B, 5, 7)).astype(np.float32),
        "prompt": [f"task {i % 2}" for i in range(B)],
        "task_index": np.arange(B, dtype=np.int64) % 2,
    }


def _repacked(seed: int = 0) -> dict:
    return T.RepackTransform(dict(C.LIBERO_REPACK)).batch(_raw_batch(seed))


def _model_inputs(seed: int = 0) -> dict:
    return T.LiberoInputs(C.ModelType.PI0).batch(_repacked(seed))


def _stats(dim: int, seed: int = 1) -> NormStats:
    rng = np.random.default_rng(seed)
    q01 = rng.uniform(-2, -1, size=dim)
    return NormStats(mean=rng.normal(size=dim), std=rng.uniform(0.5, 2, size=dim), q01=q01,
                     q99=q01 + rng.uniform(1, 3, size=dim))


def _droid_batch(seed: int = 0) -> dict:
    """DROID's repacked keys (openpi's LeRobotDROIDDataConfig): three uint8 cameras, joints 7 + gripper 1."""
    rng = np.random.default_rng(seed)
    cams = {f"observation/{c}": rng.integers(0, 256, size=(B, H, W, 3), dtype=np.uint8)
            for c in ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")}
    return {**cams, "observation/joint_position": rng.normal(size=(B, 7)).astype(np.float32),
            "observation/gripper_position": rng.normal(size=(B, 1)).astype(np.float32),
            "actions": rng.normal(size=(B, 5, 8)).astype(np.float32), "prompt": [f"task {i % 2}" for i in range(B)]}


def _aloha_batch(seed: int = 0, cams: tuple[str, ...] = ("cam_high", "cam_low", "cam_left_wrist")) -> dict:
    """ALOHA's repacked keys (openpi's LeRobotAlohaDataConfig): uint8 cameras (the right wrist absent), 14 dims."""
    rng = np.random.default_rng(seed)
    return {"images": {c: rng.integers(0, 256, size=(B, H, W, 3), dtype=np.uint8) for c in cams},
            "state": rng.normal(size=(B, 14)).astype(np.float32),
            "actions": rng.normal(size=(B, 5, 14)).astype(np.float32)}


class _Tokenizer:
    def tokenize(self, prompt: str, state: Any) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.zeros(6, dtype=np.int32)
        tokens[: min(len(prompt), 6)] = [ord(c) for c in prompt[:6]]
        return tokens, tokens != 0


def _openpi_like(name: str, **fields: Any) -> Any:
    """An instance of a dataclass that looks like `openpi.transforms.<name>` (module and name as openpi's)."""
    cls = dataclasses.make_dataclass(name, list(fields), frozen=True)
    cls.__module__ = "openpi.transforms"

    def call(self, data: dict) -> dict:  # openpi's TokenizePrompt, per sample
        data = dict(data)
        tokens, mask = self.tokenizer.tokenize(str(data.pop("prompt")), None)
        return {**data, "tokenized_prompt": tokens, "tokenized_prompt_mask": mask}

    cls.__call__ = call
    return cls(**fields)


# (case id, transform declared "keep", batch it runs on, whether it may drop input images)
KEEP_CASES = [
    ("repack_libero", T.RepackTransform(dict(C.LIBERO_REPACK)), _raw_batch, False),
    ("repack_nested", T.RepackTransform({"images": {"cam": "image"}, "state": "state"}), _raw_batch, True),
    ("inject_prompt", T.InjectDefaultPrompt("pick"), lambda: {k: v for k, v in _model_inputs().items()
                                                              if k != "prompt"}, False),
    ("prompt_from_task", T.PromptFromLeRobotTask({0: "a", 1: "b"}), _raw_batch, False),
    ("libero_inputs_pi0", T.LiberoInputs(C.ModelType.PI0), _repacked, False),
    ("libero_inputs_fast", T.LiberoInputs(C.ModelType.PI0_FAST), _repacked, False),
    ("libero_outputs", T.LiberoOutputs(), _model_inputs, True),
    ("droid_inputs_pi05", T.DroidInputs(C.ModelType.PI05), _droid_batch, True),  # exterior_image_2 dropped
    ("droid_inputs_fast", T.DroidInputs(C.ModelType.PI0_FAST), _droid_batch, True),
    ("aloha_inputs", T.AlohaInputs(), _aloha_batch, True),  # cam_low dropped
    ("delta_actions", T.DeltaActions(MASK), _model_inputs, False),
    ("absolute_actions", T.AbsoluteActions(MASK), _model_inputs, False),
    ("subsample_actions", T.SubsampleActions(2), _model_inputs, False),
    ("pad_states_actions", T.PadStatesAndActions(32), _model_inputs, False),
    ("remove_strings", T.RemoveStrings(), _model_inputs, False),
    ("normalize_none", T.Normalize(None), _model_inputs, False),
    ("normalize_zscore", T.Normalize({"state": _stats(8), "actions": _stats(7)}), _model_inputs, False),
    ("normalize_quantile", T.Normalize({"state": _stats(8), "actions": _stats(7)}, use_quantiles=True),
     _model_inputs, False),
    ("unnormalize", T.Unnormalize({"state": _stats(8), "actions": _stats(7)}), _model_inputs, False),
    ("tokenize", T.BatchedTokenizePrompt(_openpi_like("TokenizePrompt", tokenizer=_Tokenizer(),
                                                      discrete_state_input=False)), _model_inputs, False),
    ("composite", T.compose([T.RepackTransform(dict(C.LIBERO_REPACK)), T.LiberoInputs(C.ModelType.PI0),
                             T.DeltaActions(MASK), T.PadStatesAndActions(32)]), _raw_batch, False),
]


def _images(tree: dict) -> list[np.ndarray]:
    """The camera images of a (batch or sample) dict: its uint8 leaves with at least 3 dimensions."""
    return [np.asarray(v) for v in T.flatten_dict(tree).values()
            if isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim >= 3]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _assert_pixels_kept(before: dict, after: dict, *, may_drop: bool) -> None:
    ins = [x.copy() for x in _images(before)]
    outs = _images(after)
    assert ins, "the case has no images to keep"
    for out in outs:  # each output image is an input image, bytes and all (or LiberoInputs' zero camera)
        zero_fill = not out.any() and any(out.shape == x.shape for x in ins)
        assert zero_fill or any(_same(out, x) for x in ins), f"an output image {out.shape} is not an input image"
    if not may_drop:
        for x in ins:
            assert any(_same(out, x) for out in outs), f"an input image {x.shape} is missing from the output"


@pytest.mark.parametrize("case, transform, make, may_drop", KEEP_CASES, ids=[c[0] for c in KEEP_CASES])
def test_keep_declarations_hand_on_images_bit_identical(case, transform, make, may_drop):
    assert transform.pixel_effect() == PixelEffect.KEEP
    batch = make()
    snapshot = [x.copy() for x in _images(batch)]
    _assert_pixels_kept(batch, transform.batch(batch), may_drop=may_drop)
    sample = T.split_batch(batch)[1]
    _assert_pixels_kept(sample, transform(sample), may_drop=may_drop)
    assert all(_same(a, b) for a, b in zip(snapshot, _images(batch), strict=True)), "input images modified"


def test_every_transform_that_declares_an_effect_has_a_behaviour_case():
    covered = {type(t) for _, t, _, _ in KEEP_CASES}
    declaring = {cls for name in T.__all__ if isinstance(cls := getattr(T, name), type)
                 and issubclass(cls, T.Transform) and cls.pixel_effect is not T.Transform.pixel_effect}
    assert declaring - {T.ResizeImages} <= covered, sorted(c.__name__ for c in declaring - covered)
    # the hand-kept list this replaces (data_loader._PIXEL_NEUTRAL) is all declared "keep"
    old_neutral = {T.RepackTransform, T.LiberoInputs, T.InjectDefaultPrompt, T.PromptFromLeRobotTask,
                   T.PadStatesAndActions, T.DeltaActions, T.AbsoluteActions, T.BatchedTokenizePrompt}
    assert old_neutral <= covered


def test_resize_images_declares_its_size_and_resizes_only_the_model_cameras():
    t = T.ResizeImages(20, 24)
    assert t.pixel_effect() == PixelEffect.resize(20, 24) and t.pixel_effect().size == (20, 24)
    assert pixel_effect_of(t).kind == "resize"
    batch = {**_model_inputs(), "raw": _raw_batch(3)["image"]}
    out = t.batch(batch)
    for k, v in batch["image"].items():
        assert out["image"][k].shape == (B, 20, 24, 3)
        np.testing.assert_array_equal(out["image"][k], T.resize_with_pad(v, 20, 24))
    assert out["raw"] is batch["raw"]


class _Undeclared(T.Transform):
    def __call__(self, data: dict) -> dict:
        return data


class _DeclaresKeep:
    def __call__(self, data: dict) -> dict:
        return data

    def pixel_effect(self) -> PixelEffect:
        return PixelEffect.KEEP


class _DeclaresNonsense(_DeclaresKeep):
    def pixel_effect(self) -> Any:
        return "keep"


def _identity(data: dict) -> dict:
    return data


@pytest.mark.parametrize("t", [_identity, lambda d: d, _Undeclared(), _DeclaresNonsense(),
                               _openpi_like("SomeOtherTransform", x=1), batched(_openpi_like("Unknown", y=2))],
                         ids=["function", "lambda", "undeclared_subclass", "non_effect_answer", "openpi_like",
                              "unknown_openpi_batched"])
def test_undeclared_callables_may_change_pixels(t):
    assert pixel_effect_of(t) == PixelEffect.CHANGE
    assert decode_size([("data", [t, T.ResizeImages(8, 8)])]) is None


def test_a_foreign_declaration_is_honoured():
    assert pixel_effect_of(_DeclaresKeep()) == PixelEffect.KEEP
    assert decode_size([("data", [_DeclaresKeep()]), ("model", [T.ResizeImages(8, 10)])]) == (8, 10)


def test_normalize_with_image_stats_changes_pixels():
    for stats in ({"image": {"base_0_rgb": _stats(3)}}, {"state": _stats(8), "image/left_wrist_0_rgb": _stats(3)}):
        t = T.Normalize(stats)
        assert t.pixel_effect() == PixelEffect.CHANGE
        assert T.Unnormalize(stats).pixel_effect() == PixelEffect.CHANGE
    batch = _model_inputs()
    out = T.Normalize({"image": {"base_0_rgb": _stats(3)}}).batch(batch)
    assert not np.array_equal(out["image"]["base_0_rgb"], batch["image"]["base_0_rgb"])


def test_composite_effects_fold_in_order():
    keep, resize, change = T.RepackTransform({"image": "image"}), T.ResizeImages(8, 8), _identity
    assert T.compose([]).pixel_effect() == PixelEffect.KEEP
    assert T.compose([keep, resize, keep]).pixel_effect() == PixelEffect.resize(8, 8)
    assert T.compose([resize, change]).pixel_effect() == PixelEffect.CHANGE
    assert T.compose([resize, T.ResizeImages(4, 4)]).pixel_effect() == PixelEffect.CHANGE
    assert T.compose([change, resize]).pixel_effect() == PixelEffect.CHANGE
    assert decode_size([("data", [T.compose([keep, resize])])]) == (8, 8)


def test_pixel_effect_rejects_inconsistent_values():
    with pytest.raises(ValueError, match="kind must be"):
        PixelEffect("blur")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size is required"):
        PixelEffect("resize")
    with pytest.raises(ValueError, match="size is required"):
        PixelEffect("keep", (2, 2))


# ------------------------------------------------------------------------------------------- decode_size


_OLD_NEUTRAL = (T.RepackTransform, T.LiberoInputs, T.InjectDefaultPrompt, T.PromptFromLeRobotTask,
                T.PadStatesAndActions, T.DeltaActions, T.AbsoluteActions, T.BatchedTokenizePrompt)


def _old_decode_time_resize(stages: list[tuple[str, list]]) -> tuple[int, int] | None:
    """`data_loader.decode_time_resize` as it was, with its hand-kept `_PIXEL_NEUTRAL` type list."""
    for _, transforms in stages:
        for t in transforms:
            if isinstance(t, T.ResizeImages):
                return int(t.height), int(t.width)
            if isinstance(t, T.Normalize):
                if any(k.split("/")[0] == "image" for k in T.flatten_dict(dict(t.norm_stats or {}))):
                    return None
                continue
            if not isinstance(t, _OLD_NEUTRAL):
                return None
    return None


def _tok(d: dict) -> dict:
    return d


_OPENPI_TOKENIZE = _openpi_like("TokenizePrompt", tokenizer=_Tokenizer(), discrete_state_input=False)
_OPENPI_RESIZE = _openpi_like("ResizeImages", height=64, width=48)

# (id, data config factory, model config, expected decode size without norm stats on images)
CONFIGS = [
    ("libero_pi0", C.LeRobotLiberoDataConfig(repo_id="r"), C.Pi0Config(), (224, 224)),
    ("libero_pi05", C.LeRobotLiberoDataConfig(repo_id="r"), C.Pi0Config(pi05=True), (224, 224)),
    ("libero_fast", C.LeRobotLiberoDataConfig(repo_id="r"), C.Pi0FASTConfig(), (224, 224)),
    ("libero_delta", C.LeRobotLiberoDataConfig(repo_id="r", extra_delta_transform=True), C.Pi0Config(), (224, 224)),
    ("native_size", C.LeRobotLiberoDataConfig(
        repo_id="r", model_transforms=C.ModelTransformFactory(image_resolution=None)), C.Pi0Config(), None),
    ("prompt_tokenizer", C.LeRobotLiberoDataConfig(repo_id="r", model_transforms=C.ModelTransformFactory(
        default_prompt="p", image_resolution=(96, 128), tokenizer=_tok)), C.Pi0Config(), (96, 128)),
    ("openpi_tokenizer", C.LeRobotLiberoDataConfig(repo_id="r", model_transforms=C.ModelTransformFactory(
        tokenizer=_OPENPI_TOKENIZE)), C.Pi0Config(pi05=True), (224, 224)),
    ("multi_dataset", C.MultiDatasetLiberoDataConfig(
        repo_ids=["fake/a", "fake/b"], base_config=C.DataConfig(prompt_from_task=True),
        model_transforms=C.ModelTransformFactory(image_resolution=None)), C.Pi0Config(pi05=True), None),
    ("multi_dataset_resized", C.MultiDatasetLiberoDataConfig(
        repo_ids=["fake/a", "fake/b"], dataset_weights=[1.0, 2.0], extra_delta_transform=True),
     C.Pi0Config(), (224, 224)),
    ("fake", C.FakeDataConfig(), C.Pi0Config(), None),
]

NORM_STATS = {
    "none": None,
    "lowdim": {"state": _stats(8), "actions": _stats(7)},
    "image": {"state": _stats(8), "image": {"base_0_rgb": _stats(3)}},
}


@pytest.mark.parametrize("skip_norm_stats", [False, True])
@pytest.mark.parametrize("stats", sorted(NORM_STATS))
@pytest.mark.parametrize("name, factory, model, expected", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_decode_size_equals_the_old_rule_on_the_configs_stages(tmp_path, name, factory, model, expected, stats,
                                                               skip_norm_stats):
    dc = dataclasses.replace(factory.create(tmp_path, model), norm_stats=NORM_STATS[stats])
    stages = DL.transform_stages(dc, skip_norm_stats=skip_norm_stats)
    assert decode_size(stages) == _old_decode_time_resize(stages)
    images_normalized = stats == "image" and not skip_norm_stats
    assert decode_size(stages) == (None if images_normalized else expected)


def _libero_stages(tmp_path, *, data_inputs=(), resize=(224, 224)) -> list[tuple[str, list]]:
    dc = C.LeRobotLiberoDataConfig(repo_id="r", model_transforms=C.ModelTransformFactory(
        image_resolution=resize)).create(tmp_path, C.Pi0Config())
    dc = dataclasses.replace(dc, data_transforms=dc.data_transforms.push(inputs=list(data_inputs)))
    return DL.transform_stages(dc)


@pytest.mark.parametrize("changer", [_tok, _Undeclared(), T.Normalize({"image": _stats(3)}),
                                     T.ResizeImages(32, 32)],
                         ids=["function", "undeclared_subclass", "normalize_images", "earlier_resize"])
def test_decode_size_is_none_when_pixels_may_change_before_the_resize(tmp_path, changer):
    stages = _libero_stages(tmp_path, data_inputs=[changer])
    expected = (32, 32) if isinstance(changer, T.ResizeImages) else None  # the first resize wins
    assert decode_size(stages) == expected == _old_decode_time_resize(stages)
    assert decode_size(_libero_stages(tmp_path)) == (224, 224)


def test_decode_size_sees_openpi_resize_through_batched(tmp_path):
    batched_resize = batched(_OPENPI_RESIZE)
    assert isinstance(batched_resize, T.ResizeImages)
    assert decode_size([("model", [batched_resize])]) == (64, 48)
    assert decode_size([("model", [_OPENPI_RESIZE])]) is None  # unbatched, it declares nothing
    assert decode_size([("repack", []), ("data", [])]) is None


def test_the_package_re_exports_every_public_name():
    old_public = {"IMAGE_KEYS", "AbsoluteActions", "CompositeTransform", "DataDict", "DataTransformFn",
                  "DeltaActions", "Group", "InjectDefaultPrompt", "LiberoInputs", "LiberoOutputs", "Normalize",
                  "PadStatesAndActions", "PromptFromLeRobotTask", "RemoveStrings", "RepackTransform",
                  "ResizeImages", "SubsampleActions", "Transform", "Unnormalize", "apply_batch",
                  "apply_per_sample", "batch_size_of", "compose", "flatten_dict", "make_bool_mask", "pad_to_dim",
                  "resize_with_pad", "split_batch", "stack_samples", "unflatten_dict"}
    assert old_public <= set(T.__all__) and T.__all__ == sorted(T.__all__)
    import importlib

    modules = ("base", "effects", "common", "libero", "droid", "aloha", "normalize", "batched")
    names = [n for m in modules for n in importlib.import_module(f"fastmix.openpi.transforms.{m}").__all__]
    assert sorted(set(names) - {"batched"}) == T.__all__
    for name in T.__all__:
        assert getattr(T, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        T.nope  # noqa: B018
