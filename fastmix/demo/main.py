"""`fastmix demo`: the main job on the embedded default mixture.

1. generates the three LIBERO-like datasets of `fastmix/demo/spec.py` with lerobot's writer (once; reused),
2. computes their norm stats over the whole mixture,
3. takes the registered demo config and builds its loader with `fastmix.create_data_loader`,
4. trains a small policy (`fastmix.demo.train`) for a few hundred steps on CUDA when present, else the CPU,
   with a progress bar showing samples/s and the data-wait fraction,
5. prints the effective mixture against the observed shares with a chi-square p-value,
6. writes a PNG of loss, throughput and mixture shares.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from fastmix.demo import spec
from fastmix.errors import ConfigError

CONFIG_NAME = "fastmix_demo_native"  # the demo mixture at the cameras' own resolution (fastmix.openpi.config)
P_THRESHOLD = 0.01


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size (default 32)")
    parser.add_argument("--num-workers", type=int, default=2, help="decode worker processes (default 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the PNG goes (default $FASTMIX_HOME/demo, i.e. ~/.cache/fastmix/demo)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    # Any seed gives p > 0.01 with probability 0.99 (the check is a real test); seed 0's 300x32 stream is one of
    # the 1-in-100 (p = 0.0087), so the default is 1 (p = 0.74).
    parser.add_argument("--seed", type=int, default=1, help="sampling and model seed (default 1)")
    parser.add_argument("--config", default=CONFIG_NAME, help=f"registered demo config (default {CONFIG_NAME})")


@dataclasses.dataclass
class MixtureCheck:
    """Observed per-dataset counts against the expected shares."""

    names: list[str]
    expected: np.ndarray  # shares, sum 1
    counts: np.ndarray  # int64 draws per dataset
    chi2: float
    p_value: float

    @property
    def observed(self) -> np.ndarray:
        return self.counts / max(1, int(self.counts.sum()))

    @property
    def ok(self) -> bool:
        never = self.expected == 0
        return self.p_value > P_THRESHOLD and not self.counts[never].any()

    def format(self) -> str:
        w = max(7, *(len(n) for n in self.names))
        lines = [f"  {'dataset':<{w}}  {'expected':>9}  {'observed':>9}  {'samples':>8}"]
        for n, e, o, c in zip(self.names, self.expected, self.observed, self.counts, strict=True):
            lines.append(f"  {n:<{w}}  {e:9.4f}  {o:9.4f}  {int(c):>8}")
        verdict = "agree" if self.ok else "DISAGREE"
        lines.append(f"  chi-square = {self.chi2:.3f} (dof {int((self.expected > 0).sum()) - 1}), "
                     f"p = {self.p_value:.4f}: observed shares {verdict} with the expected ones (p > {P_THRESHOLD})")
        return "\n".join(lines)


def check_mixture(names: list[str], expected: np.ndarray, counts: np.ndarray) -> MixtureCheck:
    """Chi-square goodness of fit of `counts` to `expected` shares (`fastmix.tools.equivalence.chi_square_gof`: a draw
    of a dataset with share 0 gives p = 0)."""
    from fastmix.tools.equivalence import chi_square_gof

    expected = np.asarray(expected, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    res = chi_square_gof(counts, expected, "datasets")
    return MixtureCheck(list(names), expected, counts, res.statistic, res.p_value)


class _PolicyFeed:
    """Feeds `fastmix.demo.train.train` from `create_data_loader`'s openpi batches: cameras in use (image mask not all
    False) flattened to top-level (B, H, W, C) tensors, plus "state" and "actions"; counts draws per dataset."""

    def __init__(self, loader: Any, num_datasets: int) -> None:
        self._loader = loader
        self.counts = np.zeros(num_datasets, dtype=np.int64)
        self.batch_sizes: list[int] = []

    def __iter__(self) -> Any:
        for batch, meta in self._loader.batches(with_meta=True):
            dataset_index = np.asarray(meta["dataset_index"])
            self.counts += np.bincount(dataset_index, minlength=self.counts.size)
            self.batch_sizes.append(int(dataset_index.size))
            masks = batch.get("image_mask", {})
            flat = {k: v for k, v in batch["image"].items() if k not in masks or bool(np.asarray(masks[k]).any())}
            flat["state"], flat["actions"] = batch["state"], batch["actions"]
            yield flat


def _out_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out is not None else spec.demo_home().parent / "demo"


def _norm_stats_current(path: Path) -> bool:
    """Norm stats exist and are newer than every demo dataset's completion marker."""
    from fastmix.demo.data import MARKER, dataset_root

    if not path.exists():
        return False
    newest = max((dataset_root(d) / MARKER).stat().st_mtime for d in spec.DEMO_DATASETS)
    return path.stat().st_mtime >= newest


