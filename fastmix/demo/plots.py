"""The demo's summary figure: training loss, throughput (with the data-wait fraction) and mixture shares."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if values.size < window or window < 2:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_summary(
    path: str | Path,
    *,
    losses: Sequence[float],
    samples_per_s: Sequence[float],
    data_wait: Sequence[float],
    names: Sequence[str],
    expected: Sequence[float],
    observed: Sequence[float],
    title: str = "fastmix demo",
) -> Path:
    """Write a 3-panel PNG and return its path.

    Args:
        losses: training loss per step.
        samples_per_s: throughput per step (samples / step wall time).
        data_wait: per-step fraction of the step spent waiting for the loader, in [0, 1].
        names: dataset names; expected / observed: their shares (each sums to 1).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = np.arange(1, len(losses) + 1)
    window = max(1, len(losses) // 20)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), constrained_layout=True)
    try:
        ax = axes[0]
        loss = np.asarray(losses, dtype=float)
        ax.plot(steps, loss, alpha=0.35, lw=1, label="per step")
        ax.plot(steps, _smooth(loss, window), lw=2, label=f"mean of {window}")
        ax.set(xlabel="step", ylabel="loss", title="training loss", yscale="log" if np.all(loss > 0) else "linear")
        ax.legend()

        ax = axes[1]
        sps = np.asarray(samples_per_s, dtype=float)
        ax.plot(steps, sps, alpha=0.35, lw=1, color="tab:green")
        ax.plot(steps, _smooth(sps, window), lw=2, color="tab:green", label="samples/s")
        ax.set(xlabel="step", ylabel="samples/s", title="throughput")
        ax.set_ylim(bottom=0)
        twin = ax.twinx()
        twin.plot(steps, _smooth(np.asarray(data_wait, dtype=float), window), color="tab:red", lw=1.5,
                  label="data-wait fraction")
        twin.set(ylabel="data-wait fraction", ylim=(0, 1))
        lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(lines, [ln.get_label() for ln in lines], loc="lower right")

        ax = axes[2]
        x = np.arange(len(names))
        ax.bar(x - 0.2, expected, width=0.4, label="expected")
        ax.bar(x + 0.2, observed, width=0.4, label="observed")
        for xi, (e, o) in enumerate(zip(expected, observed, strict=True)):
            ax.text(xi - 0.2, e, f"{e:.3f}", ha="center", va="bottom", fontsize=8)
            ax.text(xi + 0.2, o, f"{o:.3f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [n.split("/")[-1] for n in names], rotation=15)
        ax.set(ylabel="share of samples", title="mixture shares")
        ax.legend()
        fig.suptitle(title)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # a concurrent demo's PNG is whole, never mixed
        try:
            fig.savefig(tmp, dpi=100, format="png")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        plt.close(fig)
    return path


__all__ = ["plot_summary"]
