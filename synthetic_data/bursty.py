"""Bursty few-shot classification: the task on which in-context learning competes with in-weights learning.

Chan et al. 2022 ("Data distributional properties drive emergent in-context learning"), Reddy 2023
("The mechanistic basis of data dependence and abrupt learning in an in-context classification
task") and Singh et al. 2024 ("What needs to go right for an induction head?"). A sequence is ``N``
(exemplar, label) pairs followed by a query exemplar; the model must output the query's label. When
the query's class is in the context (a *bursty* sequence) the label can be copied from there by an
induction-like circuit; otherwise only knowledge stored in the weights can solve it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from synthetic_data.base import SyntheticTask, TaskSpec
from synthetic_data.features import load_exemplars


GEOMETRIES = ("gaussian", "correlated")


class BurstyClassification(SyntheticTask):
    """Exemplar/label sequences ``[x1, l1, ..., xN, lN, xq]`` (``T = 2N + 1``), query label as target.

    Exemplars are continuous vectors: either Gaussian clusters (class means ``mu_k ~ N(0, I/D)``
    fixed by ``setup(seed)``, exemplar ``(mu_k + eps * eta) / sqrt(1 + eps^2)``, ``eta ~ N(0, I/D)``,
    as in Reddy 2023) or rows of a user array (``exemplars``: path to ``[classes, exemplars, dim]``
    in .npy/.npz/.h5/.safetensors; then ``n_classes`` and ``dim`` are taken from — and overwritten
    by — its shape, and noise with the same formula is added only if ``within_class_noise > 0``).

    ``geometry`` shapes generated exemplars: ``gaussian`` (the default, above; class means nearly
    orthogonal) or ``correlated`` (non-negative, unit-norm ReLU features sharing one direction,
    between-class cosine ~0.6 — the geometry of post-ReLU CNN features such as the paper's
    ResNet-18 embeddings of Omniglot; see ``_shape``).

    Training classes are ``0 .. n_classes - holdout_classes - 1`` with rank-frequency
    ``p(k) ∝ (k + 1) ** -zipf_alpha``; the last ``holdout_classes`` classes never occur in training
    and feed the ``ic_holdout_classes`` eval split. A bursty sequence holds ``N / burstiness`` distinct classes, each
    ``burstiness`` times in random order, one of them the query's class; a non-bursty one (prob.
    ``1 - p_bursty``, train only) draws context and query classes iid from ``p``. Labels are either
    re-drawn per sequence (``relabel=True``, "few-shot relabel": distinct classes get distinct random
    labels, so only in-context learning helps) or fixed (``label(k) = k mod n_labels``).

    Finite exemplar sets and held-out splits (Singh et al. 2024's regime; all off by default):

    * ``exemplars_per_class > 0`` (Gaussian mode): a fixed bank of that many exemplars per class,
      drawn once by ``setup(seed)`` with the formula above; no further noise per draw. A user array
      is such a bank already.
    * ``train_exemplars = k > 0``: training (and every split on training classes) uses exemplars
      ``0 .. k-1`` of each class only; the others feed ``ic_holdout_exemplars``. ``k = 1`` is the
      paper's one fixed exemplar per class: query and context exemplar of a class are identical.
    * ``holdout_label_sets = s > 0``: of the ``C(n_labels, m)`` unordered sets of ``m =
      n_context / burstiness`` labels (pairs in the paper: 10 pairs of 5 labels), ``s`` are held
      out (chosen by the setup seed, so that every label still occurs in training). Each sequence
      draws one allowed set and assigns its labels to its ``m`` classes in random order; eval
      ``ic_holdout_labels`` uses the held-out sets. Needs ``relabel`` and ``p_bursty = 1``.

    Splits: ``train`` as configured; ``ic`` — query class in context, random per-sequence labels,
    classes uniform over the training classes (the training distribution when ``zipf_alpha = 0``);
    ``iw`` — query class (drawn like in training) absent from the context, fixed labels
    ``k mod n_labels``, so only in-weights knowledge solves it (chance ``1 / n_labels`` in relabel
    training, by design). Like ``ic`` but on held-out material, when configured:
    ``ic_holdout_classes`` (the held-out classes, any of their exemplars), ``ic_holdout_exemplars``
    (training classes, held-out exemplars), ``ic_holdout_labels`` (held-out label sets).

    Batch: exemplar positions (even) have token id ``n_labels`` (placeholder), their vector in
    ``features`` [B, T, D] and ``feature_mask`` True; label positions (odd) hold the label id and
    zero features. ``targets`` at every exemplar position is the label that follows it (the query's
    label at ``T - 1``); ``loss_mask`` is the query only, plus every context exemplar position when
    ``loss_on_context_labels`` (Chan et al. score every label prediction, which lets the model also
    learn in-weights from context pairs). Extras:

    * ``copy_src`` long [B, T]: at an exemplar position whose class occurred earlier, the most
      recent earlier *label* position of that class (so ``tokens[copy_src] == targets``); -1 elsewhere.
    * ``query_pos`` long [B]: ``T - 1``.
    * ``match_pos`` long [B]: most recent context label position whose exemplar has the query's
      class, -1 if none (equals ``copy_src[:, T - 1]``).
    * ``match_exemplar_pos`` long [B]: ``match_pos - 1`` (the matching exemplar), or -1.
    * ``classes`` long [B, T]: class of the exemplar at each exemplar position, -1 at label positions.

    ``spec = TaskSpec(d_vocab=n_labels + 1, n_ctx=2N + 1, d_feature=dim, d_out=n_labels)``.
    """

    def __init__(
        self,
        n_classes: int = 1600,
        dim: int = 64,
        within_class_noise: float = 0.1,
        n_context: int = 2,
        burstiness: int = 1,
        n_labels: int = 32,
        p_bursty: float = 1.0,
        zipf_alpha: float = 0.0,
        relabel: bool = True,
        holdout_classes: int = 0,
        exemplars: str | None = None,
        exemplars_key: str = "exemplars",
        loss_on_context_labels: bool = False,
        exemplars_per_class: int = 0,
        train_exemplars: int = 0,
        holdout_label_sets: int = 0,
        geometry: str = "gaussian",
        shared_component: float = 1.0,
    ) -> None:
        self.n_classes, self.dim = n_classes, dim
        self.within_class_noise, self.n_context, self.burstiness = within_class_noise, n_context, burstiness
        self.n_labels, self.p_bursty, self.zipf_alpha = n_labels, p_bursty, zipf_alpha
        self.relabel, self.holdout_classes = relabel, holdout_classes
        self.exemplars, self.exemplars_key = exemplars, exemplars_key
        self.loss_on_context_labels = loss_on_context_labels
        self.exemplars_per_class, self.train_exemplars = exemplars_per_class, train_exemplars
        self.holdout_label_sets = holdout_label_sets
        self.geometry, self.shared_component = geometry, shared_component

        self._bank: np.ndarray | None = None
        if exemplars is not None:
            self._bank = load_exemplars(exemplars, exemplars_key)
            self.n_classes, self.dim = int(self._bank.shape[0]), int(self._bank.shape[2])
        self._validate()
        self._means: np.ndarray | None = None
        self._p: np.ndarray | None = None
        self._cdf: np.ndarray | None = None
        self._table: np.ndarray | None = None  # [classes, exemplars, dim] sampled from, if finite
        self._label_sets: dict[str, np.ndarray] = {}  # "train" / "holdout" -> [sets, m] label ids

    def _validate(self) -> None:
        K, N, B, L, H = self.n_classes, self.n_context, self.burstiness, self.n_labels, self.holdout_classes
        if K < 2:
            raise ValueError(f"n_classes={K} must be >= 2")
        if self.dim < 1:
            raise ValueError(f"dim={self.dim} must be >= 1")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry={self.geometry!r} is not one of {GEOMETRIES}")
        if self.geometry != "gaussian" and self._bank is not None:
            raise ValueError(f"geometry={self.geometry!r} shapes generated exemplars; an exemplars file brings its own geometry (use geometry='gaussian')")
        if not (math.isfinite(self.shared_component) and self.shared_component >= 0):
            raise ValueError(f"shared_component={self.shared_component} must be finite and >= 0")
        if not (math.isfinite(self.within_class_noise) and self.within_class_noise >= 0):
            raise ValueError(f"within_class_noise={self.within_class_noise} must be finite and >= 0")
        if N < 1:
            raise ValueError(f"n_context={N} must be >= 1")
        if B < 1 or N % B:
            raise ValueError(f"burstiness={B} must be >= 1 and divide n_context={N}")
        if L < 2:
            raise ValueError(f"n_labels={L} must be >= 2")
        if not 0.0 <= self.p_bursty <= 1.0:
            raise ValueError(f"p_bursty={self.p_bursty} must be in [0, 1]")
        if not (math.isfinite(self.zipf_alpha) and self.zipf_alpha >= 0):
            raise ValueError(f"zipf_alpha={self.zipf_alpha} must be finite and >= 0")
        m = N // B  # distinct classes in a bursty context
        if not 0 <= H <= K - (m + 1):
            raise ValueError(
                f"holdout_classes={H} must be in [0, {K - m - 1}]: n_classes={K} minus at least "
                f"n_context/burstiness + 1 = {m + 1} training classes (the 'iw' split needs them distinct)"
            )
        if 0 < H < m:
            raise ValueError(f"holdout_classes={H} must be 0 or >= n_context/burstiness={m} (distinct classes of an 'ic' context)")
        if L < m:
            raise ValueError(f"n_labels={L} must be >= n_context/burstiness={m} so distinct context classes get distinct labels")
        if self.relabel and self.p_bursty < 1.0 and L < N + 1:
            raise ValueError(
                f"n_labels={L} must be >= n_context+1={N + 1} with relabel=True and p_bursty={self.p_bursty} < 1 "
                "(a non-bursty sequence can hold n_context+1 distinct classes, each needing its own label)"
            )
        if self.exemplars_per_class < 0 or (self.exemplars_per_class and self._bank is not None):
            raise ValueError(
                f"exemplars_per_class={self.exemplars_per_class} must be >= 0, and 0 with an exemplars file "
                f"(the file fixes the count: {None if self._bank is None else self._bank.shape[1]})"
            )
        E = self.n_exemplars
        if not 0 <= self.train_exemplars <= E:
            hint = " (Gaussian exemplars are unlimited: set exemplars_per_class > 0 for a finite bank)" if E == 0 else ""
            raise ValueError(f"train_exemplars={self.train_exemplars} must be in [0, {E}] (0 = all exemplars){hint}")
        S = self.holdout_label_sets
        if S:
            if not self.relabel or self.p_bursty < 1.0:
                raise ValueError(
                    f"holdout_label_sets={S} needs relabel=True and p_bursty=1 (got relabel={self.relabel}, "
                    f"p_bursty={self.p_bursty}): every sequence must hold exactly n_context/burstiness classes"
                )
            total = math.comb(L, m)
            if total > 100_000:
                raise ValueError(f"holdout_label_sets={S}: C(n_labels={L}, {m}) = {total} label sets is too many to enumerate (max 100000)")
            if not 0 < S < total:
                raise ValueError(f"holdout_label_sets={S} must be in [0, {total - 1}] (C(n_labels={L}, {m}) = {total} sets of {m} labels)")

    # ------------------------------------------------------------------ structure
    @property
    def seq_len(self) -> int:
        return 2 * self.n_context + 1

    @property
    def n_exemplars(self) -> int:
        """Exemplars per class in the bank (0: Gaussian exemplars drawn fresh each time)."""
        return int(self._bank.shape[1]) if self._bank is not None else self.exemplars_per_class

    @property
    def eval_splits(self) -> tuple[str, ...]:  # type: ignore[override]
        splits = ["ic", "iw"]
        if self.holdout_classes:
            splits.append("ic_holdout_classes")
        if 0 < self.train_exemplars < self.n_exemplars:
            splits.append("ic_holdout_exemplars")
        if self.holdout_label_sets:
            splits.append("ic_holdout_labels")
        return tuple(splits)

    @property
    def label_sets(self) -> dict[str, np.ndarray]:
        """``{"train": [sets, m], "holdout": [sets, m]}`` label ids when label sets are held out (after setup)."""
        return dict(self._label_sets)

    @property
    def n_train_classes(self) -> int:
        return self.n_classes - self.holdout_classes

    @property
    def class_probs(self) -> np.ndarray:
        """Training rank-frequency distribution over classes ``0 .. n_train_classes - 1``."""
        p = (np.arange(self.n_train_classes) + 1.0) ** -self.zipf_alpha
        return p / p.sum()

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(d_vocab=self.n_labels + 1, n_ctx=self.seq_len, d_feature=self.dim, d_out=self.n_labels)

    def layout(self) -> list[str]:
        """``[x1, l1, ..., xN, lN, xq]``: exemplars and labels in context, then the query exemplar (scored)."""
        pairs = [p for i in range(1, self.n_context + 1) for p in (f"exemplar {i} (features)", f"label {i} (token)")]
        return [*pairs, "query exemplar (features; its label is the scored target)"]

    def setup(self, seed: int) -> None:
        """Fix from ``seed``: the class means and exemplar bank (Gaussian mode) and the held-out label sets."""
        self._table = self._bank
        if self._bank is None:
            rng = np.random.default_rng([seed, 12345])
            self._means = (rng.standard_normal((self.n_classes, self.dim)) / math.sqrt(self.dim)).astype(np.float32)
            self._shared = (np.random.default_rng([seed, 45678]).standard_normal(self.dim) / math.sqrt(self.dim)).astype(np.float32)
            if self.exemplars_per_class:
                eps, shape = self.within_class_noise, (self.n_classes, self.exemplars_per_class, self.dim)
                eta = np.random.default_rng([seed, 23456]).standard_normal(shape) / math.sqrt(self.dim)
                self._table = self._shape((self._means[:, None] + eps * eta) / math.sqrt(1.0 + eps * eps))
            elif self.geometry != "gaussian":
                self._means = self._shape(self._means)
                if self.within_class_noise > 0:
                    raise ValueError(
                        f"geometry={self.geometry!r} with fresh noise per draw (exemplars_per_class=0, within_class_noise="
                        f"{self.within_class_noise}) is not supported; set exemplars_per_class > 0 for a fixed bank"
                    )
        self._p = self.class_probs
        self._cdf = np.cumsum(self._p)
        self._cdf /= self._cdf[-1]
        self._label_sets = self._split_label_sets(seed) if self.holdout_label_sets else {}

    def _shape(self, u: np.ndarray) -> np.ndarray:
        """Apply the exemplar geometry to pre-activations ``u [..., D]`` (isotropic Gaussian ones).

        ``correlated``: ``ReLU(shared_component * s + u)`` scaled to unit norm, with one shared
        direction ``s ~ N(0, I/D)`` per task seed. Like post-ReLU CNN features, the vectors are
        non-negative and strongly correlated: with ``shared_component = 1`` two class means have
        cosine ~0.61 (the arc-cosine kernel at pre-activation correlation 1/2), against ~0 for
        ``gaussian``, whose vectors are returned unchanged.
        """
        if self.geometry == "gaussian":
            return u.astype(np.float32, copy=False)
        x = np.maximum(self.shared_component * self._shared + u, 0.0)
        return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)

    def _split_label_sets(self, seed: int) -> dict[str, np.ndarray]:
        """Hold out ``holdout_label_sets`` random label sets, redrawing until training still uses every label."""
        m = self.n_context // self.burstiness
        sets = np.array(list(itertools.combinations(range(self.n_labels), m)), dtype=np.int64)
        rng = np.random.default_rng([seed, 34567])
        for _ in range(1000):
            perm = rng.permutation(len(sets))
            held, kept = sets[perm[: self.holdout_label_sets]], sets[perm[self.holdout_label_sets :]]
            if len(np.unique(kept)) == self.n_labels:
                return {"train": kept[np.lexsort(kept.T[::-1])], "holdout": held[np.lexsort(held.T[::-1])]}
        raise ValueError(
            f"holdout_label_sets={self.holdout_label_sets}: no split of the {len(sets)} label sets leaves every "
            f"one of the n_labels={self.n_labels} labels in training; hold out fewer sets"
        )

    # ------------------------------------------------------------------ sampling helpers
    @staticmethod
    def _draw(rng: np.random.Generator, cdf: np.ndarray, size: int | tuple[int, ...]) -> np.ndarray:
        """iid draws from the distribution with cumulative ``cdf`` (inverse-CDF, O(log K) each)."""
        return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), cdf.size - 1).astype(np.int64)

    @classmethod
    def _distinct(
        cls, rng: np.random.Generator, bs: int, m: int, p: np.ndarray, exclude: np.ndarray | None = None
    ) -> np.ndarray:
        """[bs, m] distinct indices drawn successively without replacement ∝ ``p`` (never ``exclude``).

        Each step redraws conflicting rows (exact: a rejected draw is a draw from ``p`` renormalised
        over the allowed classes); rows still conflicting after a few rounds — only when ``p`` is very
        concentrated — are drawn from the explicitly renormalised distribution.
        """
        cdf = np.cumsum(p)
        cdf /= cdf[-1]
        out = np.empty((bs, m), dtype=np.int64)
        taken = np.empty((bs, 0), dtype=np.int64) if exclude is None else exclude.reshape(bs, 1).astype(np.int64)
        for s in range(m):
            x = cls._draw(rng, cdf, bs)
            bad = (x[:, None] == taken).any(axis=1)
            for _ in range(16):
                if not bad.any():
                    break
                idx = np.flatnonzero(bad)
                x[idx] = cls._draw(rng, cdf, idx.size)
                bad[idx] = (x[idx, None] == taken[idx]).any(axis=1)
            if bad.any():
                idx = np.flatnonzero(bad)
                w = np.broadcast_to(p, (idx.size, p.size)).copy()
                np.put_along_axis(w, taken[idx], 0.0, axis=1)
                c = np.cumsum(w, axis=1)
                u = rng.random(idx.size) * c[:, -1]
                x[idx] = np.minimum((c <= u[:, None]).sum(axis=1), p.size - 1)
            out[:, s] = x
            taken = np.concatenate([taken, x[:, None]], axis=1)
        return out

    def _layout(self, rng: np.random.Generator, cls_set: np.ndarray) -> np.ndarray:
        """Each of the m classes of ``cls_set`` [bs, m] ``burstiness`` times, shuffled per row -> [bs, N]."""
        ctx = np.repeat(cls_set, self.burstiness, axis=1)
        order = np.argsort(rng.random(ctx.shape), axis=1)
        return np.take_along_axis(ctx, order, axis=1)

    def _random_labels(self, rng: np.random.Generator, classes: np.ndarray, label_sets: str = "train") -> np.ndarray:
        """Distinct random labels for the distinct classes of each row of ``classes`` [bs, n].

        Without held-out label sets any labels; with them, a set drawn from ``label_sets``
        (``"train"`` or ``"holdout"``), its labels in random order.
        """
        bs, n = classes.shape
        eq = classes[:, :, None] == classes[:, None, :]
        first = eq.argmax(axis=2)  # first position holding the same class
        is_first = first == np.arange(n)[None, :]
        rank = np.cumsum(is_first, axis=1) - 1  # index of each class among the row's distinct classes
        slot = np.take_along_axis(rank, first, axis=1)
        if not self._label_sets:
            perm = np.argsort(rng.random((bs, self.n_labels)), axis=1)
            return np.take_along_axis(perm, slot, axis=1)
        sets = self._label_sets[label_sets]
        chosen = sets[rng.integers(len(sets), size=bs)]  # [bs, m]
        order = np.argsort(rng.random(chosen.shape), axis=1)
        return np.take_along_axis(np.take_along_axis(chosen, order, axis=1), slot, axis=1)

    def _exemplar_range(self, exemplars: str) -> tuple[int, int]:
        """Bank indices ``[lo, hi)`` of ``exemplars``: "train", "holdout" or "all"."""
        E, k = self.n_exemplars, self.train_exemplars or self.n_exemplars
        return {"train": (0, k), "holdout": (k, E), "all": (0, E)}[exemplars]

    def _vectors(self, rng: np.random.Generator, classes: np.ndarray, exemplars: str = "train") -> np.ndarray:
        eps = self.within_class_noise
        if self._table is None:
            x = self._means[classes]
        else:
            lo, hi = self._exemplar_range(exemplars)
            x = self._table[classes, rng.integers(lo, hi, size=classes.shape)]
            if eps <= 0 or self._bank is None:  # a generated bank already holds its noise
                return x.astype(np.float32, copy=False)
        eta = rng.standard_normal((*classes.shape, self.dim)) / math.sqrt(self.dim)
        return ((x + eps * eta) / math.sqrt(1.0 + eps * eps)).astype(np.float32)

    # ------------------------------------------------------------------ sampling
    def sample(self, rng: np.random.Generator, batch_size: int, split: str = "train") -> dict[str, torch.Tensor]:
        self._check_split(split)
        if self._p is None:
            raise RuntimeError("BurstyClassification.setup(seed) must be called before sample()")
        bs, N, L = batch_size, self.n_context, self.n_labels
        m = N // self.burstiness
        Kt = self.n_train_classes

        if split == "train":
            q = self._draw(rng, self._cdf, bs)
            is_bursty = rng.random(bs) < self.p_bursty
            ctx = np.empty((bs, N), dtype=np.int64)
            if is_bursty.any():
                others = self._distinct(rng, bs, m - 1, self._p, exclude=q)
                ctx_b = self._layout(rng, np.concatenate([q[:, None], others], axis=1))
                ctx[is_bursty] = ctx_b[is_bursty]
            if not is_bursty.all():
                ctx_nb = self._draw(rng, self._cdf, (bs, N))
                ctx[~is_bursty] = ctx_nb[~is_bursty]
            random_labels = self.relabel
        elif split == "iw":
            q = self._draw(rng, self._cdf, bs)
            ctx = self._layout(rng, self._distinct(rng, bs, m, self._p, exclude=q))
            random_labels = False
        else:  # "ic" and its held-out variants: the query's class in context, classes uniform over a pool
            offset, pool = (Kt, self.holdout_classes) if split == "ic_holdout_classes" else (0, Kt)
            cls_set = self._distinct(rng, bs, m, np.full(pool, 1.0 / pool)) + offset
            q = cls_set[np.arange(bs), rng.integers(m, size=bs)]
            ctx = self._layout(rng, cls_set)
            random_labels = True

        q = q.astype(np.int64)
        ctx = ctx.astype(np.int64)
        allc = np.concatenate([ctx, q[:, None]], axis=1)  # [bs, N+1], query last
        label_sets = "holdout" if split == "ic_holdout_labels" else "train"
        labels = self._random_labels(rng, allc, label_sets) if random_labels else allc % L
        exemplars = {"ic_holdout_exemplars": "holdout", "ic_holdout_classes": "all"}.get(split, "train")
        x = self._vectors(rng, allc, exemplars)
        return self._assemble(allc, labels, x)

    def _assemble(self, allc: np.ndarray, labels: np.ndarray, x: np.ndarray) -> dict[str, torch.Tensor]:
        bs, N, L, T = allc.shape[0], self.n_context, self.n_labels, self.seq_len
        ex_pos = np.arange(0, T, 2)  # N+1 exemplar positions, query last
        lab_pos = np.arange(1, T, 2)

        tokens = np.full((bs, T), L, dtype=np.int64)
        tokens[:, lab_pos] = labels[:, :N]
        targets = np.zeros((bs, T), dtype=np.int64)
        targets[:, ex_pos] = labels
        loss_mask = np.zeros((bs, T), dtype=bool)
        loss_mask[:, T - 1] = True
        if self.loss_on_context_labels:
            loss_mask[:, ex_pos] = True
        features = np.zeros((bs, T, self.dim), dtype=np.float32)
        features[:, ex_pos] = x
        feature_mask = np.zeros((bs, T), dtype=bool)
        feature_mask[:, ex_pos] = True
        classes = np.full((bs, T), -1, dtype=np.int64)
        classes[:, ex_pos] = allc

        # most recent earlier context item (j < i, j < N) of the same class, for every exemplar i
        j = np.arange(N)
        same = (allc[:, :, None] == allc[:, None, :N]) & (j[None, None, :] < np.arange(N + 1)[None, :, None])
        last = np.where(same, j[None, None, :], -1).max(axis=2)  # [bs, N+1]
        src = np.where(last >= 0, 2 * last + 1, -1)
        copy_src = np.full((bs, T), -1, dtype=np.int64)
        copy_src[:, ex_pos] = src
        match_pos = src[:, N]

        t = torch.from_numpy
        return {
            "tokens": t(tokens),
            "targets": t(targets),
            "loss_mask": t(loss_mask),
            "features": t(features),
            "feature_mask": t(feature_mask),
            "copy_src": t(copy_src),
            "query_pos": torch.full((bs,), T - 1, dtype=torch.long),
            "match_pos": t(match_pos.copy()),
            "match_exemplar_pos": t(np.where(match_pos >= 0, match_pos - 1, -1)),
            "classes": t(classes),
        }
