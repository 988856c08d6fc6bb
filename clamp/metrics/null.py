"""A null baseline for head scores: what untrained models of the same architecture score on the same probes.

A head score of 0.3 means nothing on its own: an untrained layer of 8 heads over a 5-token context
already puts ~0.2-0.5 of some head's attention on the previous token by chance, and the best of 8
heads is the one a report shows. So a head counts as *formed* only when its score is above the
``q`` quantile (0.95 or 0.99), over ``N`` random initialisations, of the **max over that layer's
heads**: the null of "the best head of this layer", the statistic a report reads.

The scores are the :class:`~clamp.metrics.callback.EmergenceCallback`'s own: its probe sets (built
by the callback from the run's DataModule) and its :meth:`~clamp.metrics.callback.EmergenceCallback.measure`
(:func:`clamp.metrics.heads.all_head_scores` and the causal ablations), on models built from the
run's hyper-parameters with init seeds ``0..N-1``. Nothing is re-implemented here.

``clamp null --config X.yaml --n 20 --out DIR`` writes ``DIR/null.json``; :func:`null_of_run` gives
the same for a trained run's folder (used by ``experiments/singh2024/make_results.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from clamp.metrics.callback import EmergenceCallback

QUANTILES = (0.5, 0.95, 0.99)
FILE = "null.json"


@dataclass
class NullBaseline:
    """Per-head scores of untrained models: ``scores[metric]`` is ``[N seeds, layers, heads]``."""

    seeds: list[int]
    scores: dict[str, np.ndarray]

    def layer_max(self, metric: str) -> np.ndarray:
        """``[N, layers]``: each untrained model's best head per layer (NaN heads ignored)."""
        s = self._metric(metric)
        with np.errstate(invalid="ignore"):
            return np.where(np.isfinite(s).any(-1), np.nanmax(np.where(np.isfinite(s), s, -np.inf), -1), np.nan)

    def threshold(self, metric: str, q: float = 0.95) -> np.ndarray:
        """``[layers]``: the ``q`` quantile over seeds of the per-layer max: a head above it has formed."""
        if not 0.0 < q < 1.0:
            raise ValueError(f"q={q}: must be in (0, 1), e.g. 0.95 or 0.99")
        return np.nanquantile(self.layer_max(metric), q, axis=0)

    def formed(self, metric: str, scores: np.ndarray | torch.Tensor, q: float = 0.95) -> np.ndarray:
        """``[layers, heads]`` booleans: which heads of a trained model score above the null's threshold of their layer."""
        s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=float)
        thr = self.threshold(metric, q)
        if s.shape != self._metric(metric).shape[1:]:
            raise ValueError(f"scores of shape {s.shape} for {metric!r}; the null's models have [layers, heads] = {self._metric(metric).shape[1:]}")
        return s > thr[:, None]

    def _metric(self, metric: str) -> np.ndarray:
        if metric not in self.scores:
            raise KeyError(f"null baseline has no metric {metric!r}; valid: {sorted(self.scores)}")
        return self.scores[metric]

    def to_dict(self, quantiles: Sequence[float] = QUANTILES) -> dict[str, Any]:
        """JSON: per metric the per-layer-max values of every seed, their quantiles, and per-head quantiles."""
        out: dict[str, Any] = {"seeds": self.seeds, "quantiles": list(quantiles), "metrics": {}}
        for m in sorted(self.scores):
            s = self.scores[m]
            if not np.isfinite(s).any():
                continue  # a metric this task does not define
            lm = self.layer_max(m)
            out["metrics"][m] = {
                "layer_max": _lists(lm.T),  # [layers][seeds]
                "layer_max_quantiles": {f"q{round(q * 100)}": _lists(np.nanquantile(lm, q, axis=0)) for q in quantiles},
                "head_quantiles": {f"q{round(q * 100)}": _lists(np.nanquantile(s, q, axis=0)) for q in quantiles},
                "scores": _lists(s),  # [seeds][layers][heads]
            }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NullBaseline:
        return cls(list(data["seeds"]), {m: np.array(v["scores"], dtype=float) for m, v in data["metrics"].items()})

    def write(self, folder: str | Path) -> Path:
        """``folder/null.json`` (created)."""
        path = Path(folder) / FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> NullBaseline:
        """From ``null.json`` or a folder holding it."""
        p = Path(path)
        return cls.from_dict(json.loads((p / FILE if p.is_dir() else p).read_text()))


