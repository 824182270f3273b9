"""`fastmix.openpi.resume`: the loader state in openpi's checkpoints (hook logic, without openpi).

The train loops are played here as openpi's scripts order them (JAX `scripts/train.py`: draw, restore, then per
step: train, draw the next batch, save; PyTorch `scripts/train_pytorch.py`: per step: draw, train, save), with
stand-ins for the checkpoint manager (it calls the "assets" callback into the step directory, as orbax does);
the real scripts run in tests/seed/test_train_scripts.py. The reference is the uninterrupted stream: a resumed
run's batches must be its batches, by the dataset index and frame index of every sample.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from fastmix.errors import ConfigError
from fastmix.openpi import resume
from tests.test_data_loader import Injected, _cfg


@pytest.fixture
def fake():
    from fastmix.testing.fakes import FakeSource

    return Injected([FakeSource("fake/a", num_episodes=3, episode_length=7),
                     FakeSource("fake/b", num_episodes=2, episode_length=5)])


def make_loader(fake: Injected, tmp_path: Path, *, resume_run: bool, framework: str, num_workers: int = 0):
    """A shuffled loader as the adapter makes it (`attach`) for a run whose config has what the hooks read from
    openpi's TrainConfig: `resume`, `checkpoint_dir`, `name`."""
    cfg = dataclasses.replace(_cfg(tmp_path, batch_size=2, weights=[1.0, 3.0]), num_workers=num_workers)
    run = types.SimpleNamespace(resume=resume_run, checkpoint_dir=tmp_path / "ckpt" / "run", name=cfg.name)
    loader = fake.create(cfg, skip_norm_stats=True, shuffle=True, framework="pytorch")
    return resume.attach(loader, run, framework=framework, shuffle=True), run


def ids(batch_meta) -> list[tuple[int, int]]:
    _, meta = batch_meta
    return list(zip(np.asarray(meta["dataset_index"]).tolist(), np.asarray(meta["index"]).tolist(), strict=True))


class Manager:
    """Stand-in for orbax's CheckpointManager: `save(step, items)` calls the "assets" callback into
    `<dir>/<step>/assets` (orbax writes a temporary directory and renames it; the files are the same)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.saved: list[int] = []

    def save(self, step, items):
        assets = self.directory / str(step) / "assets"
        assets.mkdir(parents=True)
        items["assets"](assets)
        self.saved.append(step)


def openpi_save_state(checkpoint_manager, state, data_loader, step):
    """openpi's `checkpoints.save_state` as far as the hook sees it: an "assets" callback and the manager."""
    checkpoint_manager.save(step, {"assets": lambda directory: None, "train_state": state})


def jax_loop(loader, save_state, manager, start: int, steps: int, save_interval: int) -> dict[int, list]:
    """scripts/train.py's order: a batch drawn before the loop; per step: train on it, draw the next, save."""
    it = iter(loader.batches(with_meta=True))
    batch = next(it)
    trained = {}
    for step in range(start, steps):
        trained[step] = ids(batch)
        batch = next(it)
        if (step % save_interval == 0 and step > start) or step == steps - 1:
            save_state(manager, types.SimpleNamespace(step=np.int32(step + 1)), loader, step)
    return trained


def test_jax_order_resume_continues_the_stream(fake, tmp_path):
    """train.py saves after step s with the next batch already drawn: the saved position is after s + 1
    batches, and a run resumed from it trains steps s+1.. on the uninterrupted run's batches s+1.."""
    save_state = resume.wrap_save_state(openpi_save_state)
    loader, run = make_loader(fake, tmp_path / "full", resume_run=False, framework="jax")
    full = jax_loop(loader, save_state, Manager(run.checkpoint_dir), 0, 7, 3)
    loader.close()
    saved = json.loads((run.checkpoint_dir / "3" / "assets" / resume.STATE_FILE).read_text())
    assert (saved["step"], saved["batches"], saved["format"]) == (3, 4, resume.FORMAT)
    # the run stopped after saving step 3: resume from it (later checkpoints gone)
    shutil.rmtree(run.checkpoint_dir / "6")
    loader, _ = make_loader(fake, tmp_path / "full", resume_run=True, framework="jax")
    assert loader.resumed == (3, 4)
    restore = resume.wrap_restore_state(lambda m, s, d, step=None: types.SimpleNamespace(step=np.int32(4)))
    restore(None, None, loader)
    again = jax_loop(loader, save_state, Manager(tmp_path / "unused"), 4, 7, 3)
    loader.close()
    assert again == {s: full[s] for s in range(4, 7)}
    assert len({tuple(v) for v in full.values()}) == len(full)  # the stream moves on (no batch twice)


