"""``clamp report RUN_DIR... [--out DIR] [--tags GLOB...] [--labels NAME...] [--formats png pdf svg]``: compare runs.

Reads the scalar event files of one or more runs (a run dir is a folder such as
``runs/<experiment>/version_N`` holding ``events.out.tfevents.*``; a parent folder is searched
recursively for run dirs) and writes, into ``--out`` (default ``reports/<timestamp>``):

* ``curves_<tag>.png`` — each main curve, all runs overlaid, detected phase-change midpoints as
  dotted vertical lines. Main curves: the tags among ``val/*/acc``, ``val/*/loss``, ``train/loss``
  that every run has, plus whatever ``--tags`` globs match;
* ``heatmap_<family>.png`` — for per-head tags ``<family>/L{l}H{h}``, a layer x head map of the
  final value, one panel per run;
* ``report.md`` / ``report.json`` — final values, phase changes
  (:func:`clamp.metrics.phase.phase_change_of`) and top heads per family, per run.

Runs of different lengths are compared on their common step range (the shortest run's), and the
report says so. A run folder without scalars (a config error, ``clamp validate``, a crash before
the first log) is skipped with a warning. A curve's phase change is the run's own ``summary.json``
entry when the whole run is compared (one computation, read everywhere); on a cropped range it is
recomputed with the same function. Chance levels (``1/classes`` for accuracies, ``ln classes`` for
losses) come from the run's ``hparams.yaml``. Plots use matplotlib's Agg canvas directly (no
pyplot): no display needed and no global backend state changed for the importing process.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clamp.metrics.phase import phase_change_of
from clamp.scalars import EVENT_GLOB, HEAD_TAG, SHORT_FRACTION, read_scalars, short_runs  # noqa: F401 (read_scalars: re-exported)

MAIN_PATTERNS = ("val/*/acc", "val/*/loss", "train/loss")
TOP_K = 5
FORMATS = ("png", "pdf", "svg")
WORDS = {  # tag parts in words, for figure titles
    "val": "validation", "train": "training", "ic": "in-context", "iw": "in-weights", "acc": "accuracy",
    "loss": "loss", "task": "task probe", "repeat": "repeated-token probe", "random": "random-token probe",
    "prev_token": "previous-token attention", "induction": "induction score", "query_to_match": "query -> matching label attention",
    "label_to_exemplar": "label -> its exemplar attention", "query_to_exemplar": "query -> matching exemplar attention",
    "prefix_matching": "prefix matching", "retrieval": "retrieval score", "teacher_forced_copy": "teacher-forced copy score", "copying": "copying score",
    "copying_eigen": "OV copying (eigenvalues)", "attn_sink": "attention sink", "ablate_zero": "loss increase when zero-ablated",
    "ablate_mean": "loss increase when mean-ablated", "icl_score": "in-context learning score", "curves": "",
}  # fmt: skip


class ReportError(ValueError):
    """A user-facing problem with the arguments (e.g. a tag glob that matches nothing)."""

# --------------------------------------------------------------------------------------- loading


def title(tag: str) -> str:
    """A tag in words: ``val/ic/acc`` -> ``validation in-context accuracy (val/ic/acc)``."""
    m = HEAD_TAG.match(tag)
    base = m["family"] if m else tag
    words = " ".join(w for part in base.split("/") if (w := WORDS.get(part, part)))
    if m:
        words += f", layer {int(m['layer'])} head {int(m['head'])}"
    return f"{words[:1].upper()}{words[1:]} ({tag})"


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


def warn(message: str) -> None:
    print(f"clamp report: warning: {message}", file=sys.stderr, flush=True)


def load_runs(paths: Iterable[str | Path], labels: Sequence[str] | None = None, progress: str | None = None) -> dict[str, pd.DataFrame]:
    """Run name -> scalars (``step``, ``tag``, ``value``) for every run dir with scalars found under ``paths``.

    Run dirs without any scalar are skipped with a warning; ``labels`` name the kept runs in order.
    ``progress``: print one line saying what is read (and ``progress`` after it) before the slow part.
    """
    dirs: list[Path] = []
    for path in paths:
        for d in find_run_dirs(path):
            if d.resolve() not in {x.resolve() for x in dirs}:
                dirs.append(d)
    if progress is not None:
        print(f"clamp report: reading {len(dirs)} run folder(s), {progress} ...", file=sys.stderr, flush=True)
    frames = {}
    for d in dirs:
        df = read_scalars(d)
        if df.empty:
            warn(f"skipping {d}: no scalars logged (a run that failed before training, or a `clamp validate` run)")
            continue
        df.attrs["run_dir"] = str(d)  # for report.json; not needed for the analysis itself
        frames[d] = df
    if not frames:
        raise ReportError(f"no run with logged scalars among {', '.join(str(d) for d in dirs)}")
    if labels is not None and len(labels) != len(frames):
        found = ", ".join(str(d) for d in frames)
        raise ReportError(f"--labels: {len(labels)} label(s) for {len(frames)} run(s) ({found}); give one label per run, in this order")
    names = dict(zip(frames, labels, strict=True)) if labels is not None else run_names(list(frames))
    if len(set(names.values())) != len(names):
        raise ReportError(f"--labels must be unique, got {list(names.values())}")
    return {names[d]: df for d, df in frames.items()}


def run_ends(runs: Mapping[str, pd.DataFrame], tags: Sequence[str]) -> dict[str, int]:
    """Each run's last logged step of ``tags`` (of any tag if none given)."""
    ends = {}
    for name, df in runs.items():
        sub = df[df["tag"].isin(list(tags))] if tags else df
        ends[name] = int(sub["step"].max()) if len(sub) else 0
    return ends


