"""Where the training thread's time goes end to end: the openpi fork's `create_data_loader` after
`fastmix.openpi.install()` (benchmarks/seed_setup.py's config: 2 LIBERO-like v2.1 datasets, 2 cameras 256x256
AV1, weights [1, 3], pi0 transforms to 224x224 with tokenized prompts, batch 32, 2 workers, pytorch).

Seed environment only. Writes a JSON of per-batch milliseconds (median and mean over the measured batches) and
prints a table; benchmarks/PROFILE_E2E.md is written from its output. The instrumentation wraps functions of
this process at run time (timers around them); nothing in fastmix or openpi is changed.

    PYTHONPATH=$PWD <seed python> -m benchmarks.profile_e2e_seed [--batches 20] [--json out.json]

Parts measured per batch (a part that runs on another thread of the process is prefixed "[other thread]"):
* loader `next()`: sampler draw, planning (`BatchPlanner.plan`, which includes the low-dim gather and the task
  lookup), handing work to the workers, waiting for the workers (`_complete` polls), copying the slot into
  fresh tensors (`host_batch`);
* the transform stages: `_to_numpy`, each transform (openpi's are applied per sample: split the batch, call,
  stack; split/stack also reported on their own), `_to_framework` (torch conversion);
* `Observation.from_dict` (uint8 -> float32 [-1, 1], permute to BCHW).
Then: what the workers produce when the consumer is free (the raw MixtureLoader, nothing done with a batch), and
micro-measurements of the pieces of a faster design (resize per image vs per batch, tokenization cached,
vectorized normalization, float conversion, copies).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import seed_setup

T: dict[str, float] = defaultdict(float)  # seconds in the current batch, per part
N: dict[str, int] = defaultdict(int)  # calls in the current batch, per part


def where(name: str) -> str:
    """`name`, prefixed "[other thread] " when the caller is not the training (main) thread."""
    return name if threading.current_thread() is threading.main_thread() else f"[other thread] {name}"


def timed(name: str, fn: Callable) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            key = where(name)
            T[key] += time.perf_counter() - t0
            N[key] += 1

    return wrapper


def instrument(loader: Any) -> None:
    """Timers around the loader's, the transforms' and the Observation's parts (this process only)."""
    import openpi.models.model as openpi_model

    import fastmix.data_loader as fdl
    import fastmix.loader.mixture_loader as ml
    import fastmix.transforms as ft

    mix = loader.loader
    mix.sampler.next_indices = timed("loader: sampler draw", mix.sampler.next_indices)
    for src in mix.sources:
        src.gather_lowdim = timed("loader: low-dim gather (in planning)", src.gather_lowdim)
        src.tasks_of = timed("loader: task lookup (in planning)", src.tasks_of)
    mix.planner.plan = timed("loader: planning (BatchPlanner.plan, incl. gather)", mix.planner.plan)
    ml.host_batch = timed("loader: slot -> fresh tensors (host_batch)", ml.host_batch)
    ml._EpochIterator._complete = timed("loader: waiting for workers (poll)", ml._EpochIterator._complete)
    ml.split_work = timed("loader: split work", ml.split_work)
    fdl._to_numpy = timed("transform: _to_numpy", fdl._to_numpy)
    fdl._to_framework = timed("transform: torch conversion (_to_framework)", fdl._to_framework)
    ft.split_batch = timed("transform: split batch into samples (per-sample transforms)", ft.split_batch)
    ft.stack_samples = timed("transform: stack samples (per-sample transforms)", ft.stack_samples)
    original = openpi_model.Observation.from_dict.__func__
    openpi_model.Observation.from_dict = classmethod(timed("Observation.from_dict (float conversion)", original))

    last = {"t": 0.0}
    to_numpy = fdl._to_numpy

    def to_numpy_mark(x: Any) -> Any:
        out = to_numpy(x)
        last["t"] = time.perf_counter()
        return out

    fdl._to_numpy = to_numpy_mark

    def trace(stage: str, i: int, t: Any, before: dict, after: dict) -> None:
        now = time.perf_counter()
        T[where(f"transform {stage}: {type(t).__name__}")] += now - last["t"]
        last["t"] = now

    loader.trace = trace


def measure_pipeline(config: Any, batches: int, warmup: int) -> dict[str, Any]:
    import openpi.training.data_loader as dl

    import fastmix.openpi

    assert fastmix.openpi.install()
    try:
        loader = dl.create_data_loader(config, shuffle=True, num_batches=None, framework="pytorch")
        it = iter(loader)
        for _ in range(warmup):
            next(it)
        instrument(loader)  # after the workers started: they never see the timers
        per_batch: dict[str, list[float]] = defaultdict(list)
        calls: dict[str, int] = defaultdict(int)
        for _ in range(batches):
            T.clear()
            N.clear()
            t0 = time.perf_counter()
            next(it)
            total = time.perf_counter() - t0
            per_batch["TOTAL training-thread time per batch"].append(total)
            for k, v in T.items():
                per_batch[k].append(v)
            for k, v in N.items():
                calls[k] += v
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(min(8, batches)):
            next(it)
        prof.disable()
        it.close()
        loader.close()
    finally:
        fastmix.openpi.uninstall()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    return {"batches": batches, "parts": {k: summary(v) for k, v in per_batch.items()},
            "calls_per_batch": {k: v / batches for k, v in calls.items()}, "cprofile_top_tottime": out.getvalue()}