@pytest.mark.parametrize(("num_workers", "resume_workers"), [(0, 2), (2, 0)])
def test_pytorch_order_resume_continues_the_stream(fake, tmp_path, num_workers, resume_workers):
    """train_pytorch.py: global_step += 1 after each batch, then normalize.save into tmp_<step>/assets/<id>
    (renamed to <step> after): the state file lands there, after `step` batches; the resumed loader continues
    with batch `step`, also with another number of workers."""
    save = resume.wrap_normalize_save(lambda directory, stats: Path(directory).mkdir(parents=True))
    loader, run = make_loader(fake, tmp_path, resume_run=False, framework="pytorch", num_workers=num_workers)
    full, it = [], iter(loader.batches(with_meta=True))
    for global_step in range(1, 8):
        full.append(ids(next(it)))
        if global_step % 3 == 0:
            tmp = run.checkpoint_dir / f"tmp_{global_step}"
            save(tmp / "assets" / "physical-intelligence" / "libero", {})
            tmp.rename(run.checkpoint_dir / str(global_step))
    loader.close()
    assert resume.checkpoint_steps(run.checkpoint_dir) == [3, 6]
    assert resume.read_state(run.checkpoint_dir / "6")["batches"] == 6
    shutil.rmtree(run.checkpoint_dir / "6")
    loader, _ = make_loader(fake, tmp_path, resume_run=True, framework="pytorch", num_workers=resume_workers)
    assert loader.resumed == (3, 3)
    again = [ids(b) for _, b in zip(range(4), loader.batches(with_meta=True), strict=False)]
    loader.close()
    assert again == full[3:7]


def test_normalize_save_elsewhere_writes_nothing(fake, tmp_path):
    """Norm stats saved outside a `tmp_<step>/assets` of a training loader's checkpoint dir (compute_norm_stats,
    orbax's own temporary step dirs, another run's dir) get no loader state."""
    save = resume.wrap_normalize_save(lambda directory, stats: Path(directory).mkdir(parents=True))
    loader, run = make_loader(fake, tmp_path, resume_run=False, framework="pytorch")
    for where in (tmp_path / "assets" / "x", run.checkpoint_dir / "2.orbax-checkpoint-tmp-0" / "assets" / "x",
                  tmp_path / "other" / "tmp_2" / "assets" / "x"):
        save(where, {})
    assert list(tmp_path.rglob(resume.STATE_FILE)) == []
    loader.close()


def test_restore_of_another_step_is_an_error(fake, tmp_path):
    loader, run = make_loader(fake, tmp_path, resume_run=False, framework="jax")
    resume.write_state(run.checkpoint_dir / "2" / "assets", resume.payload(loader, 0, 2))
    loader.close()
    loader, _ = make_loader(fake, tmp_path, resume_run=True, framework="jax")
    restore = resume.wrap_restore_state(lambda m, s, d, step=None: types.SimpleNamespace(step=np.int32(5)))
    with pytest.raises(ConfigError, match=r"restored train step 5, but the data loader continues after batch 0 "
                                          r"\(the state of checkpoint step 2"):
        restore(None, None, loader)
    loader.close()


def test_resume_without_state_warns_and_restarts(fake, tmp_path):
    loader, run = make_loader(fake, tmp_path, resume_run=False, framework="pytorch")
    first = [ids(b) for _, b in zip(range(2), loader.batches(with_meta=True), strict=False)]
    loader.close()
    (run.checkpoint_dir / "4").mkdir(parents=True)  # a checkpoint saved without fastmix
    with pytest.warns(RuntimeWarning, match=r"run/4, which holds no fastmix loader state .*starts again"):
        loader, _ = make_loader(fake, tmp_path, resume_run=True, framework="pytorch")
    assert loader.resumed is None
    assert [ids(b) for _, b in zip(range(2), loader.batches(with_meta=True), strict=False)] == first
    # the run has trained 4 + 2 batches: its next checkpoint holds the position after this stream's batch 2
    save = resume.wrap_normalize_save(lambda directory, stats: Path(directory).mkdir(parents=True))
    save(run.checkpoint_dir / "tmp_6" / "assets" / "x", {})
    assert resume.read_state(run.checkpoint_dir / "tmp_6")["state"] == loader.state_dict()
    loader.close()