def _ensure_norm_stats(config: Any, stats_path: Path) -> None:
    """Compute the demo config's norm stats unless current, under the demo data's lock (a concurrent demo waits,
    then finds them present)."""
    from fastmix.demo.data import generation_lock
    from fastmix.tools import compute_norm_stats

    if _norm_stats_current(stats_path):
        print("  present")
        return
    with generation_lock():
        if _norm_stats_current(stats_path):
            print("  present (computed meanwhile by another process)")
            return
        t0 = time.perf_counter()
        compute_norm_stats.compute_norm_stats(config, progress=False)
        print(f"  computed over the whole mixture in {time.perf_counter() - t0:.1f} s")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import tqdm

    from fastmix.demo import train
    from fastmix.demo.data import ensure_demo_data
    from fastmix.demo.plots import plot_summary
    from fastmix.openpi import norm_stats
    from fastmix.openpi import registry as fm_registry
    from fastmix.openpi.data_loader import create_data_loader

    if args.steps < 1 or args.batch_size < 1 or args.num_workers < 0:
        raise ConfigError(f"--steps and --batch-size must be >= 1 and --num-workers >= 0, got steps={args.steps}, "
                          f"batch_size={args.batch_size}, num_workers={args.num_workers}")
    t_start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"fastmix demo: {len(spec.DEMO_DATASETS)} datasets in {spec.demo_home()}, device {device}")

    print("[1/5] datasets (lerobot's writer, format v3.0)")
    ensure_demo_data()

    config = dataclasses.replace(fm_registry.get_config(args.config), batch_size=args.batch_size,
                                 num_workers=args.num_workers, seed=args.seed)
    data_config = config.data.create(config.assets_dirs, config.model)
    stats_path = norm_stats.norm_stats_dir(config, data_config) / norm_stats.NORM_STATS_FILE
    print(f"[2/5] norm stats ({stats_path})")
    _ensure_norm_stats(config, stats_path)

    print(f"[3/5] loader: create_data_loader(get_config({args.config!r})), batch {args.batch_size}, "
          f"{args.num_workers} decode workers")
    loader = create_data_loader(config, shuffle=True, num_batches=args.steps)
    names = [s.name for s in loader.sources]
    print("  effective mixture (expected):")
    print("  " + loader.mixture.format_table(names).replace("\n", "\n  "))

    print(f"[4/5] training a small policy (fastmix.demo.train) for {args.steps} steps on {device}")
    torch.manual_seed(args.seed)
    feed = _PolicyFeed(loader, len(names))
    losses: list[float] = []
    bar = tqdm.tqdm(total=args.steps, unit="step", dynamic_ncols=True, mininterval=0.5)

    def on_step(step: int, info: dict[str, float]) -> None:
        losses.append(info["loss"])
        bar.set_postfix_str(f"loss {info['loss']:.4f}  {info['samples_per_s']:.0f} samples/s  "
                            f"data-wait {100 * info['data_wait_fraction']:.0f}%", refresh=False)
        bar.update(1)

    try:
        with bar:
            stats = train.train(feed, args.steps, device=device, log_every=0, callback=on_step)
    finally:
        loader.close()
    counts = feed.counts
    rates = [n / max(w + c, 1e-9) for n, w, c in zip(feed.batch_sizes, stats.wait_s, stats.step_s, strict=False)]
    waits = [w / max(w + c, 1e-9) for w, c in zip(stats.wait_s, stats.step_s, strict=True)]

    print("[5/5] mixture: expected vs observed")
    check = check_mixture(names, loader.mixture.shares, counts)
    print(check.format())
    png = plot_summary(_out_dir(args) / "fastmix_demo.png", losses=losses, samples_per_s=rates, data_wait=waits,
                       names=names, expected=check.expected.tolist(), observed=check.observed.tolist(),
                       title=f"fastmix demo: {args.steps} steps, batch {args.batch_size}, {device}")
    print(f"loss {losses[0]:.4f} -> {np.mean(losses[-10:]):.4f}; {stats.samples_per_s:.0f} samples/s; "
          f"data-wait {100 * stats.data_wait_fraction:.0f}% of the training time ({stats.steps} steps, "
          f"{stats.samples} samples, {stats.wall_s:.1f} s, first step included)")
    print(f"wrote {png}")
    print(f"done in {time.perf_counter() - t_start:.1f} s")
    if not all(math.isfinite(v) for v in losses):
        print("FAILED: the loss is not finite")
        return 1
    return 0 if check.ok else 1


def _cli_main(argv: list[str] | None = None) -> Any:
    """`python -m fastmix.demo.main` (same as `fastmix demo`)."""
    p = argparse.ArgumentParser(prog="fastmix demo", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(_cli_main())
