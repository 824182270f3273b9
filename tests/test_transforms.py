"""Transforms: openpi parity with expected values written from openpi's documented math, and batch == per-sample."""

from __future__ import annotations

import numpy as np
import pytest

from fastmix.openpi import transforms as T
from fastmix.openpi.config import ModelType
from fastmix.openpi.norm_stats import NormStats

RNG = np.random.default_rng(0)


def _libero_sample(seed: int, *, float_chw: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    wrist = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    if float_chw:  # what LeRobotDataset returns: float32 CHW in [0, 1]
        img = np.moveaxis(img, -1, 0).astype(np.float32) / 255.0
        wrist = np.moveaxis(wrist, -1, 0).astype(np.float32) / 255.0
    return {
        "image": img,
        "wrist_image": wrist,
        "state": rng.normal(size=8).astype(np.float32),
        "actions": rng.normal(size=(5, 7)).astype(np.float32),
        "prompt": f"task {seed}",
        "task_index": np.int64(seed % 2),
    }


def _stats(dim: int, seed: int = 1) -> NormStats:
    rng = np.random.default_rng(seed)
    q01 = rng.uniform(-2, -1, size=dim)
    return NormStats(mean=rng.normal(size=dim), std=rng.uniform(0.5, 2, size=dim), q01=q01, q99=q01 + rng.uniform(1, 3, size=dim))


# ------------------------------------------------------------------------------------------- normalization


def test_quantile_normalization_maps_q01_to_minus_one_and_q99_to_one():
    s = _stats(4)
    norm = T.Normalize({"state": s}, use_quantiles=True)
    x = np.stack([s.q01, s.q99, (s.q01 + s.q99) / 2])
    out = norm({"state": x})["state"]
    np.testing.assert_allclose(out[0], -1.0, atol=1e-6)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-5)
    np.testing.assert_allclose(out[2], 0.0, atol=1e-5)


def test_zscore_normalization_is_x_minus_mean_over_std_plus_eps():
    s = NormStats(mean=[1.0, -2.0], std=[2.0, 0.5])
    out = T.Normalize({"state": s})({"state": np.array([3.0, -1.0])})["state"]
    np.testing.assert_allclose(out, [(3.0 - 1.0) / (2.0 + 1e-6), (-1.0 + 2.0) / (0.5 + 1e-6)], rtol=1e-12)


def test_normalize_truncates_stats_to_data_dim_and_keeps_float32():
    s = NormStats(mean=np.arange(10.0), std=np.ones(10))
    x = np.ones((2, 3, 4), dtype=np.float32)  # batch of action chunks with 4 dims
    out = T.Normalize({"actions": s})({"actions": x})["actions"]
    assert out.dtype == np.float32 and out.shape == (2, 3, 4)
    np.testing.assert_allclose(out[0, 0], (1.0 - np.arange(4.0)) / (1 + 1e-6), rtol=1e-6)


@pytest.mark.parametrize("quantile", [False, True])
def test_unnormalize_inverts_normalize_and_passes_padding_through(quantile):
    s = _stats(5)
    x = RNG.normal(size=(3, 7))  # 2 padded dims beyond the stats
    normed = T.Normalize({"state": s}, use_quantiles=quantile)({"state": x[:, :5]})["state"]
    padded = np.concatenate([normed, x[:, 5:]], axis=-1)
    back = T.Unnormalize({"state": s}, use_quantiles=quantile)({"state": padded})["state"]
    np.testing.assert_allclose(back[:, :5], x[:, :5], atol=1e-9)
    np.testing.assert_allclose(back[:, 5:], x[:, 5:] * ((1 + 1e-6) if not quantile else 1.0), atol=1e-9)


def test_quantile_normalize_requires_q01_q99_naming_the_key():
    with pytest.raises(ValueError, match="Key state is missing q01 or q99"):
        T.Normalize({"state": NormStats(mean=[0.0], std=[1.0])}, use_quantiles=True)


def test_strict_normalize_names_missing_key():
    norm = T.Normalize({"state": NormStats(mean=[0.0], std=[1.0])}, strict=True)
    with pytest.raises(KeyError, match="'state'"):
        norm({"actions": np.zeros(1)})


