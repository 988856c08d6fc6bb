"""Experiment 3: Wu et al.'s causal test of retrieval heads on a trained run.

    python experiments/natural_text/retrieval_ablation.py runs/kjv_gpt2_needles/version_0 [--k 1 2 4 --random 20] [--needle_from text]

Heads are ranked by their retrieval score on one needle-in-a-haystack set (selection set); the
ablation is measured on a second set with new needles and depths (test set), so the ranking is
not fitted to the batch it is tested on. For each k: needle-copy accuracy and loss with the
top-k retrieval heads zero-ablated vs k random heads (``--random`` draws). Needles are random
tokens from the vocabulary (``--needle_from random``, the emergence probe's needles) or spans of
held-out text from another sequence (``--needle_from text``: like Wu et al.'s natural-language
needles, out of place in the haystack but not out of distribution). Writes
``<run>/retrieval_ablation[_text].json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from jsonargparse import ArgumentParser

from clamp.interventions.engine import load_reference_state
from clamp.metrics import heads
from clamp.metrics.probes import needle_batch, text_span_needles, top_vs_random_ablation
from models import Transformer, TransformerConfig
from models.hf import HFModelConfig


def load_model(run: Path) -> torch.nn.Module:
    state, hp = load_reference_state(run / "checkpoints" / "last.ckpt")
    task = hp["task"]
    if "hf" in hp:
        model = HFModelConfig(**hp["hf"]).build(task["d_vocab"], task["n_ctx"])
    else:
        model = Transformer(TransformerConfig(**hp["transformer"]).resolved(d_vocab=task["d_vocab"], n_ctx=task["n_ctx"]))
    model.load_state_dict(state)
    return model.eval()


def make_needles(hay: torch.Tensor, needle_len: int, vocab: int, seed: int, source: str) -> dict[str, torch.Tensor]:
    """A needle batch on ``hay``; with ``source='text'`` each row's needle is a span of another row."""
    rng = np.random.default_rng(seed)
    needles = text_span_needles(hay, needle_len, rng) if source == "text" else None
    return needle_batch(hay, needle_len, vocab, rng, needles=needles)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--random", type=int, default=20)
    ap.add_argument("--needle_len", type=int, default=8)
    ap.add_argument("--needle_from", choices=["random", "text"], default="random")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = yaml.safe_load((args.run / "config.yaml").read_text())
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    dm = parser.instantiate(parser.parse_object({"data": cfg["data"]})).data  # the run's own held-out data
    model = load_model(args.run)
    hay = dm.eval_set(dm.eval_split_names[0])["tokens"]
    half = len(hay) // 2
    select = make_needles(hay[:half], args.needle_len, model.cfg.d_vocab, 1, args.needle_from)
    test = make_needles(hay[half:], args.needle_len, model.cfg.d_vocab, 2, args.needle_from)
    with torch.no_grad():
        scores = heads.all_head_scores(model, select)["retrieval"]
    results = {"run": str(args.run), "step": None, "retrieval_scores": scores.tolist(), "tests": []}
    print("retrieval score per head (selection set):\n", np.round(scores.numpy(), 3))
    for k in args.k:
        r = top_vs_random_ablation(model, test, scores, k, n_random=args.random, seed=k)
        results["tests"].append(r)
        print(f"k={k}: baseline acc {r['baseline']['acc']:.3f} | top-{k} {r['top']['heads']} acc {r['top']['acc']:.3f} loss {r['top']['loss']:.2f}"
              f" | random-{k} mean acc {r['random_mean']['acc']:.3f} loss {r['random_mean']['loss']:.2f}"
              f" (min acc {min(d['acc'] for d in r['random']):.3f})")
    results["needle_from"] = args.needle_from
    name = "retrieval_ablation.json" if args.needle_from == "random" else f"retrieval_ablation_{args.needle_from}.json"
    (args.run / name).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
