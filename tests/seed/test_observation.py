"""`fastmix.openpi.observation.ObservationBuilder` with the fork's own `openpi.models.model.Observation`: the result is
what `Observation.from_dict` builds, the fork's jaxtyping/beartype checks run for every new batch signature
(and still reject a bad batch after good ones were seen), and later batches of a checked signature skip them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

B, H, W, L = 4, 8, 8, 6


def batch(seed: int, *, state_dtype: torch.dtype = torch.float32, batch_size: int = B) -> dict:
    g = torch.Generator().manual_seed(seed)
    images = {k: torch.rand((batch_size, 3, H, W), generator=g) * 2 - 1
              for k in ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")}
    return {
        "image": images,
        "image_mask": {k: torch.ones(batch_size, dtype=torch.bool) for k in images},
        "state": (torch.rand((batch_size, 32), generator=g) * 10).to(state_dtype),
        "tokenized_prompt": torch.randint(0, 100, (batch_size, L), generator=g),
        "tokenized_prompt_mask": torch.ones((batch_size, L), dtype=torch.bool),
        "actions": torch.rand((batch_size, 10, 32), generator=g),
    }


@pytest.fixture()
def counted(monkeypatch):
    """openpi's Observation with its from_dict calls counted (the class itself, checks included, unchanged)."""
    from openpi.models.model import Observation

    calls = []
    original = Observation.from_dict.__func__

    def from_dict(cls, data):
        calls.append(1)
        return original(cls, data)

    monkeypatch.setattr(Observation, "from_dict", classmethod(from_dict))
    return Observation, calls


def fields_equal(a, b) -> None:
    import dataclasses

    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict):
            assert sorted(x) == sorted(y)
            for k in x:
                assert torch.equal(x[k], y[k]), f"{f.name}[{k}]"
        elif x is None:
            assert y is None, f.name
        else:
            assert torch.equal(x, y), f.name


def test_builds_what_from_dict_builds_and_checks_each_signature_once(counted):
    from fastmix.openpi.observation import ObservationBuilder

    Observation, calls = counted
    build = ObservationBuilder(Observation)
    for seed in range(5):
        obs = build(batch(seed))
        assert type(obs) is Observation
        fields_equal(obs, Observation.from_dict(batch(seed)))
    # 5 builds + 5 reference calls: only the builder's first batch went through from_dict
    assert len(calls) == 1 + 5
    assert build.checked_signatures == 1
    build(batch(9, batch_size=B + 1))  # a new signature is checked again
    assert build.checked_signatures == 2 and len(calls) == 7


def test_a_bad_batch_is_rejected_as_openpi_rejects_it(counted):
    from fastmix.openpi.observation import ObservationBuilder

    Observation, _ = counted
    bad = batch(1, state_dtype=torch.int64)  # the fork declares state Float[..., "*b s"]
    with pytest.raises(Exception) as ref:
        Observation.from_dict(batch(1, state_dtype=torch.int64))
    build = ObservationBuilder(Observation)
    build(batch(0))
    build(batch(2))  # a good signature is checked and cached
    with pytest.raises(type(ref.value)):
        build(bad)
    assert build.checked_signatures == 1


def test_uint8_images_always_go_through_from_dict(counted):
    from fastmix.openpi.observation import ObservationBuilder

    Observation, calls = counted
    build = ObservationBuilder(Observation)
    raw = batch(0)
    raw["image"] = {k: torch.randint(0, 256, (B, H, W, 3), dtype=torch.uint8) for k in raw["image"]}
    for _ in range(3):
        data = {**raw, "image": dict(raw["image"])}
        obs = build(data)
        assert all(v.dtype == torch.float32 and v.shape == (B, 3, H, W) for v in obs.images.values())
    assert len(calls) == 3  # from_dict converts uint8 images: never skipped


def test_numpy_batches_jax_framework(counted):
    from fastmix.openpi.observation import ObservationBuilder

    Observation, calls = counted
    build = ObservationBuilder(Observation)
    for seed in range(3):
        data = {k: ({kk: vv.numpy() for kk, vv in v.items()} if isinstance(v, dict) else v.numpy())
                for k, v in batch(seed).items()}
        obs = build(data)
        ref = Observation.from_dict(dict(data))
        for k in obs.images:
            np.testing.assert_array_equal(obs.images[k], ref.images[k])
        np.testing.assert_array_equal(obs.state, ref.state)
    assert build.checked_signatures == 1 and len(calls) == 1 + 3


def test_image_key_order_is_part_of_the_signature(counted):
    """beartype checks one item of a dict, so openpi's verdict can depend on the images' order: a batch with
    the same keys in another order is checked again (and fails where openpi fails)."""
    from fastmix.openpi.observation import ObservationBuilder

    Observation, _ = counted

    def with_order(keys):
        data = batch(0)
        data["image"]["left_wrist_0_rgb"] = data["image"]["left_wrist_0_rgb"].to(torch.int32)
        data["image"] = {k: data["image"][k] for k in keys}
        return data

    good = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    bad = ("left_wrist_0_rgb", "base_0_rgb", "right_wrist_0_rgb")
    Observation.from_dict(with_order(good))  # openpi accepts this order
    with pytest.raises(Exception) as ref:
        Observation.from_dict(with_order(bad))  # and rejects this one
    build = ObservationBuilder(Observation)
    build(with_order(good))
    with pytest.raises(type(ref.value)):
        build(with_order(bad))
