"""``clamp report RUN_DIR... [--out DIR] [--tags GLOB...]``: compare runs from their TensorBoard logs.

Reads the scalar event files of one or more runs (a run dir is a folder such as
``runs/<experiment>/version_N`` holding ``events.out.tfevents.*``; a parent folder is searched
recursively for run dirs) and writes, into ``--out`` (default ``reports/<timestamp>``):

* ``curves_<tag>.png`` — each main curve, all runs overlaid, detected phase-change midpoints as
  dotted vertical lines. Main curves: the tags among ``val/*/acc``, ``val/*/loss``, ``train/loss``
  that every run has, plus whatever ``--tags`` globs match;
* ``heatmap_<family>.png`` — for per-head tags ``<family>/L{l}H{h}``, a layer x head map of the
  final value, one panel per run;
* ``report.md`` / ``report.json`` — final values, phase changes
  (:func:`clamp.metrics.phase.detect_phase_change`) and top heads per family, per run.

Only event files are read (a ``summary.json`` beside them is ignored for now) so that any run,
old or new, can be reported the same way. Plots use matplotlib's Agg canvas directly (no pyplot):
no display needed and no global backend state changed for the importing process.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clamp.metrics.phase import PhaseChange, detect_phase_change

EVENT_GLOB = "events.out.tfevents.*"
MAIN_PATTERNS = ("val/*/acc", "val/*/loss", "train/loss")
HEAD_TAG = re.compile(r"^(?P<family>.+)/L(?P<layer>\d+)H(?P<head>\d+)$")
TOP_K = 5
COLUMNS = ["step", "tag", "value"]


class ReportError(ValueError):
    """A user-facing problem with the arguments (e.g. a tag glob that matches nothing)."""

# --------------------------------------------------------------------------------------- loading


def find_run_dirs(path: str | Path) -> list[Path]:
    """Folders under ``path`` (itself included) that directly hold event files."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"run path does not exist: {p}")
    if p.is_file():
        if not p.name.startswith("events.out.tfevents."):
            raise FileNotFoundError(f"not a run dir or TensorBoard event file: {p}")
        return [p.parent]
    dirs = sorted({f.parent for f in p.rglob(EVENT_GLOB) if f.is_file()})
    if not dirs:
        raise FileNotFoundError(f"no TensorBoard event files ({EVENT_GLOB}) under {p}")
    return dirs


def run_names(dirs: Sequence[Path]) -> dict[Path, str]:
    """Short unique labels: ``experiment/version`` (last two path parts), longer only if ambiguous."""
    resolved = [d.resolve() for d in dirs]
    for depth in range(2, max((len(r.parts) for r in resolved), default=2) + 1):
        names = ["/".join(r.parts[-depth:]) for r in resolved]
        if len(set(names)) == len(names):
            return dict(zip(dirs, names, strict=True))
    return {d: str(r) for d, r in zip(dirs, resolved, strict=True)}


def read_scalars(run_dir: Path) -> pd.DataFrame:
    """All scalars of one run dir as a long ``step/tag/value`` frame.

    Each event file directly in the dir is read on its own (sub-folders are other runs); when a
    resumed run logged a (tag, step) twice, the latest write wins.
    """
    from tbparse import SummaryReader

    frames = []
    for f in sorted(run_dir.glob(EVENT_GLOB)):
        df = SummaryReader(str(f), pivot=False, extra_columns={"wall_time"}).scalars
        if len(df):
            frames.append(df)
    if not frames:
        return pd.DataFrame({"step": pd.Series(dtype="int64"), "tag": pd.Series(dtype=str), "value": pd.Series(dtype=float)})
    df = pd.concat(frames, ignore_index=True).sort_values("wall_time", kind="stable")
    df = df.drop_duplicates(["tag", "step"], keep="last").sort_values(["tag", "step"], kind="stable")
    return df[COLUMNS].reset_index(drop=True)


def load_runs(paths: Iterable[str | Path]) -> dict[str, pd.DataFrame]:
    """Run name -> scalars (``step``, ``tag``, ``value``) for every run dir found under ``paths``."""
    dirs: list[Path] = []
    for path in paths:
        for d in find_run_dirs(path):
            if d.resolve() not in {x.resolve() for x in dirs}:
                dirs.append(d)
    names = run_names(dirs)
    runs = {}
    for d in dirs:
        df = read_scalars(d)
        df.attrs["run_dir"] = str(d)  # for report.json; not needed for the analysis itself
        runs[names[d]] = df
    return runs


