"""End to end through the openpi fork's own pipeline: its `create_data_loader` against the same call after
`fastmix.openpi.install()`. Seed environment only (tests/seed/make-env; `python -m benchmarks` runs this file
there with FASTMIX_BENCH_SEED=1).

Group "e2e openpi fork B=32" (samples/s), both rows on the same config (benchmarks/seed_setup.py): the fork's
`MultiDatasetLiberoDataConfig` over two LIBERO-like v2.1 datasets written by the fork's lerobot (cameras
"image" and "wrist_image" 256x256 AV1, 1,440 frames), dataset_weights [1, 3], pi0 model transforms (repack,
LiberoInputs, Normalize, ResizeImages to 224x224, TokenizePrompt, PadStatesAndActions), batch 32, 2 workers,
`framework="pytorch"`, `shuffle=True`; each batch is the `(Observation, actions)` pair the training loop gets.

* reference (primary) — `openpi.training.data_loader.create_data_loader(config, shuffle=True,
  framework="pytorch")` as the fork ships it (lerobot's default decoder, torchcodec; spawn workers running the
  transforms per sample; its sampler ignores the weights, see the README);
* fastmix — the same call after `fastmix.openpi.install()`.

Both iterate the same number of batches inside one epoch (45 batches), after 5 warm-up batches (workers
started, prefetch queues full). Run (seed env python, from the repo root):
  FASTMIX_BENCH_SEED=1 PYTHONPATH=$PWD python -m pytest benchmarks/bench_e2e_seed.py --benchmark-enable \
      -o python_files='bench_*.py' -q
"""

from __future__ import annotations

import os

import pytest

from benchmarks import seed_setup

pytest.importorskip("openpi.training.data_loader", reason="needs the seed environment (tests/seed/make-env)")

QUICK = os.environ.get("FASTMIX_BENCH_QUICK", "") not in ("", "0")
ROUNDS = 2 if QUICK else 3
BATCHES = 4 if QUICK else 8  # per round; warm-up + ROUNDS * BATCHES stays inside one 45-batch epoch
WARMUP = 5
GROUP = f"e2e openpi fork B={seed_setup.BATCH}"


@pytest.fixture(scope="module")
def config():
    return seed_setup.e2e_config()


def run_pipeline(benchmark, config, role: str) -> None:
    import openpi.training.data_loader as dl

    loader = dl.create_data_loader(config, shuffle=True, num_batches=None, framework="pytorch")
    it = iter(loader)
    try:
        benchmark.group = GROUP
        who = ("the fork's own create_data_loader" if role == "reference"
               else "the fork's create_data_loader after fastmix.openpi.install()")
        seed_setup.time_batches(benchmark, it, warmup=WARMUP, batches=BATCHES, rounds=ROUNDS,
                                items=BATCHES * seed_setup.BATCH, info=lambda fmt: dict(
            role=role, items=BATCHES * seed_setup.BATCH, unit="samples", format="Observation float32 BCHW 224",
            desc=f"{who}: MultiDatasetLiberoDataConfig, 2 LIBERO-like v2.1 datasets (2 cameras 256x256 AV1), "
                 f"weights {seed_setup.WEIGHTS}, pi0 transforms (224x224, tokenized prompts), batch "
                 f"{seed_setup.BATCH}, {seed_setup.WORKERS} workers, pytorch; batch: {fmt}",
            env=seed_setup.seed_versions(), **({"primary": True} if role == "reference" else {})))
    finally:
        it.close()
        if role == "reference":
            error = seed_setup.shutdown_fork_loader(loader)
            if error:
                benchmark.extra_info["reference_shutdown_error"] = error
        else:
            loader.close()


def test_fork_create_data_loader(benchmark, config) -> None:
    import fastmix.openpi

    assert not fastmix.openpi.is_installed()
    run_pipeline(benchmark, config, "reference")


def test_fastmix_installed(benchmark, config) -> None:
    from tests.seed.pipelines import fastmix_installed

    with fastmix_installed():
        run_pipeline(benchmark, config, "fastmix")
