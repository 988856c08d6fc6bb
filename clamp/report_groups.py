"""``clamp report --group-by condition RUNS...``: runs grouped by their sweep condition, seeds pooled.

A sweep (:mod:`clamp.sweep`) writes ``condition.json`` into every run folder; this module reads
those folders (or copies of them holding ``curves.csv`` instead of event files, so a committed
results folder can be reported without the runs) and, per condition:

* curves as the mean over seeds with a band of +-1 standard deviation (the spread over seeds;
  no band for n = 1), clamp windows (where a ``clamp/alpha/<name>`` curve is > 0) drawn as
  strips under the axes, one per condition;
* a table of mean +- standard deviation and n of: the phase change's midpoint
  (:func:`clamp.metrics.phase.detect_phase_change`, the same fit every report uses), the
  learning speed (the first evaluation whose loss is below ``0.4 ln 2``: Singh et al. 2024's
  definition; ``--speed_tag`` picks the curve) and the final value.

Outputs: ``group_<tag>.png`` per tag, ``groups.md`` and ``groups.json``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clamp.metrics.phase import detect_phase_change

RECORD = "condition.json"
CURVES = "curves.csv"
SPEED_THRESHOLD = 0.4 * math.log(2)
ALPHA_PREFIX = "clamp/alpha/"
DEFAULT_TAGS = ("val/*/loss", "train/loss")


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
    """One run folder: ``curves.csv`` if present (an exported copy), else its TensorBoard event files."""
    from clamp.report import read_scalars

    record = json.loads((run_dir / RECORD).read_text())
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    scalars = read_curves_csv(run_dir / CURVES) if (run_dir / CURVES).is_file() else read_scalars(run_dir)
    return RunData(run_dir, record, summary, scalars)


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


def condition_stats(runs: Sequence[RunData], tag: str, speed_tag: str | None = None) -> dict[str, Any]:
    """Per-condition statistics of one curve: phase-change midpoint, learning speed (on ``speed_tag``), final value."""
    mids, finals, speeds = [], [], []
    for r in runs:
        steps, values = r.curve(tag)
        pc = detect_phase_change(steps, values) if steps.size else None
        mids.append(None if pc is None else pc.midpoint)
        finals.append(float(values[-1]) if values.size else None)
        if speed_tag:
            s, v = r.curve(speed_tag)
            speeds.append(learning_speed(s, v) if s.size else None)
    out = {"phase_midpoint": mean_spread(mids), "final": mean_spread(finals), "seeds": [r.seed for r in runs]}
    if speed_tag:
        out["learning_speed"] = mean_spread(speeds)
    return out


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
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, lw=0)
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
    ax.set(title=f"{tag}: mean ± 1 std over seeds", ylabel=tag.rsplit("/", 1)[-1])
    ax.legend(fontsize="small")
    fig.savefig(path)
    return path


# -------------------------------------------------------------------------------------- report


def _tags(groups: Mapping[str, Sequence[RunData]], patterns: Sequence[str]) -> list[str]:
    from fnmatch import fnmatchcase

    present = set().union(*(r.tags() for runs in groups.values() for r in runs))
    out = [t for p in patterns for t in sorted(present) if fnmatchcase(t, p)]
    if not out:
        raise GroupError(f"tag patterns {list(patterns)} match no tag; some available: {sorted(present)[:20]}")
    return list(dict.fromkeys(out))


def group_report(paths: Sequence[str], out: str, tags: Sequence[str] | None = None, speed_tag: str | None = None) -> Path:
    """Runs grouped by condition: a figure per tag, a table (mean ± std over seeds, n) per tag.

    Args:
        paths: sweep output folders (``runs/<experiment>``) or run folders holding ``condition.json``.
        out: output folder.
        tags: tag globs to plot and tabulate (default ``val/*/loss`` and ``train/loss``).
        speed_tag: curve for the learning speed (first step below 0.4 ln 2); default the first
            ``val/<split>/loss`` (the training distribution's eval split).
    """
    groups = load_groups(paths)
    selected = _tags(groups, tags or DEFAULT_TAGS)
    speed_tag = speed_tag or next((t for t in selected if re.fullmatch(r"val/[^/]+/loss", t)), None)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# clamp report: runs grouped by condition", "",
             "Mean ± standard deviation over seeds (n = seeds). Phase change: logistic fit (`clamp.metrics.phase`), midpoint step.",
             f"Learning speed: first evaluation with `{speed_tag}` < 0.4 ln 2 (Singh et al. 2024).", ""]
    payload: dict[str, Any] = {"speed_tag": speed_tag, "conditions": {c: [str(r.dir) for r in rs] for c, rs in groups.items()}, "tags": {}}
    for tag in selected:
        fname = "group_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", tag).strip("_") + ".png"
        plot_tag(groups, tag, out_dir / fname)
        stats = {c: condition_stats(rs, tag, speed_tag) for c, rs in groups.items()}
        payload["tags"][tag] = {"figure": fname, "conditions": stats}
        lines += [f"## {tag}", "", f"![{tag}]({fname})", "",
                  "| condition | n | phase-change midpoint | learning speed | final |", "|---|---|---|---|---|"]
        for c, s in stats.items():
            lines.append(f"| {c} | {len(s['seeds'])} | {fmt(s['phase_midpoint'], integer=True)} | {fmt(s['learning_speed'], integer=True)} | {fmt(s['final'])} |")
        lines.append("")
    (out_dir / "groups.md").write_text("\n".join(lines))
    (out_dir / "groups.json").write_text(json.dumps(payload, indent=2))
    return out_dir


def build_parser():  # noqa: ANN201 (jsonargparse.ArgumentParser)
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="clamp report --group-by condition", description=(group_report.__doc__ or "").split("\n")[0])
    parser.add_argument("runs", nargs="+", type=str, help="Sweep output folders or run folders with condition.json.")
    parser.add_argument("--group-by", "--group_by", dest="group_by", type=str, default="condition", help="Only 'condition' (the sweep record).")
    parser.add_argument("--out", type=str, default="reports/groups", help="Output folder.")
    parser.add_argument("--tags", nargs="+", type=str, default=None, help="Tag globs (default: val/*/loss train/loss).")
    parser.add_argument("--speed_tag", type=str, default=None, help="Curve for the learning speed (default: the first val/<split>/loss).")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    cfg = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if cfg.group_by != "condition":
        parser.error(f"--group-by {cfg.group_by!r}: valid choices: ['condition']")
    try:
        out = group_report(cfg.runs, cfg.out, cfg.tags, cfg.speed_tag)
    except (GroupError, FileNotFoundError) as err:
        parser.error(str(err))
    print(f"report written to {out / 'groups.md'}")
