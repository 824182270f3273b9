"""`StageMonitor`: the transform trace of `fastmix verify` (counts every transform call per stage and checks
that each stage did its job: repack keys, LIBERO inputs, normalization with the config's stats, resize,
padding, default prompt)."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from fastmix.openpi import transforms as _t


class StageMonitor:
    """Counts every transform call per stage and checks that each stage did its job."""

    def __init__(self, data_config: Any) -> None:
        self.data_config = data_config
        self.calls: collections.Counter = collections.Counter()
        self.problems: list[str] = []
        self.normalized_in_range: list[float] = []

    def _problem(self, msg: str) -> None:
        if msg not in self.problems:
            self.problems.append(msg)

    def __call__(self, stage: str, i: int, t: Any, before: dict, after: dict) -> None:
        self.calls[(stage, i)] += 1
        name = getattr(t, "__name__", type(t).__name__)
        if isinstance(t, _t.RepackTransform):
            want = set(_t.flatten_dict(t.structure))
            got = set(_t.flatten_dict(after))
            if not want <= got:
                self._problem(f"repack: output lacks {sorted(want - got)}")
        elif isinstance(t, _t.LiberoInputs):
            if set(after.get("image", {})) != set(_t.IMAGE_KEYS) or set(after.get("image_mask", {})) != set(_t.IMAGE_KEYS):
                self._problem(f"data: LiberoInputs gave image keys {sorted(after.get('image', {}))}")
            if "state" not in after or "actions" not in after:
                self._problem("data: LiberoInputs output lacks state or actions")
        elif isinstance(t, _t.Normalize) and t.norm_stats is not None:
            self._check_normalize(t, before, after)
        elif isinstance(t, _t.ResizeImages):
            shapes = {k: tuple(np.shape(v)[-3:-1]) for k, v in after["image"].items()}
            bad = {k: s for k, s in shapes.items() if s != (t.height, t.width)}
            if bad:
                self._problem(f"model: ResizeImages left images at {bad}, want {(t.height, t.width)}")
        elif isinstance(t, _t.PadStatesAndActions):
            for k in ("state", "actions"):
                if k in after and np.shape(after[k])[-1] < t.model_action_dim:
                    self._problem(f"model: {k} has {np.shape(after[k])[-1]} dims after padding to {t.model_action_dim}")
        elif isinstance(t, _t.InjectDefaultPrompt) and t.prompt is not None and "prompt" not in after:
            self._problem(f"model: {name} did not set a prompt")

    def _check_normalize(self, t: _t.Normalize, before: dict, after: dict) -> None:
        flat_b, flat_a = _t.flatten_dict(before), _t.flatten_dict(after)
        for key, s in t.norm_stats.items():
            if key not in flat_b:
                continue
            x = np.asarray(flat_b[key], dtype=np.float64)
            d = x.shape[-1]
            if t.use_quantiles:
                q01, q99 = np.asarray(s.q01)[:d], np.asarray(s.q99)[:d]
                want = 2.0 * (x - q01) / (q99 - q01 + 1e-6) - 1.0
            else:
                want = (x - np.asarray(s.mean)[:d]) / (np.asarray(s.std)[:d] + 1e-6)
            got = np.asarray(flat_a[key], dtype=np.float64)  # NaN in, NaN out: the finite-data check names it
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4, equal_nan=True):
                self._problem(f"normalize: {key} is not normalized with the config's norm stats")
            if t.use_quantiles:
                self.normalized_in_range.append(float(np.mean(np.abs(got) <= 1.0 + 1e-3)))


__all__ = ["StageMonitor"]
