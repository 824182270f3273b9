"""A resumed openpi run continues its data stream: fastmix's loader position travels in openpi's checkpoint.

openpi's checkpoints hold no data loader state: `openpi.training.checkpoints.restore_state` discards the loader
(`del data_loader`) and `scripts/train_pytorch.py` saves none, so a resumed run starts the stream again at its
first batch. With `fastmix.openpi.install()` (these hooks, `install_hooks`), the state travels with the step:

- where: `<checkpoint_dir>/<step>/assets/fastmix_loader_state.json` (`STATE_FILE`), beside openpi's norm stats
  (`assets/<asset_id>/norm_stats.json`), written inside the step directory before openpi finalizes it, so the
  step and the loader state appear together or not at all.
  JAX (`scripts/train.py`): `checkpoints.save_state` is wrapped; it reads the position synchronously and hands
  orbax an "assets" callback that also writes the file into the step's assets item (orbax renames the step's
  temporary directory only after its callbacks ran; process 0 writes, as for the norm stats).
  PyTorch (`scripts/train_pytorch.py`): it writes `<checkpoint_dir>/tmp_<step>/` and renames it to `<step>/`;
  its norm stats go through `openpi.shared.normalize.save(tmp_<step>/assets/<asset_id>, ...)`, which is wrapped
  to write the file into that `assets/` folder, before the rename.
- what: the position after the batches the run has trained on, `state_after(loader, n)` with n the train
  state's step (JAX: `state.step`; the loop already holds the next batch) or the step number (PyTorch:
  `global_step`, the batches trained); `{"format", "step", "batches": n, "state": <MixtureLoader state_dict>}`.
- resume: both scripts build their loader with the `TrainConfig` (`resume`, `checkpoint_dir`) before restoring;
  `attach` (called by the adapter's `create_data_loader`) loads the state of the checkpoint the script will
  restore (the latest step directory, as orbax's `latest_step` and `train_pytorch.load_checkpoint` choose; none
  for JAX when only step 0 exists, as `initialize_checkpoint_dir` then starts afresh) before the first batch, so
  the first batch trained after the resume is batch n of the uninterrupted stream. The wrapped `restore_state`
  checks that the restored train step is n (ConfigError naming both otherwise). A checkpoint without the file
  (saved without fastmix) gives a RuntimeWarning: the stream starts again, as openpi's own loader does, and its
  batches are counted from the restored step on (`shift_count`), so later checkpoints carry a state again.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import re
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from fastmix.errors import ConfigError

logger = logging.getLogger("fastmix")

STATE_FILE = "fastmix_loader_state.json"
FORMAT = "fastmix.openpi.loader_state/1"
TMP_STEP = re.compile(r"tmp_(\d+)")  # train_pytorch.py's temporary step directory
_TRAINING: list[weakref.ref] = []  # shuffled loaders built by the adapter, newest last
_HOOKED: list[tuple[Any, str, Any]] = []  # (module, name, original)


# ----------------------------------------------------------------------------------------------- the file


def state_after(loader: Any, batches: int) -> dict[str, Any]:
    """The state dict of fastmix `DataLoader` `loader` at the position after batch number `batches` of its stream
    (its `handed_out` count), one of the last batches handed out (`DataLoader.recent`): e.g. after the batches a
    training step has trained on while the loop already holds the next (openpi's JAX loop draws one ahead).
    ConfigError when that position is no longer recorded."""
    from fastmix.loader.state import state_of

    for count, position in loader.recent:
        if count == batches:
            return state_of(loader.loader, position)
    raise ConfigError(f"the loader's position after batch {batches} is not recorded (it keeps the positions after "
                      f"batches {[c for c, _ in loader.recent]}, the last ones handed out)")


def payload(loader: Any, batches: int, step: int) -> dict[str, Any]:
    """What a checkpoint at `step` carries: the loader position after `batches` batches of its stream."""
    return {"format": FORMAT, "step": int(step), "batches": int(batches), "state": state_after(loader, int(batches))}


def write_state(assets_dir: Path, saved: dict[str, Any]) -> Path:
    """Write `saved` as `assets_dir/STATE_FILE` (a temporary file renamed into place)."""
    assets_dir.mkdir(parents=True, exist_ok=True)
    path = assets_dir / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(saved, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_state(step_dir: Path) -> dict[str, Any] | None:
    """The saved loader state of the checkpoint `step_dir` (None when it has no `assets/STATE_FILE`); a
    malformed file is a ConfigError naming it and the fault."""
    path = step_dir / "assets" / STATE_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable fastmix loader state ({type(e).__name__}: {e}); delete the file to "
                          "resume with the data stream restarted") from e
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        got = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
        raise ConfigError(f"{path}: format {got!r}, expected {FORMAT!r} (written by another fastmix version?)")
    missing = [k for k in ("step", "batches", "state") if k not in saved]
    if missing or not isinstance(saved["batches"], int) or saved["batches"] < 0:
        raise ConfigError(f"{path}: missing keys {missing} or a bad 'batches'={saved.get('batches')!r}")
    return saved


def checkpoint_steps(checkpoint_dir: Path) -> list[int]:
    """The finished checkpoint steps in `checkpoint_dir` (directories named by a step number, ascending)."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(int(d.name) for d in checkpoint_dir.iterdir() if d.is_dir() and d.name.isdigit())


def resume_step(config: Any, framework: str) -> int | None:
    """The checkpoint step the train script of `framework` restores for `config` (None: it starts afresh)."""
    if not getattr(config, "resume", False):
        return None
    try:
        checkpoint_dir = Path(config.checkpoint_dir)
    except (AttributeError, TypeError, ValueError):  # no exp_name (tyro.MISSING): the script fails on its own
        return None
    steps = checkpoint_steps(checkpoint_dir)
    if not steps or (framework == "jax" and steps == [0]):  # initialize_checkpoint_dir aborts such a resume
        return None
    return steps[-1]


# -------------------------------------------------------------------------------------- the loader side


def attach(loader: Any, config: Any, *, framework: str, shuffle: bool) -> Any:
    """Give the adapter's new `loader` its checkpoint directory; when `config` resumes, load the saved state of
    the checkpoint the script restores (before the first batch). Shuffled loaders are the training loaders the
    PyTorch hook saves."""
    try:
        loader.checkpoint_dir = Path(config.checkpoint_dir).resolve()
    except (AttributeError, TypeError, ValueError):  # no exp_name (tyro.MISSING)
        loader.checkpoint_dir = None
    loader.resumed = None
    step = resume_step(config, framework)
    if step is not None:
        step_dir = loader.checkpoint_dir / str(step)
        saved = read_state(step_dir)
        if saved is None:
            warnings.warn(f"config '{getattr(config, 'name', '?')}': resuming from checkpoint {step_dir}, which "
                          f"holds no fastmix loader state (assets/{STATE_FILE}; saved without "
                          "fastmix.openpi.install()?): the data stream starts again at its first batch, as "
                          "openpi's own loader does", RuntimeWarning, stacklevel=3)
            if framework != "jax":  # train_pytorch.py resumes with global_step = the step; JAX: restore_state
                shift_count(loader, step)
        else:
            try:
                loader.load_state_dict(saved["state"], handed_out=saved["batches"])
            except ConfigError as e:
                raise ConfigError(f"{step_dir / 'assets' / STATE_FILE}: {e} (or delete this file to resume with "
                                  "the data stream restarted)") from None
            loader.resumed = (step, saved["batches"])
            logger.info("data stream resumed from checkpoint %s after batch %d", step_dir, saved["batches"])
    if shuffle:
        _TRAINING[:] = [r for r in _TRAINING if r() is not None]
        _TRAINING.append(weakref.ref(loader))
    return loader


def shift_count(loader: Any, batches: int) -> None:
    """A stream that restarts (no saved state) while the run has trained `batches` batches: count its batches
    from there, so that the next checkpoint saves the position after the batches trained since."""
    loader.handed_out += int(batches)
    shifted = [(count + int(batches), position) for count, position in loader.recent]
    loader.recent.clear()
    loader.recent.extend(shifted)


def _training_loader(checkpoint_dir: Path) -> Any:
    """The newest live shuffled fastmix loader writing checkpoints to `checkpoint_dir` (None if none)."""
    for ref in reversed(_TRAINING):
        loader = ref()
        if loader is not None and getattr(loader, "checkpoint_dir", None) == checkpoint_dir.resolve():
            return loader
    return None


def _as_int(x: Any) -> int:
    """A scalar (a jax array too, also one spread over processes) as an int."""
    shards = getattr(x, "addressable_shards", None)
    if shards:
        x = shards[0].data
    return int(np.asarray(x))


def _is_fastmix(data_loader: Any) -> bool:
    from fastmix.openpi.data_loader import DataLoader

    return isinstance(data_loader, DataLoader)


# ---------------------------------------------------------------------------------------- openpi hooks


class _ManagerWithLoaderState:
    """An orbax CheckpointManager whose `save(step, items)` also writes the loader state from the "assets"
    callback openpi's `save_state` passes."""

    def __init__(self, manager: Any, saved: dict[str, Any]) -> None:
        self._manager, self._saved = manager, saved

    def save(self, step: int, items: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        assets = items.get("assets") if isinstance(items, dict) else None
        if not callable(assets):
            raise ConfigError("openpi's checkpoints.save_state passed no 'assets' callback to the checkpoint "
                              "manager; this openpi version is not supported by fastmix's resume hooks")
        saved = self._saved

        def save_assets(directory: Any) -> None:
            assets(directory)
            write_state(Path(str(directory)), saved)

        return self._manager.save(step, {**items, "assets": save_assets}, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)


def wrap_save_state(original: Any) -> Any:
    @functools.wraps(original)
    def save_state(checkpoint_manager: Any, state: Any, data_loader: Any, step: int) -> Any:
        if not _is_fastmix(data_loader):
            return original(checkpoint_manager, state, data_loader, step)
        saved = payload(data_loader, _as_int(state.step), step)
        return original(_ManagerWithLoaderState(checkpoint_manager, saved), state, data_loader, step)

    return save_state


def wrap_restore_state(original: Any) -> Any:
    @functools.wraps(original)
    def restore_state(checkpoint_manager: Any, state: Any, data_loader: Any, step: int | None = None) -> Any:
        restored = original(checkpoint_manager, state, data_loader, step)
        if not _is_fastmix(data_loader):
            return restored
        resumed = data_loader.resumed
        if resumed is None:  # no saved state: the stream restarted under a run that trained restored.step batches
            shift_count(data_loader, _as_int(restored.step))
        elif _as_int(restored.step) != resumed[1]:
            raise ConfigError(f"restore_state restored train step {_as_int(restored.step)}, but the data loader "
                              f"continues after batch {resumed[1]} (the state of checkpoint step {resumed[0]} in "
                              f"{data_loader.checkpoint_dir}); restore the latest checkpoint")
        return restored

    return restore_state


def wrap_normalize_save(original: Any) -> Any:
    @functools.wraps(original)
    def save(directory: Any, norm_stats: Any) -> Any:
        result = original(directory, norm_stats)
        path = Path(str(directory))
        for assets in (path, *path.parents):
            match = TMP_STEP.fullmatch(assets.parent.name) if assets.name == "assets" else None
            if match:
                loader = _training_loader(assets.parent.parent)
                if loader is not None:
                    step = int(match.group(1))
                    write_state(assets, payload(loader, step, step))
                break
        return result

    return save


HOOKS = (("openpi.training.checkpoints", "save_state", wrap_save_state),
         ("openpi.training.checkpoints", "restore_state", wrap_restore_state),
         ("openpi.shared.normalize", "save", wrap_normalize_save))


def install_hooks() -> list[str]:
    """Wrap openpi's checkpoint functions (`HOOKS`) that exist in this openpi; returns the ones wrapped."""
    done = []
    for module_name, name, wrap in HOOKS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            logger.info("fastmix resume hooks: %s not importable (%s); %s not wrapped", module_name, e, name)
            continue
        original = getattr(module, name, None)
        if original is None or getattr(original, "_fastmix_hook", False):
            continue
        hooked = wrap(original)
        hooked._fastmix_hook = True
        setattr(module, name, hooked)
        _HOOKED.append((module, name, original))
        done.append(f"{module_name}.{name}")
    return done


def uninstall_hooks() -> None:
    """Put openpi's original checkpoint functions back."""
    while _HOOKED:
        module, name, original = _HOOKED.pop()
        setattr(module, name, original)


__all__ = ["FORMAT", "STATE_FILE", "attach", "checkpoint_steps", "install_hooks", "payload", "read_state",
           "resume_step", "state_after", "uninstall_hooks", "write_state"]