def common_range(runs: Mapping[str, pd.DataFrame], tags: Sequence[str]) -> tuple[int, dict[str, int]] | None:
    """``(last common step, {run: last step})`` when the runs end at different steps, else None."""
    ends = run_ends(runs, tags)
    if len(set(ends.values())) <= 1:
        return None
    return min(ends.values()), ends


def crop(runs: Mapping[str, pd.DataFrame], last_step: int) -> dict[str, pd.DataFrame]:
    """Every run's scalars up to ``last_step`` (inclusive)."""
    out = {}
    for name, df in runs.items():
        cropped = df[df["step"] <= last_step].reset_index(drop=True)
        cropped.attrs = {**df.attrs, "cropped_at": last_step}
        out[name] = cropped
    return out


def run_meta(run_dir: str | None) -> dict[str, Any]:
    """What the report needs from a run folder besides scalars: ``summary.json`` and the number of classes."""
    meta: dict[str, Any] = {"summary": None, "classes": None}
    if not run_dir:
        return meta
    d = Path(run_dir)
    if (d / "summary.json").is_file():
        try:
            meta["summary"] = json.loads((d / "summary.json").read_text())
        except json.JSONDecodeError:
            warn(f"{d / 'summary.json'} is not valid JSON; phase changes are recomputed from the event files")
    if (d / "hparams.yaml").is_file():
        import yaml

        task = (yaml.safe_load((d / "hparams.yaml").read_text()) or {}).get("task") or {}
        classes = task.get("d_out") or task.get("d_vocab")
        meta["classes"] = int(classes) if classes else None
    return meta


def chance_level(tag: str, classes: int | None) -> float | None:
    """Accuracy ``1/classes`` and loss ``ln classes`` of uniform guessing, for the headline tags."""
    if not classes or classes < 2:
        return None
    if fnmatchcase(tag, "val/*/acc") or tag == "train/acc":
        return 1.0 / classes
    if fnmatchcase(tag, "val/*/loss") or tag == "train/loss":
        return math.log(classes)
    return None


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


def _phase(df: pd.DataFrame, tag: str, steps: np.ndarray, values: np.ndarray) -> dict[str, Any] | None:
    """The run's own ``summary.json`` entry for ``tag`` when the whole run is compared, else computed here."""
    summary = df.attrs.get("summary")
    # older runs logged validation at global_step - 1, the callback at global_step: "covers" is >=
    whole_run = "cropped_at" not in df.attrs and summary and (summary.get("step") or -1) >= int(df["step"].max())
    if whole_run and tag in (summary.get("phase_changes") or {}):
        return summary["phase_changes"][tag]
    pc = phase_change_of(tag, steps, values)
    return None if pc is None else pc.to_dict()