def test_normalize_none_is_identity():
    data = {"state": np.ones(3)}
    assert T.Normalize(None)(data) is data


# ----------------------------------------------------------------------------------------------- actions


def test_make_bool_mask_matches_openpi_examples():
    assert T.make_bool_mask(2, -2, 2) == (True, True, False, False, True, True)
    assert T.make_bool_mask(2, 0, 2) == (True, True, True, True)
    assert T.make_bool_mask(6, -1) == (True,) * 6 + (False,)


def test_delta_then_absolute_actions():
    state = np.array([1.0, 2.0, 3.0, 10.0])
    actions = np.array([[1.5, 2.5, 3.5, 0.5], [2.0, 2.0, 2.0, 1.0]])
    mask = T.make_bool_mask(3, -1)
    delta = T.DeltaActions(mask)({"state": state, "actions": actions})
    expected = np.array([[0.5, 0.5, 0.5, 0.5], [1.0, 0.0, -1.0, 1.0]])
    np.testing.assert_allclose(delta["actions"], expected)
    np.testing.assert_allclose(actions[0], [1.5, 2.5, 3.5, 0.5])  # the input is not modified
    back = T.AbsoluteActions(mask)(delta)
    np.testing.assert_allclose(back["actions"], actions)


def test_delta_actions_batch_equals_per_sample():
    states = RNG.normal(size=(4, 8)).astype(np.float32)
    actions = RNG.normal(size=(4, 5, 7)).astype(np.float32)
    t = T.DeltaActions(T.make_bool_mask(6, -1))
    batched = t.batch({"state": states, "actions": actions})["actions"]
    for i in range(4):
        expected = actions[i].copy()
        expected[:, :6] -= states[i, :6]  # independent: subtract the current state from the 6 joint dims
        np.testing.assert_allclose(batched[i], expected, rtol=1e-6)


def test_pad_states_and_actions_zero_pads_last_dim():
    out = T.PadStatesAndActions(10)({"state": np.ones(8), "actions": np.ones((5, 7))})
    assert out["state"].shape == (10,) and out["actions"].shape == (5, 10)
    assert out["state"][8:].tolist() == [0, 0] and not out["actions"][:, 7:].any()
    assert T.PadStatesAndActions(4)({"state": np.ones(8)})["state"].shape == (8,)  # never truncates


def test_subsample_actions_batch():
    a = np.arange(2 * 6 * 1).reshape(2, 6, 1)
    assert T.SubsampleActions(2).batch({"actions": a})["actions"][:, :, 0].tolist() == [[0, 2, 4], [6, 8, 10]]
    assert T.SubsampleActions(3)({"actions": a[0]})["actions"][:, 0].tolist() == [0, 3]


# ------------------------------------------------------------------------------------------------ images


