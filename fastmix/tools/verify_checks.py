"""The single-config checks of `fastmix verify` (one home; `fastmix.tools.verify` runs them on a config,
`fastmix.tools.verify_entries` on each entry of a mixture of data configs): `Run` holds what the checks of one
call share; each `check_*` appends its `Check` (name, ok, detail) through `Run.add` and prints it."""

from __future__ import annotations

import collections
import dataclasses
import math
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from fastmix.tools.verify_report import (
    Check,
    Report,
    chi_square,
    expected_mixture,
    fmt_row,
    plot_shares,
    sample_size_note,
    too_few_samples,
)
from fastmix.tools.verify_stages import StageMonitor


@dataclasses.dataclass
class Run:
    """What the checks of one `verify` call share: inputs, injected dependencies, what earlier checks found."""

    config: Any
    num_samples: int
    alpha: float
    out: Callable[[str], None]
    report: Report
    open_sources: Callable[[Any], list]
    check_compatible: Callable[[list], None]
    create_loader: Callable[..., Any]
    data_config: Any = None
    sources: list = dataclasses.field(default_factory=list)
    weights: list[float] | None = None
    weighting: str = "per_sample"
    frame_filters: Any = None  # the config's (data_config.frame_filters), when it has them
    counts: np.ndarray | None = None
    drawn: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)
    prompts: list[collections.Counter] = dataclasses.field(default_factory=list)
    finals: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    n_batches: int = 0
    stages: list = dataclasses.field(default_factory=list)
    monitor: StageMonitor | None = None

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.report.checks.append(Check(name, ok, detail))
        self.out(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}")


def check_datasets(run: Run) -> bool:
    """Open every dataset and print its size, version, fps, cameras and tasks; False when one cannot be opened."""
    try:
        run.sources = run.open_sources(run.data_config)
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        run.add("datasets", False, f"{type(e).__name__}: {e}")
        return False
    sources = run.sources
    run.out("\nDatasets:")
    widths = [max(8, *(len(s.name) for s in sources)), 8, 5, 8, 9, 40]
    run.out(fmt_row(["name", "version", "fps", "frames", "episodes", "cameras"], widths))
    for s in sources:
        cams = ", ".join(f"{k} {'x'.join(map(str, s.camera_shape(k)))}" for k in s.camera_keys)
        run.out(fmt_row([s.name, s.codebase_version, s.fps, s.num_frames, s.num_episodes, cams], widths))
        tasks = list(s.tasks.values())
        run.out(f"    tasks ({len(tasks)}): {'; '.join(tasks[:3])}{' ...' if len(tasks) > 3 else ''}")
    empty = [s.name for s in sources if len(s) == 0]
    run.add("datasets", not empty, f"{len(sources)} datasets, {sum(len(s) for s in sources)} frames"
            + (f"; empty: {empty}" if empty else ""))
    return True


def check_compatibility(run: Run) -> None:
    """Same keys, shapes and dtypes (`check_compatible`); no dataset twice; one fps (a mixed-fps mixture is
    allowed by the loader with a warning, and reported here as a failure)."""
    from fastmix.sources.compat import check_mixture

    try:
        run.check_compatible(run.sources)
        check_mixture(run.sources, strict_fps=True)
        run.add("compatibility", True, "same keys, shapes, dtypes and fps; no dataset twice")
    except Exception as e:  # noqa: BLE001
        run.add("compatibility", False, f"{type(e).__name__}: {e}")


def check_norm_stats(run: Run) -> bool:
    """Whether the config has norm stats (False: the remaining checks run unnormalized)."""
    from fastmix.openpi import data_loader as _dl

    if run.data_config.norm_stats is not None:
        kind = "quantile" if run.data_config.use_quantile_norm else "z-score"
        run.add("norm stats", True, f"keys {sorted(run.data_config.norm_stats)} ({kind})")
        return True
    try:
        _dl.require_norm_stats(run.config, run.data_config)
    except Exception as e:  # noqa: BLE001
        run.add("norm stats", False, str(e))
    return False


def check_finite_data(run: Run) -> None:
    """NaN/inf in the datasets' numeric features (dataset, key, episode, frame of the first ones)."""
    from fastmix.sources.integrity import find_nonfinite

    found = []
    for s in run.sources:
        try:
            hits = find_nonfinite(s, limit=3)
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            found.append(f"{s.name}: cannot check ({type(e).__name__}: {e})")
            continue
        found += [f"{s.name}: {key} episode {ep} frame {frame}" for key, ep, frame in hits]
    run.add("finite data", not found, "no NaN/inf in any numeric feature" if not found else
            "NaN/inf in " + "; ".join(found[:6]) + (" ..." if len(found) > 6 else ""))


