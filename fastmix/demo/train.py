"""Training-loop example: a small policy network trained on MixtureLoader batches, on CUDA when present.

`train(loader, steps)` measures, per step, the time spent waiting for data (``next(iterator)`` plus any
host→device copy not already done by the loader) and the time of the step itself (forward, backward,
optimizer; synchronized on CUDA so the split is honest), and returns `TrainStats` with samples/s and the
data-wait fraction.

    python -m fastmix.demo.train --generate-tmp --steps 200              # generated LIBERO-like mixture
    python -m fastmix.demo.train --generate-tmp --device cuda --image-dtype float32   # CUDA path (streams, pinned)
    python -m fastmix.demo.train --root /path/ds_a --root /path/ds_b --weights 1 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastmix.loader.options import MemoryOptions


@dataclass
class TrainStats:
    """What `train` measured. wait_s / step_s: per-step seconds (data wait, compute)."""

    steps: int = 0
    samples: int = 0
    wall_s: float = 0.0
    data_wait_s: float = 0.0
    compute_s: float = 0.0
    last_loss: float = float("nan")
    device: str = "cpu"
    wait_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait_s / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {"steps": self.steps, "samples": self.samples, "wall_s": round(self.wall_s, 3),
                "samples_per_s": round(self.samples_per_s, 1), "data_wait_fraction": round(self.data_wait_fraction, 4),
                "last_loss": self.last_loss, "device": self.device}


class SmallPolicy(nn.Module):
    """Cameras → tiny conv encoder (shared), state → MLP, fused → action chunk (H, action_dim)."""

    def __init__(self, num_cameras: int, state_dim: int, horizon: int, action_dim: int, width: int = 64) -> None:
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=4, padding=2), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.state = nn.Sequential(nn.Linear(state_dim, width), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(32 * num_cameras + width, width * 2), nn.ReLU(),
                                  nn.Linear(width * 2, horizon * action_dim))

    def forward(self, images: list[torch.Tensor], state: torch.Tensor) -> torch.Tensor:
        feats = [self.encoder(img) for img in images] + [self.state(state)]
        return self.head(torch.cat(feats, dim=1)).view(-1, self.horizon, self.action_dim)


def _as_float_chw(img: torch.Tensor) -> torch.Tensor:
    if img.dtype == torch.uint8:  # (B,H,W,C) uint8 → (B,C,H,W) float on the model's device
        return img.permute(0, 3, 1, 2).float().div_(255.0)
    return img.float()


def _action_key(batch: dict[str, Any]) -> str:
    for k in ("actions", "action"):
        if k in batch:
            return k
    raise KeyError(f"batch has no 'actions'/'action' key (keys: {sorted(batch)})")


def train(loader: Any, steps: int, device: str | torch.device | None = None, log_every: int = 50,
          callback: Callable[[int, dict[str, float]], None] | None = None, lr: float = 1e-3) -> TrainStats:
    """Train `SmallPolicy` for `steps` batches of `loader` (re-iterated across epochs).

    Args:
        loader: yields MixtureLoader batches (camera keys, "state", "actions" (B,H,A) or (B,A)).
        steps: optimizer steps. device: None → CUDA when available, else CPU.
        log_every: print a line every this many steps (0: silent).
        callback: called as callback(step, {"loss", "wait_s", "step_s", "samples_per_s", "data_wait_fraction"}).
    Returns:
        TrainStats (samples/s and data-wait fraction over all steps; per-step lists).
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    cams = list(getattr(loader, "camera_keys", []))
    stats = TrainStats(device=str(dev))
    model: SmallPolicy | None = None
    opt: torch.optim.Optimizer | None = None
    it = iter(loader)
    t_start = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        cam_keys = cams or [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() == 4]
        akey = _action_key(batch)
        images = [_as_float_chw(batch[k].to(dev, non_blocking=True)) for k in cam_keys]
        state = batch["state"].to(dev, non_blocking=True).float()
        target = batch[akey].to(dev, non_blocking=True).float()
        if target.dim() == 2:
            target = target[:, None, :]
        pad = batch.get(f"{akey}_is_pad")
        if cuda:
            torch.cuda.current_stream(dev).synchronize()  # data (and its copies) ready: end of the wait
        t1 = time.perf_counter()
        if model is None:
            model = SmallPolicy(len(cam_keys), state.shape[-1], target.shape[1], target.shape[2]).to(dev)
            opt = torch.optim.AdamW(model.parameters(), lr=lr)
        pred = model(images, state)
        err = (pred - target).pow(2).mean(-1)
        if pad is not None:
            keep = (~pad.to(dev, non_blocking=True)).float()
            loss = (err * keep).sum() / keep.sum().clamp_min(1.0)
        else:
            loss = err.mean()
        opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
        loss.backward()
        opt.step()  # type: ignore[union-attr]
        loss_value = float(loss.detach())  # synchronizes on CUDA
        t2 = time.perf_counter()
        n = int(state.shape[0])
        stats.steps += 1
        stats.samples += n
        stats.wait_s.append(t1 - t0)
        stats.step_s.append(t2 - t1)
        stats.data_wait_s += t1 - t0
        stats.compute_s += t2 - t1
        stats.last_loss = loss_value
        stats.wall_s = t2 - t_start
        info = {"loss": loss_value, "wait_s": t1 - t0, "step_s": t2 - t1,
                "samples_per_s": stats.samples_per_s, "data_wait_fraction": stats.data_wait_fraction}
        if callback is not None:
            callback(step, info)
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1:>6}/{steps}  loss {loss_value:.4f}  {stats.samples_per_s:8.1f} samples/s  "
                  f"data-wait {100 * stats.data_wait_fraction:5.1f}%  (this step: wait {1e3 * (t1 - t0):.1f} ms, "
                  f"compute {1e3 * (t2 - t1):.1f} ms)", flush=True)
    return stats