def analyze_tag(df: pd.DataFrame, tag: str) -> dict[str, Any] | None:
    """Final value and phase change of one curve (None if the run lacks the tag)."""
    steps, values = curve(df, tag)
    finite = np.isfinite(values)
    if not finite.any():
        return None
    last = int(np.flatnonzero(finite)[-1])
    return {"final": float(values[last]), "final_step": int(steps[last]), "phase_change": _phase(df, tag, steps, values)}


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
        top.append({"name": name, **{k: info[k] for k in ("layer", "head", "final")}, "phase_change": _phase(df, info["tag"], steps, values)})
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


def emergence_time(analysis: Mapping[str, Any], family: str) -> float:
    """The earliest phase-change midpoint of ``family``'s top heads over the runs (inf if none formed)."""
    mids = [
        h["phase_change"]["midpoint"]
        for a in analysis.values()
        for h in a["heads"].get(family, {}).get("top", [])
        if h.get("phase_change") and h["phase_change"].get("midpoint") is not None and math.isfinite(h["phase_change"]["midpoint"])
    ]
    return min(mids, default=math.inf)


def emergence_order(analysis: Mapping[str, Any]) -> list[str]:
    """Head families in the order their heads formed (earliest phase change first); those that never did last, by name."""
    families = sorted({f for a in analysis.values() for f in a["heads"]})
    return sorted(families, key=lambda f: (emergence_time(analysis, f), f))


# -------------------------------------------------------------------------------------- plotting


def _slug(tag: str) -> str:
    """File-name-safe version of a tag (``val/induction/acc`` -> ``val_induction_acc``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag).strip("_") or "tag"


def _file(kind: str, name: str, used: set[str]) -> str:
    """``<kind>_<slug>`` (no extension), suffixed if two tags slug to the same name."""
    stem, i = f"{kind}_{_slug(name)}", 1
    fname = stem
    while fname in used:
        i += 1
        fname = f"{stem}-{i}"
    used.add(fname)
    return fname


def _save(fig, stem: Path, formats: Sequence[str]) -> Path:  # noqa: ANN001 (matplotlib Figure)
    """Write ``fig`` as ``stem.<format>`` for each format; returns the first file (linked from report.md)."""
    paths = [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    for path in paths:
        fig.savefig(path)
    return paths[0]


def _figure(width: float, height: float):  # noqa: ANN202 (matplotlib Figure)
    """A Figure on an Agg canvas, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_curves(
    runs: Mapping[str, pd.DataFrame], tag: str, analysis: Mapping[str, Any], path: Path,
    formats: Sequence[str] = ("png",), chance: float | None = None, note: str = "",
) -> Path:  # fmt: skip
    """All runs' ``tag`` curves on one axis, phase-change midpoints as dotted lines, chance as a grey dashed line."""
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
    if chance is not None:
        ax.axhline(chance, color="0.5", ls="--", lw=1.0, label=f"chance ({chance:.3g})")
    ax.set(title=title(tag) + (f"\n{note}" if note else ""), xlabel="training step", ylabel=WORDS.get(tag.rsplit("/", 1)[-1], tag))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path, formats)


def plot_heatmap(family: str, analysis: Mapping[str, Any], path: Path, formats: Sequence[str] = ("png",)) -> Path:
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
    width_chars = int(fig.get_figwidth() * 11)  # the title wraps instead of running off a one-panel figure
    fig.suptitle(textwrap.fill(f"{title(family)}: final value per head", width_chars), fontsize="medium")
    return _save(fig, path, formats)


def circuit_families(families: Sequence[str]) -> list[str]:
    """The families of the circuit metrics (previous-token, induction, retrieval: the callback's phase-change list),
    else those of a 0..1 score, else all; in ``families``' order."""
    from clamp.metrics.callback import HEAD_METRICS_FOR_PHASE
    from clamp.metrics.phase import curve_scale

    circuit = [f for f in families if f in HEAD_METRICS_FOR_PHASE]
    unit = [f for f in families if curve_scale(f"{f}/L0H0") == 1.0 and not f.endswith("attn_sink")]
    return circuit or unit or list(families)


