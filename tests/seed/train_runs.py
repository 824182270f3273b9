"""Run the openpi tree's own train scripts (`scripts/train.py`, `scripts/train_pytorch.py`), unchanged, as
subprocesses on fastmix (`python -m fastmix.openpi.launch`), recording what each step trains on
(`train_record`), and resume them from a checkpoint.

A run's process writes nothing outside its folder: HOME (so openpi's jax compilation cache, `~/.cache/jax`),
XDG_CACHE_HOME, the checkpoints and the records live under it; OPENPI_DATA_HOME (the stand-in tokenizer) and
lerobot's home are the seed work folder's; the hub is off and wandb disabled.

PyTorch: openpi's PI0Pytorch needs its patched transformers files (openpi's install step copies
`models_pytorch/transformers_replace/*` into the installed transformers). The seed env's transformers is left as
it is: `transformers_overlay` builds a symlink copy of it with openpi's files in place, first on PYTHONPATH.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RECORDER = Path(__file__).resolve().with_name("train_record.py")
SCRIPTS = {"jax": "train.py", "pytorch": "train_pytorch.py"}
TIMEOUT = 1500  # seconds for one run of a train script (a JAX step of the dummy model ≈ 40 s on 2 cores)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One train-script setup: framework, loader workers, steps, save interval (= keep period: every checkpoint
    is kept), and the checkpoint a resumed run starts from."""

    framework: str
    num_workers: int
    steps: int
    save_interval: int
    resume_from: int

    @property
    def name(self) -> str:
        return f"seed_train_{self.framework}_w{self.num_workers}"

    @property
    def checkpoints(self) -> list[int]:
        """The steps the script saves. train.py: after training step s when s % save_interval == 0 and s > 0, or
        s is the last step. train_pytorch.py: after global_step g steps (1..steps) when g % save_interval == 0, or
        g == steps - 1 (sic)."""
        if self.framework == "jax":
            return [s for s in range(self.steps) if (s % self.save_interval == 0 and s > 0) or s == self.steps - 1]
        return [g for g in range(1, self.steps + 1) if g % self.save_interval == 0 or g == self.steps - 1]

    def batches_trained(self, checkpoint: int) -> int:
        """Batches trained when `checkpoint` was saved = the first step a run resumed from it trains: train.py
        saves after training step s (its train state holds s + 1 steps), train_pytorch.py after g steps."""
        return checkpoint + 1 if self.framework == "jax" else checkpoint


@dataclasses.dataclass
class Run:
    """A finished run of a train script: its records by step, checkpoint dir, seconds, output (stdout + stderr)."""

    steps: dict[int, dict[str, Any]]
    checkpoint_dir: Path
    seconds: float
    output: str


def configs_source(variants: list[Variant], *, repos: list[str], weights: list[float], assets_dir: str,
                   asset_id: str, assets_base: Path, checkpoint_base: Path, batch_size: int = 2) -> str:
    """A `--configs` file for the launcher: loads the recorder, defines CONFIGS (one openpi TrainConfig per
    variant: dummy pi0 as upstream's train_test.py, with a small image encoder (`train_record`), fastmix's
    MultiDatasetLeRobotConfig over `repos`)."""
    configs = ",\n".join(f"""    _config.TrainConfig(
        name={v.name!r},
        model=pi0_config.Pi0Config(paligemma_variant="dummy", action_expert_variant="dummy", action_horizon=4),
        data=MultiDatasetLeRobotConfig(
            repo_ids={repos!r}, dataset_weights={weights!r},
            assets=_config.AssetsConfig(assets_dir={assets_dir!r}, asset_id={asset_id!r}),
            dataset_config=_config.LeRobotLiberoDataConfig(base_config=_config.DataConfig(prompt_from_task=True)),
        ),
        assets_base_dir={str(assets_base)!r}, checkpoint_base_dir={str(checkpoint_base)!r},
        batch_size={batch_size}, num_workers={v.num_workers}, seed=7, num_train_steps={v.steps},
        save_interval={v.save_interval}, keep_period={v.save_interval}, log_interval=1, wandb_enabled=False,
        pytorch_training_precision="float32",
    )""" for v in variants)
    return f"""import importlib.util
import sys

_spec = importlib.util.spec_from_file_location("seed_train_record", {str(RECORDER)!r})
_recorder = importlib.util.module_from_spec(_spec)
sys.modules["seed_train_record"] = _recorder
_spec.loader.exec_module(_recorder)

import openpi.models.pi0_config as pi0_config
import openpi.training.config as _config
from fastmix.openpi import MultiDatasetLeRobotConfig

CONFIGS = [
{configs},
]
"""


