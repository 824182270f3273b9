"""`fastmix verify` of a mixture of data configs, per entry: the single-config checks of `fastmix.tools.verify` run
on each entry of a `MixtureDataConfig` as the single config it is, and checks of the batches the mixture hands out.

Per entry (check names end with the entry's label, e.g. "finite data entry 2 (LeRobotAlohaDataConfig: aloha)"):
its datasets (table, empty ones), compatibility of its datasets (keys, shapes, dtypes, fps), NaN/inf in their
numeric features (dataset, key, episode, frame), loading through the entry's own single-config pipeline
(`Observation.from_dict`), per-key statistics of its final batches, every transform stage (`StageMonitor`:
repack keys, LIBERO inputs, normalization with the entry's own norm stats, resize, padding) and its prompts
(as they entered the tokenizer, where a model transform replaces them by tokens).
The functions are `fastmix.tools.verify_checks`' (`check_*` on a `Run` whose checks carry the entry's label).

Across entries ("entry outputs"): the entries' final batches hold the same keys with the same per-row shapes
(what one mixture batch stacks); dtypes are listed (the mixture promotes them to one). On the mixture's own
batches ("final batch"): one structure in every batch (keys, dtypes, shapes, the batch size), `state` and
`actions` padded to the model's `action_dim`, every value finite — a non-finite one named by entry, dataset,
key, episode, frame and row — and `Observation.from_dict` accepts the batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastmix.tools import verify_checks as _v
from fastmix.tools.verify_report import Report


@dataclasses.dataclass(frozen=True)
class _Created:
    """A data config factory whose `create` returns one already created data config (a mixture's entry)."""

    data_config: Any

    def create(self, assets_dirs: Any, model_config: Any) -> Any:
        return self.data_config


@dataclasses.dataclass
class _EntryRun(_v.Run):
    """The single-config checks' `Run` for one entry: its checks' names end with the entry's label."""

    label: str = ""

    def add(self, name: str, ok: bool, detail: str) -> None:
        super().add(f"{name} {self.label}", ok, detail)


class _Recording:
    """A loader whose `batches()` records the structure of the final batches: {key: (dtype, per-row shape)}."""

    def __init__(self, loader: Any) -> None:
        object.__setattr__(self, "_inner", loader)
        object.__setattr__(self, "structure", {})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)  # e.g. `trace`, set by the loading check

    def batches(self, *args: Any, **kwargs: Any) -> Any:
        for item in self._inner.batches(*args, **kwargs):
            if not self.structure:
                self.structure.update(structure_of(item[0] if isinstance(item, tuple) else item))
            yield item


