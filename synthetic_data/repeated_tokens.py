"""Repeated random token segments: the canonical induction-head task (Olsson et al. 2022).

Once a segment has been seen, every later token is predictable by "find the previous occurrence of
the current token and copy what followed it" — the induction-head algorithm — and by nothing else,
since tokens are uniform random and the repeat start and period vary per sequence.
"""

from __future__ import annotations

import numpy as np
import torch

from synthetic_data.base import SyntheticTask, TaskSpec


class RepeatedTokens(SyntheticTask):
    """``[random prefix | segment S | S S ...]`` truncated to ``seq_len``, next-token targets.

    Per sequence: ``period ~ U[min_period, max_period]``, prefix length ``~ U[0, max_prefix]``
    clipped so one full repeat fits (``prefix + 2 * period <= seq_len``; ``max_prefix=None`` means
    as long as fits); prefix and segment tokens uniform over ``vocab_size`` (segment tokens
    distinct within the segment if ``distinct_segment``, which makes "the previous occurrence"
    unique). ``targets[:, i] = tokens[:, i + 1]``; ``loss_mask`` is every position but the last.

    Extras:

    * ``copy_src`` long [B, T]: ``i + 1 - period`` where token ``i + 1`` is a repeat
      (``i + 1 >= repeat_start``), so ``tokens[copy_src[i]] == targets[i]``; -1 elsewhere.
    * ``period`` long [B]: segment length.
    * ``repeat_start`` long [B]: first position of the second copy (``prefix_len + period``).
    * ``prefix_len`` long [B]: length of the random prefix (start of the first copy).
    """

    def __init__(
        self,
        vocab_size: int = 64,
        seq_len: int = 64,
        min_period: int = 4,
        max_period: int = 24,
        max_prefix: int | None = None,
        distinct_segment: bool = False,
    ) -> None:
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.min_period, self.max_period = min_period, max_period
        self.max_prefix, self.distinct_segment = max_prefix, distinct_segment
        if vocab_size < 2:
            raise ValueError(f"vocab_size={vocab_size} must be >= 2")
        if not 1 <= min_period <= max_period:
            raise ValueError(f"need 1 <= min_period <= max_period, got min_period={min_period}, max_period={max_period}")
        if seq_len < 2 * max_period:
            raise ValueError(f"seq_len={seq_len} must be >= 2 * max_period={2 * max_period} so a full repeat fits")
        if max_prefix is not None and max_prefix < 0:
            raise ValueError(f"max_prefix={max_prefix} must be >= 0 or None")
        if distinct_segment and vocab_size < max_period:
            raise ValueError(f"distinct_segment needs vocab_size={vocab_size} >= max_period={max_period}")

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(d_vocab=self.vocab_size, n_ctx=self.seq_len)

    def sample(self, rng: np.random.Generator, batch_size: int, split: str = "train") -> dict[str, torch.Tensor]:
        self._check_split(split)
        bs, T, V = batch_size, self.seq_len, self.vocab_size
        period = rng.integers(self.min_period, self.max_period + 1, size=bs)
        room = T - 2 * period  # longest prefix that still leaves a full second copy
        if self.max_prefix is not None:
            room = np.minimum(room, self.max_prefix)
        prefix = rng.integers(0, room + 1).astype(np.int64)
        start = prefix + period

        pos = np.arange(T)[None, :]
        raw = rng.integers(V, size=(bs, T))
        if self.distinct_segment:
            seg = np.argsort(rng.random((bs, V)), axis=1)[:, : self.max_period]
            off = pos - prefix[:, None]
            in_seg = (off >= 0) & (off < period[:, None])
            vals = np.take_along_axis(seg, np.clip(off, 0, self.max_period - 1), axis=1)
            raw = np.where(in_seg, vals, raw)
        src = np.where(pos >= start[:, None], prefix[:, None] + (pos - prefix[:, None]) % period[:, None], pos)
        tokens = np.take_along_axis(raw, src, axis=1).astype(np.int64)

        targets = np.zeros_like(tokens)
        targets[:, :-1] = tokens[:, 1:]
        loss_mask = np.ones((bs, T), dtype=bool)
        loss_mask[:, -1] = False
        nxt = pos + 1
        copy_src = np.where((nxt >= start[:, None]) & (nxt < T), nxt - period[:, None], -1).astype(np.int64)

        t = torch.from_numpy
        return {
            "tokens": t(tokens),
            "targets": t(targets),
            "loss_mask": t(loss_mask),
            "copy_src": t(copy_src),
            "period": t(period.astype(np.int64)),
            "repeat_start": t(start.astype(np.int64)),
            "prefix_len": t(prefix),
        }