def transformers_overlay(tree_root: Path, dest: Path) -> Path:
    """`dest` with a `transformers` package: symlinks to the installed one's files, openpi's replaced files
    (`src/openpi/models_pytorch/transformers_replace`) as real copies. Returns `dest` (for PYTHONPATH)."""
    import transformers

    if (dest / "transformers" / "models" / "siglip" / "check.py").is_file():
        return dest
    installed = Path(transformers.__file__).parent
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-rs", str(installed), str(dest / "transformers")], check=True)
    replace = tree_root / "src" / "openpi" / "models_pytorch" / "transformers_replace"
    for src in replace.rglob("*.py"):
        target = dest / "transformers" / src.relative_to(replace)
        if target.is_symlink() or target.exists():
            target.unlink()
        shutil.copyfile(src, target)
        for stale in (target.parent / "__pycache__").glob(f"{target.stem}.*.pyc"):
            stale.unlink()
    return dest


def run_script(tree_root: Path, variant: Variant, configs: Path, folder: Path, exp_name: str, *,
               resume: bool = False, python_path: str = "", home: Path) -> Run:
    """Run the tree's train script of `variant.framework` unchanged through `python -m fastmix.openpi.launch`;
    raises AssertionError with the output tail when it fails."""
    record = folder / f"{exp_name}.jsonl"
    record.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": python_path, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "JAX_PLATFORMS": "cpu",
           # no persistent compilation cache (a run that loaded the previous run's CPU executable crashed once)
           "JAX_ENABLE_COMPILATION_CACHE": "false",
           "FASTMIX_TRAIN_RECORD": str(record), "FASTMIX_TRAIN_FRAMEWORK": variant.framework}
    command = [sys.executable, "-m", "fastmix.openpi.launch", "--configs", str(configs),
               str(tree_root / "scripts" / SCRIPTS[variant.framework]), variant.name, f"--exp-name={exp_name}",
               *(["--resume"] if resume else [])]
    start = time.monotonic()
    out = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    seconds = time.monotonic() - start
    output = out.stdout + out.stderr
    assert out.returncode == 0, f"{' '.join(command)} exited {out.returncode}:\n{output[-6000:]}"
    steps: dict[int, dict[str, Any]] = {}
    for line in record.read_text(encoding="utf-8").splitlines() if record.is_file() else []:
        entry = json.loads(line)
        assert entry["step"] not in steps, f"step {entry['step']} trained twice in {exp_name}"
        steps[entry["step"]] = entry
    checkpoint_dir = folder / "checkpoints" / variant.name / exp_name
    return Run(steps, checkpoint_dir, seconds, output)


def resumable_copy(checkpoint_dir: Path, dest: Path, keep_step: int, *, drop_loader_state: bool = False) -> None:
    """Copy a run's checkpoints to `dest` keeping steps up to `keep_step` only (as if the run stopped after
    saving it); `drop_loader_state`: also delete fastmix's loader state (a checkpoint as openpi alone saves it)."""
    from fastmix.openpi.resume import STATE_FILE

    shutil.copytree(checkpoint_dir, dest, copy_function=os.link)  # the run writes new files, never into these
    for d in dest.iterdir():
        if d.is_dir() and d.name.isdigit() and int(d.name) > keep_step:
            shutil.rmtree(d)
    if drop_loader_state:
        (dest / str(keep_step) / "assets" / STATE_FILE).unlink()