def plot_heads_over_training(
    runs: Mapping[str, pd.DataFrame], analysis: Mapping[str, Any], families: Sequence[str], path: Path, formats: Sequence[str] = ("png",)
) -> Path | None:
    """One panel per run: the top head of each circuit metric over training, phase-change midpoints as dots.

    Shows which head formed when, in one picture, instead of one 8-line chart per metric.
    """
    shown = circuit_families(families)
    panels = [(name, a) for name, a in analysis.items() if any(a["heads"].get(f, {}).get("top") for f in shown)]
    if not panels:
        return None
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(7.5 * ncols, 4.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (name, a) in zip(axes.flat, panels, strict=False):
        for i, f in enumerate(shown):
            top = (a["heads"].get(f) or {}).get("top") or []
            if not top:
                continue
            h = top[0]
            steps, values = curve(runs[name], f"{f}/L{h['layer']}H{h['head']}")
            color = f"C{i % 10}"
            pc = h.get("phase_change")
            mid = pc.get("midpoint") if pc else None
            label = f"{f} {h['name']}" + (f" (mid {mid:.0f})" if mid is not None else "")
            ax.plot(steps, values, color=color, lw=1.3, label=label)
            if mid is not None and steps.size:
                ax.plot([mid], [float(np.interp(mid, steps, values))], "o", color=color, ms=5)
        ax.set(title=f"{name}: top head per metric", xlabel="training step", ylabel="score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    return _save(fig, path, formats)


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
    note: str = "",
) -> str:
    """The human-readable report: summary table, per-tag phase changes, top heads per family.

    ``figures`` maps ``"curves"``/``"heatmaps"`` to {tag or family: file name}.
    """
    lines = [
        "# clamp report",
        "",
        f"Generated {created}. Phase change = logistic fit (`clamp.metrics.phase`): midpoint (onset→end, Δ jump);",
        "onset/end are the 10 %/90 % crossings; 'none' = no significant sharp transition.",
        *([f"**{note}**"] if note else []),
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

    if "heads_over_training" in figures:
        lines += ["", "## Heads over training", "", "The top head of each circuit metric; sections below in the order the heads formed.", "",
                  f"![heads over training]({figures['heads_over_training']['all']})"]
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


def report(
    runs: list[str],
    out: str | None = None,
    tags: list[str] | None = None,
    labels: list[str] | None = None,
    formats: list[str] | None = None,
) -> Path:
    """Compare runs: curves, per-head heatmaps, phase changes; returns the output folder.

    Args:
        runs: Run dirs (``runs/<experiment>/version_N``) or parent folders searched recursively.
        out: Output folder (created); default ``reports/<timestamp>``.
        tags: Extra tag globs to plot and tabulate (e.g. ``'val/*/acc'`` or ``'induction/L1H*'``),
            in addition to the default ``val/*/acc``, ``val/*/loss``, ``train/loss``.
        labels: Names for the runs in figures and tables, one per run found, in order
            (default: ``experiment/version_N``).
        formats: Figure formats among png, pdf, svg (default png; report.md links the first).
    """
    if not runs:
        raise ReportError("no run dirs given")
    formats = list(formats or ["png"])
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ReportError(f"--formats: unknown format(s) {bad}; valid: {list(FORMATS)}")
    out_dir = Path(out) if out is not None else Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")
    data = load_runs(runs, labels, progress=f"then writing figures and report.md to {out_dir}")
    metas = {name: run_meta(df.attrs.get("run_dir")) for name, df in data.items()}
    for name, df in data.items():
        df.attrs["summary"] = metas[name]["summary"]
    main_tags = select_tags(data, tags)
    notes = []
    excluded = short_runs(run_ends(data, main_tags))
    if excluded:  # one 10-step run must not cut a whole folder's comparison to steps 0-10
        ends = run_ends(data, main_tags)
        notes.append(
            f"Left out {len(excluded)} run(s) much shorter than the others (last step < {SHORT_FRACTION:.0%} of the median, "
            f"{statistics.median(ends.values()):.0f}): {', '.join(f'{n} (ends at {e})' for n, e in excluded.items())}."
        )
        data = {n: df for n, df in data.items() if n not in excluded}
        main_tags = select_tags(data, tags)
    if (common := common_range(data, main_tags)) is not None:
        last, ends = common
        longest = max(ends.values())
        early = ", ".join(f"{n} (ends at {e})" for n, e in ends.items() if e < longest)
        notes.append(f"Compared on steps 0-{last}, the common range: {early} end(s) before the others ({longest}).")
        data = crop(data, last)
    note = " ".join(notes)
    for line in notes:
        warn(line)
    analysis = analyze(data, main_tags, head_families(data))
    families = emergence_order(analysis)

    created = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    out_dir.mkdir(parents=True, exist_ok=True)

    classes = {m["classes"] for m in metas.values()}
    n_classes = classes.pop() if len(classes) == 1 else None
    used: set[str] = set()
    figures = {
        "curves": {
            t: plot_curves(data, t, analysis, out_dir / _file("curves", t, used), formats, chance_level(t, n_classes), note).name
            for t in main_tags
        },
        "heatmaps": {f: plot_heatmap(f, analysis, out_dir / _file("heatmap", f, used), formats).name for f in families},
    }
    if (heads_fig := plot_heads_over_training(data, analysis, families, out_dir / "heads_over_training", formats)) is not None:
        figures["heads_over_training"] = {"all": heads_fig.name}
    (out_dir / "report.md").write_text(markdown(analysis, main_tags, families, figures, created, note))
    payload = {
        "created": created,
        "main_tags": main_tags,
        "head_families": families,
        "common_range": None if common is None else {"last_step": common[0], "run_ends": common[1]},
        "excluded_short_runs": excluded,
        "chance": {t: c for t in main_tags if (c := chance_level(t, n_classes)) is not None},
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
    parser.add_argument("--labels", nargs="+", type=str, default=None, help="One name per run, in order (default experiment/version_N).")
    parser.add_argument("--formats", nargs="+", type=str, default=None, help="Figure formats: png, pdf, svg (default png).")
    parser.add_function_arguments(report, skip={"runs", "tags", "labels", "formats"}, as_group=False)
    grouped = parser.add_argument_group("grouped report (runs made by `clamp sweep`, seeds pooled per condition)")
    grouped.add_argument("--group-by", "--group_by", dest="group_by", type=str | None, default=None,
                         help="'condition': differences vs a baseline condition with bootstrap 95 % CIs (groups.md, groups.csv).")
    grouped.add_argument("--baseline", type=str | None, default=None, help="With --group-by: the condition the others are compared to (default: the first).")
    grouped.add_argument("--speed_tag", type=str | None, default=None,
                         help="With --group-by: curve of the learning speed, first step below 0.4 ln 2 (default: the runs' summary.json curve, else the first val/*/loss).")
    return parser


def main(argv: list[str] | None = None) -> None:
    """``clamp report`` / ``python -m clamp.report``: parse, write the report, print where it went."""
    args = sys.argv[1:] if argv is None else argv
    if any(a.split("=")[0] in ("--group-by", "--group_by") for a in args):  # seeds pooled per sweep condition
        from clamp.report_groups import main as groups_main

        groups_main(args)
        return
    parser = build_parser()
    cfg = parser.parse_args(args)
    given = [f"--{k}" for k in ("baseline", "speed_tag") if cfg.get(k) is not None]
    if given:
        parser.error(f"{' and '.join(given)} only apply to a grouped report; add --group-by condition")
    try:
        out_dir = report(runs=cfg.runs, out=cfg.out, tags=cfg.tags, labels=cfg.labels, formats=cfg.formats)
    except (FileNotFoundError, ReportError) as err:  # user errors: message + usage, exit 2, no traceback
        parser.error(str(err))
    print(f"report written to {out_dir / 'report.md'}")


if __name__ == "__main__":
    main()
