"""A run's logged scalars as a long ``step/tag/value`` frame, and what every report derives from them.

Shared by ``clamp report`` (:mod:`clamp.report`) and its grouped form (:mod:`clamp.report_groups`),
below both so neither imports the other for it:

* :func:`read_scalars`: the TensorBoard event files of one run folder;
* :func:`with_layer_max`: ``<metric>/L<l>/max``, the best head *of each layer* at each step, from
  the per-head tags ``<metric>/L<l>H<h>``. The callback's own ``<metric>/max`` is the max over all
  layers, so it switches layer when a head of the other layer overtakes: not one head's curve;
* :func:`short_runs`: which runs end much earlier than the others, so a report can name them
  instead of cutting every run to the shortest one;
* :func:`headline_scalars`: copies of the headline curves under :data:`HEADLINE_GROUP`, the tag group
  TensorBoard's Time Series tab shows first (it sorts groups, the text before the first ``/``, by
  name, and ``0`` sorts before every letter). Reports read the original tags and drop the copies.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

EVENT_GLOB = "events.out.tfevents.*"
COLUMNS = ["step", "tag", "value"]
HEAD_TAG = re.compile(r"^(?P<family>.+)/L(?P<layer>\d+)H(?P<head>\d+)$")
#: a run ending before this fraction of the median run's last step is "short" (with >= SHORT_MIN_RUNS runs)
SHORT_FRACTION = 0.5
SHORT_MIN_RUNS = 3
#: tag group of the headline copies: ``0_headline/val/ic/acc`` sorts before ``clamp/``, ``curves/``, ``task/``, ...
HEADLINE_GROUP = "0_headline"
#: the curves copied there: training loss and every eval split's accuracy and loss
HEADLINE_TAG = re.compile(r"^(train/loss|val/[^/]+/(acc|loss))$")


def headline_scalars(metrics: Mapping[str, float]) -> dict[str, float]:
    """``{f"{HEADLINE_GROUP}/{tag}": value}`` for the headline tags among ``metrics`` (others dropped)."""
    return {f"{HEADLINE_GROUP}/{k}": v for k, v in metrics.items() if HEADLINE_TAG.match(k)}


def read_scalars(run_dir: Path) -> pd.DataFrame:
    """All scalars of one run dir as a long ``step/tag/value`` frame.

    Each event file directly in the dir is read on its own (sub-folders are other runs); when a
    resumed run logged a (tag, step) twice, the latest write wins.
    """
    from tbparse import SummaryReader

    frames = []
    for f in sorted(Path(run_dir).glob(EVENT_GLOB)):
        df = SummaryReader(str(f), pivot=False, extra_columns={"wall_time"}).scalars
        if len(df):
            frames.append(df)
    if not frames:
        return pd.DataFrame({"step": pd.Series(dtype="int64"), "tag": pd.Series(dtype=str), "value": pd.Series(dtype=float)})
    df = pd.concat(frames, ignore_index=True).sort_values("wall_time", kind="stable")
    df = df[~df["tag"].str.startswith(HEADLINE_GROUP + "/")]  # copies of val/*, train/loss for the dashboard
    df = df.drop_duplicates(["tag", "step"], keep="last").sort_values(["tag", "step"], kind="stable")
    return df[COLUMNS].reset_index(drop=True)


def layer_max_tag(family: str, layer: int) -> str:
    return f"{family}/L{layer}/max"


def with_layer_max(scalars: pd.DataFrame) -> pd.DataFrame:
    """``scalars`` plus ``<family>/L<l>/max`` for every per-head family (max over that layer's heads, per step)."""
    if scalars.empty:
        return scalars
    parts = scalars["tag"].str.extract(HEAD_TAG)
    heads = scalars[parts["family"].notna()].assign(family=parts["family"], layer=parts["layer"])
    if heads.empty:
        return scalars
    best = heads.groupby(["family", "layer", "step"], sort=True)["value"].max().reset_index()
    best["tag"] = [layer_max_tag(f, int(layer)) for f, layer in zip(best["family"], best["layer"], strict=True)]
    derived = best[COLUMNS]
    out = pd.concat([scalars[~scalars["tag"].isin(set(derived["tag"]))], derived], ignore_index=True)
    out.attrs = dict(scalars.attrs)
    return out


def short_runs(ends: Mapping[str, int]) -> dict[str, int]:
    """The runs (name -> last step) that end before ``SHORT_FRACTION`` of the median last step.

    Only with at least ``SHORT_MIN_RUNS`` runs: with two, neither is "most runs".
    """
    if len(ends) < SHORT_MIN_RUNS:
        return {}
    limit = SHORT_FRACTION * statistics.median(ends.values())
    return {name: end for name, end in ends.items() if end < limit}
