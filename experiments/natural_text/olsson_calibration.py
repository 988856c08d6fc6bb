"""Issue 20.1's evidence from an ``olsson_kjv.yaml`` run: apply the rule its header states, print Markdown.

    python experiments/natural_text/olsson_calibration.py runs/kjv_olsson_plain/version_0 > /tmp/evidence.md

Reads the run's event file (TensorBoard scalars), its ``null.json`` (``clamp null --run RUN``: the same
scores on untrained models of the same architecture) and its ``config.yaml``. The rule, fixed before the
run: induction heads "formed" iff some layer-1 head's ``repeat/induction`` score reaches 0.3 AND exceeds
the null's maximum, AND ``curves/task/icl_score`` drops (a phase change, :mod:`clamp.metrics.phase`)
at the same time as that head's score rises. Anything else is "not formed within budget".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clamp.metrics.phase import phase_changes_of

THRESHOLD = 0.3
LAYER1 = "repeat/induction/L1H"


def curve(events: EventAccumulator, tag: str) -> tuple[np.ndarray, np.ndarray]:
    s = events.Scalars(tag)
    return np.array([e.step for e in s], dtype=float), np.array([e.value for e in s], dtype=float)


def null_max(run: Path, metric: str, layer: int) -> float | None:
    """The largest ``metric`` score of any head of ``layer`` over the untrained models (``null.json``)."""
    path = run / "null.json"
    if not path.is_file():
        return None
    per_seed = json.loads(path.read_text())["metrics"][metric]["layer_max"][layer]
    return float(max(per_seed))


def evidence(run: Path) -> tuple[str, bool]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    tags = events.Tags()["scalars"]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    data = cfg["data"]["init_args"]
    tokens_per_step = int(data["batch_size"]) * int(data["n_ctx"])
    steps, train = curve(events, "train/loss")
    vsteps, held = curve(events, "val/heldout/loss")
    heads = sorted(t for t in tags if t.startswith(LAYER1))
    curves = {t.split("/")[-1]: curve(events, t) for t in heads}
    best_head = max(curves, key=lambda h: curves[h][1].max())
    hs, hv = curves[best_head]
    best = float(hv.max())
    null = null_max(run, "repeat/induction", 1)
    isteps, icl = curve(events, "curves/task/icl_score")
    icl_drops = [p for p in phase_changes_of("curves/task/icl_score", isteps, icl) if p.direction == "drop"]
    head_rises = [p for p in phase_changes_of(f"repeat/induction/{best_head}", hs, hv) if p.direction == "rise"]
    together = any(abs(a.midpoint - b.midpoint) <= max(a.width, b.width) for a in icl_drops for b in head_rises)
    formed = best >= THRESHOLD and (null is None or best > null) and together
    caches = sorted((run.parent.parent / ".text_cache").glob("*/train_tokens.npy"))  # the training text's tokens
    corpus = int(np.load(caches[-1], mmap_mode="r").shape[0]) if caches else 0
    seen = int(steps[-1] + 1) * tokens_per_step
    i_min = int(np.argmin(held))
    lines = [
        f"Run `{run}`: {int(steps[-1]) + 1} steps x {tokens_per_step} tokens = {seen / 1e6:.1f} M tokens seen"
        + (f" (the corpus is {corpus / 1e6:.2f} M tokens: {seen / corpus:.0f} passes)" if corpus else ""),
        "",
        "| measure | value |",
        "|---|---|",
        f"| train/loss, first / last logged | {train[0]:.3f} / {train[-1]:.3f} |",
        f"| val/heldout/loss, lowest (step) / last | {held[i_min]:.3f} ({int(vsteps[i_min])}) / {held[-1]:.3f} |",
        f"| max over training of any layer-1 head's repeat/induction (head) | {best:.4f} ({best_head}) |",
        f"| untrained null: max over {'untrained models (layer-1 heads)' if null is not None else 'untrained models (no null.json)'} | "
        + (f"{null:.4f}" if null is not None else "–") + " |",
        f"| curves/task/icl_score, first / last (loss at the late position minus the early one; negative = in-context learning) | {icl[0]:.3f} / {icl[-1]:.3f} |",
        f"| icl_score drops detected (midpoints) | {', '.join(f'{p.midpoint:.0f}' for p in icl_drops) or 'none'} |",
        f"| {best_head} induction rises detected (midpoints) | {', '.join(f'{p.midpoint:.0f}' for p in head_rises) or 'none'} |",
        "",
        f"**Rule:** a layer-1 head >= {THRESHOLD} and above the null, with an icl_score drop at the same time. "
        + ("**Formed.**" if formed else "**Not formed within budget.**"),
    ]
    return "\n".join(lines), formed


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: olsson_calibration.py RUN_FOLDER")
    text, _ = evidence(Path(args[0]))
    print(text)


if __name__ == "__main__":
    main()
