"""A mixture of three robots through the openpi fork's own pipeline: fastmix's `MixtureDataConfig` of the fork's
own data configs against the fork's own loaders, one per robot, run side by side. Seed environment only
(tests/seed/make-env; `python -m benchmarks` runs this file there with FASTMIX_BENCH_SEED=1).

Group "mixture of robots, openpi fork B=32" (samples/s). Data (benchmarks/seed_setup.py `ROBOTS`, written once
by the fork's own lerobot, v2.1, 10 fps each): LIBERO-like (2 cameras 256x256 AV1; state 8, actions 7; 8 x 40
frames), DROID-like (3 cameras 180x320 as PNG in the parquet files; joint 7 + gripper 1, actions 8; 8 x 40),
ALOHA-like (4 cameras 480x640 AV1; state and action 14; 4 x 60). Entries: the fork's own
`LeRobotLiberoDataConfig`, `LeRobotDROIDDataConfig`, `LeRobotAlohaDataConfig` (all four cameras repacked, a
default prompt), each with its own norm stats (the fork's `scripts/compute_norm_stats.py` on that entry
alone). Both rows: the fork's `TrainConfig`, pi0 (action_dim 32, images 224x224, tokenized prompts), action
horizon 10, `framework="pytorch"`, `shuffle=True`, 2 workers per loader; each step hands 32 samples through the
same per-entry transforms (repack, the entry's policy inputs, Normalize with its stats, the model transforms).

* reference (primary) — the fork's own `create_data_loader` on each entry's single-robot `TrainConfig` (its
  loader, lerobot's default decoder torchcodec, its spawn workers: 3 loaders x 2 workers), the three iterated
  in turn in this process; a step takes one batch of each, the 32 rows split by the weights [1, 1, 1] into
  11 / 11 / 10 rows (`seed_setup.split_batch`). Output: three `(Observation, actions)` pairs per step, one per
  robot.
* fastmix — the fork's `create_data_loader` of one `MixtureDataConfig(datasets=[libero, droid, aloha],
  weighting="per_dataset")` after `fastmix.openpi.install()` (2 workers): one `(Observation, actions)` batch of
  32 rows in sampled order, each row's robot drawn by the weights (rows per robot vary per batch; 1/3 each in
  expectation).

fastmix's output is the stricter one: one batch holding several robots, merged in sampled order (state /
actions padded to the model's action_dim, one dtype), ready for a training step; the reference's three batches
would still have to be merged by the training loop, and its split per step is fixed, not drawn.
`extra_info["x_reference"]` on the fastmix row is fastmix/reference samples/s of this run. Run (seed env
python, from the repo root):
  FASTMIX_BENCH_SEED=1 PYTHONPATH=$PWD python -m pytest benchmarks/bench_mixture_seed.py --benchmark-enable \
      -o python_files='bench_*.py' -q
"""

from __future__ import annotations

import os

import pytest

from benchmarks import seed_setup

pytest.importorskip("openpi.training.data_loader", reason="needs the seed environment (tests/seed/make-env)")

QUICK = os.environ.get("FASTMIX_BENCH_QUICK", "") not in ("", "0")
ROUNDS = 2 if QUICK else 3
BATCHES = 4 if QUICK else 8  # steps of 32 samples per round
WARMUP = 3  # steps before timing: workers started, prefetch queues full
BATCH = seed_setup.BATCH
GROUP = f"mixture of robots, openpi fork B={BATCH}"
ROBOTS = "LIBERO-like (2 cams 256x256 AV1), DROID-like (3 cams 180x320 PNG), ALOHA-like (4 cams 480x640 AV1)"
_RATES: dict[str, float] = {}


@pytest.fixture(scope="module")
def entries():
    return seed_setup.robot_entries()


def _rate(benchmark, items: int) -> float:
    stats = getattr(benchmark, "stats", None)
    return items / stats.stats.mean if stats is not None else float("nan")