def measure_fork(config: Any, batches: int, warmup: int) -> dict[str, Any]:
    """The fork's own pipeline (no fastmix): per-batch training-thread time and its Observation.from_dict part."""
    import openpi.models.model as openpi_model
    import openpi.training.data_loader as dl

    loader = dl.create_data_loader(config, shuffle=True, num_batches=None, framework="pytorch")
    it = iter(loader)
    original = openpi_model.Observation.from_dict
    try:
        for _ in range(warmup):
            next(it)
        openpi_model.Observation.from_dict = classmethod(
            timed("Observation.from_dict (float conversion)", original.__func__))
        per_batch: dict[str, list[float]] = defaultdict(list)
        for _ in range(batches):
            T.clear()
            t0 = time.perf_counter()
            next(it)
            per_batch["TOTAL training-thread time per batch"].append(time.perf_counter() - t0)
            for k, v in T.items():
                per_batch[k].append(v)
    finally:
        openpi_model.Observation.from_dict = original
        it.close()
        seed_setup.shutdown_fork_loader(loader)
    return {"batches": batches, "parts": {k: summary(v) for k, v in per_batch.items()}}


def summary(xs: list[float]) -> dict[str, float]:
    return {"median_ms": 1e3 * statistics.median(xs), "mean_ms": 1e3 * statistics.fmean(xs)}


def measure_free_consumer(config: Any, batches: int, image_dtype: str) -> dict[str, float]:
    """The raw MixtureLoader on the same sources (2 workers), the consumer doing nothing with a batch."""
    from fastmix.data_loader import open_sources
    from fastmix.loader.mixture_loader import MixtureLoader

    data_config = config.data.create(config.assets_dirs, config.model)
    loader = MixtureLoader(open_sources(data_config), dataset_weights=seed_setup.WEIGHTS,
                           batch_size=seed_setup.BATCH, action_horizon=seed_setup.HORIZON,
                           num_workers=seed_setup.WORKERS, seed=3, num_batches=10**9, image_dtype=image_dtype)
    try:
        it = iter(loader)
        for _ in range(4):
            next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        dt = time.perf_counter() - t0
    finally:
        loader.close()
    return {"samples_per_s": batches * seed_setup.BATCH / dt, "ms_per_batch": 1e3 * dt / batches}