def _lists(a: np.ndarray) -> Any:
    return [None if not np.isfinite(x) else float(x) for x in a] if a.ndim == 1 else [_lists(x) for x in a]


def untrained(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A fresh module of ``module``'s class and hyper-parameters, initialised with ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(module)(**dict(module.hparams))
    return fresh.eval()


def null_scores(
    module: torch.nn.Module, datamodule: Any, callback: EmergenceCallback | None = None, n: int = 20, seeds: Sequence[int] | None = None
) -> NullBaseline:
    """Score ``n`` untrained copies of ``module`` (init seeds ``0..n-1``, or ``seeds``) on ``callback``'s probes.

    Args:
        module: a :class:`~clamp.training.TrainingModule` (trained or not: only its class and
            hyper-parameters are used).
        datamodule: the run's DataModule (its main eval split is the task probe).
        callback: the run's ``EmergenceCallback`` (its probe size and seed); default one with default arguments.
    """
    seeds = list(range(n) if seeds is None else seeds)
    if not seeds:
        raise ValueError(f"n={n}: the null baseline needs at least one untrained model (e.g. --n 20)")
    cb = callback if callback is not None else EmergenceCallback()
    cb = EmergenceCallback(probe_size=cb.probe_size, probe_seed=cb.probe_seed, causal=cb.causal, icl_positions=cb.icl_positions,
                           needle_len=cb.needle_len, needle_depth=cb.needle_depth, needle_from=cb.needle_from)  # fmt: skip
    per_seed: list[dict[str, torch.Tensor]] = []
    for seed in seeds:
        fresh = untrained(module, seed)
        cb._probes = cb._build_probes(SimpleNamespace(datamodule=datamodule), SimpleNamespace(model=fresh.model, device=fresh.device))
        heads, _ = cb.measure(fresh)
        per_seed.append(heads)
    metrics = set.intersection(*(set(h) for h in per_seed))
    return NullBaseline(seeds, {m: np.stack([h[m].numpy() for h in per_seed]).astype(float) for m in sorted(metrics)})


def _emergence_callback(config: Mapping[str, Any]) -> EmergenceCallback | None:
    """The ``EmergenceCallback`` of a saved ``config.yaml``'s ``trainer.callbacks``, or None."""
    for item in (config.get("trainer") or {}).get("callbacks") or []:
        if isinstance(item, Mapping) and str(item.get("class_path", "")).split(".")[-1] == "EmergenceCallback":
            return EmergenceCallback(**dict(item.get("init_args") or {}))
    return None


def null_of_run(run: str | Path, n: int = 20, seeds: Sequence[int] | None = None) -> NullBaseline:
    """The null baseline of a run folder (or checkpoint): its architecture, task, seed and probes."""
    from clamp.runs import load_run

    r = load_run(run)
    if r.datamodule is None or r.config is None:
        raise FileNotFoundError(f"{r.dir}: no config.yaml, so the run's task and probes are unknown; pass a run folder made by clamp fit")
    return null_scores(r.module, r.datamodule, _emergence_callback(r.config), n=n, seeds=seeds)


def table(baseline: NullBaseline, metrics: Sequence[str] | None = None) -> list[str]:
    """Markdown lines: per metric and layer, the median, 95th and 99th percentile of the best head's null score."""
    lines = [f"| metric | layer | best head of layer, untrained (n={len(baseline.seeds)}): median | q95 | q99 |", "|---|---|---|---|---|"]
    for m in metrics or sorted(baseline.scores):
        if m not in baseline.scores or not np.isfinite(baseline.scores[m]).any():
            continue
        lm = baseline.layer_max(m)
        for layer in range(lm.shape[1]):
            q50, q95, q99 = (float(np.nanquantile(lm[:, layer], q)) for q in QUANTILES)
            lines.append(f"| {m} | {layer} | {q50:.3g} | {q95:.3g} | {q99:.3g} |")
    return lines
