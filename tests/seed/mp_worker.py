"""One process of the seed tests' multi-process runs (tests/seed/test_multiprocess.py), run in the seed environment:

    python -m tests.seed.mp_worker jax SPEC OUT PROCESS_ID PORT     # one of 2 JAX processes (jax.distributed)
    torchrun --standalone --nproc_per_node=2 -m tests.seed.mp_worker torch SPEC OUT

SPEC is a pickle of {"jobs": [{"name", "config", "shuffle", "num_batches", "install", "save"}, ...]}: openpi
`TrainConfig`s and how to load them; "save" (optional) {"step": s}: after the job's batches, process (rank) 0
writes the loader state into the config's checkpoint `<checkpoint_dir>/<s>/assets/` as fastmix's checkpoint
hooks write it (`fastmix.openpi.resume.payload` / `write_state`). A config with `resume=True` resumes from there
(`fastmix.openpi.resume.attach`, called by the installed `create_data_loader`). Each job calls openpi's own `create_data_loader` as the train scripts call it (`train.py`:
`sharding=` the data sharding it builds from `openpi.training.sharding.make_mesh`, `shuffle=True`;
`train_pytorch.py`: `framework="pytorch"`), after `fastmix.openpi.install()` where the job says so, and iterates
it for `(Observation, actions)` pairs as the scripts do.

JAX: every global batch also goes through a jitted function with the data sharding as its input sharding (as
`train.py`'s `ptrain_step`); the global batches are gathered (`multihost_utils.process_allgather`) and process 0
writes them to OUT/<job>.npz, each process its local shard shapes to OUT/<job>.<process>.json. A job whose
openpi loader raises records the error (type and message) instead. torch: each rank writes its own batches to
OUT/<job>.<rank>.npz and OUT/<job>.<rank>.json (what the loader resumed from). Arrays are flattened to "<key>/<sub>" names, batch b's as "<b>:<key>".
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np


def observation_dict(obs: Any, actions: Any) -> dict[str, Any]:
    """openpi's `Observation.to_dict()` layout (images under "image", masks under "image_mask") plus
    "actions", without copying the arrays (to_dict deep-copies, which a multi-process array does not allow)."""
    out = {f.name: getattr(obs, f.name) for f in dataclasses.fields(obs)}
    out["image"], out["image_mask"] = out.pop("images"), out.pop("image_masks")
    return {**{k: v for k, v in out.items() if v is not None}, "actions": actions}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        elif value is not None:
            out[f"{prefix}{key}"] = value
    return out


def save(path: Path, batches: list[dict[str, np.ndarray]]) -> None:
    np.savez(path, **{f"{b}:{k}": v for b, batch in enumerate(batches) for k, v in batch.items()})


def load(path: Path) -> list[dict[str, np.ndarray]]:
    """`save`'s batches back: a list of {key: array}."""
    with np.load(path) as data:
        batches: dict[int, dict[str, np.ndarray]] = {}
        for name in data.files:
            b, key = name.split(":", 1)
            batches.setdefault(int(b), {})[key] = data[name]
    return [batches[b] for b in sorted(batches)]


def save_state(job: dict, loader: Any, process: int) -> None:
    """`job["save"]`: process 0 writes the loader position after the job's batches into the config's checkpoint."""
    if job.get("save") is None or process != 0:
        return
    from fastmix.openpi import resume

    step = int(job["save"]["step"])
    step_dir = Path(job["config"].checkpoint_dir) / str(step)
    resume.write_state(step_dir / "assets", resume.payload(loader, job["num_batches"], step))


def run_jax(spec: dict, out: Path, process_id: int, port: int) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    import openpi.training.data_loader as dl
    import openpi.training.sharding as sharding
    from jax.experimental import multihost_utils

    import fastmix.openpi

    for job in spec["jobs"]:
        config = job["config"]
        mesh = sharding.make_mesh(config.fsdp_devices)  # as train.py builds its data sharding
        data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharding.DATA_AXIS))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        # per-row maxima: exact whatever the reduction order, so comparable with the gathered values
        step = jax.jit(lambda batch: {k: v.reshape(v.shape[0], -1).astype(np.float32).max(axis=1)
                                      for k, v in batch.items()},
                       in_shardings=(data_sharding,), out_shardings=replicated)
        info: dict[str, Any] = {"process_index": jax.process_index(), "process_count": jax.process_count(),
                                "device_count": jax.device_count(), "local": [], "global": []}
        if job["install"]:
            fastmix.openpi.install()
        try:
            loader = dl.create_data_loader(config, sharding=data_sharding, shuffle=job["shuffle"],
                                           num_batches=job["num_batches"])
            batches = []
            for obs, actions in loader:
                batch = flatten(observation_dict(obs, actions))
                info["global"].append({k: list(v.shape) for k, v in batch.items()})
                info["local"].append({k: list(v.addressable_shards[0].data.shape) for k, v in batch.items()})
                maxima = jax.device_get(step(batch))  # the jitted step takes the batch with openpi's data sharding
                gathered = {k: np.asarray(v) for k, v in multihost_utils.process_allgather(batch, tiled=True).items()}
                for k, v in maxima.items():
                    want = gathered[k].reshape(len(v), -1).astype(np.float32).max(axis=1)
                    assert np.array_equal(v, want), f"jitted step: row maxima of {k} {v} vs gathered {want}"
                batches.append(gathered)
            info["resumed"] = getattr(loader, "resumed", None)
            save_state(job, loader, process_id)
            getattr(loader, "close", lambda: None)()
            if process_id == 0:
                save(out / f"{job['name']}.npz", batches)
        except Exception as exc:  # openpi's own loader refusing several processes: recorded, asserted by the test
            info["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if job["install"]:
                fastmix.openpi.uninstall()
        (out / f"{job['name']}.{process_id}.json").write_text(json.dumps(info))
    multihost_utils.sync_global_devices("fastmix seed mp_worker done")


def run_torch(spec: dict, out: Path) -> None:
    import openpi.training.data_loader as dl
    import torch.distributed as dist

    import fastmix.openpi

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        for job in spec["jobs"]:
            if job["install"]:
                fastmix.openpi.install()
            try:
                loader = dl.create_data_loader(job["config"], framework="pytorch", shuffle=job["shuffle"],
                                               num_batches=job["num_batches"])
                batches = [{k: v.detach().cpu().numpy() for k, v in flatten(observation_dict(obs, actions)).items()}
                           for obs, actions in loader]
                resumed = getattr(loader, "resumed", None)
                save_state(job, loader, rank)
                getattr(loader, "close", lambda: None)()
            finally:
                if job["install"]:
                    fastmix.openpi.uninstall()
            save(out / f"{job['name']}.{rank}.npz", batches)
            (out / f"{job['name']}.{rank}.json").write_text(json.dumps({"resumed": resumed}))
            dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv: list[str]) -> None:
    mode, spec_path, out = argv[0], Path(argv[1]), Path(argv[2])
    spec = pickle.loads(spec_path.read_bytes())
    if mode == "jax":
        run_jax(spec, out, int(argv[3]), int(argv[4]))
    elif mode == "torch":
        run_torch(spec, out)
    else:
        raise SystemExit(f"mp_worker: unknown mode {mode!r} (jax, torch)")


if __name__ == "__main__":
    main(sys.argv[1:])
