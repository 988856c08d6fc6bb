"""Associative recall / needle retrieval: find a key in a haystack and copy the value after it.

The mechanism under study is the retrieval head (Wu et al. 2024): at the query the model must attend
back to the context occurrence of the queried key's value and copy it, token by token.
"""

from __future__ import annotations

import numpy as np
import torch

from synthetic_data.base import SyntheticTask, TaskSpec


class AssociativeRecall(SyntheticTask):
    """Filler haystack with ``n_pairs`` (key, value...) needles, then ``[QUERY, key, value...]``.

    Token ranges (disjoint): filler ``[0, F)``, keys ``[F, F + n_keys)``, values
    ``[F + n_keys, F + n_keys + n_values)``, query marker ``F + n_keys + n_values`` (``F = n_filler``;
    ``d_vocab`` is one more). The haystack is the first ``C = seq_len - 2 - value_len`` positions:
    uniform filler with the needles (distinct keys, each followed by ``value_len`` uniform value
    tokens) at random non-overlapping places. Then the marker at ``C``, the queried key at ``C + 1``
    and its value tokens at ``C + 2 ..`` (fed in, so longer values are teacher-forced). Next-token
    targets; ``loss_mask`` only on the ``value_len`` answer predictions, i.e. positions
    ``C + 1 .. C + value_len``.

    Extras:

    * ``copy_src`` long [B, T]: at answer position ``C + 1 + m``, the context position of value token
      ``m`` of the queried needle (``tokens[copy_src] == targets``); -1 elsewhere.
    * ``query_pos`` long [B]: position of the queried key (``C + 1``).
    * ``needle_pos`` long [B]: context position of the needle's first value token.
    * ``key_pos`` long [B]: context position of the needle's key (``needle_pos - 1``).
    """

    def __init__(
        self,
        n_keys: int = 32,
        n_values: int = 32,
        n_filler: int = 32,
        n_pairs: int = 4,
        value_len: int = 1,
        seq_len: int = 64,
    ) -> None:
        self.n_keys, self.n_values, self.n_filler = n_keys, n_values, n_filler
        self.n_pairs, self.value_len, self.seq_len = n_pairs, value_len, seq_len
        for name in ("n_values", "n_filler", "n_pairs", "value_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if n_keys < n_pairs:
            raise ValueError(f"n_keys={n_keys} must be >= n_pairs={n_pairs} (keys are distinct within a sequence)")
        need = n_pairs * (1 + value_len) + 2 + value_len
        if seq_len < need:
            raise ValueError(
                f"seq_len={seq_len} must be >= n_pairs*(1+value_len) + 2 + value_len = {need} "
                "(needles, query marker, key and answer)"
            )

    @property
    def context_len(self) -> int:
        return self.seq_len - 2 - self.value_len

    @property
    def query_marker(self) -> int:
        return self.n_filler + self.n_keys + self.n_values

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(d_vocab=self.query_marker + 1, n_ctx=self.seq_len)

    def sample(self, rng: np.random.Generator, batch_size: int, split: str = "train") -> dict[str, torch.Tensor]:
        self._check_split(split)
        bs, T, n, Lv, C = batch_size, self.seq_len, self.n_pairs, self.value_len, self.context_len
        F, K = self.n_filler, self.n_keys
        ar = np.arange(bs)

        # non-overlapping needle starts: n sorted distinct slots among C - n*Lv, each later one shifted by Lv
        slots = np.sort(np.argsort(rng.random((bs, C - n * Lv)), axis=1)[:, :n], axis=1)
        starts = slots + np.arange(n)[None, :] * Lv
        keys = np.argsort(rng.random((bs, K)), axis=1)[:, :n] + F
        values = rng.integers(self.n_values, size=(bs, n, Lv)) + F + K

        tokens = rng.integers(F, size=(bs, T))
        np.put_along_axis(tokens, starts, keys, axis=1)
        vpos = starts[:, :, None] + 1 + np.arange(Lv)[None, None, :]
        np.put_along_axis(tokens, vpos.reshape(bs, -1), values.reshape(bs, -1), axis=1)

        qi = rng.integers(n, size=bs)
        key_pos = starts[ar, qi]
        tokens[:, C] = self.query_marker
        tokens[:, C + 1] = keys[ar, qi]
        tokens[:, C + 2 :] = values[ar, qi]
        tokens = tokens.astype(np.int64)

        targets = np.zeros_like(tokens)
        targets[:, :-1] = tokens[:, 1:]
        loss_mask = np.zeros((bs, T), dtype=bool)
        loss_mask[:, C + 1 : C + 1 + Lv] = True
        copy_src = np.full((bs, T), -1, dtype=np.int64)
        copy_src[:, C + 1 : C + 1 + Lv] = key_pos[:, None] + 1 + np.arange(Lv)[None, :]

        t = torch.from_numpy
        return {
            "tokens": t(tokens),
            "targets": t(targets),
            "loss_mask": t(loss_mask),
            "copy_src": t(copy_src),
            "query_pos": torch.full((bs,), C + 1, dtype=torch.long),
            "needle_pos": t((key_pos + 1).astype(np.int64)),
            "key_pos": t(key_pos.astype(np.int64)),
        }
