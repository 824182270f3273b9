"""openpi's per-sample policy transforms read LeRobotDataset items (e.g. openpi's `AlohaInputs` transposes every
camera from (C, H, W) to (H, W, C) unconditionally). A per-sample transform, any callable that is not a fastmix
`Transform`, in the repack or data stage therefore gets fastmix's rows in LeRobotDataset's own image format:
float32 (C, H, W) in [0, 1], bit-identical to lerobot's `LeRobotDataset[i]` (pyav decoder; video and
images-in-parquet). With fastmix's batched transforms only there, or a per-sample one only in the model stage
(which reads the model's format), the rows keep uint8 (H, W, C) (`data_loader.raw_image_dtype`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastmix.openpi import config as C
from fastmix.openpi import data_loader as DL
from fastmix.openpi import transforms as T

REPO_IDS = {"video": "fastmix-test/video_ds", "image": "fastmix-test/image_ds"}


@dataclasses.dataclass(frozen=True)
class Recorder:
    """A per-sample transform in openpi's style: records each sample's cameras and index, returns it."""

    seen: list = dataclasses.field(default_factory=list)

    def __call__(self, data: dict) -> dict:
        self.seen.append({k: np.array(data[k]) for k in ("image", "wrist_image", "index")})
        return data


@dataclasses.dataclass(frozen=True)
class RecordingConfig(C.DataConfigFactory):
    """A data config whose only transform is `recorder`, in the stage `stage` ("repack", "data" or "model")."""

    recorder: Any = None
    stage: str = "data"

    def create(self, assets_dirs: Any, model_config: Any) -> C.DataConfig:
        base = self.create_base_config(assets_dirs, model_config)
        return dataclasses.replace(base, **{f"{self.stage}_transforms": T.Group(inputs=[self.recorder])})


def recorded(root: Path, repo_id: str, home: Path, stage: str) -> list[dict]:
    """The samples the recorder saw in 2 shuffled batches of 4 through `create_data_loader` (no norm stats)."""
    (home / repo_id).parent.mkdir(parents=True, exist_ok=True)
    if not (home / repo_id).exists():
        (home / repo_id).symlink_to(root, target_is_directory=True)
    recorder = Recorder()
    config = C.TrainConfig(name=f"raw_images_{stage}", model=C.Pi0Config(action_horizon=4),
                           data=RecordingConfig(repo_id=repo_id, lerobot_home=str(home), recorder=recorder,
                                                stage=stage), batch_size=4, num_workers=0)
    with DL.create_data_loader(config, shuffle=True, num_batches=2, skip_norm_stats=True, framework="pytorch",
                               rank_world=(0, 1)) as loader:
        batches = list(loader.batches())
    assert len(batches) == 2
    assert len(recorder.seen) == 8
    return recorder.seen


@pytest.mark.parametrize("kind", ["video", "image"])
@pytest.mark.parametrize("stage", ["repack", "data"])
def test_per_sample_transforms_see_lerobot_items(video_ds, image_ds, tmp_path, kind, stage):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = video_ds if kind == "video" else image_ds
    seen = recorded(root, REPO_IDS[kind], tmp_path / "home", stage)
    ref = LeRobotDataset(REPO_IDS[kind], root=root, video_backend="pyav")
    for sample in seen:
        item = ref[int(sample["index"])]
        for key in ("image", "wrist_image"):
            want = item[key].numpy()
            got = sample[key]
            assert (got.dtype, got.shape) == (want.dtype, want.shape), f"{kind} {key} {got.dtype}{got.shape}"
            assert np.array_equal(got, want), f"{kind} index {int(sample['index'])} {key}"


def test_model_stage_transforms_keep_the_loaders_uint8_rows(video_ds, tmp_path):
    seen = recorded(video_ds, REPO_IDS["video"], tmp_path / "home", "model")
    assert all(s["image"].dtype == np.uint8 and s["image"].shape == (64, 64, 3) for s in seen)


def test_raw_image_dtype():
    per_sample = Recorder()
    batched = T.RepackTransform({"a": "a"})
    stages = [("repack", [batched]), ("data", []), ("normalize", []), ("model", [])]
    assert DL.raw_image_dtype(stages) == "uint8"
    assert DL.raw_image_dtype([*stages[:3], ("model", [per_sample])]) == "uint8"
    assert DL.raw_image_dtype([stages[0], ("data", [per_sample]), *stages[2:]]) == "float32"
    assert DL.raw_image_dtype([("repack", [batched, per_sample]), *stages[1:]]) == "float32"