def test_fork_loaders_side_by_side(benchmark, entries) -> None:
    import openpi.training.data_loader as dl

    import fastmix.openpi

    assert not fastmix.openpi.is_installed()
    rows = seed_setup.split_batch(BATCH, seed_setup.ROBOT_WEIGHTS)  # [11, 11, 10]
    assert sum(rows) == BATCH
    loaders, its = [], []
    try:
        for entry, size in zip(entries, rows, strict=True):
            config = seed_setup.robot_train_config(f"bench_seed_robot_{entry.repo_id.rsplit('/', 1)[-1]}", entry,
                                                   size)
            loaders.append(dl.create_data_loader(config, shuffle=True, num_batches=None, framework="pytorch"))
            its.append(iter(loaders[-1]))
        for _ in range(WARMUP):
            batches = [next(it) for it in its]
        fmt = " | ".join(seed_setup.describe_batch(obs, actions) for obs, actions in batches)

        def run() -> int:
            n = 0
            for _ in range(BATCHES):
                for it in its:
                    _obs, actions = next(it)
                    n += int(actions.shape[0])
            return n

        benchmark.group = GROUP
        benchmark.extra_info.update(
            role="reference", primary=True, items=BATCHES * BATCH, unit="samples", format="Observation float32 BCHW 224",
            desc=f"the fork's own create_data_loader per robot, side by side ({ROBOTS}): 3 single-robot "
                 f"TrainConfigs of batch {'/'.join(map(str, rows))}, {seed_setup.WORKERS} workers each, pytorch; "
                 f"batches: {fmt}", env=seed_setup.seed_versions())
        assert benchmark.pedantic(run, rounds=ROUNDS, iterations=1) == BATCHES * BATCH
        _RATES["reference"] = _rate(benchmark, BATCHES * BATCH)
    finally:
        for it in its:
            it.close()
        errors = [e for e in map(seed_setup.shutdown_fork_loader, loaders) if e]
        if errors:
            benchmark.extra_info["reference_shutdown_error"] = "; ".join(errors)


def test_fastmix_mixture_config(benchmark, entries) -> None:
    from fastmix import MixtureDataConfig
    from tests.seed.pipelines import fastmix_installed

    data = MixtureDataConfig(datasets=list(entries), dataset_weights=list(seed_setup.ROBOT_WEIGHTS),
                             weighting="per_dataset")
    config = seed_setup.robot_train_config("bench_seed_robot_mixture", data, BATCH)
    with fastmix_installed():
        import openpi.training.data_loader as dl

        loader = dl.create_data_loader(config, shuffle=True, num_batches=None, framework="pytorch")
        assert type(loader).__module__ == "fastmix.openpi.data_loader"
        it = iter(loader)
        try:
            benchmark.group = GROUP
            seed_setup.time_batches(benchmark, it, warmup=WARMUP, batches=BATCHES, rounds=ROUNDS,
                                    items=BATCHES * BATCH, info=lambda fmt: dict(
                role="fastmix", items=BATCHES * BATCH, unit="samples", format="Observation float32 BCHW 224",
                desc=f"the fork's create_data_loader after fastmix.openpi.install(): MixtureDataConfig of the "
                     f"fork's LeRobotLiberoDataConfig / LeRobotDROIDDataConfig / LeRobotAlohaDataConfig ({ROBOTS}), "
                     f"weights {seed_setup.ROBOT_WEIGHTS} per_dataset, batch {BATCH} mixed in sampled order, "
                     f"{seed_setup.WORKERS} workers, pytorch; batch: {fmt}", env=seed_setup.seed_versions()))
        finally:
            it.close()
            loader.close()
    rate = _rate(benchmark, BATCHES * BATCH)
    if "reference" in _RATES:
        benchmark.extra_info["x_reference"] = round(rate / _RATES["reference"], 3)
        print(f"\nfastmix mixture {rate:.1f} samples/s, fork loaders side by side {_RATES['reference']:.1f} "
              f"samples/s: {rate / _RATES['reference']:.2f}x")

