"""Experiment 3: Wu et al.'s causal test of retrieval heads, with the no-first-copy control.

    python experiments/natural_text/retrieval_ablation.py RUN [RUN ...] [--k 1 2 4 --random 20 --seeds 0 1 2] [--needle_from text]

Each RUN is a trained run folder (``config.yaml``, ``checkpoints/last.ckpt``); give one per
training seed. For each needle seed, on the run's own held-out text:

* heads are ranked by Wu et al.'s retrieval score (:func:`clamp.metrics.retrieval.wu_retrieval_score`:
  greedy decoding, > 50 % recall trials only) on a selection set; if no trial passes the recall
  filter, by the teacher-forced copy score instead (``ranked_by`` says which);
* on a separate test set (new needles and depths): needle accuracy *with* the first copy in
  context and *without* it (:func:`clamp.metrics.probes.without_first_copy`: the copy
  overwritten by the text it hid), so ``retrieval_gain = acc - acc_no_first_copy`` is what
  retrieval adds over guessing;
* for each k, accuracy with the top-k heads zero-ablated vs k random heads (``--random`` draws).

Aggregates (clamp.stats percentile bootstrap, 95 %): over training seeds (one value per run, the
mean over its needle seeds) when several runs are given; over needle seeds otherwise (one trained
model: the interval is over needle sets, not over training). Writes
``<first run>/retrieval_ablation[_text].json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from clamp.metrics import heads
from clamp.metrics.probes import ablation_effect, needle_batch, text_span_needles, top_vs_random_ablation, without_first_copy
from clamp.metrics.retrieval import wu_retrieval_score
from clamp.stats import bootstrap_mean


def load_model(run: Path) -> torch.nn.Module:
    from clamp.interventions.engine import load_reference_state
    from models import Transformer, TransformerConfig
    from models.hf import HFModelConfig

    state, hp = load_reference_state(run / "checkpoints" / "last.ckpt")
    task = hp["task"]
    if "hf" in hp:
        model = HFModelConfig(**hp["hf"]).build(task["d_vocab"], task["n_ctx"])
    else:
        model = Transformer(TransformerConfig(**hp["transformer"]).resolved(d_vocab=task["d_vocab"], n_ctx=task["n_ctx"]))
    model.load_state_dict(state)
    return model.eval()


def load_haystack(run: Path) -> torch.Tensor:
    """The run's own held-out token blocks, rebuilt from its ``config.yaml``."""
    import lightning as L
    import yaml
    from jsonargparse import ArgumentParser

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    dm = parser.instantiate(parser.parse_object({"data": cfg["data"]})).data
    return dm.eval_set(dm.eval_split_names[0])["tokens"]


def make_needles(hay: torch.Tensor, needle_len: int, vocab: int, seed: int, source: str) -> dict[str, torch.Tensor]:
    """A needle batch on ``hay``; with ``source='text'`` each row's needle is a span of another row."""
    rng = np.random.default_rng(seed)
    needles = text_span_needles(hay, needle_len, rng) if source == "text" else None
    return needle_batch(hay, needle_len, vocab, rng, needles=needles)


def one_needle_seed(model: torch.nn.Module, hay: torch.Tensor, seed: int, ks: Sequence[int], n_random: int, needle_len: int, source: str) -> dict[str, object]:
    """Rank on a selection set, then control and top-k vs random-k on a test set, for one needle seed."""
    half = len(hay) // 2
    vocab = model.cfg.d_vocab
    select = make_needles(hay[:half], needle_len, vocab, 2 * seed + 1, source)
    test = make_needles(hay[half:], needle_len, vocab, 2 * seed + 2, source)
    wu = wu_retrieval_score(model, select)
    tf = heads.all_head_scores(model, select)["teacher_forced_copy"]
    ranked_by = "wu" if wu.counted.any() else "teacher_forced_copy"
    scores = wu.score if ranked_by == "wu" else tf
    acc = ablation_effect(model, test, [])["acc"]
    acc_ctrl = ablation_effect(model, without_first_copy(test, hay[half:]), [])["acc"]
    out: dict[str, object] = {
        "seed": seed, "wu": wu.summary(), "teacher_forced_copy": tf.tolist(), "ranked_by": ranked_by,
        "acc": acc, "acc_no_first_copy": acc_ctrl, "retrieval_gain": acc - acc_ctrl, "tests": [],
    }
    for k in ks:
        r = top_vs_random_ablation(model, test, scores, k, n_random=n_random, seed=1000 * seed + k)
        r["top_minus_random_acc"] = r["top"]["acc"] - r["random_mean"]["acc"]
        out["tests"].append(r)
    return out


