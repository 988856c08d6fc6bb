"""In-context learning of Markov chains (Edelman et al. 2024, "The evolution of statistical induction heads").

Every sequence comes from its own freshly drawn transition matrix, so the only way to predict well is
to estimate bigram statistics from the context — which transformers learn in stages (uniform ->
unigram -> bigram), the bigram stage being implemented by a statistical induction head.
"""

from __future__ import annotations

import numpy as np
import torch

from synthetic_data.base import SyntheticTask, TaskSpec


class MarkovICL(SyntheticTask):
    """Sequences of a Markov chain whose rows are drawn per sequence from ``Dirichlet(alpha * 1)``.

    Initial state uniform; next-token targets; ``loss_mask`` every position but the last. Extras:

    * ``copy_src`` long [B, T]: all -1 (no single source token: the answer is a context statistic).
    * ``transition`` float [B, S, S]: the sequence's true transition matrix (rows sum to 1).
    * ``transition_logprob`` float [B, T]: ``log P[token_i, target_i]`` under the *true* matrix
      (0 at the last position). Its negated mean over ``loss_mask`` is the loss of an oracle that
      knows the matrix: a lower bound no in-context learner can beat in expectation.
    * ``bayes_logprob`` float [B, T]: log posterior-predictive probability of the target given the
      tokens so far under the Dirichlet prior, ``(n_ij + alpha) / (n_i + S * alpha)`` with ``n``
      the transitions from ``token_i`` seen before position ``i`` (0 at the last position): the
      achievable in-context Bayes optimum.
    """

    def __init__(self, n_states: int = 8, seq_len: int = 128, dirichlet_alpha: float = 1.0) -> None:
        self.n_states, self.seq_len, self.dirichlet_alpha = n_states, seq_len, dirichlet_alpha
        if n_states < 2:
            raise ValueError(f"n_states={n_states} must be >= 2")
        if seq_len < 2:
            raise ValueError(f"seq_len={seq_len} must be >= 2")
        if not (np.isfinite(dirichlet_alpha) and dirichlet_alpha > 0):
            raise ValueError(f"dirichlet_alpha={dirichlet_alpha} must be finite and > 0")

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(d_vocab=self.n_states, n_ctx=self.seq_len)

    def sample(self, rng: np.random.Generator, batch_size: int, split: str = "train") -> dict[str, torch.Tensor]:
        self._check_split(split)
        bs, S, T = batch_size, self.n_states, self.seq_len
        ar = np.arange(bs)
        g = rng.gamma(self.dirichlet_alpha, size=(bs, S, S))
        g[g.sum(axis=2) == 0] = 1.0  # all-underflow rows (tiny alpha): fall back to uniform
        P = g / g.sum(axis=2, keepdims=True)

        # a Markov chain is sequential: loop over positions, vectorised over the batch (cheaper than a
        # parallel prefix scan of the per-step maps, which costs O(B * T * S * log T))
        cum = np.cumsum(P, axis=2)
        u = rng.random((bs, T))
        tokens = np.empty((bs, T), dtype=np.int64)
        tokens[:, 0] = rng.integers(S, size=bs)
        for i in range(1, T):
            row = cum[ar, tokens[:, i - 1]]
            tokens[:, i] = np.minimum((row < u[:, i, None]).sum(axis=1), S - 1)

        targets = np.zeros_like(tokens)
        targets[:, :-1] = tokens[:, 1:]
        loss_mask = np.ones((bs, T), dtype=bool)
        loss_mask[:, -1] = False
        true_lp = np.zeros((bs, T))
        true_lp[:, :-1] = np.log(P[ar[:, None], tokens[:, :-1], tokens[:, 1:]])

        t = torch.from_numpy
        return {
            "tokens": t(tokens),
            "targets": t(targets),
            "loss_mask": t(loss_mask),
            "copy_src": torch.full((bs, T), -1, dtype=torch.long),
            "transition": t(P.astype(np.float32)),
            "transition_logprob": t(true_lp.astype(np.float32)),
            "bayes_logprob": t(self.bayes_logprob(tokens).astype(np.float32)),
        }

    def bayes_logprob(self, tokens: np.ndarray) -> np.ndarray:
        """[B, T] log posterior predictive of ``tokens[:, i + 1]`` from ``tokens[:, : i + 1]`` (0 at the end)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        S, a = self.n_states, self.dirichlet_alpha
        out = np.zeros(tokens.shape)
        cur, nxt = tokens[:, :-1], tokens[:, 1:]
        n_i = _earlier_count(cur)  # transitions out of the current state seen before i
        n_ij = _earlier_count(cur * S + nxt)  # ... that went to the target
        out[:, :-1] = np.log((n_ij + a) / (n_i + S * a))
        return out


def _earlier_count(keys: np.ndarray) -> np.ndarray:
    """[B, n]: how often ``keys[b, i]`` occurs in ``keys[b, :i]`` (rank within a stable sort by key)."""
    bs, n = keys.shape
    flat = (keys + (int(keys.max(initial=0)) + 1) * np.arange(bs)[:, None]).ravel()
    order = np.argsort(flat, kind="stable")
    srt = flat[order]
    out = np.empty(flat.size, dtype=np.int64)
    out[order] = np.arange(flat.size) - np.searchsorted(srt, srt, side="left")
    return out.reshape(bs, n)
