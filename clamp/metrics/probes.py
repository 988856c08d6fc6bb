"""Probe sets for language models on natural text, and the Wu et al. causal test of retrieval heads.

* :func:`needle_batch`: needle-in-a-haystack. A needle of random tokens from the model's
  vocabulary is written into real text at a random depth and again at the end of the context;
  from the second copy's first token on, the model can only predict the rest by retrieving it
  from the first copy. ``copy_src`` marks where each copied token sits, so
  :func:`clamp.metrics.heads.teacher_forced_copy_score` gives a teacher-forced proxy per head
  (over every trial, the fraction of copy steps predicted right with the head's top attention on
  the source position) and the loss mask scores only the copy steps (``curves/needle/acc``).
  Wu et al.'s own retrieval score decodes the needle greedily:
  :func:`clamp.metrics.retrieval.wu_retrieval_score`.
* :func:`without_first_copy`: the control: the same batch with the first copy replaced by the
  haystack text it covered, so the needle can only be guessed, not retrieved.
* :func:`text_span_needles`: needles that are spans of *other* text (Wu et al. hide a
  natural-language needle): out of place in the haystack but in the model's distribution, so a
  model that copies text it knows can retrieve them where it cannot copy random tokens.
* :func:`ablation_effect`: retrieval accuracy and loss with a set of heads zero-ablated
  (through the interventions engine), and :func:`top_vs_random_ablation`, which compares
  ablating the top-k retrieval heads with ablating k random heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from clamp.metrics import curves
from synthetic_data.base import model_inputs


def needle_batch(
    haystack: torch.Tensor,
    needle_len: int,
    vocab: int,
    rng: np.random.Generator,
    depth: tuple[float, float] = (0.1, 0.5),
    needles: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Haystack rows ``[N, T]`` with a random needle at a random depth and repeated at the end.

    The first copy starts at ``p ~ U[depth[0] * T, depth[1] * T)``; the second copy fills the
    last ``needle_len`` positions. ``loss_mask`` is set at the positions predicting the second
    copy's tokens 2..L (its first token is the cue); ``copy_src`` holds their source positions.
    ``needles`` ``[N, needle_len]`` gives the needles (e.g. spans of other text, as Wu et al.'s
    natural-language needles); by default they are uniform random tokens from the vocabulary.
    """
    n, t = haystack.shape
    if not 2 <= needle_len <= t // 4:
        raise ValueError(f"needle_len={needle_len} must be in 2..{t // 4} (a quarter of the context {t})")
    lo, hi = int(depth[0] * t), int(depth[1] * t)
    if not 0 <= lo < hi <= t - 2 * needle_len:
        raise ValueError(f"needle depth {depth} does not fit a needle of {needle_len} in a context of {t}")
    tokens = haystack.clone().long()
    if needles is None:
        needles = torch.from_numpy(rng.integers(0, vocab, size=(n, needle_len))).long()
    elif tuple(needles.shape) != (n, needle_len):
        raise ValueError(f"needles must have shape [{n}, {needle_len}] (rows x needle_len), got {list(needles.shape)}")
    needles = needles.long()
    p = torch.from_numpy(rng.integers(lo, hi, size=n)).long()
    q = t - needle_len
    ar = torch.arange(needle_len)
    rows = torch.arange(n)[:, None]
    tokens[rows, p[:, None] + ar] = needles
    tokens[:, q:] = needles
    targets = torch.roll(tokens, -1, 1)
    copy_src = torch.full((n, t), -1, dtype=torch.long)
    copy_src[:, q : t - 1] = p[:, None] + ar[1:]  # predicting token q + j (j >= 1) copies from p + j
    loss_mask = copy_src >= 0
    return {"tokens": tokens, "targets": targets, "loss_mask": loss_mask, "copy_src": copy_src, "needle_pos": p}


def text_span_needles(haystack: torch.Tensor, needle_len: int, rng: np.random.Generator) -> torch.Tensor:
    """``[N, needle_len]`` needles: for row i a random span of row ``(i + N // 2) % N`` (another
    sequence, far away in the eval set) of ``haystack [N, T]``."""
    n, t = haystack.shape
    if n < 2:
        raise ValueError(f"text-span needles need at least 2 haystack rows to borrow from, got {n}")
    start = torch.from_numpy(rng.integers(0, t - needle_len, size=n))
    donor = torch.roll(torch.arange(n), n // 2)
    return haystack[donor[:, None], start[:, None] + torch.arange(needle_len)].long()


def ablation_effect(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], heads: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Accuracy and loss on ``batch``'s scored positions with ``heads`` (``(layer, head)``) zero-ablated at ``z``."""
    from clamp.interventions import intervene
    from clamp.training import masked_loss_and_accuracy

    dev = next(model.parameters()).device
    b = {k: v.to(dev) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    specs = [{"site": f"layer{l}.head{h}.z", "op": {"kind": "zero"}, "name": f"ablate_L{l}H{h}"} for l, h in heads]
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), intervene(model, specs):
            logits = model(*model_inputs(b))
    finally:
        model.train(was)
    loss, _ = masked_loss_and_accuracy(logits, b)
    return {"acc": float(curves.accuracy(logits, b["targets"], b["loss_mask"])), "loss": float(loss)}


def top_vs_random_ablation(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], scores: torch.Tensor, k: int, n_random: int = 10, seed: int = 0
) -> dict[str, object]:
    """Wu et al.'s causal test: ablate the ``k`` heads with the highest ``scores [L, H]`` vs ``k`` random heads.

    Returns the baseline, the top-k result, every random draw and their mean, with the heads used.
    """
    n_layers, n_heads = scores.shape
    if not 1 <= k <= n_layers * n_heads:
        raise ValueError(f"k={k} must be in 1..{n_layers * n_heads} (the model has {n_layers} x {n_heads} heads)")
    flat = torch.nan_to_num(scores.float(), nan=-1.0).flatten()
    top = [divmod(int(i), n_heads) for i in flat.argsort(descending=True)[:k]]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_random):
        pick = rng.choice(n_layers * n_heads, size=k, replace=False)
        heads = [divmod(int(i), n_heads) for i in pick]
        draws.append({"heads": [f"L{l}H{h}" for l, h in heads], **ablation_effect(model, batch, heads)})
    return {
        "k": k,
        "baseline": ablation_effect(model, batch, []),
        "top": {"heads": [f"L{l}H{h}" for l, h in top], **ablation_effect(model, batch, top)},
        "random": draws,
        "random_mean": {m: float(np.mean([d[m] for d in draws])) for m in ("acc", "loss")},
    }


def without_first_copy(batch: Mapping[str, torch.Tensor], haystack: torch.Tensor) -> dict[str, torch.Tensor]:
    """The no-first-copy control of a :func:`needle_batch`: the first copy overwritten by the haystack text it hid.

    The second copy, its cue and the scored positions stay, so accuracy on this batch is what the
    model gets right *without* anything to retrieve (guessing from the cue and the text); only
    the difference to the batch with the copy measures retrieval. ``copy_src`` is dropped (the
    sources are gone).
    """
    needle_len = int(batch["loss_mask"].sum(dim=1).max()) + 1
    tokens = batch["tokens"].clone()
    rows = torch.arange(tokens.shape[0])[:, None]
    cols = batch["needle_pos"].long()[:, None] + torch.arange(needle_len)
    tokens[rows, cols] = haystack.long()[rows, cols]
    out = {k: v for k, v in batch.items() if k != "copy_src"}
    out["tokens"], out["targets"] = tokens, torch.roll(tokens, -1, 1)
    return out