def _generate(root: Path, shape: tuple[int, int, int], quick: bool) -> list[Path]:
    """Two LIBERO-like AV1 datasets under `root`, written by lerobot's writer with its output hidden as the demo
    hides it (`fastmix.demo.data.quiet_writer`: shown only when writing fails)."""
    from fastmix.demo.data import quiet_writer
    from fastmix.testing.synth import make_dataset

    sizes = [(4, 50), (2, 50)] if quick else [(20, 100), (5, 100)]
    out = []
    with quiet_writer():
        for i, (eps, length) in enumerate(sizes):
            out.append(make_dataset(root / f"ds{i}", f"fastmix-train/ds{i}", num_episodes=eps,
                                    episode_length=length, camera_shape=shape, use_videos=True, seed=i))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastmix.demo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", action="append", default=[], help="dataset root (repeat for a mixture)")
    p.add_argument("--generate-tmp", action="store_true", help="generate a LIBERO-like 2-dataset mixture in a temp dir")
    p.add_argument("--quick", action="store_true", help="with --generate-tmp: small datasets")
    p.add_argument("--camera-size", type=int, default=128, help="with --generate-tmp: H = W of the cameras")
    p.add_argument("--weights", type=float, nargs="*", default=None)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--action-horizon", type=int, default=10)
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--image-dtype", choices=("uint8", "float32"), default="uint8")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print the final stats as JSON")
    args = p.parse_args(argv)

    from fastmix.loader.loader import MixtureLoader
    from fastmix.sources.lerobot_source import LeRobotSource

    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="fastmix-train-") as tmp:
        roots = [Path(r) for r in args.root]
        if args.generate_tmp:
            print(f"generating a LIBERO-like mixture in {tmp} ...", flush=True)
            roots += _generate(Path(tmp), (args.camera_size, args.camera_size, 3), args.quick)
        if not roots:
            p.error("give --root (repeatable) or --generate-tmp")
        sources = [LeRobotSource(root=r) for r in roots]
        weights = args.weights or ([1.0, 3.0] if len(sources) == 2 else None)
        loader_device = device if (device.type == "cuda") else None
        with MixtureLoader(sources, dataset_weights=weights, batch_size=args.batch_size,
                           action_horizon=args.action_horizon, num_workers=args.num_workers,
                           device=loader_device, image_dtype=args.image_dtype,
                           num_batches=max(1, args.steps), memory=MemoryOptions(prefetch=args.prefetch)) as loader:
            print(loader.mixture.format_table([s.name for s in sources]), flush=True)
            print(f"device {device} (loader copies on per-slot CUDA streams: {loader_device is not None}, "
                  f"pinned slots: {loader.pin_memory})", flush=True)
            stats = train(loader, args.steps, device=device, log_every=args.log_every)
    s = stats.summary()
    print(f"{s['samples_per_s']:.1f} samples/s, data-wait fraction {100 * s['data_wait_fraction']:.1f}% over "
          f"{s['steps']} steps on {s['device']} (loss {s['last_loss']:.4f})")
    if args.json:
        print(json.dumps({k: v for k, v in asdict(stats).items() if k not in ("wait_s", "step_s")} | s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