class PromptTap:
    """A loader trace that passes every call on to `trace` and keeps, per batch in the order the batches were
    transformed, the `prompt` a transform consumed (openpi's `TokenizePrompt` replaces it by tokens): the
    prompts as that transform read them (`consumed`, a deque of lists of str)."""

    def __init__(self, trace: Callable[..., None]) -> None:
        self.trace = trace
        self.consumed: collections.deque[list[str]] = collections.deque()

    def __call__(self, stage: str, i: int, t: Any, before: dict, after: dict) -> None:
        if "prompt" in before and "prompt" not in after:
            self.consumed.append([str(p) for p in before["prompt"]])
        self.trace(stage, i, t, before, after)


def check_loading(run: Run, normalize: bool) -> bool:
    """Draw `num_samples` samples through the config's loader, recording per-dataset counts, prompts (as the
    tokenizer read them, where a transform replaces them by tokens), final values and every transform call."""
    from fastmix.openpi import data_loader as _dl

    local_bs = max(1, int(run.config.batch_size))
    num_batches = max(1, math.ceil(run.num_samples / local_bs))
    run.monitor = StageMonitor(run.data_config)
    run.counts = np.zeros(len(run.sources), dtype=np.int64)
    run.prompts = [collections.Counter() for _ in run.sources]
    try:
        loader = run.create_loader(run.config, shuffle=True, num_batches=num_batches, skip_norm_stats=not normalize,
                                   framework="pytorch", open_sources=lambda _dc: run.sources)
        tap = PromptTap(run.monitor)
        loader.trace = tap
        run.stages = loader.stages
        obs_cls = _dl.observation_class()
        try:
            for batch, meta in loader.batches(with_meta=True):
                run.n_batches += 1
                if "prompt" not in batch and tap.consumed:  # tokenized by the transforms: the prompts they read
                    batch = {**batch, "prompt": tap.consumed.popleft()}
                d_idx = np.asarray(meta["dataset_index"]).astype(np.int64)
                run.counts += np.bincount(d_idx, minlength=len(run.sources))
                if run.frame_filters is not None and "episode_index" in meta:  # (dataset, episode, frame) drawn
                    run.drawn.append((d_idx, np.asarray(meta["episode_index"]).astype(np.int64),
                                      np.asarray(meta["frame_index"]).astype(np.int64)))
                for d, prompt in zip(d_idx, batch.get("prompt", []), strict=False):
                    run.prompts[int(d)][str(prompt)] += 1
                for k in ("state", "actions"):
                    run.finals[k].append(np.asarray(batch[k]))
                for k, v in batch.get("image", {}).items():
                    if len(run.finals[f"image/{k}"]) < 2:
                        run.finals[f"image/{k}"].append(np.asarray(v))
                obs_cls.from_dict({**batch, "image": dict(batch["image"])})
        finally:
            loader.close()
    except Exception as e:  # noqa: BLE001
        run.add("loading", False, f"{type(e).__name__}: {e}")
        return False
    drawn = int(run.counts.sum())
    rounded = f"; NUM_SAMPLES {run.num_samples} rounded up to whole batches" if drawn != run.num_samples else ""
    run.add("loading", True, f"{run.n_batches} batches of {local_bs} ({drawn} samples{rounded}), "
            "Observation.from_dict ok")
    return True


def check_statistics(run: Run) -> None:
    run.out("\nPer-key statistics (after all transforms):")
    bad = []
    for k, arrs in run.finals.items():
        a = np.concatenate(arrs).astype(np.float64)
        finite = bool(np.isfinite(a).all())
        bad += [] if finite else [k]
        run.out(f"  {k:28s} shape {tuple(arrs[0].shape[1:])}  min {a.min():9.4f}  max {a.max():9.4f}"
                f"  mean {a.mean():9.4f}  std {a.std():9.4f}{'' if finite else '  NON-FINITE'}")
    run.add("statistics", not bad, "all values finite" if not bad else f"non-finite values in {bad}")


def check_transforms(run: Run) -> None:
    monitor = run.monitor
    missing = [
        f"{stage}[{i}] {getattr(t, '__name__', type(t).__name__)} ran {monitor.calls[(stage, i)]}/{run.n_batches}"
        for stage, ts in run.stages
        for i, t in enumerate(ts)
        if monitor.calls[(stage, i)] != run.n_batches
    ]
    ran = ", ".join(f"{stage}: {len(ts)}" for stage, ts in run.stages)
    detail = f"transforms per stage ({ran}) each ran on every batch"
    if monitor.normalized_in_range:
        detail += f"; {100 * np.mean(monitor.normalized_in_range):.1f}% of normalized values in [-1, 1]"
    problems = missing + monitor.problems
    run.add("transforms", not problems, detail if not problems else "; ".join(problems))


