"""One figure per experiment: ICL score, best induction / previous-token / retrieval head, held-out loss, per run.

    python experiments/natural_text/plot.py OUT.png RUN_DIR [RUN_DIR ...]

Reads the runs' TensorBoard event files (what EmergenceCallback logged) and prints the table
rows that RESULTS.md quotes, and the phase changes (clamp's detector, ``phase_change_of``) of
the ICL score and of the best layer-1 induction score, which the figure marks (dotted: onset
and end, on the ICL panel and the induction panel).
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tbparse import SummaryReader  # noqa: E402

from clamp.metrics.phase import phase_change_of  # noqa: E402

PANELS = [
    ("curves/task/icl_score", "ICL score (late - early token loss, nats)", None),
    ("repeat/induction/L1", "best layer-1 induction score (repeated random tokens)", "max"),
    ("task/prev_token/L0", "best layer-0 previous-token score (held-out text)", "max"),
    ("needle/teacher_forced_copy/L", "best teacher-forced copy score (needle)", "max"),
    ("curves/needle/acc", "needle copy accuracy", None),
    ("val/heldout/loss", "held-out loss", None),
]


#: tags renamed since older runs were logged: new prefix -> old prefix (issue 20.3)
OLD_TAGS = {"needle/teacher_forced_copy/L": "needle/retrieval/L"}


def series(scalars, prefix: str, how: str | None):
    if how and not scalars.tag.str.startswith(prefix).any() and prefix in OLD_TAGS:
        prefix = OLD_TAGS[prefix]  # a run logged before the rename
    rows = scalars[scalars.tag.str.startswith(prefix)] if how else scalars[scalars.tag == prefix]
    return rows.groupby("step").value.max() if how else rows.set_index("step").value


def main(out: str, *runs: str) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for run in runs:
        # every event file of the run (a resumed run adds one); a step logged twice keeps its latest value
        scalars = SummaryReader(run, extra_columns={"wall_time"}).scalars.sort_values("wall_time")
        scalars = scalars.drop_duplicates(["tag", "step"], keep="last").sort_values(["tag", "step"])
        label = run.rstrip("/").split("/")[-2]
        for ax, (tag, title, how) in zip(axes.flat, PANELS):
            s = series(scalars, tag, how)
            ax.plot(s.index, s.values, label=label)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
        for ax, (tag, _, how) in zip(axes.flat[:2], PANELS[:2]):
            s = series(scalars, tag, how)
            pc = phase_change_of(tag if not how else "repeat/induction/max", s.index.to_numpy(float), s.to_numpy(float))
            print(f"  {label} phase change of {tag}{' (max over heads)' if how else ''}: " + (
                f"onset {pc.onset:.0f}, midpoint {pc.midpoint:.0f}, end {pc.end:.0f}, {pc.before:.3f} -> {pc.after:.3f}" if pc else "none"))
            if pc:
                color = ax.get_lines()[-1].get_color()
                for x in (pc.onset, pc.end):
                    ax.axvline(x, color=color, ls=":", lw=1)
        last = {tag: float(series(scalars, tag, how).iloc[-1]) for tag, _, how in PANELS if len(series(scalars, tag, how))}
        print(f"| {label} | {int(scalars.step.max())} | " + " | ".join(f"{last.get(t, float('nan')):.3f}" for t, _, _ in PANELS) + " |")
    for ax in axes.flat:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main(*sys.argv[1:])
