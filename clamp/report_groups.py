"""``clamp report --group-by condition RUNS...``: runs grouped by their sweep condition, seeds pooled.

A sweep (:mod:`clamp.sweep`) writes ``condition.json`` into every run folder; this module reads
those folders (or copies of them holding ``curves.csv`` instead of event files, so a committed
results folder can be reported without the runs) and reports:

* differences of every condition from a baseline condition (the first, or ``--baseline``) with
  percentile-bootstrap 95 % confidence intervals and n (:mod:`clamp.stats`): the phase change's
  midpoint (:func:`clamp.metrics.phase.phase_change_of`, the fit every report uses) and final
  value of each tag, and the learning speed (the first evaluation whose ``--speed_tag`` loss is
  below ``0.4 ln 2``: Singh et al. 2024's definition). Runs without a value (no phase change, a
  loss that never fell below the threshold) are counted as "none" / "never", not dropped;
* per tag, each condition's mean curve with a band of +-1 standard deviation over seeds, clipped to
  the range the seeds span (no band for n = 1: a bounded score's band never leaves its range),
  clamp windows (where a ``clamp/alpha/<name>`` curve is > 0) as strips under the axes.

Default tags: accuracies and losses (``val/*/acc``, ``val/*/loss``, ``train/loss``) and the circuit's
head metrics as ``<metric>/L<l>/max``, the best head of each layer (:func:`clamp.scalars.with_layer_max`;
the logged ``<metric>/max`` mixes layers). Runs much shorter than the others are left out, and runs
of different lengths are compared on their common range, each named in a warning.

Outputs: ``group_<tag>.png`` per tag, ``groups.md``, ``groups.csv`` (the differences) and ``groups.json``.
"""

from __future__ import annotations

import json
import math
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clamp.metrics.phase import phase_change_of
from clamp.scalars import SHORT_FRACTION, read_scalars, short_runs, with_layer_max
from clamp.stats import LEVEL, RESAMPLES, Interval, bootstrap_diff, bootstrap_mean

RECORD = "condition.json"
CURVES = "curves.csv"
SPEED_THRESHOLD = 0.4 * math.log(2)
ALPHA_PREFIX = "clamp/alpha/"
MAIN_TAGS = ("val/*/acc", "val/*/loss", "train/loss")


class GroupError(ValueError):
    """A user-facing problem (no condition records under a path, a tag no run has)."""


@dataclass
class RunData:
    """One run: its folder, sweep record, ``summary.json`` (if any) and scalars (long ``step/tag/value``)."""

    dir: Path
    record: dict[str, Any]
    summary: dict[str, Any] | None
    scalars: pd.DataFrame = field(repr=False)

    @property
    def condition(self) -> str:
        return str(self.record["condition"])

    @property
    def seed(self) -> int:
        return int(self.record["seed"])

    def curve(self, tag: str) -> tuple[np.ndarray, np.ndarray]:
        sub = self.scalars[self.scalars["tag"] == tag].sort_values("step")
        values = sub["value"].to_numpy(dtype=float)
        keep = np.isfinite(values)
        return sub["step"].to_numpy(dtype=float)[keep], values[keep]

    def tags(self) -> set[str]:
        return set(self.scalars["tag"].unique())


# --------------------------------------------------------------------------------------- loading


def read_curves_csv(path: Path) -> pd.DataFrame:
    """A wide ``curves.csv`` (``step`` + one column per tag) as a long ``step/tag/value`` frame."""
    wide = pd.read_csv(path)
    long = wide.melt(id_vars="step", var_name="tag", value_name="value").dropna(subset=["value"])
    return long.astype({"step": "int64", "value": float}).sort_values(["tag", "step"]).reset_index(drop=True)


