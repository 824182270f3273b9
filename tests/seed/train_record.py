"""Imported (by the configs file of `train_runs`) inside an openpi train script's process, before the script
runs: records what each training step trains on, without changing the script.

One JSON line per step into `$FASTMIX_TRAIN_RECORD`: {"framework", "step", "digest" (sha256 of the batch's
actions, state and images), "shapes", "loss"} and, for JAX, the batch's shardings compared with the
`in_shardings` the script gave its jitted step.

- JAX (`scripts/train.py`): `jax.jit` is wrapped; the function the script jits as `partial(train_step, config)`
  gets a recording front (the step number is the train state's `step`, read before the call). The dummy model
  gets a small image encoder (`_debug_siglip`).
- PyTorch (`scripts/train_pytorch.py`): `PI0Pytorch.forward` is wrapped; the step number is `global_step` of the
  script's `train_loop` frame (the forward of that step). The model is made a debug model (`_debug_paligemma`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from typing import Any

import numpy as np

RECORD = os.environ["FASTMIX_TRAIN_RECORD"]


def _write(entry: dict[str, Any]) -> None:
    with open(RECORD, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _batch_arrays(observation: Any, actions: Any, to_numpy) -> dict[str, np.ndarray]:
    arrays = {"actions": to_numpy(actions), "state": to_numpy(observation.state)}
    arrays.update({f"image/{k}": to_numpy(v) for k, v in observation.images.items()})
    return arrays


def _debug_siglip() -> None:
    """The JAX debug model: pi0's image encoder as SigLIP's smallest variant ("mu/14": width 32, one layer)
    instead of So400m, which dominates the dummy model (a step ≈ 60 s on 2 cores): `openpi.models.siglip.Module`,
    which pi0 builds with variant="So400m/14", gets the variant replaced (openpi's code and the script unchanged)."""
    import openpi.models.siglip as siglip

    real = siglip.Module

    def module(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **{**kwargs, "variant": "mu/14"})

    siglip.Module = module


def _install_jax() -> None:
    import jax

    _debug_siglip()

    real_jit = jax.jit

    def jit(fun: Any, *args: Any, **kwargs: Any) -> Any:
        compiled = real_jit(fun, *args, **kwargs)
        inner = getattr(fun, "func", None)
        if not (isinstance(fun, functools.partial) and getattr(inner, "__name__", "") == "train_step"):
            return compiled
        data_sharding = (kwargs.get("in_shardings") or (None, None, None))[2]

        def step(rng: Any, state: Any, batch: Any) -> Any:
            observation, actions = batch
            leaves = jax.tree.leaves(batch)
            arrays = _batch_arrays(observation, actions, lambda x: np.asarray(jax.device_get(x)))
            entry = {"framework": "jax", "step": int(jax.device_get(state.step)), "digest": _digest(arrays),
                     "shapes": {k: list(v.shape) for k, v in arrays.items()},
                     "sharding": str(actions.sharding.spec),
                     "all_data_sharding": all(leaf.sharding == data_sharding for leaf in leaves),
                     "data_sharding": str(getattr(data_sharding, "spec", None))}
            new_state, info = compiled(rng, state, batch)
            entry["loss"] = float(jax.device_get(info["loss"]))
            _write(entry)
            return new_state, info

        return step

    jax.jit = jit


def _global_step() -> int:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "train_loop" and "global_step" in frame.f_locals:
            return int(frame.f_locals["global_step"])
        frame = frame.f_back
    raise RuntimeError("train_record: PI0Pytorch.forward called outside train_pytorch.py's train_loop")


def _debug_paligemma() -> None:
    """openpi's PyTorch pi0 fixes PaliGemma's image projection at gemma_2b's width (2048), so the "dummy"
    variant (width 64), which its JAX model runs, cannot run in PyTorch, and gemma_2b does not fit a CPU test.
    The debug model here: the projection at the language model's width and a one-layer SigLIP, set on the
    transformers config openpi's `PaliGemmaWithExpertModel` builds (openpi's code and the script unchanged)."""
    import openpi.models_pytorch.gemma_pytorch as gemma_pytorch

    real = gemma_pytorch.PaliGemmaForConditionalGeneration

    def paligemma(config: Any) -> Any:
        config.vision_config.projection_dim = config.text_config.hidden_size
        config.vision_config.num_hidden_layers = 1
        return real(config=config)

    gemma_pytorch.PaliGemmaForConditionalGeneration = paligemma


def _install_pytorch() -> None:
    import openpi.models_pytorch.pi0_pytorch as pi0_pytorch

    _debug_paligemma()

    real_forward = pi0_pytorch.PI0Pytorch.forward

    def forward(self: Any, observation: Any, actions: Any, *args: Any, **kwargs: Any) -> Any:
        arrays = _batch_arrays(observation, actions, lambda x: x.detach().cpu().float().numpy())
        entry = {"framework": "pytorch", "step": _global_step(), "digest": _digest(arrays),
                 "shapes": {k: list(v.shape) for k, v in arrays.items()}}
        losses = real_forward(self, observation, actions, *args, **kwargs)
        entry["loss"] = float(losses.detach().float().mean())
        _write(entry)
        return losses

    pi0_pytorch.PI0Pytorch.forward = forward


if os.environ.get("FASTMIX_TRAIN_FRAMEWORK") == "pytorch":
    _install_pytorch()
else:
    _install_jax()