# -------------------------------------------------------------------------------------- analysis


def _tags(df: pd.DataFrame) -> set[str]:
    return set(df["tag"].unique())


def select_tags(runs: Mapping[str, pd.DataFrame], patterns: Sequence[str] | None = None) -> list[str]:
    """Main curves: default patterns present in every run, plus tags matching user globs in any run.

    A user glob that matches nothing raises, listing the available tags.
    """
    per_run = [_tags(df) for df in runs.values()]
    common = set.intersection(*per_run) if per_run else set()
    available = sorted(set.union(*per_run)) if per_run else []
    selected = [t for p in MAIN_PATTERNS for t in sorted(common) if fnmatchcase(t, p) and not HEAD_TAG.match(t)]
    for pattern in patterns or []:
        matched = [t for t in available if fnmatchcase(t, pattern)]
        if not matched:
            raise ReportError(f"tag pattern {pattern!r} matches no tag; available tags: {', '.join(available) or '(none)'}")
        selected.extend(matched)
    return list(dict.fromkeys(selected))


def head_families(runs: Mapping[str, pd.DataFrame]) -> list[str]:
    """Families of per-head tags ``<family>/L{l}H{h}`` found in any run."""
    fams = {m["family"] for df in runs.values() for t in _tags(df) if (m := HEAD_TAG.match(t))}
    return sorted(fams)


def curve(df: pd.DataFrame, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one tag, sorted by step."""
    sub = df[df["tag"] == tag].sort_values("step")
    return sub["step"].to_numpy(dtype=float), sub["value"].to_numpy(dtype=float)


def _phase(steps: np.ndarray, values: np.ndarray) -> dict[str, Any] | None:
    pc: PhaseChange | None = detect_phase_change(steps, values)
    return None if pc is None else pc.to_dict()


def analyze_tag(df: pd.DataFrame, tag: str) -> dict[str, Any] | None:
    """Final value and phase change of one curve (None if the run lacks the tag)."""
    steps, values = curve(df, tag)
    finite = np.isfinite(values)
    if not finite.any():
        return None
    last = int(np.flatnonzero(finite)[-1])
    return {"final": float(values[last]), "final_step": int(steps[last]), "phase_change": _phase(steps, values)}


def analyze_heads(df: pd.DataFrame, family: str, top_k: int = TOP_K) -> dict[str, Any] | None:
    """Final per-head values of one family, and the top-k heads with their phase changes.

    Phase changes are fitted for the top heads only: they are the ones worth reading, and it keeps
    the report fast for models with many heads.
    """
    finals: dict[str, dict[str, Any]] = {}
    for tag in sorted(_tags(df)):
        m = HEAD_TAG.match(tag)
        if m is None or m["family"] != family:
            continue
        steps, values = curve(df, tag)
        finite = np.flatnonzero(np.isfinite(values))
        if finite.size:
            finals[f"L{int(m['layer'])}H{int(m['head'])}"] = {
                "layer": int(m["layer"]),
                "head": int(m["head"]),
                "final": float(values[finite[-1]]),
                "tag": tag,
            }
    if not finals:
        return None
    ranked = sorted(finals.items(), key=lambda kv: kv[1]["final"], reverse=True)[:top_k]
    top = []
    for name, info in ranked:
        steps, values = curve(df, info["tag"])
        top.append({"name": name, **{k: info[k] for k in ("layer", "head", "final")}, "phase_change": _phase(steps, values)})
    return {
        "final": {name: info["final"] for name, info in finals.items()},
        "n_layers": 1 + max(i["layer"] for i in finals.values()),
        "n_heads": 1 + max(i["head"] for i in finals.values()),
        "top": top,
    }


def analyze(runs: Mapping[str, pd.DataFrame], tags: Sequence[str], families: Sequence[str]) -> dict[str, Any]:
    """Per run: final value + phase change of each main tag, per-head summaries of each family."""
    out: dict[str, Any] = {}
    for name, df in runs.items():
        present = _tags(df)
        out[name] = {
            "dir": df.attrs.get("run_dir"),
            "tags": {t: analyze_tag(df, t) for t in tags if t in present},
            "heads": {f: h for f in families if (h := analyze_heads(df, f)) is not None},
        }
    return out


# -------------------------------------------------------------------------------------- plotting


def _slug(tag: str) -> str:
    """File-name-safe version of a tag (``val/induction/acc`` -> ``val_induction_acc``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag).strip("_") or "tag"


def _file(kind: str, name: str, used: set[str]) -> str:
    """``<kind>_<slug>.png``, suffixed if two tags slug to the same name."""
    stem, i = f"{kind}_{_slug(name)}", 1
    fname = f"{stem}.png"
    while fname in used:
        i += 1
        fname = f"{stem}-{i}.png"
    used.add(fname)
    return fname


def _figure(width: float, height: float):  # noqa: ANN202 (matplotlib Figure)
    """A Figure on an Agg canvas, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_curves(runs: Mapping[str, pd.DataFrame], tag: str, analysis: Mapping[str, Any], path: Path) -> Path:
    """All runs' ``tag`` curves on one axis, phase-change midpoints as dotted lines."""
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for color, (name, df) in zip(colors, runs.items(), strict=True):
        steps, values = curve(df, tag)
        if not steps.size:
            continue
        pc = (analysis[name]["tags"].get(tag) or {}).get("phase_change")
        label = name if pc is None else f"{name} (mid {pc['midpoint']:.0f})"
        ax.plot(steps, values, color=color, lw=1.2, label=label)
        if pc is not None:
            ax.axvline(pc["midpoint"], color=color, ls=":", lw=1.5)
    ax.set(title=tag, xlabel="step", ylabel=tag.rsplit("/", 1)[-1])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path)
    return path