def write_curves_csv(scalars: pd.DataFrame, path: Path, keep: Sequence[str]) -> Path:
    """Tags matching the ``keep`` globs as a wide CSV (``step`` + one column per tag): small enough to commit."""
    from fnmatch import fnmatchcase

    sub = scalars[[any(fnmatchcase(t, k) for k in keep) for t in scalars["tag"]]]
    wide = sub.pivot_table(index="step", columns="tag", values="value", aggfunc="last").sort_index()
    wide.to_csv(path, float_format="%.6g")
    return path


def load_run(run_dir: Path) -> RunData:
    """One run folder: ``curves.csv`` if present (an exported copy), else its TensorBoard event files;
    per-head families get their per-layer max (``<metric>/L<l>/max``)."""
    record = json.loads((run_dir / RECORD).read_text())
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    scalars = read_curves_csv(run_dir / CURVES) if (run_dir / CURVES).is_file() else read_scalars(run_dir)
    return RunData(run_dir, record, summary, with_layer_max(scalars))


def find_records(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (holding ``condition.json``) under ``paths``, sorted."""
    dirs: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise GroupError(f"path does not exist: {p}")
        dirs |= {f.parent for f in ([p / RECORD] if (p / RECORD).is_file() else p.rglob(RECORD))}
    if not dirs:
        raise GroupError(f"no {RECORD} under {[str(p) for p in paths]}: group-by needs runs made by `clamp sweep`")
    return sorted(dirs)


def load_groups(paths: Iterable[str | Path], finished_only: bool = False) -> dict[str, list[RunData]]:
    """Condition -> its runs (by seed), conditions in the order first found (sweep order within a folder)."""
    groups: dict[str, list[RunData]] = {}
    for d in find_records(paths):
        run = load_run(d)
        if finished_only and not run.record.get("finished"):
            continue
        groups.setdefault(run.condition, []).append(run)
    for runs in groups.values():
        runs.sort(key=lambda r: r.seed)
    return groups


# -------------------------------------------------------------------------------------- statistics


def mean_spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, standard deviation over seeds (ddof 1; None for n < 2) and n of the finite values; ``missing`` counts the rest."""
    vals = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(vals.size)
    return {
        "mean": float(vals.mean()) if n else None,
        "std": float(vals.std(ddof=1)) if n > 1 else None,
        "n": n,
        "missing": len(values) - n,
        "values": [None if v is None or not math.isfinite(v) else float(v) for v in values],
    }


def fmt(stat: Mapping[str, Any], digits: int = 3, integer: bool = False) -> str:
    """``mean ± std (n)``; ``–`` when no run has a value; ``k/n never`` appended when some lack one."""
    if not stat["n"]:
        return f"– (0/{stat['n'] + stat['missing']})"
    f = (lambda v: f"{v:.0f}") if integer else (lambda v: f"{v:.{digits}g}")
    s = f(stat["mean"]) + (f" ± {f(stat['std'])}" if stat["std"] is not None else "")
    s += f" (n={stat['n']}"
    return s + (f", {stat['missing']} none)" if stat["missing"] else ")")


def band(runs: Sequence[RunData], tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, mean, std, n)`` of ``tag`` over runs, on the union of their steps (a run missing a step is left out there)."""
    curves = [r.curve(tag) for r in runs]
    steps = np.unique(np.concatenate([s for s, _ in curves])) if curves else np.array([])
    grid = np.full((len(curves), steps.size), np.nan)
    for i, (s, v) in enumerate(curves):
        grid[i, np.searchsorted(steps, s)] = v
    n = np.isfinite(grid).sum(0)
    with np.errstate(invalid="ignore"):
        mean = np.where(n > 0, np.nanmean(np.where(n > 0, grid, 0.0), 0), np.nan)
        std = np.where(n > 1, np.nanstd(grid, 0, ddof=1) if len(curves) > 1 else 0.0, 0.0)
    return steps, mean, std, n


def band_limits(runs: Sequence[RunData], tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, low, high)``: mean -+ 1 std of ``tag`` over runs, clipped to the runs' own min..max at each step.

    An accuracy of 0.98 +- 0.03 would otherwise draw a band up to 1.01; the seeds' span is within the
    score's range for any bounded score, so the clipped band is too.
    """
    steps, mean, std, n = band(runs, tag)
    curves = [r.curve(tag) for r in runs]
    grid = np.full((len(curves), steps.size), np.nan)
    for i, (s, v) in enumerate(curves):
        grid[i, np.searchsorted(steps, s)] = v
    with warnings.catch_warnings():  # a step that no run logged: all-NaN column, no band there
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanmin(grid, 0), np.nanmax(grid, 0)
    return steps, np.clip(mean - std, lo, hi), np.clip(mean + std, lo, hi)


def learning_speed(steps: np.ndarray, values: np.ndarray, threshold: float = SPEED_THRESHOLD) -> float | None:
    """The first step whose value is below ``threshold`` (Singh et al. 2024: loss < 0.4 ln 2); None if never."""
    below = np.flatnonzero(values < threshold)
    return float(steps[below[0]]) if below.size else None


def clamp_windows(run: RunData) -> dict[str, list[tuple[float, float]]]:
    """Per logged clamp (``clamp/alpha/<name>``), the step spans where its strength is > 0."""
    out: dict[str, list[tuple[float, float]]] = {}
    for tag in sorted(t for t in run.tags() if t.startswith(ALPHA_PREFIX)):
        steps, alpha = run.curve(tag)
        spans, start = [], None
        for s, a in zip(steps, alpha, strict=True):
            if a > 0 and start is None:
                start = s
            elif a <= 0 and start is not None:
                spans.append((start, s))
                start = None
        if start is not None:
            spans.append((start, steps[-1]))
        if spans:
            out[tag[len(ALPHA_PREFIX) :]] = spans
    return out


def run_values(runs: Sequence[RunData], tag: str) -> dict[str, list[float | None]]:
    """Per run (in order): the phase-change midpoint of ``tag`` (None: no phase change) and its final value."""
    mids: list[float | None] = []
    finals: list[float | None] = []
    for r in runs:
        steps, values = r.curve(tag)
        pc = phase_change_of(tag, steps, values) if steps.size >= 2 else None
        mids.append(None if pc is None else float(pc.midpoint))
        finals.append(float(values[-1]) if values.size else None)
    return {"phase_midpoint": mids, "final": finals}


def speeds(runs: Sequence[RunData], speed_tag: str) -> list[float | None]:
    """Each run's learning speed on ``speed_tag`` (None: never below the threshold, or no such curve)."""
    out: list[float | None] = []
    for r in runs:
        s, v = r.curve(speed_tag)
        out.append(learning_speed(s, v) if s.size else None)
    return out


def condition_stats(runs: Sequence[RunData], tag: str, speed_tag: str | None = None) -> dict[str, Any]:
    """Per-condition statistics of one curve: phase-change midpoint and final value (mean, bootstrap CI, n, per-seed
    values); the learning speed too when ``speed_tag`` is given."""
    vals = run_values(runs, tag)
    out: dict[str, Any] = {k: _stat(v) for k, v in vals.items()}
    out["seeds"] = [r.seed for r in runs]
    if speed_tag:
        out["learning_speed"] = _stat(speeds(runs, speed_tag))
    return out


def _stat(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean with its bootstrap CI, the spread over seeds and the per-seed values, as JSON."""
    spread = mean_spread(values)
    return {**bootstrap_mean(values).to_dict(), "std": spread["std"], "values": spread["values"]}


# -------------------------------------------------------------------------------------- plotting


def figure(width: float, height: float):  # noqa: ANN201 (matplotlib Figure)
    """A Figure on an Agg canvas, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_groups(
    ax: Any,
    groups: Mapping[str, Sequence[RunData]],
    tag: str,
    labels: Mapping[str, str] | None = None,
    colors: Mapping[str, str] | None = None,
    strips: Any = None,
) -> None:
    """Each condition's mean curve of ``tag`` with a +-1 std band; clamp windows as strips on ``strips`` (an axes under ``ax``)."""
    labels, colors = labels or {}, colors or {}
    clamped: list[tuple[str, str, dict[str, list[tuple[float, float]]]]] = []
    for i, (cond, runs) in enumerate(groups.items()):
        color = colors.get(cond, f"C{i % 10}")
        steps, mean, std, n = band(runs, tag)
        if not steps.size:
            continue
        ax.plot(steps, mean, color=color, lw=1.6, label=f"{labels.get(cond, cond)} (n={int(n.max())})")
        if n.max() > 1:
            _, lo, hi = band_limits(runs, tag)
            ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
        windows = clamp_windows(runs[0])
        if windows:
            clamped.append((labels.get(cond, cond), color, windows))
    if strips is not None:
        for row, (label, color, windows) in enumerate(clamped):
            lo, hi = row / len(clamped), (row + 0.8) / len(clamped)
            for spans in windows.values():
                for a, b in spans:
                    strips.axvspan(a, b, ymin=lo, ymax=hi, color=color, alpha=0.5, lw=0)
            strips.text(0.005, (lo + hi) / 2, label, transform=strips.transAxes, fontsize=7, va="center")
        strips.set(yticks=[], ylabel="clamped", xlabel="step")
        strips.set_xlim(ax.get_xlim())
        if not clamped:
            strips.set_visible(False)
    ax.grid(alpha=0.3)


def plot_tag(groups: Mapping[str, Sequence[RunData]], tag: str, path: Path, labels: Mapping[str, str] | None = None,
             colors: Mapping[str, str] | None = None, hlines: Mapping[str, float] | None = None) -> Path:
    """One figure: mean +- std of ``tag`` per condition, clamp windows as strips underneath."""
    fig = figure(8, 5)
    ax, strips = fig.subplots(2, 1, sharex=True, height_ratios=[5, 1])
    for name, y in (hlines or {}).items():
        ax.axhline(y, color="0.4", ls="--", lw=0.8)
        ax.annotate(name, (1.0, y), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8, color="0.3")
    plot_groups(ax, groups, tag, labels, colors, strips)
    ax.set(title=f"{tag}: mean ± 1 std over seeds (clipped to the seeds' range)", ylabel=tag.rsplit("/", 1)[-1])
    ax.legend(fontsize="small")
    fig.savefig(path)
    return path


# -------------------------------------------------------------------------------------- report


def _tags(groups: Mapping[str, Sequence[RunData]], patterns: Sequence[str], defaults: bool = False) -> list[str]:
    """Tags matching ``patterns`` in any run; a layer-mixing ``<metric>/max`` gives way to its ``<metric>/L<l>/max``."""
    from fnmatch import fnmatchcase

    present = set().union(*(r.tags() for runs in groups.values() for r in runs))
    out: list[str] = []
    for p in patterns:
        matched = [t for t in sorted(present) if fnmatchcase(t, p)]
        if not matched and not defaults:
            raise GroupError(f"--tags {p!r} matches no tag; some available: {sorted(present)[:20]}")
        for t in matched:
            per_layer = sorted(x for x in present if t.endswith("/max") and re.fullmatch(re.escape(t[: -len("/max")]) + r"/L\d+/max", x))
            out.extend(per_layer or [t])
    if not out:
        raise GroupError(f"tag patterns {list(patterns)} match no tag; some available: {sorted(present)[:20]}")
    return list(dict.fromkeys(out))


def default_tags() -> list[str]:
    """Accuracies, losses and the circuit's head metrics (best head per layer): what a grouped report is for."""
    from clamp.metrics.callback import HEAD_METRICS_FOR_PHASE

    return [*MAIN_TAGS, *(f"{m}/L*/max" for m in HEAD_METRICS_FOR_PHASE)]


def default_speed_tag(groups: Mapping[str, Sequence[RunData]]) -> str | None:
    """The curve the runs' own ``summary.json`` measured learning speed on, else the first ``val/<split>/loss``."""
    runs = [r for rs in groups.values() for r in rs]
    present = set().union(*(r.tags() for r in runs))
    for r in runs:
        curve = ((r.summary or {}).get("learning_speed") or {}).get("curve")
        if curve in present:
            return curve
    return next((t for t in sorted(present) if re.fullmatch(r"val/[^/]+/loss", t)), None)


def _name(run: RunData) -> str:
    return f"{run.condition}/seed{run.seed}"


def align_lengths(groups: dict[str, list[RunData]], tags: Sequence[str]) -> tuple[dict[str, list[RunData]], list[str], dict[str, Any]]:
    """Leave out runs much shorter than the others and crop the rest to their common range; say which runs, and why."""
    ends = {}
    for runs in groups.values():
        for r in runs:
            sub = r.scalars[r.scalars["tag"].isin(list(tags))]
            ends[_name(r)] = int(sub["step"].max()) if len(sub) else 0
    notes, info = [], {"excluded_short_runs": {}, "common_last_step": None}
    short = short_runs(ends)
    if short:
        import statistics

        notes.append(
            f"Left out {len(short)} run(s) much shorter than the others (last step < {SHORT_FRACTION:.0%} of the median, "
            f"{statistics.median(ends.values()):.0f}): {', '.join(f'{n} (ends at {e})' for n, e in short.items())}."
        )
        info["excluded_short_runs"] = short
        groups = {c: kept for c, rs in groups.items() if (kept := [r for r in rs if _name(r) not in short])}
        ends = {n: e for n, e in ends.items() if n not in short}
    if len(set(ends.values())) > 1:
        last, longest = min(ends.values()), max(ends.values())
        early = ", ".join(f"{n} (ends at {e})" for n, e in ends.items() if e < longest)
        notes.append(f"Compared on steps 0-{last}, the common range: {early} end(s) before the others ({longest}).")
        info["common_last_step"] = last
        groups = {c: [RunData(r.dir, r.record, r.summary, r.scalars[r.scalars["step"] <= last].reset_index(drop=True)) for r in rs]
                  for c, rs in groups.items()}  # fmt: skip
    return groups, notes, info


def measures(groups: Mapping[str, Sequence[RunData]], tags: Sequence[str], speed_tag: str | None) -> dict[tuple[str, str], dict[str, list[float | None]]]:
    """``{(measure, tag): {condition: per-run values}}``: learning speed (once, on ``speed_tag``), then each tag's
    phase-change midpoint and final value. Each curve is fitted once."""
    out: dict[tuple[str, str], dict[str, list[float | None]]] = {}
    if speed_tag:
        out[("learning speed", speed_tag)] = {c: speeds(rs, speed_tag) for c, rs in groups.items()}
    for tag in tags:
        per = {c: run_values(rs, tag) for c, rs in groups.items()}
        out[("phase-change midpoint", tag)] = {c: v["phase_midpoint"] for c, v in per.items()}
        out[("final", tag)] = {c: v["final"] for c, v in per.items()}
    return out


def differences(values: Mapping[tuple[str, str], Mapping[str, Sequence[float | None]]], baseline: str, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (condition other than ``baseline``, measure): the baseline's and the condition's mean with CI,
    and the difference with its bootstrap CI (groups resampled independently)."""
    rows = []
    conditions = list(next(iter(values.values()), {}))
    for c in conditions:
        if c == baseline:
            continue
        for (measure, tag), per in values.items():
            a, b = per[baseline], per[c]
            rows.append({
                "condition": c, "baseline": baseline, "measure": measure, "tag": tag,
                "missing_word": "never" if measure == "learning speed" else "none",
                "baseline_value": bootstrap_mean(a, seed=seed), "value": bootstrap_mean(b, seed=seed),
                "difference": bootstrap_diff(a, b, seed=seed), "n_baseline": len(a), "n": len(b),
            })  # fmt: skip
    return rows


def _integer(measure: str) -> bool:
    return measure != "final"


def difference_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The differences as markdown table lines."""
    lines = ["| condition | measure | tag | baseline | condition | Δ vs baseline [95 % CI] |", "|---|---|---|---|---|---|"]
    for r in rows:
        k = {"integer": _integer(r["measure"]), "missing_word": r["missing_word"]}
        lines.append(
            f"| {r['condition']} | {r['measure']} | `{r['tag']}` | {r['baseline_value'].format(**k)} | "
            f"{r['value'].format(**k)} | {r['difference'].format(signed=True, **k)} |"
        )
    return lines


def write_differences_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """The differences, one row per (condition, measure, tag): estimates, CI bounds, n and missing counts."""
    flat = []
    for r in rows:
        d, v, b = r["difference"], r["value"], r["baseline_value"]
        flat.append({
            "condition": r["condition"], "baseline": r["baseline"], "measure": r["measure"], "tag": r["tag"],
            "baseline_mean": b.estimate, "baseline_n": b.n, "baseline_missing": b.missing,
            "mean": v.estimate, "n": v.n, "missing": v.missing,
            "delta": d.estimate, "delta_low": d.low, "delta_high": d.high, "level": d.level,
        })  # fmt: skip
    pd.DataFrame(flat).to_csv(path, index=False, float_format="%.6g")
    return path


def _json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.to_dict() if isinstance(v, Interval) else v for k, v in row.items()}


def group_report(
    paths: Sequence[str], out: str, tags: Sequence[str] | None = None, speed_tag: str | None = None, baseline: str | None = None,
    quiet: bool = False,
) -> Path:  # fmt: skip
    """Runs grouped by condition: differences from a baseline condition with bootstrap 95 % CIs and n, a figure per tag.

    Args:
        paths: sweep output folders (``runs/<experiment>``) or run folders holding ``condition.json``.
        out: output folder.
        tags: tag globs to plot and tabulate (default: accuracies, losses, the circuit's head metrics per layer).
        speed_tag: curve for the learning speed (first step below 0.4 ln 2); default the curve of the
            runs' ``summary.json`` learning speed, else the first ``val/<split>/loss``.
        baseline: the condition the others are compared to (default: the first found).
        quiet: do not print the differences table.
    """
    groups = load_groups(paths)
    if baseline is not None and baseline not in groups:
        raise GroupError(f"--baseline {baseline!r}: no such condition; valid: {list(groups)}")
    selected = _tags(groups, tags or default_tags(), defaults=not tags)
    speed_tag = speed_tag or default_speed_tag(groups)
    present = set().union(*(r.tags() for rs in groups.values() for r in rs))
    if speed_tag is not None and speed_tag not in present:
        raise GroupError(f"--speed_tag {speed_tag!r}: no run has it; valid: {sorted(t for t in present if t.endswith('/loss'))}")
    groups, notes, lengths = align_lengths(groups, selected)
    for line in notes:
        print(f"clamp report: warning: {line}", file=sys.stderr, flush=True)
    baseline = baseline or next(iter(groups))
    if baseline not in groups:
        raise GroupError(f"--baseline {baseline!r}: all its runs were left out as too short; give another baseline, valid: {list(groups)}")
    groups = {baseline: groups[baseline], **{c: rs for c, rs in groups.items() if c != baseline}}

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    values = measures(groups, selected, speed_tag)
    rows = differences(values, baseline)
    speed_note = (f"Learning speed: first evaluation with `{speed_tag}` < 0.4 ln 2 (Singh et al. 2024); \"never\": runs that did not get there."
                  if speed_tag else "Learning speed: not computed (no `val/<split>/loss` curve; pass --speed_tag).")  # fmt: skip
    lines = ["# clamp report: runs grouped by condition", "",
             f"Baseline: `{baseline}`. Mean [{LEVEL:.0%} confidence interval] (n = seeds with a value): percentile bootstrap, "
             f"{RESAMPLES:,} resamples, seeded; a difference resamples the two conditions independently. n=1: no interval.",
             "Phase change: logistic fit (`clamp.metrics.phase`), midpoint step; \"none\": no phase change found. "
             "`<metric>/L<l>/max`: the best head of layer l at each evaluation.", speed_note,
             *[f"**{n}**" for n in notes], "", f"## Differences vs `{baseline}`", "", *difference_table(rows), ""]  # fmt: skip
    if speed_tag:
        lines += [f"## Learning speed (`{speed_tag}`)", "", "| condition | seeds | first step < 0.4 ln 2 |", "|---|---|---|",
                  *(f"| {c} | {len(v)} | {bootstrap_mean(v).format(integer=True, missing_word='never')} |"
                    for c, v in values[("learning speed", speed_tag)].items()), ""]  # fmt: skip
    payload: dict[str, Any] = {
        "baseline": baseline, "speed_tag": speed_tag, "level": LEVEL, "resamples": RESAMPLES, **lengths,
        "conditions": {c: [str(r.dir) for r in rs] for c, rs in groups.items()},
        "learning_speed": {c: _stat(v) for c, v in values[("learning speed", speed_tag)].items()} if speed_tag else None,
        "differences": [_json(r) for r in rows], "tags": {},
    }  # fmt: skip
    for tag in selected:
        fname = "group_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", tag).strip("_") + ".png"
        plot_tag(groups, tag, out_dir / fname)
        stats = {c: {"phase_midpoint": _stat(values[("phase-change midpoint", tag)][c]), "final": _stat(values[("final", tag)][c]),
                     "seeds": [r.seed for r in rs]} for c, rs in groups.items()}  # fmt: skip
        payload["tags"][tag] = {"figure": fname, "conditions": stats}
        lines += [f"## {tag}", "", f"![{tag}]({fname})", "", "| condition | seeds | phase-change midpoint | final |", "|---|---|---|---|"]
        for c, st in stats.items():
            mid, fin = Interval(**_fields(st["phase_midpoint"])), Interval(**_fields(st["final"]))
            lines.append(f"| {c} | {len(st['seeds'])} | {mid.format(integer=True)} | {fin.format()} |")
        lines.append("")
    (out_dir / "groups.md").write_text("\n".join(lines))
    write_differences_csv(rows, out_dir / "groups.csv")
    (out_dir / "groups.json").write_text(json.dumps(payload, indent=2))
    if not quiet:
        print("\n".join(difference_table(rows)))
    return out_dir


def _fields(stat: Mapping[str, Any]) -> dict[str, Any]:
    return {k: stat[k] for k in ("estimate", "low", "high", "n", "missing", "level", "note")}


def build_parser():  # noqa: ANN201 (jsonargparse.ArgumentParser)
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="clamp report --group-by condition", description=(group_report.__doc__ or "").split("\n")[0])
    parser.add_argument("runs", nargs="+", type=str, help="Sweep output folders or run folders with condition.json.")
    parser.add_argument("--group-by", "--group_by", dest="group_by", type=str, default="condition", help="Only 'condition' (the sweep record).")
    parser.add_argument("--out", type=str, default="reports/groups", help="Output folder.")
    parser.add_argument("--tags", nargs="+", type=str, default=None, help="Tag globs (default: val/*/acc val/*/loss train/loss and the circuit's head metrics per layer).")
    parser.add_argument("--speed_tag", type=str, default=None, help="Curve for the learning speed (default: summary.json's, else the first val/<split>/loss).")
    parser.add_argument("--baseline", type=str, default=None, help="Condition the others are compared to (default: the first).")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    cfg = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if cfg.group_by != "condition":
        parser.error(f"--group-by {cfg.group_by!r}: valid choices: ['condition']")
    try:
        out = group_report(cfg.runs, cfg.out, cfg.tags, cfg.speed_tag, cfg.baseline)
    except (GroupError, FileNotFoundError) as err:
        parser.error(str(err))
    print(f"report written to {out / 'groups.md'}")