def test_resize_with_pad_keeps_aspect_and_centres():
    img = np.full((6, 12, 3), 200, dtype=np.uint8)  # H=6, W=12 -> 24x24: scaled x2 to 12x24, 6 rows pad on top
    out = T.resize_with_pad(img, 24, 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    assert (out[6:18] == 200).all()
    assert not out[:6].any() and not out[18:].any()


def test_resize_with_pad_batch_dims_and_identity():
    imgs = RNG.integers(0, 256, size=(2, 3, 8, 8, 3), dtype=np.uint8)
    assert T.resize_with_pad(imgs, 8, 8) is imgs
    out = T.resize_with_pad(imgs, 16, 16)
    assert out.shape == (2, 3, 16, 16, 3)
    np.testing.assert_array_equal(out[1, 2], T.resize_with_pad(imgs[1, 2], 16, 16))


def test_resize_images_on_every_camera():
    data = {"image": {"a": np.zeros((4, 8, 3), np.uint8), "b": np.zeros((8, 8, 3), np.uint8)}}
    out = T.ResizeImages(16, 16)(data)
    assert {k: v.shape for k, v in out["image"].items()} == {"a": (16, 16, 3), "b": (16, 16, 3)}


# -------------------------------------------------------------------------------------- repack / prompts


def test_repack_nested_structure_and_missing_key_error():
    data = {"observation": {"images": {"top": 1}}, "action": 2, "extra": 3}
    out = T.RepackTransform({"images": {"cam_high": "observation/images/top"}, "actions": "action"})(data)
    assert out == {"images": {"cam_high": 1}, "actions": 2}
    with pytest.raises(KeyError, match="'prompt'"):
        T.RepackTransform({"prompt": "prompt"})(data)


def test_inject_default_prompt_sample_and_batch():
    t = T.InjectDefaultPrompt("pick")
    assert str(t({})["prompt"]) == "pick"
    assert t({"prompt": "keep"})["prompt"] == "keep"
    assert t.batch({"state": np.zeros((3, 2))})["prompt"] == ["pick"] * 3
    assert "prompt" not in T.InjectDefaultPrompt(None).batch({"state": np.zeros((3, 2))})


def test_prompt_from_lerobot_task_and_error_names_index():
    t = T.PromptFromLeRobotTask({0: "open", 1: "close"})
    assert t({"task_index": np.int64(1)})["prompt"] == "close"
    assert t.batch({"task_index": np.array([1, 0, 1])})["prompt"] == ["close", "open", "close"]
    with pytest.raises(ValueError, match="task_index=7"):
        t({"task_index": 7})
    with pytest.raises(ValueError, match="task_index"):
        t.batch({"state": np.zeros((1, 1))})


# ------------------------------------------------------------------------------------------------ LIBERO


def _repack():
    from fastmix.openpi.config import LIBERO_REPACK

    return T.RepackTransform(dict(LIBERO_REPACK))


def test_libero_inputs_openpi_layout_and_masks():
    sample = _repack()(_libero_sample(0))
    for model_type, right in [(ModelType.PI0, False), (ModelType.PI05, False), (ModelType.PI0_FAST, True)]:
        out = T.LiberoInputs(model_type)(sample)
        assert set(out["image"]) == set(T.IMAGE_KEYS) == set(out["image_mask"])
        assert bool(out["image_mask"]["right_wrist_0_rgb"]) is right
        assert bool(out["image_mask"]["base_0_rgb"]) and bool(out["image_mask"]["left_wrist_0_rgb"])
        assert not out["image"]["right_wrist_0_rgb"].any()
        np.testing.assert_array_equal(out["image"]["base_0_rgb"], sample["observation/image"])
        assert out["prompt"] == "task 0" and out["actions"] is sample["actions"]


def test_libero_inputs_parses_lerobot_float_chw_images():
    u8 = _repack()(_libero_sample(3))
    f32 = _repack()(_libero_sample(3, float_chw=True))
    out = T.LiberoInputs(ModelType.PI05)(f32)
    assert out["image"]["base_0_rgb"].dtype == np.uint8 and out["image"]["base_0_rgb"].shape == (12, 16, 3)
    np.testing.assert_array_equal(out["image"]["base_0_rgb"], u8["observation/image"])
    batch = T.stack_samples([f32, _repack()(_libero_sample(4, float_chw=True))])
    np.testing.assert_array_equal(T.LiberoInputs(ModelType.PI05).batch(batch)["image"]["base_0_rgb"][0], u8["observation/image"])


def test_libero_outputs_first_seven_dims():
    out = T.LiberoOutputs()({"actions": np.ones((2, 5, 32)), "state": np.ones(3)})
    assert list(out) == ["actions"] and out["actions"].shape == (2, 5, 7)


# ---------------------------------------------------------------------------- whole pipelines: batch parity


def _pipeline(quantile: bool) -> list:
    stats = {"state": _stats(8, 2), "actions": _stats(7, 3)}
    return [
        _repack(),
        T.LiberoInputs(ModelType.PI05 if quantile else ModelType.PI0),
        T.DeltaActions(T.make_bool_mask(6, -1)),
        T.Normalize(stats, use_quantiles=quantile),
        T.InjectDefaultPrompt("unused"),
        T.ResizeImages(24, 24),
        T.PadStatesAndActions(32),
    ]


@pytest.mark.parametrize("quantile", [False, True])
def test_batch_pipeline_equals_per_sample_pipeline(quantile):
    samples = [_libero_sample(i) for i in range(4)]
    pipeline = _pipeline(quantile)
    per_sample = [T.compose(pipeline)({**s}) for s in samples]
    batched = T.apply_batch(pipeline, T.stack_samples(samples))
    assert batched["prompt"] == [f"task {i}" for i in range(4)]
    assert batched["state"].shape == (4, 32) and batched["actions"].shape == (4, 5, 32)
    for i, ref in enumerate(per_sample):
        np.testing.assert_allclose(batched["state"][i], ref["state"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(batched["actions"][i], ref["actions"], rtol=1e-6, atol=1e-6)
        for k in T.IMAGE_KEYS:
            np.testing.assert_array_equal(batched["image"][k][i], ref["image"][k])
            assert bool(batched["image_mask"][k][i]) == bool(ref["image_mask"][k])


def test_pipeline_values_match_openpi_math_independently():
    s = _libero_sample(7)
    stats = {"state": _stats(8, 2), "actions": _stats(7, 3)}
    out = T.apply_batch(_pipeline(True), T.stack_samples([s]))
    # openpi: delta on the 6 joint dims, quantile-normalize, zero-pad to 32.
    actions = s["actions"].astype(np.float64)
    actions[:, :6] -= s["state"][:6]
    q01, q99 = stats["actions"].q01, stats["actions"].q99
    expected_actions = 2.0 * (actions - q01) / (q99 - q01 + 1e-6) - 1.0
    np.testing.assert_allclose(out["actions"][0, :, :7], expected_actions, rtol=1e-5, atol=1e-5)
    assert not out["actions"][0, :, 7:].any()
    sq01, sq99 = stats["state"].q01, stats["state"].q99
    np.testing.assert_allclose(out["state"][0, :8], 2.0 * (s["state"] - sq01) / (sq99 - sq01 + 1e-6) - 1.0, rtol=1e-5, atol=1e-5)


def test_foreign_per_sample_transform_runs_unchanged_on_batches():
    calls = []

    def tokenize(data: dict) -> dict:  # an openpi-style per-sample transform that mutates in place
        calls.append(1)
        prompt = data.pop("prompt")
        data["tokenized_prompt"] = np.array([len(prompt), 1, 2], dtype=np.int32)
        data["tokenized_prompt_mask"] = np.array([True, True, False])
        data["state"] += 1.0
        return data

    state = np.zeros((3, 2), dtype=np.float32)
    batch = {"state": state, "prompt": ["a", "bb", "ccc"]}
    out = T.apply_batch([tokenize], batch)
    assert len(calls) == 3
    assert out["tokenized_prompt"].shape == (3, 3) and out["tokenized_prompt"][:, 0].tolist() == [1, 2, 3]
    assert out["tokenized_prompt_mask"].dtype == bool and "prompt" not in out
    assert not state.any()  # the batch handed in was not modified
    np.testing.assert_array_equal(out["state"], np.ones((3, 2)))


def test_trace_sees_every_stage_and_group_push():
    seen = []
    g = T.Group(inputs=[T.InjectDefaultPrompt("x")], outputs=[T.LiberoOutputs()])
    g2 = g.push(inputs=[T.PadStatesAndActions(4)], outputs=[T.Unnormalize(None)])
    assert [type(t).__name__ for t in g2.inputs] == ["InjectDefaultPrompt", "PadStatesAndActions"]
    assert [type(t).__name__ for t in g2.outputs] == ["Unnormalize", "LiberoOutputs"]
    T.apply_batch(g2.inputs, {"state": np.ones((2, 3))}, trace=lambda i, t, b, a: seen.append((i, sorted(a))))
    assert seen == [(0, ["prompt", "state"]), (1, ["prompt", "state"])]


def test_remove_strings_and_flatten_roundtrip():
    data = {"a": {"b": np.ones(2), "c": {"d": 1}}, "p": ["x", "y"], "q": "z"}
    assert T.unflatten_dict(T.flatten_dict(data)) == {"a": {"b": data["a"]["b"], "c": {"d": 1}}, "p": ["x", "y"], "q": "z"}
    assert set(T.RemoveStrings()(data)) == {"a"}