def structure_of(batch: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{flattened key: (dtype, shape of one row)} of a batch's array leaves (torch, jax or numpy); strings and
    lists of strings as ("str", ())."""
    from fastmix.openpi.transforms import flatten_dict

    out = {}
    for k, v in flatten_dict(batch).items():
        if hasattr(v, "shape") and hasattr(v, "dtype") and len(v.shape) > 0:
            out[k] = (str(v.dtype).removeprefix("torch."), tuple(int(x) for x in v.shape[1:]))
        else:
            out[k] = ("str", ())
    return out


def check_entries(config: Any, data: Any, sources: Sequence[Any], num_samples: int, *, alpha: float,
                  report: Report, out: Callable[[str], None]) -> None:
    """The single-config checks on every entry of `data` (a created `MixtureData`; `sources`: its opened datasets
    in `data.repo_ids` order), then "entry outputs". Each entry draws ceil(num_samples / entries) samples (at
    least one batch) through its own pipeline; checks are appended to `report`."""
    from fastmix.openpi import data_loader as _dl
    from fastmix.sources.compat import check_compatible

    entry_of = np.asarray(data.entry_of())
    per_entry = max(1, math.ceil(num_samples / len(data.entries)))
    structures: dict[int, dict] = {}
    for i, (label, entry) in enumerate(zip(data.names, data.entries, strict=True)):
        mine = [sources[j] for j in np.flatnonzero(entry_of == i)]
        batch = max(1, min(int(config.batch_size), sum(len(s) for s in mine)))
        single = dataclasses.replace(config, data=_Created(entry), batch_size=batch)
        recorded: list[_Recording] = []

        def create(cfg: Any, *, _into: list = recorded, **kw: Any) -> Any:
            _into.append(_Recording(_dl.create_data_loader(cfg, **kw)))
            return _into[-1]

        run = _EntryRun(single, max(per_entry, batch), alpha, out, report, lambda _dc, m=mine: m, check_compatible,
                        create, label=label)
        run.data_config = entry
        out(f"\n--- {label}")
        if not _v.check_datasets(run):
            continue
        _v.check_compatibility(run)
        _v.check_finite_data(run)
        if not _v.check_loading(run, entry.norm_stats is not None):
            continue
        _v.check_statistics(run)
        _v.check_transforms(run)
        _v.check_prompts(run)
        if recorded and recorded[-1].structure:
            structures[i] = recorded[-1].structure
    _check_entry_outputs(data.names, structures, report, out)


def _check_entry_outputs(names: Sequence[str], structures: dict[int, dict], report: Report,
                         out: Callable[[str], None]) -> None:
    """The entries' own final batches: same keys, same per-row shapes (each against the first entry loaded)."""
    from fastmix.tools.verify_report import Check

    def add(ok: bool, detail: str) -> None:
        report.checks.append(Check("entry outputs", ok, detail))
        out(f"[{'PASS' if ok else 'FAIL'}] entry outputs: {detail}")

    if len(structures) < len(names):
        add(False, f"{len(names) - len(structures)} of {len(names)} entries gave no batch to compare (see their "
            "loading checks)")
        return
    (first, ref), *rest = structures.items()
    problems = []
    for i, s in rest:
        if set(s) != set(ref):
            problems.append(f"keys only in {names[i]}: {sorted(set(s) - set(ref))}, only in {names[first]}: "
                            f"{sorted(set(ref) - set(s))} (a mixture batch needs one structure)")
            continue
        problems += [f"{names[i]}: {k} has rows of shape {s[k][1]}, {names[first]}: {ref[k][1]}"
                     for k in sorted(s) if s[k][1] != ref[k][1]]
    dtypes = {k: sorted({s[k][0] for s in structures.values() if k in s}) for k in sorted(ref)}
    mixed = {k: v for k, v in dtypes.items() if len(v) > 1}
    add(not problems, "; ".join(problems) if problems else f"every entry gives the same {len(ref)} keys with the "
        "same shapes per row" + (f"; dtypes differ per entry (one batch promotes them): {mixed}" if mixed else ""))


class FinalBatches:
    """The "final batch" check of the mixture's own batches (module docstring): `add(batch, meta)` per batch,
    then `finish(add_check)`. sources: the datasets in `data.repo_ids` order; entry_of: the entry of each."""

    def __init__(self, names: Sequence[str], sources: Sequence[Any], entry_of: Sequence[int], batch_size: int,
                 action_dim: int | None) -> None:
        self.names, self.sources, self.entry_of = list(names), list(sources), list(entry_of)
        self.batch_size, self.action_dim = int(batch_size), action_dim
        self.structure: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.problems: list[str] = []
        self.nonfinite: list[str] = []
        self.batches = 0

    def add(self, batch: dict, meta: dict) -> None:
        from fastmix.openpi.data_loader import observation_class
        from fastmix.openpi.transforms import flatten_dict

        self.batches += 1
        s = structure_of(batch)
        if not self.structure:
            self.structure = s
            self._check_first(batch)
        elif s != self.structure:
            diff = sorted(k for k in set(s) | set(self.structure) if s.get(k) != self.structure.get(k))
            self._problem(f"batch {self.batches - 1} differs from batch 0 in {diff}")
        d = np.asarray(meta["dataset_index"]).astype(np.int64)
        for k, v in flatten_dict(batch).items():
            if self.structure.get(k, ("str",))[0] == "str" or len(self.nonfinite) >= 3:
                continue
            a = np.asarray(v)
            if a.dtype.kind not in "fc":
                continue
            for r in np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(axis=1))[:3 - len(self.nonfinite)]:
                j = int(d[r])
                self.nonfinite.append(
                    f"{self.names[self.entry_of[j]]}, dataset {self.sources[j].name!r}, key {k!r}: episode "
                    f"{int(meta['episode_index'][r])} frame {int(meta['frame_index'][r])} (row {int(r)} of batch "
                    f"{self.batches - 1})")
        try:
            observation_class().from_dict({**batch, "image": dict(batch["image"])})
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            self._problem(f"Observation.from_dict of batch {self.batches - 1}: {type(e).__name__}: {e}")

    def _check_first(self, batch: dict) -> None:
        from fastmix.openpi.transforms import flatten_dict

        for k, v in flatten_dict(batch).items():
            shape = getattr(v, "shape", None)
            n = (int(shape[0]) if len(shape) else None) if shape is not None else \
                (len(v) if isinstance(v, list | tuple) else None)
            if n is not None and n != self.batch_size:
                self._problem(f"{k} holds {n} rows, the batch size is {self.batch_size}")
        for k in ("state", "actions"):
            if k in self.structure and self.action_dim is not None and self.structure[k][1][-1:] != (self.action_dim,):
                self._problem(f"{k} rows have shape {self.structure[k][1]}, not padded to the model's action_dim "
                              f"{self.action_dim}")

    def _problem(self, msg: str) -> None:
        if msg not in self.problems:
            self.problems.append(msg)

    def finish(self, add: Callable[[str, bool, str], None]) -> None:
        shapes = ", ".join(f"{k} {dt} {shape}" for k, (dt, shape) in sorted(self.structure.items()) if dt != "str")
        if self.nonfinite:
            self._problem("non-finite values in " + "; ".join(self.nonfinite))
        add("final batch", not self.problems, "; ".join(self.problems) if self.problems else
            f"{self.batches} batches of {self.batch_size} rows, one structure (per row: {shapes}), all values "
            "finite, Observation.from_dict ok")


__all__ = ["FinalBatches", "check_entries", "structure_of"]
