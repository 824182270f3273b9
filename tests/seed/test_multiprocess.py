"""Several processes through openpi's own `create_data_loader` after `fastmix.openpi.install()` (both trees):

- 2 JAX processes on CPU (`jax.distributed` with gloo collectives), each calling `create_data_loader(config,
  sharding=<train.py's data sharding>, shuffle=...)`: each process loads `batch_size // 2` rows, the global
  arrays have openpi's single-process shapes, go through a jitted step with that sharding, and gathered they are
  the single-process stream: global batch b holds the single-process batch b, process p's rows being its
  positions p, p+2, ... (fastmix's split of one stream: rank r takes positions r, r+W, ...). The reference is
  openpi's own single-process loader (shuffle=False) and fastmix's single-process draws (shuffle=True). openpi's
  own loader refuses 2 JAX processes (`NotImplementedError`): asserted.
- 2 torchrun ranks (gloo) through `create_data_loader(config, framework="pytorch")` as `train_pytorch.py` calls
  it: per-rank batches of `batch_size // 2`, equal to openpi's own DDP loader's (its `DistributedSampler`) rank
  for rank; interleaved, the ranks are openpi's own single-process stream (shuffle=False), and fastmix's
  single-process weighted draws (shuffle=True).

The processes run `tests/seed/mp_worker.py`; the configs travel pickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.seed.conftest import FASTMIX_REPO, FORK_REPO, REPO, TREE
from tests.seed.mp_worker import load
from tests.seed.pipelines import assert_same_batches, fastmix_installed, openpi_batches

BATCH = 6
WORLD = 2
LOCAL = BATCH // WORLD
REPOS = [FORK_REPO, FASTMIX_REPO]
SINGLE_BATCHES = 8  # the 36-frame dataset: 6 batches an epoch; 8 cross into the second epoch
MIX_BATCHES = 11  # the 54-frame mixture: 9 batches an epoch
SAVED_AT, SAVED_STEP = 7, 6  # a checkpoint after 7 batches (train.py's step 6)
TIMEOUT_S = 600


def libero(**kwargs):
    import openpi.training.config as _config

    return _config.LeRobotLiberoDataConfig(base_config=_config.DataConfig(prompt_from_task=True), **kwargs)


@pytest.fixture(scope="module")
def configs(datasets, tree_norm_stats, assets_dir):
    """{"single": openpi's LIBERO config of the first dataset, "mixture": fastmix's MultiDatasetLeRobotConfig of
    both (weights 1:10)}, batch 6, norm stats from the tree's own script."""
    import openpi.training.config as _config

    from fastmix.openpi import MultiDatasetLeRobotConfig
    from tests.seed.seed_data import openpi_train_config

    stats_dir = tree_norm_stats("seed_multi_stats", libero(repo_id=FORK_REPO))
    assets = _config.AssetsConfig(assets_dir=str(stats_dir), asset_id=FORK_REPO)
    single = openpi_train_config("seed_mp_single", libero(repo_id=FORK_REPO, assets=assets), assets_dir,
                                 batch_size=BATCH, num_workers=0)
    mixture = openpi_train_config("seed_mp_mixture", MultiDatasetLeRobotConfig(
        repo_ids=REPOS, dataset_weights=[1.0, 10.0], assets=assets, dataset_config=libero()), assets_dir,
        batch_size=BATCH, num_workers=2)
    return {"single": single, "mixture": mixture}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}


def check_finished(procs: list[subprocess.Popen], what: str) -> None:
    """Wait for all of `procs` (killing them all at the deadline) and assert they exited 0."""
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, f"{what} exited {p.returncode}:\n{(text or '')[-4000:]}"


def write_spec(tmp_path: Path, jobs: list[dict]) -> Path:
    spec = tmp_path / "spec.pkl"
    spec.write_bytes(pickle.dumps({"jobs": jobs}))
    return spec


def interleave(ranks: list[list[dict]]) -> list[dict]:
    """Per-rank batches (rank r's row j = stream position j*W + r of its batch) as the single-process batches."""
    out = []
    for per_rank in zip(*ranks, strict=True):
        out.append({k: np.stack([b[k] for b in per_rank], axis=1).reshape(-1, *per_rank[0][k].shape[1:])
                    for k in per_rank[0]})
    return out


def split(batch: dict, rank: int) -> dict:
    return {k: v[rank::WORLD] for k, v in batch.items()}