def plot_heatmap(family: str, analysis: Mapping[str, Any], path: Path) -> Path:
    """Layer x head map of final per-head values, one panel per run, shared colour scale."""
    panels = [(name, a["heads"][family]) for name, a in analysis.items() if family in a["heads"]]
    n_layers = max(h["n_layers"] for _, h in panels)
    n_heads = max(h["n_heads"] for _, h in panels)
    grids = []
    for _, h in panels:
        g = np.full((n_layers, n_heads), np.nan)
        for name, v in h["final"].items():
            m = re.fullmatch(r"L(\d+)H(\d+)", name)
            assert m is not None
            g[int(m[1]), int(m[2])] = v
        grids.append(g)
    vals = np.concatenate([g[np.isfinite(g)] for g in grids])
    vmin, vmax = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(max(3.0, 0.5 * n_heads + 1.5) * ncols, max(3.0, 0.45 * n_layers + 1.8) * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for ax, (name, _), g in zip(axes.flat, panels, grids, strict=False):
        image = ax.imshow(g, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="upper")
        ax.set(title=name, xlabel="head", ylabel="layer", xticks=range(n_heads), yticks=range(n_layers))
        if g.size <= 144:
            for (layer, head), v in np.ndenumerate(g):
                if np.isfinite(v):
                    bright = (v - vmin) / (vmax - vmin or 1.0) > 0.6
                    ax.text(head, layer, f"{v:.2f}", ha="center", va="center", fontsize=7, color="k" if bright else "w")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label=f"final {family}")
    fig.suptitle(f"{family}: final value per head")
    fig.savefig(path)
    return path


# -------------------------------------------------------------------------------------- markdown


def _num(v: float | None, digits: int = 4) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.{digits}g}"


def _step(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.0f}"


def _cell(s: str) -> str:
    return s.replace("|", "\\|")


def _phase_cell(pc: Mapping[str, Any] | None) -> str:
    if pc is None:
        return "none"
    return f"{_step(pc['midpoint'])} ({_step(pc['onset'])}→{_step(pc['end'])}, Δ{pc['jump']:+.3g})"