def aggregate(per_run: Sequence[Sequence[dict[str, object]]], ks: Sequence[int]) -> dict[str, object]:
    """Bootstrap 95 % intervals: over runs (training seeds) if > 1, else over the one run's needle seeds."""
    over_runs = len(per_run) > 1

    def values(get) -> list[float]:  # noqa: ANN001
        if over_runs:
            return [float(np.mean([get(s) for s in seeds])) for seeds in per_run]
        return [float(get(s)) for s in per_run[0]]

    def ci(get) -> dict[str, object]:  # noqa: ANN001
        return bootstrap_mean(values(get)).to_dict()

    out: dict[str, object] = {
        "over": "training seeds (runs)" if over_runs else "needle seeds of one trained model",
        "acc": ci(lambda s: s["acc"]),
        "acc_no_first_copy": ci(lambda s: s["acc_no_first_copy"]),
        "retrieval_gain": ci(lambda s: s["retrieval_gain"]),
        "by_k": {},
    }
    for i, k in enumerate(ks):
        out["by_k"][str(k)] = {
            "top_acc": ci(lambda s: s["tests"][i]["top"]["acc"]),
            "random_acc": ci(lambda s: s["tests"][i]["random_mean"]["acc"]),
            "top_minus_random_acc": ci(lambda s: s["tests"][i]["top_minus_random_acc"]),
        }
    return out


def analyse(models_and_hay: Sequence[tuple[str, torch.nn.Module, torch.Tensor]], ks: Sequence[int], n_random: int, seeds: Sequence[int], needle_len: int, source: str) -> dict[str, object]:
    """Every run x needle seed, and the aggregate."""
    if len(seeds) < 1:
        raise ValueError("--seeds must list at least one needle seed (3 or more for an interval worth reading)")
    runs, per_run = [], []
    for name, model, hay in models_and_hay:
        seeds_out = [one_needle_seed(model, hay, s, ks, n_random, needle_len, source) for s in seeds]
        runs.append({"run": name, "seeds": seeds_out})
        per_run.append(seeds_out)
    return {"needle_from": source, "needle_len": needle_len, "k": list(ks), "runs": runs, "aggregate": aggregate(per_run, ks)}


def _fmt(d: dict[str, object]) -> str:
    from clamp.stats import Interval

    return Interval(**d).format()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--random", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--needle_len", type=int, default=8)
    ap.add_argument("--needle_from", choices=["random", "text"], default="random")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    loaded = [(str(r), load_model(r), load_haystack(r)) for r in args.runs]
    res = analyse(loaded, args.k, args.random, args.seeds, args.needle_len, args.needle_from)
    agg = res["aggregate"]
    print(f"intervals over {agg['over']}")
    print(f"needle acc {_fmt(agg['acc'])} | without the first copy {_fmt(agg['acc_no_first_copy'])} | retrieval gain {_fmt(agg['retrieval_gain'])}")
    for k, r in agg["by_k"].items():
        print(f"k={k}: top {_fmt(r['top_acc'])} | random {_fmt(r['random_acc'])} | top - random {_fmt(r['top_minus_random_acc'])}")
    name = "retrieval_ablation.json" if args.needle_from == "random" else f"retrieval_ablation_{args.needle_from}.json"
    (args.out or args.runs[0] / name).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