def check_mixture(run: Run) -> tuple[np.ndarray, np.ndarray, float]:
    """Observed per-dataset shares against the declared ones; returns (expected, observed shares, p)."""
    sizes = [len(s) for s in run.sources]
    try:
        mixture = expected_mixture(sizes, run.weights, run.weighting, sources=run.sources,
                                   frame_filters=run.frame_filters)
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        run.add("mixture", False, f"cannot build the declared mixture: {type(e).__name__}: {e}")
        return np.full(len(sizes), np.nan), run.counts / max(1, run.counts.sum()), 0.0
    exp = mixture.shares
    if mixture.filtered:
        sizes = mixture.kept_sizes.tolist()  # the table's "frames" are the kept frames
        check_kept(run, mixture)
    counts = run.counts
    obs_share = counts / max(1, counts.sum())
    stat, p = chi_square(counts, exp)
    run.report.expected_shares, run.report.observed_counts, run.report.p_value = exp.tolist(), counts.tolist(), p
    run.out("\nMixture (expected from the config's weights vs observed from the loader):")
    widths = [max(8, *(len(s.name) for s in run.sources)), 8, 8, 9, 9, 7]
    run.out(fmt_row(["dataset", "weight", "frames", "expected", "observed", "count"], widths))
    for i, s in enumerate(run.sources):
        w = 1.0 if run.weights is None else run.weights[i]
        run.out(fmt_row([s.name, f"{w:g}", sizes[i], f"{exp[i]:.4f}", f"{obs_share[i]:.4f}", int(counts[i])], widths))
    n = int(counts.sum())
    short = too_few_samples(exp, n, [s.name for s in run.sources])
    if short is not None:
        run.add("mixture", False, f"{short} (chi-square {stat:.2f}, p-value {p:.4g} not trusted)")
    else:
        run.add("mixture", p >= run.alpha, f"chi-square {stat:.2f}, p-value {p:.4g} "
                f"({'>=' if p >= run.alpha else '<'} alpha {run.alpha:g}) over {n} samples; "
                f"{sample_size_note(exp, n, run.alpha)}")
    return exp, obs_share, p


def check_kept(run: Run, mixture: Any) -> None:
    """No drawn frame is one the config's frame filters drop (the loader's (dataset, episode, frame) of every
    sample against `Mixture.is_kept`)."""
    kept = ", ".join(f"{s.name} {int(mixture.kept_sizes[i]):,}/{len(s):,}" for i, s in enumerate(run.sources))
    if not run.drawn:
        run.add("frame filters", False, f"kept frames {kept}; the loader's batches carry no episode/frame "
                "indices to check the draws against")
        return
    d = np.concatenate([t[0] for t in run.drawn])
    ep, fr = np.concatenate([t[1] for t in run.drawn]), np.concatenate([t[2] for t in run.drawn])
    bad = []
    for i, s in enumerate(run.sources):
        sel = np.flatnonzero(d == i)
        out = sel[~mixture.is_kept(i, ep[sel], fr[sel])]
        bad += [f"{s.name} episode {int(ep[j])} frame {int(fr[j])}" for j in out[:3]]
    run.add("frame filters", not bad, f"kept frames {kept}; none of the {d.size} draws is a filtered-out frame"
            if not bad else f"draws of filtered-out frames: {'; '.join(bad)}")


def check_prompts(run: Run) -> None:
    run.out("\nPrompts seen per dataset:")
    from_task = bool(run.data_config.prompt_from_task)
    wrong = []
    for s, c in zip(run.sources, run.prompts, strict=True):
        run.out(f"  {s.name}: " + ("; ".join(f"{p!r} x{n}" for p, n in c.most_common(3)) or "(none)"))
        if from_task:
            wrong += [f"{s.name}: {p!r}" for p in c if p not in set(s.tasks.values())]
    if not from_task:
        run.add("prompts", True, "prompt_from_task is off: prompts come from the transforms")
        return
    unseen = [s.name for s, c, n in zip(run.sources, run.prompts, run.counts, strict=True) if n > 0 and not c]
    ok = not wrong and not unseen
    run.add("prompts", ok, "every prompt is a task of its dataset" if ok else
            f"prompts not among their dataset's tasks: {wrong[:5]}; no prompt for {unseen}")


def check_plot(run: Run, path: pathlib.Path, exp: np.ndarray, obs_share: np.ndarray, p: float) -> None:
    try:
        plot_shares(path, [s.name for s in run.sources], exp, obs_share, f"{run.config.name}: p = {p:.3g}")
        run.report.plot_path = path
        run.add("plot", True, f"wrote {path}")
    except Exception as e:  # noqa: BLE001
        run.add("plot", False, f"{type(e).__name__}: {e}")


__all__ = ["PromptTap", "Run", "check_compatibility", "check_datasets", "check_finite_data", "check_kept", "check_loading",
           "check_mixture", "check_norm_stats", "check_plot", "check_prompts", "check_statistics", "check_transforms"]