def test_jax_resume_without_state_counts_from_the_restored_step(fake, tmp_path):
    """train.py without a saved state: the stream restarts; restore_state gives the step (5), and the next
    save (after step 5, state.step 6, the batch of step 6 drawn) holds the position after this stream's batch 1."""
    save_state = resume.wrap_save_state(openpi_save_state)
    (tmp_path / "ckpt" / "run" / "4").mkdir(parents=True)
    with pytest.warns(RuntimeWarning, match="holds no fastmix loader state"):
        loader, run = make_loader(fake, tmp_path, resume_run=True, framework="jax")
    restore = resume.wrap_restore_state(lambda m, s, d, step=None: types.SimpleNamespace(step=np.int32(5)))
    it = iter(loader.batches(with_meta=True))
    next(it)
    restore(None, None, loader)
    after_first = loader.state_dict()
    next(it)  # train.py draws the batch of step 6, then saves step 5
    save_state(Manager(run.checkpoint_dir), types.SimpleNamespace(step=np.int32(6)), loader, 5)
    saved = resume.read_state(run.checkpoint_dir / "5")
    assert (saved["batches"], saved["state"]) == (6, after_first)
    loader.close()


def test_which_checkpoint_a_script_resumes(tmp_path):
    run = types.SimpleNamespace(resume=True, checkpoint_dir=tmp_path / "run")
    assert resume.resume_step(run, "jax") is None  # no directory
    (tmp_path / "run" / "0").mkdir(parents=True)
    assert resume.resume_step(run, "jax") is None  # initialize_checkpoint_dir aborts a resume from step 0 only
    assert resume.resume_step(run, "pytorch") == 0
    for name in ("10", "tmp_30", "20.orbax-checkpoint-tmp-3", "9"):
        (tmp_path / "run" / name).mkdir()
    assert resume.resume_step(run, "jax") == resume.resume_step(run, "pytorch") == 10
    assert resume.resume_step(types.SimpleNamespace(resume=False, checkpoint_dir=run.checkpoint_dir), "jax") is None


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "unreadable fastmix loader state"),
    (json.dumps({"format": "other/9"}), "format 'other/9', expected 'fastmix.openpi.loader_state/1'"),
    (json.dumps({"format": resume.FORMAT, "step": 2, "state": {}}), r"missing keys \['batches'\]"),
])
def test_malformed_state_file_names_the_file(tmp_path, content, message):
    assets = tmp_path / "7" / "assets"
    assets.mkdir(parents=True)
    (assets / resume.STATE_FILE).write_text(content)
    with pytest.raises(ConfigError, match=message) as e:
        resume.read_state(tmp_path / "7")
    assert str(assets / resume.STATE_FILE) in str(e.value)


def test_state_of_another_mixture_names_the_file(fake, tmp_path):
    """A checkpoint whose loader state belongs to other datasets: the resume refuses, naming the file and what
    differs (MixtureLoader.load_state_dict's check)."""
    loader, run = make_loader(fake, tmp_path, resume_run=False, framework="pytorch")
    saved = resume.payload(loader, 0, 1)
    loader.close()
    saved["state"]["mixture"]["sizes"] = [99, 5]
    resume.write_state(run.checkpoint_dir / "1" / "assets", saved)
    with pytest.raises(ConfigError, match=r"(?s)run/1/assets/fastmix_loader_state.json: .*sizes=\[99, 5\].*"
                                          r"delete this file"):
        make_loader(fake, tmp_path, resume_run=True, framework="pytorch")


def test_state_after_keeps_the_last_positions(fake, tmp_path):
    loader, _ = make_loader(fake, tmp_path, resume_run=False, framework="pytorch")
    it = iter(loader.batches())
    for _ in range(12):
        next(it)
    assert loader.handed_out == 12
    assert resume.state_after(loader, 12) == loader.state_dict()
    with pytest.raises(ConfigError, match=r"position after batch 2 is not recorded .*\[5, 6, 7, 8, 9, 10, 11, 12\]"):
        resume.state_after(loader, 2)
    loader.close()