def as_global(single: list[dict]) -> list[dict]:
    """Single-process batches in the global layout of the multi-process run: process p's rows (its positions p,
    p+2, ... of each batch) in its block p (`jax.make_array_from_process_local_data` puts process 0's first)."""
    return [{k: np.concatenate([v[p::WORLD] for p in range(WORLD)]) for k, v in b.items()} for b in single]


_STREAMS: dict[str, list[dict]] = {}


def mixture_stream(configs, framework: str) -> list[dict]:
    """fastmix's uninterrupted single-process stream of the weighted mixture (shuffle=True), MIX_BATCHES batches
    (computed once per framework)."""
    if framework not in _STREAMS:
        with fastmix_installed():
            _STREAMS[framework] = openpi_batches(configs["mixture"], framework=framework, num_batches=MIX_BATCHES,
                                                 shuffle=True)
    return _STREAMS[framework]


def resuming(config, checkpoint_base: Path):
    """`config` as a resumed run of experiment "mp" under `checkpoint_base` sees it (`resume=True`)."""
    return dataclasses.replace(config, exp_name="mp", checkpoint_base_dir=str(checkpoint_base), resume=True)


@pytest.fixture(scope="module")
def jax_run(configs, tmp_path_factory):
    """The 2-JAX-process run's folder: jobs "own" (openpi's loader), "single", "mixture", and "resumed" (the
    mixture resumed from a checkpoint one process saved after SAVED_AT batches, MIX_BATCHES - SAVED_AT more)."""
    import openpi.training.data_loader as dl

    from fastmix.openpi import resume

    out = tmp_path_factory.mktemp("jax_run")
    saving = resuming(configs["mixture"], out / "checkpoints")
    with fastmix_installed():  # one process, no workers, saves its position after SAVED_AT batches
        loader = dl.create_data_loader(dataclasses.replace(saving, resume=False, num_workers=0), shuffle=True,
                                       num_batches=SAVED_AT, framework="jax")
        try:
            assert sum(1 for _ in loader) == SAVED_AT
            resume.write_state(saving.checkpoint_dir / str(SAVED_STEP) / "assets",
                               resume.payload(loader, SAVED_AT, SAVED_STEP))
        finally:
            loader.close()
    jobs = [dict(name="own", config=configs["single"], shuffle=False, num_batches=1, install=False),
            dict(name="single", config=configs["single"], shuffle=False, num_batches=SINGLE_BATCHES, install=True),
            dict(name="mixture", config=configs["mixture"], shuffle=True, num_batches=MIX_BATCHES, install=True),
            dict(name="resumed", config=saving, shuffle=True, num_batches=MIX_BATCHES - SAVED_AT, install=True)]
    spec, port = write_spec(out, jobs), free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.seed.mp_worker", "jax", str(spec), str(out), str(p),
                               str(port)], cwd=REPO, env=worker_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for p in range(WORLD)]
    check_finished(procs, "a JAX process")
    return out