def markdown(
    analysis: Mapping[str, Any],
    tags: Sequence[str],
    families: Sequence[str],
    figures: Mapping[str, Mapping[str, str]],
    created: str,
) -> str:
    """The human-readable report: summary table, per-tag phase changes, top heads per family.

    ``figures`` maps ``"curves"``/``"heatmaps"`` to {tag or family: file name}.
    """
    lines = [
        "# clamp report",
        "",
        f"Generated {created}. Phase change = logistic fit (`clamp.metrics.phase`): midpoint (onset→end, Δ jump);",
        "onset/end are the 10 %/90 % crossings; 'none' = no significant sharp transition.",
        "",
        "## Summary",
        "",
    ]
    header = ["run"] + [f"{_cell(t)} {col}" for t in tags for col in ("final", "phase change")]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, a in analysis.items():
        row = [_cell(name)]
        for t in tags:
            r = a["tags"].get(t)
            row += ["–", "–"] if r is None else [_num(r["final"]), _phase_cell(r["phase_change"])]
        lines.append("| " + " | ".join(row) + " |")

    for t in tags:
        lines += ["", f"## {t}", ""]
        if t in figures.get("curves", {}):
            lines += [f"![{t}]({figures['curves'][t]})", ""]
        lines += ["| run | final | onset | midpoint | end | width | before | after | jump | r² |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, a in analysis.items():
            r = a["tags"].get(t)
            if r is None:
                continue
            pc = r["phase_change"]
            cells = ["–"] * 8 if pc is None else [
                _step(pc["onset"]), _step(pc["midpoint"]), _step(pc["end"]), _step(pc["width"]),
                _num(pc["before"]), _num(pc["after"]), _num(pc["jump"]), _num(pc["r2"], 3),
            ]  # fmt: skip
            lines.append("| " + " | ".join([_cell(name), _num(r["final"]), *cells]) + " |")

    for f in families:
        lines += ["", f"## Heads: {f}", ""]
        if f in figures.get("heatmaps", {}):
            lines += [f"![{f}]({figures['heatmaps'][f]})", ""]
        lines += ["| run | rank | head | final | phase-change midpoint |", "|---|---|---|---|---|"]
        for name, a in analysis.items():
            for rank, h in enumerate(a["heads"].get(f, {}).get("top", []), start=1):
                lines.append(f"| {_cell(name)} | {rank} | {h['name']} | {_num(h['final'])} | {_phase_cell(h['phase_change'])} |")
    return "\n".join(lines) + "\n"


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> null so report.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------ entry point


def report(runs: list[str], out: str | None = None, tags: list[str] | None = None) -> Path:
    """Compare runs: curves, per-head heatmaps, phase changes; returns the output folder.

    Args:
        runs: Run dirs (``runs/<experiment>/version_N``) or parent folders searched recursively.
        out: Output folder (created); default ``reports/<timestamp>``.
        tags: Extra tag globs to plot and tabulate (e.g. ``'val/*/acc'`` or ``'induction/L1H*'``),
            in addition to the default ``val/*/acc``, ``val/*/loss``, ``train/loss``.
    """
    if not runs:
        raise ReportError("no run dirs given")
    data = load_runs(runs)
    main_tags = select_tags(data, tags)
    families = head_families(data)
    analysis = analyze(data, main_tags, families)

    created = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    out_dir = Path(out) if out is not None else Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)

    used: set[str] = set()
    figures = {
        "curves": {t: plot_curves(data, t, analysis, out_dir / _file("curves", t, used)).name for t in main_tags},
        "heatmaps": {f: plot_heatmap(f, analysis, out_dir / _file("heatmap", f, used)).name for f in families},
    }

    (out_dir / "report.md").write_text(markdown(analysis, main_tags, families, figures, created))
    payload = {
        "created": created,
        "main_tags": main_tags,
        "head_families": families,
        "figures": figures,
        "runs": analysis,
    }
    (out_dir / "report.json").write_text(json.dumps(_json_safe(payload), indent=2))
    return out_dir


def build_parser():  # noqa: ANN201 (jsonargparse.ArgumentParser)
    """jsonargparse parser from :func:`report`'s signature.

    ``runs`` and ``tags`` are declared by hand only to get space-separated lists
    (``clamp report a b --tags 'val/*' 'train/*'``), which jsonargparse's list types do not parse.
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="clamp report", description=(report.__doc__ or "").split("\n")[0])
    parser.add_argument("runs", nargs="+", type=str, help="Run dirs or parent folders searched recursively.")
    parser.add_argument("--tags", nargs="+", type=str, default=None, help="Extra tag globs to plot and tabulate.")
    parser.add_function_arguments(report, skip={"runs", "tags"}, as_group=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    """``clamp report`` / ``python -m clamp.report``: parse, write the report, print where it went."""
    parser = build_parser()
    cfg = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out_dir = report(runs=cfg.runs, out=cfg.out, tags=cfg.tags)
    except (FileNotFoundError, ReportError) as err:  # user errors: message + usage, exit 2, no traceback
        parser.error(str(err))
    print(f"report written to {out_dir / 'report.md'}")


if __name__ == "__main__":
    main()