def best_ms(fn: Callable[[], Any], repeat: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def micro(config: Any) -> dict[str, Any]:
    """Costs of the pieces of a faster design, single-threaded numpy/PIL in this process, torch with its default
    threads and with 1 thread (best of 7, ms), plus the bit-identity checks a design relies on."""
    import torch
    from openpi_client import image_tools

    from fastmix.data_loader import open_sources

    data_config = config.data.create(config.assets_dirs, config.model)
    src = open_sources(data_config)[0]
    frame = src[0]["image"]  # a real frame of the mixture, float32 CHW in [0, 1]
    img = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (256, 256, 3)
    batch = np.stack([np.roll(img, 7 * i, axis=1) for i in range(seed_setup.BATCH)])  # (32, 256, 256, 3)
    out: dict[str, Any] = {"torch threads (default)": torch.get_num_threads()}

    # resize: the fork's ResizeImages calls openpi_client.image_tools.resize_with_pad (PIL bilinear) per sample
    out["resize PIL 1 image 256->224 (openpi_client resize_with_pad)"] = best_ms(
        lambda: image_tools.resize_with_pad(img, 224, 224))
    out["resize PIL 32 images, one call"] = best_ms(lambda: image_tools.resize_with_pad(batch, 224, 224))
    per_image = np.stack([image_tools.resize_with_pad(b, 224, 224) for b in batch])
    out["resize 32 in one call == 32 single calls (bit-identical)"] = bool(
        np.array_equal(image_tools.resize_with_pad(batch, 224, 224), per_image))
    zeros = np.zeros_like(img)
    out["resize of the all-zero right-wrist image is all zeros"] = bool(
        not image_tools.resize_with_pad(zeros, 224, 224).any())

    # tokenization: per call vs a cache per distinct prompt
    tok_t = next(t for t in data_config.model_transforms.inputs if type(t).__name__ == "TokenizePrompt")
    tok = tok_t.tokenizer
    prompt = seed_setup.MIXTURE[0][3][0]
    out["tokenize 1 prompt (PaligemmaTokenizer.tokenize)"] = best_ms(lambda: tok.tokenize(prompt, None))
    cache = {prompt: tok.tokenize(prompt, None)}
    prompts = [prompt] * seed_setup.BATCH

    def cached() -> Any:
        toks = [cache[p] for p in prompts]
        return np.stack([t[0] for t in toks]), np.stack([t[1] for t in toks])

    out["tokenize 32 prompts from a per-prompt cache (+ stack)"] = best_ms(cached)

    # normalization vectorized over the batch (z-score, pi0)
    stats = data_config.norm_stats
    state = np.random.default_rng(0).standard_normal((seed_setup.BATCH, 8)).astype(np.float32)
    actions = np.random.default_rng(1).standard_normal((seed_setup.BATCH, seed_setup.HORIZON, 7)).astype(np.float32)

    def normalize() -> Any:
        s, a = stats["state"], stats["actions"]
        return (state - s.mean) / (s.std + 1e-6), (actions - a.mean) / (a.std + 1e-6)

    out["normalize state+actions vectorized (32 samples)"] = best_ms(normalize)

    # float conversion as Observation.from_dict does it (torch uint8 BHWC -> float32 BCHW in [-1, 1])
    u8 = torch.from_numpy(per_image.copy())  # (32, 224, 224, 3)

    def torch_convert() -> Any:
        return u8.to(torch.float32).permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0

    out["from_dict float conversion, 1 camera, torch default threads"] = best_ms(torch_convert)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out["from_dict float conversion, 1 camera, torch 1 thread"] = best_ms(torch_convert)
    torch.set_num_threads(threads)
    npu8 = per_image.copy()
    out["numpy float conversion 1 camera, same ops, to BCHW (worker side)"] = best_ms(
        lambda: np.ascontiguousarray((npu8.astype(np.float32) / 255.0 * 2.0 - 1.0).transpose(0, 3, 1, 2)))
    every = np.arange(256, dtype=np.uint8)
    np_all = every.astype(np.float32) / 255.0 * 2.0 - 1.0
    torch_all = (torch.from_numpy(every).to(torch.float32) / 255.0 * 2.0 - 1.0).numpy()
    out["numpy float conversion == torch's for all 256 uint8 values (bit-identical)"] = bool(
        np.array_equal(np_all, torch_all))
    lut = np_all

    def lut_convert() -> Any:
        return lut[npu8.transpose(0, 3, 1, 2)]

    out["float conversion 1 camera by a 256-entry table, to BCHW (worker side)"] = best_ms(lut_convert)
    f32 = torch.from_numpy(lut_convert())
    import openpi.models.model as openpi_model

    ready = {"image": {k: f32.clone() for k in ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")},
             "image_mask": {k: torch.ones(seed_setup.BATCH, dtype=torch.bool) for k in ("base_0_rgb",)},
             "state": torch.zeros(seed_setup.BATCH, 32), "tokenized_prompt": torch.zeros(seed_setup.BATCH, 48,
                                                                                          dtype=torch.int64),
             "tokenized_prompt_mask": torch.ones(seed_setup.BATCH, 48, dtype=torch.bool)}
    out["Observation.from_dict with images already float32 (no conversion: its type checks only)"] = best_ms(
        lambda: openpi_model.Observation.from_dict({**ready, "image": dict(ready["image"])}))
    out["copy 1 camera float32 BCHW (19 MB)"] = best_ms(lambda: f32.clone())
    out["copy 1 camera uint8 BHWC (4.8 MB)"] = best_ms(lambda: u8.clone())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_e2e_seed", description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads in this (the training) process first (default: torch's own)")
    p.add_argument("--pipeline-only", action="store_true", help="only the instrumented pipeline")
    p.add_argument("--fork", action="store_true", help="also time the fork's own pipeline (training thread)")
    args = p.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    config = seed_setup.e2e_config()
    import torch

    result: dict[str, Any] = {"env": seed_setup.seed_versions(), "batch": seed_setup.BATCH,
                              "workers": seed_setup.WORKERS, "torch_threads": torch.get_num_threads()}
    if args.fork:
        result["fork"] = measure_fork(config, args.batches, args.warmup)
        for k, v in result["fork"]["parts"].items():
            print(f"fork: {v['median_ms']:9.2f} {v['mean_ms']:9.2f}  {k}")
    result["pipeline"] = measure_pipeline(config, args.batches, args.warmup)
    if not args.pipeline_only:
        result["free_consumer_uint8"] = measure_free_consumer(config, 2 * args.batches, "uint8")
        result["free_consumer_float32"] = measure_free_consumer(config, 2 * args.batches, "float32")
        result["micro_ms"] = micro(config)
    parts = result["pipeline"]["parts"]
    for k in sorted(parts, key=lambda k: -parts[k]["mean_ms"]):
        print(f"{parts[k]['median_ms']:9.2f} {parts[k]['mean_ms']:9.2f}  {k}")
    print(json.dumps({k: v for k, v in result.items() if k != "pipeline"}, indent=1))
    print(result["pipeline"]["cprofile_top_tottime"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
