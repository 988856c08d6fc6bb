"""Wu et al. (2024) retrieval score, as they define it: measured during greedy decoding of a needle.

Wu, Wang, Xiao, Peng & Fu (2024), "Retrieval Head Mechanistically Explains Long-Context
Factuality", score a head while the model *generates* the needle, not on a teacher-forced
forward. On the needle batches of :func:`clamp.metrics.probes.needle_batch` (a needle hidden at
``needle_pos`` and repeated in the last ``L`` positions, whose first token is the cue):

* the prompt is the sequence up to and including the cue (``tokens[:, :T - L + 1]``); the model
  decodes ``L - 1`` tokens greedily, each appended to its own input (no teacher forcing);
* on decode step ``j`` head ``h`` *hits* when its top-attended key position ``s`` (at the query
  that produces the token) lies inside the needle's first copy ``[p, p + L)`` and
  ``tokens[s]`` equals the token being generated;
* a trial's score is ``hits / L`` (Wu et al.'s ``|g_h ∩ k| / |k|``). The cue is given, not
  decoded, so a perfect head scores ``(L - 1) / L`` per trial, i.e. 1 per decode step;
* only trials with recall > 50 % count (more than half of the decoded tokens equal the needle's,
  position by position); the head's score is the mean over counted trials, NaN when none counts.

:func:`clamp.metrics.heads.teacher_forced_copy_score` is the different, cheaper quantity the
emergence probe logs (teacher-forced, every trial, source position matched).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NeedleDecode:
    """What greedy decoding of the needle produced, per trial.

    ``generated [N, L-1]`` decoded ids; ``sequence [N, T]`` prompt plus decoded ids (the tokens
    the top positions index); ``top [N, L-1, n_layers, n_heads]`` each head's top-attended key
    position at the query that produced each decoded token.
    """

    generated: torch.Tensor
    sequence: torch.Tensor
    top: torch.Tensor


def greedy_decode_needle(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> NeedleDecode:
    """Greedily decode each row's needle after its cue, capturing every head's attention pattern.

    Works with any site model (``models.Transformer`` or ``models.hf.HFSiteModel``): each step is
    one ``run_with_cache`` forward on the growing sequence, reading ``layer{l}.pattern``'s last row.
    """
    tokens, needle_len = batch["tokens"], _needle_len(batch)
    dev = next(model.parameters()).device
    n_layers = model.cfg.n_layers
    seq = tokens[:, : tokens.shape[1] - needle_len + 1].long().to(dev)
    names = [f"layer{l}.pattern" for l in range(n_layers)]
    gen, top = [], []
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(needle_len - 1):
                logits, cache = model.run_with_cache(seq, names=names, allow_missing_features=True)
                nxt = logits[:, -1].argmax(dim=-1)
                top.append(torch.stack([cache[n][:, :, -1].argmax(dim=-1) for n in names], dim=1))  # [N, L, H]
                gen.append(nxt)
                seq = torch.cat([seq, nxt[:, None]], dim=1)
    finally:
        model.train(was)
    return NeedleDecode(torch.stack(gen, dim=1).cpu(), seq.cpu(), torch.stack(top, dim=1).cpu())


def _needle_len(batch: Mapping[str, torch.Tensor]) -> int:
    """Needle length L from the batch: the scored positions are its L - 1 copy steps."""
    if "needle_pos" not in batch or "loss_mask" not in batch:
        raise KeyError(f"a needle batch needs 'needle_pos' and 'loss_mask' (see clamp.metrics.probes.needle_batch); got keys {sorted(batch)}")
    counts = batch["loss_mask"].sum(dim=1).unique()
    if len(counts) != 1 or int(counts[0]) < 1:
        raise ValueError(f"every needle row must score the same number (>= 1) of copy steps, got {counts.tolist()}")
    return int(counts[0]) + 1


def needle_of(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``[N, L]`` the needle of each row (its second copy fills the last ``L`` positions)."""
    return batch["tokens"][:, -_needle_len(batch):].long()


@dataclass(frozen=True)
class WuRetrieval:
    """Wu et al.'s score per head and what it rests on.

    ``score [n_layers, n_heads]`` (NaN when no trial passed the recall filter); ``recall [N]`` per
    trial; ``counted [N]`` the trials with recall > ``min_recall``; ``per_trial [N, n_layers,
    n_heads]`` hits / L on every trial (counted or not).
    """

    score: torch.Tensor
    recall: torch.Tensor
    counted: torch.Tensor
    per_trial: torch.Tensor

    def summary(self) -> dict[str, object]:
        return {"score": self.score.tolist(), "recall_mean": float(self.recall.mean()), "trials_counted": int(self.counted.sum()), "trials": int(self.counted.numel())}


def wu_retrieval_from_decode(decode: NeedleDecode, needle: torch.Tensor, needle_pos: torch.Tensor, min_recall: float = 0.5) -> WuRetrieval:
    """Wu et al.'s retrieval score from a decode (see the module docstring for the definition)."""
    n, needle_len = needle.shape
    gen, seq, top = decode.generated.long(), decode.sequence.long(), decode.top.long()
    if gen.shape != (n, needle_len - 1):
        raise ValueError(f"decode.generated has shape {list(gen.shape)}, expected [{n}, {needle_len - 1}] (needle_len - 1 decode steps)")
    p = needle_pos.long()[:, None, None, None]
    inside = (top >= p) & (top < p + needle_len)
    attended = seq.gather(1, top.flatten(1)).view_as(top)
    hits = inside & (attended == gen[:, :, None, None])  # [N, steps, L, H]
    per_trial = hits.float().sum(dim=1) / needle_len
    recall = (gen == needle[:, 1:].long()).float().mean(dim=1)
    counted = recall > min_recall
    score = per_trial[counted].mean(dim=0) if counted.any() else torch.full(per_trial.shape[1:], float("nan"))
    return WuRetrieval(score, recall, counted, per_trial)


def wu_retrieval_score(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], min_recall: float = 0.5) -> WuRetrieval:
    """Greedy-decode ``batch``'s needles on ``model`` and score every head as Wu et al. do."""
    decode = greedy_decode_needle(model, batch)
    return wu_retrieval_from_decode(decode, needle_of(batch), batch["needle_pos"], min_recall)