@pytest.fixture(scope="module")
def torch_run(configs, tmp_path_factory):
    """The 2-rank torchrun run's folder: jobs "own" (openpi's DDP loader), "single", "mixture" (which saves its
    position after SAVED_AT batches into a checkpoint, as rank 0)."""
    out = tmp_path_factory.mktemp("torch_run")
    saving = resuming(configs["mixture"], out / "checkpoints")
    jobs = [dict(name="own", config=configs["single"], shuffle=False, num_batches=SINGLE_BATCHES, install=False),
            dict(name="single", config=configs["single"], shuffle=False, num_batches=SINGLE_BATCHES, install=True),
            dict(name="mixture", config=dataclasses.replace(saving, resume=False), shuffle=True,
                 num_batches=SAVED_AT, install=True, save={"step": SAVED_STEP})]
    spec = write_spec(out, jobs)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"]
    proc = subprocess.Popen([*torchrun, "-m", "tests.seed.mp_worker", "torch", str(spec), str(out)], cwd=REPO,
                            env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    check_finished([proc], "torchrun")
    return out, saving


def jax_infos(out: Path, job: str) -> list[dict]:
    return [json.loads((out / f"{job}.{p}.json").read_text()) for p in range(WORLD)]


def test_two_jax_processes(configs, jax_run):
    """2 JAX processes: openpi's own loader refuses; after install() the gathered global batches are openpi's own
    single-process batches (shuffle=False) and fastmix's single-process draws (shuffle=True, two datasets,
    2 workers), in the multi-process layout; each process holds batch_size // 2 rows of the global arrays."""
    for p, info in enumerate(jax_infos(jax_run, "own")):
        assert info["error"].startswith("NotImplementedError: Data loading with multiple processes"), (p, info)
    for job in ("single", "mixture"):
        for p, info in enumerate(jax_infos(jax_run, job)):
            assert "error" not in info, info["error"]
            assert (info["process_index"], info["process_count"], info["device_count"]) == (p, WORLD, WORLD)
            for local, glob in zip(info["local"], info["global"], strict=True):
                for key, shape in glob.items():
                    assert shape[0] == BATCH and local[key] == [LOCAL, *shape[1:]], (job, p, key, shape, local)
    ref = openpi_batches(configs["single"], framework="jax", num_batches=SINGLE_BATCHES)
    assert_same_batches(as_global(ref), load(jax_run / "single.npz"), f"{TREE} 2 JAX processes, sequential",
                        SINGLE_BATCHES)
    got = load(jax_run / "mixture.npz")
    assert_same_batches(as_global(mixture_stream(configs, "jax")), got, f"{TREE} 2 JAX processes, weighted",
                        MIX_BATCHES)
    assert len({tuple(np.round(r, 5)) for b in got for r in b["state"]}) > BATCH  # not one row repeated


def test_jax_resume_on_two_processes_from_one(configs, jax_run):
    """A checkpoint saved by one process after SAVED_AT batches, resumed by 2 JAX processes through openpi's
    `create_data_loader` (`resume=True`): the global batches continue the uninterrupted single-process stream
    exactly at batch SAVED_AT (across the epoch boundary)."""
    for info in jax_infos(jax_run, "resumed"):
        assert "error" not in info, info["error"]
        assert info["resumed"] == [SAVED_STEP, SAVED_AT]
    assert_same_batches(as_global(mixture_stream(configs, "jax")[SAVED_AT:]), load(jax_run / "resumed.npz"),
                        f"{TREE} 2 JAX processes resumed from 1", MIX_BATCHES - SAVED_AT)


def test_two_torchrun_ranks(configs, torch_run):
    """2 torchrun ranks (gloo), as train_pytorch.py calls the loader: each rank's batches (batch_size // 2 rows)
    equal openpi's own DDP loader's batches of that rank (shuffle=False); interleaved, the ranks are openpi's
    single-process stream; with the weighted mixture (shuffle=True, 2 workers) fastmix's single-process draws."""
    out, _ = torch_run
    runs = {(job, r): load(out / f"{job}.{r}.npz") for job in ("own", "single", "mixture") for r in range(WORLD)}
    for r in range(WORLD):
        assert runs["single", r][0]["actions"].shape == (LOCAL, 4, 32)
        assert_same_batches(runs["own", r], runs["single", r], f"{TREE} torchrun rank {r} vs openpi's DDP loader",
                            SINGLE_BATCHES)
    ref = openpi_batches(configs["single"], framework="pytorch", num_batches=SINGLE_BATCHES)
    assert_same_batches(ref, interleave([runs["single", r] for r in range(WORLD)]),
                        f"{TREE} torchrun ranks together vs one process", SINGLE_BATCHES)
    mix = mixture_stream(configs, "pytorch")
    for r in range(WORLD):
        assert_same_batches([split(b, r) for b in mix[:SAVED_AT]], runs["mixture", r],
                            f"{TREE} torchrun rank {r}, weighted", SAVED_AT)


def test_torch_resume_on_one_process_from_two_ranks(configs, torch_run):
    """The checkpoint rank 0 of the 2-rank run saved after SAVED_AT batches, resumed by one process through
    openpi's `create_data_loader(framework="pytorch")` (`resume=True`): the uninterrupted single-process stream
    from batch SAVED_AT on (across the epoch boundary)."""
    out, saving = torch_run
    assert (saving.checkpoint_dir / str(SAVED_STEP) / "assets").is_dir()
    with fastmix_installed():
        got = openpi_batches(dataclasses.replace(saving, num_workers=0), framework="pytorch",
                             num_batches=MIX_BATCHES - SAVED_AT, shuffle=True)
    assert_same_batches(mixture_stream(configs, "pytorch")[SAVED_AT:], got, f"{TREE} 1 process resumed from 2 ranks",
                        MIX_BATCHES - SAVED_AT)
