"""Per-head scores that tell which attention heads do what, computed from real activations.

Every score is a pure function returning ``[n_layers, n_heads]`` (or ``[n_heads]`` when given a
single layer's pattern), vectorised over heads, computed without gradients, in float32.

Pattern arguments (``pattern``) accept either

* one layer: a tensor ``[batch, head, q_pos, k_pos]`` -> the score has shape ``[n_heads]``;
* all layers: a tensor ``[batch, layer, head, q_pos, k_pos]`` or a sequence of per-layer
  ``[batch, head, q_pos, k_pos]`` tensors (e.g. :func:`patterns_from_cache`) -> ``[n_layers, n_heads]``.

Scores are means over the positions a definition selects, pooled over the whole batch (every
selected ``(batch, position)`` entry weighs the same). A score with no selected position is NaN,
so "not measurable on this batch" never reads as 0.

Batch conventions (see ``synthetic_data/base.py``): ``copy_src[b, i]`` is the earlier context
position holding the token the model should copy when predicting at ``i`` (``-1`` when none);
the bursty exemplar-label task adds ``query_pos``, ``match_pos``, ``match_exemplar_pos`` and a
``feature_mask`` marking exemplar positions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from synthetic_data.base import model_inputs

PatternInput = torch.Tensor | Sequence[torch.Tensor]

__all__ = [
    "all_head_scores",
    "attention_sink_mass",
    "copying_eigen_score",
    "copying_score",
    "induction_score",
    "induction_strength",
    "label_to_exemplar_attention",
    "patterns_from_cache",
    "prefix_matching_score",
    "previous_token_score",
    "query_to_exemplar_attention",
    "query_to_match_attention",
    "repeated_tokens_induction_score",
    "retrieval_score",
    "retrieval_score_given_correct",
    "teacher_forced_copy_score",
]


# --------------------------------------------------------------------------- helpers


def _layers(pattern: PatternInput) -> tuple[list[torch.Tensor], bool]:
    """Split a pattern argument into per-layer ``[B, H, T, T]`` tensors; flag a single layer."""
    if isinstance(pattern, torch.Tensor):
        if pattern.dim() == 4:
            return [pattern], True
        if pattern.dim() == 5:
            return list(pattern.unbind(1)), False
        raise ValueError(
            f"pattern must be [batch, head, q_pos, k_pos] or [batch, layer, head, q_pos, k_pos], got shape {tuple(pattern.shape)}"
        )
    layers = list(pattern)
    if not layers:
        raise ValueError("pattern: empty sequence of layers")
    for i, p in enumerate(layers):
        if p.dim() != 4:
            raise ValueError(f"pattern[{i}] must be [batch, head, q_pos, k_pos], got shape {tuple(p.shape)}")
    return layers, False


def _per_layer(pattern: PatternInput, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn([B,H,T,T] float32) -> [H]`` to each layer and stack to ``[L, H]`` (or ``[H]``)."""
    layers, single = _layers(pattern)
    with torch.no_grad():
        out = torch.stack([fn(p.detach().float()) for p in layers])
    return out[0] if single else out


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [B, H, N]`` over the ``(b, n)`` entries where ``mask [B, N]`` -> ``[H]`` (NaN if none)."""
    m = mask.to(device=values.device, dtype=torch.bool)[:, None, :].expand_as(values)
    total = torch.where(m, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(dim=(0, 2))
    count = mask.to(device=values.device, dtype=torch.bool).sum().to(values.dtype)
    return total / count  # 0/0 -> NaN on purpose


def _gather_k(p: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
    """``p[b, h, i, k_index[b, i]]`` for ``p [B,H,T,T]`` and ``k_index [B,T]`` (clamped to >=0) -> ``[B,H,T]``."""
    b, h, t, _ = p.shape
    idx = k_index.to(p.device).clamp(min=0)[:, None, :, None].expand(b, h, t, 1)
    return p.gather(-1, idx).squeeze(-1)


def patterns_from_cache(cache: Mapping[str, torch.Tensor], n_layers: int) -> list[torch.Tensor]:
    """The per-layer patterns ``[layer{l}.pattern for l < n_layers]`` of a ``run_with_cache`` cache."""
    return [cache[f"layer{l}.pattern"] for l in range(n_layers)]


# --------------------------------------------------------------------------- pattern scores


def previous_token_score(pattern: PatternInput, mask: torch.Tensor | None = None) -> torch.Tensor:
    """How much each head attends to the previous token (the first half of an induction circuit).

    Definition: mean of ``pattern[b, h, i, i-1]`` over query positions ``i >= 1`` (and, if
    ``mask [B, T]`` is given, only where ``mask[b, i]``). A head attending exactly to ``i-1`` scores 1.
    """

    def fn(p: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = p.shape
        vals = p.diagonal(offset=-1, dim1=-2, dim2=-1)  # [B, H, T-1]: entry i-1 is p[i, i-1]
        m = torch.ones(b, t - 1, dtype=torch.bool, device=p.device) if mask is None else mask[:, 1:]
        return _masked_mean(vals, m)

    return _per_layer(pattern, fn)


def induction_score(pattern: PatternInput, copy_src: torch.Tensor) -> torch.Tensor:
    """How much each head attends to the source token it should copy from (induction / retrieval).

    Definition: mean of ``pattern[b, h, i, copy_src[b, i]]`` over positions with ``copy_src >= 0``.
    Note ``copy_src`` points from the position *predicting* a token to its source; on repeated
    random tokens that selects rows ``repeat_start - 1 .. T - 2``, which is not the literature's
    induction score: use :func:`repeated_tokens_induction_score` there.
    """

    def fn(p: torch.Tensor) -> torch.Tensor:
        return _masked_mean(_gather_k(p, copy_src), copy_src.to(p.device) >= 0)

    return _per_layer(pattern, fn)


def repeated_tokens_induction_score(pattern: PatternInput, repeat_start: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
    """The induction score of Olsson et al. (2022) / TransformerLens on repeated random tokens.

    Definition: mean of ``pattern[b, h, i, i - period[b] + 1]`` over query rows ``i`` in the repeat
    (``i >= repeat_start[b]``): the attention from a repeated token to the token that followed its
    previous occurrence. A perfect induction head scores 1.
    """

    def fn(p: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = p.shape
        i = torch.arange(t, device=p.device)[None, :]
        rows = i >= repeat_start.to(p.device).long()[:, None]
        key = torch.where(rows, i - period.to(p.device).long()[:, None] + 1, torch.full_like(i, -1))
        return _masked_mean(_gather_k(p, key), rows & (key >= 0))

    return _per_layer(pattern, fn)


def prefix_matching_score(pattern: PatternInput, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Olsson et al. (2022) prefix matching: attention to tokens that *followed* earlier copies of the current token.

    Definition: for query ``i``, ``s_i = sum_j pattern[b, h, i, j]`` over keys ``1 <= j < i`` with
    ``tokens[b, j-1] == tokens[b, i]``; the score is the mean of ``s_i`` over the positions having at
    least one such ``j`` (and ``mask[b, i]`` if given). Token-based, so it needs no task metadata;
    on tasks with placeholder tokens (feature positions) pass ``mask`` to exclude those queries.
    """
    tokens = tokens.long()

    def fn(p: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = p.shape
        tok = tokens.to(p.device)
        eq = tok[:, :, None] == tok[:, None, :]  # eq[b, i, m]: tokens[i] == tokens[m]
        match = torch.zeros(b, t, t, dtype=torch.bool, device=p.device)
        match[:, :, 1:] = eq[:, :, :-1]  # match[b, i, j] = tokens[i] == tokens[j-1]
        match &= torch.ones(t, t, dtype=torch.bool, device=p.device).tril(diagonal=-1)  # j < i
        vals = torch.einsum("bhij,bij->bhi", p, match.to(p.dtype))
        valid = match.any(dim=-1)
        if mask is not None:
            valid &= mask.to(device=p.device, dtype=torch.bool)
        return _masked_mean(vals, valid)

    return _per_layer(pattern, fn)


def _copy_steps(tokens: torch.Tensor, copy_src: torch.Tensor, predictions: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(copy step [B, T], copied correctly [B, T])`` for the retrieval scores."""
    if predictions.dim() == 3:
        predictions = predictions.argmax(dim=-1)
    copy_src = copy_src.long()
    copied = tokens.long().gather(1, copy_src.clamp(min=0))
    steps = loss_mask.bool() & (copy_src >= 0)
    return steps, steps & (predictions.to(copied.device) == copied)


def teacher_forced_copy_score(
    pattern: PatternInput,
    tokens: torch.Tensor,
    copy_src: torch.Tensor,
    predictions: torch.Tensor,
    loss_mask: torch.Tensor,
) -> torch.Tensor:
    """Teacher-forced copy-attention score: how often the head's top attention sits on the source of a correct copy.

    Definition: over *all* copy steps of *every* trial (positions where ``loss_mask`` and
    ``copy_src >= 0``), on one teacher-forced forward, the fraction at which the model predicts the
    copied token (``prediction == tokens[b, copy_src[b, i]]``; label tokens are class ids on the
    classifier task) *and* ``argmax_k pattern[b, h, i, k] == copy_src[b, i]`` (the source
    *position*). It is a cheap training-time proxy, not Wu et al.'s (2024) retrieval score, which
    decodes greedily, matches the attended *token* and keeps only trials with > 50 % recall:
    :func:`clamp.metrics.retrieval.wu_retrieval_score`. (A perfect head with half the trials
    right scores 0.5 here and 0.875 there for 8-token needles.) ``predictions`` is ``[B, T]`` ids
    or ``[B, T, d_out]`` logits (argmax taken). Logged as ``*/teacher_forced_copy`` by the emergence probe
    (``*/retrieval`` in runs before issue 20.3).
    """
    steps, correct = _copy_steps(tokens, copy_src, predictions, loss_mask)

    def fn(p: torch.Tensor) -> torch.Tensor:
        hit = (p.argmax(dim=-1) == copy_src.long().to(p.device)[:, None, :]) & correct.to(p.device)[:, None, :]
        return _masked_mean(hit.to(p.dtype), steps)

    return _per_layer(pattern, fn)


retrieval_score = teacher_forced_copy_score  # the old name, kept for existing callers: it is not Wu et al.'s score


def retrieval_score_given_correct(
    pattern: PatternInput,
    tokens: torch.Tensor,
    copy_src: torch.Tensor,
    predictions: torch.Tensor,
    loss_mask: torch.Tensor,
) -> torch.Tensor:
    """The retrieval score restricted to correctly predicted copy steps (Wu et al.'s score / accuracy).

    Definition: over copy steps that the model predicts correctly (see :func:`teacher_forced_copy_score`), the
    fraction where ``argmax_k pattern[b, h, i, k] == copy_src[b, i]``: which head's top attention sits
    on the source whenever the copy succeeds, independent of how often it succeeds. NaN if none does.
    """
    _, correct = _copy_steps(tokens, copy_src, predictions, loss_mask)

    def fn(p: torch.Tensor) -> torch.Tensor:
        hit = (p.argmax(dim=-1) == copy_src.long().to(p.device)[:, None, :]).to(p.dtype)  # [B, H, T]
        return _masked_mean(hit, correct)

    return _per_layer(pattern, fn)


def query_to_match_attention(pattern: PatternInput, query_pos: torch.Tensor, match_pos: torch.Tensor) -> torch.Tensor:
    """Attention from the query to the context item that answers it (the retrieval step of the bursty task).

    Definition: mean over sequences with ``match_pos >= 0`` of ``pattern[b, h, query_pos[b], match_pos[b]]``.
    Pass ``match_pos`` (the matching label) or ``match_exemplar_pos`` (its exemplar; see
    :func:`query_to_exemplar_attention`).
    """

    def fn(p: torch.Tensor) -> torch.Tensor:
        b, h, _, t = p.shape
        q = query_pos.to(p.device).long()[:, None, None, None].expand(b, h, 1, t)
        rows = p.gather(2, q).squeeze(2)  # [B, H, k_pos]
        m = match_pos.to(p.device).long()
        vals = rows.gather(-1, m.clamp(min=0)[:, None, None].expand(b, h, 1))  # [B, H, 1]
        return _masked_mean(vals, (m >= 0)[:, None])

    return _per_layer(pattern, fn)


def query_to_exemplar_attention(pattern: PatternInput, query_pos: torch.Tensor, match_exemplar_pos: torch.Tensor) -> torch.Tensor:
    """Attention from the query to the exemplar (not the label) of the matching class: :func:`query_to_match_attention` with ``match_exemplar_pos``."""
    return query_to_match_attention(pattern, query_pos, match_exemplar_pos)


def induction_strength(pattern: PatternInput, query_pos: torch.Tensor, classes: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """Singh et al. (2024) induction strength: query -> correct label minus query -> other label.

    Definition: per sequence, the attention from the query (``query_pos``) to the context labels
    whose exemplar has the query's class, minus its attention to the labels of other classes (a
    label is a non-feature position right after a feature position; its class is ``classes`` of
    that exemplar). The mean over sequences having both kinds of label; in ``[-1, 1]``, and a head
    splitting its attention 50/50 between the two labels scores 0.
    """
    fm = feature_mask.bool()
    b_, t = fm.shape
    qpos = query_pos.long().to(fm.device)
    is_label = torch.zeros_like(fm)
    is_label[:, 1:] = ~fm[:, 1:] & fm[:, :-1]
    is_label &= torch.arange(t, device=fm.device)[None, :] < qpos[:, None]
    label_class = torch.full_like(classes.long(), -1)
    label_class[:, 1:] = classes.long()[:, :-1]
    q_class = classes.long().gather(1, qpos[:, None])
    correct = is_label & (label_class == q_class)
    other = is_label & (label_class != q_class)
    sign = correct.float() - other.float()  # [B, T]: +1 correct label, -1 other label
    valid = correct.any(1) & other.any(1)

    def fn(p: torch.Tensor) -> torch.Tensor:
        b, h, _, k = p.shape
        rows = p.gather(2, qpos.to(p.device)[:, None, None, None].expand(b, h, 1, k)).squeeze(2)  # [B, H, k_pos]
        vals = (rows * sign.to(p.device)[:, None, :]).sum(-1, keepdim=True)  # [B, H, 1]
        return _masked_mean(vals, valid.to(p.device)[:, None])

    return _per_layer(pattern, fn)


def label_to_exemplar_attention(pattern: PatternInput, feature_mask: torch.Tensor) -> torch.Tensor:
    """Previous-token signature in the exemplar-label task: labels attending to their own exemplar.

    Definition: :func:`previous_token_score` restricted to label positions, i.e. positions ``i >= 1``
    with ``feature_mask[b, i]`` False and ``feature_mask[b, i-1]`` True.
    """
    fm = feature_mask.bool()
    label = torch.zeros_like(fm)
    label[:, 1:] = ~fm[:, 1:] & fm[:, :-1]
    return previous_token_score(pattern, label)


def attention_sink_mass(pattern: PatternInput, mask: torch.Tensor | None = None) -> torch.Tensor:
    """How much attention each head parks on position 0 (an attention sink / "no-op" head).

    Definition: mean of ``pattern[b, h, i, 0]`` over query positions ``i >= 1`` (and ``mask[b, i]`` if given).
    """

    def fn(p: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = p.shape
        m = torch.ones(b, t - 1, dtype=torch.bool, device=p.device) if mask is None else mask[:, 1:]
        return _masked_mean(p[:, :, 1:, 0], m)

    return _per_layer(pattern, fn)


# --------------------------------------------------------------------------- weight / model scores


def _ov_weights(model) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_V [L, H, d_model, d_head]`` and ``W_O [L, H, d_head, d_model]`` of every block (any site model)."""
    return model.ov_weights()


def copying_eigen_score(model) -> torch.Tensor:
    """Olsson et al. (2022) copying score from weights: is the head's OV circuit token -> same token?

    ``M_h = W_E W_V^h W_O^h W_U`` maps an attended token to the logits it raises (row convention).
    The score is ``sum(Re(lambda)) / sum(|lambda|)`` over the eigenvalues of ``M_h``, in ``[-1, 1]``:
    1 for a pure copier (positive eigenvalues, e.g. identity), -1 for an anti-copier (minus identity).

    * When ``d_out != d_vocab`` (the classifier head of the bursty task, whose label tokens are token
      ids ``0..d_out-1``), rows of ``W_E`` are restricted to the first ``d_out`` token ids so that
      ``M_h`` is square (``n = min(d_vocab, d_out)``; columns likewise).
    * LayerNorms and biases are ignored (the usual linear approximation of the OV circuit).
    * The non-zero eigenvalues of ``(W_E W_V)(W_O W_U)`` equal those of ``(W_O W_U)(W_E W_V)``, so the
      smaller of the two products (``[n, n]`` or ``[d_head, d_head]``) is diagonalised, in float64.

    Returns ``[n_layers, n_heads]``; NaN for a head whose OV circuit is zero or not finite.
    """
    cfg = model.cfg
    n = min(cfg.d_vocab, cfg.d_out)
    with torch.no_grad():
        w_e = model.W_E.weight[:n].double()  # [n, dm]
        w_u = model.W_U[:, :n].double()  # [dm, n]
        w_v, w_o = (w.double() for w in _ov_weights(model))
        a = w_e @ w_v  # [L, H, n, dh]
        b = w_o @ w_u  # [L, H, dh, n]
        m = a @ b if n <= cfg.d_head else b @ a
        score = torch.full(m.shape[:-2], float("nan"), dtype=torch.float64, device=m.device)
        # LAPACK must never see a non-finite matrix: oneMKL's eigvals segfaults on one (Intel CPUs),
        # so a diverged head gets NaN here and the divergence check reports it instead of a crash.
        finite = torch.isfinite(m).flatten(-2).all(-1)  # [L, H]
        if finite.any():
            ev = torch.linalg.eigvals(m[finite])  # [n_finite, k] complex
            score[finite] = ev.real.sum(-1) / ev.abs().sum(-1)
    return score.float()


def _cache_names(model) -> list[str]:
    n = model.cfg.n_layers
    names = [f"layer{l}.pattern" for l in range(n)] + [f"layer{l}.z" for l in range(n)]
    return names + [f"layer{n - 1}.resid_post"]


def forward_with_cache(model, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One no-grad forward caching every site the scores need: ``(logits, cache)``."""
    dev = next(model.parameters()).device
    inputs = [None if a is None else a.to(dev) for a in model_inputs(batch)]
    with torch.no_grad():
        # a probe without features (repeated / random tokens) is token-only on purpose
        return model.run_with_cache(*inputs, names=_cache_names(model), allow_missing_features="features" not in batch)


def copying_score(model, batch: Mapping[str, torch.Tensor], cache: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Behavioural copying: does the head's output raise the logit of the token it attends to most?

    For head ``(l, h)`` at position ``i`` of the batch:

    * source ``s = argmax_k pattern[b, h, i, k]`` and its token ``t = tokens[b, s]``;
    * the head's direct logit effect ``d = LN_frozen(z[b, h, i] @ W_O^h) @ W_U`` (``[d_out]``), where
      ``LN_frozen`` is the final LayerNorm linearised at this forward: centre, divide by the std of
      the final residual stream (``layer{L-1}.resid_post``, eps included) and multiply by its weight;
      biases are dropped (identity when ``normalization='none'``; RMSNorm scales without centring);
    * value ``d[t] - mean_{j != t} d[j]`` (``j`` over all ``d_out`` logits).

    The score is the mean of that value over positions with ``loss_mask`` whose source token is a
    logit (``t < d_out``; on the classifier task only label tokens count) and is not a feature
    position. Positive = copier, negative = anti-copier (suppression), in logit units; NaN if no
    position qualifies. ``cache`` (from ``run_with_cache`` with every ``layer{l}.pattern``,
    ``layer{l}.z`` and ``layer{L-1}.resid_post``) avoids a second forward.
    """
    cfg = model.cfg
    if cache is None:
        _, cache = forward_with_cache(model, batch)
    d_out = cfg.d_out
    with torch.no_grad():
        dev = cache["layer0.z"].device
        tokens = batch["tokens"].to(dev).long()
        valid = batch["loss_mask"].to(dev).bool()
        # d[t] - mean_{j != t} d[j] = res . u_t with u_t = W_U[:, t] - (sum_j W_U[:, j] - W_U[:, t]) / (d_out - 1);
        # the frozen norm's centring, gamma and scale move onto u_t and outside the dot product, so the
        # score is scale[b, t] * z[b, h, t] . (W_O^h @ u~_t): no [batch, head, pos, d_model] intermediate
        w_u = model.W_U.detach().float().to(dev)  # [dm, d_out]
        u = w_u - (w_u.sum(dim=1, keepdim=True) - w_u) / max(d_out - 1, 1)  # [dm, d_out]
        norm = cfg.normalization
        scale = None
        if norm in ("layernorm", "rmsnorm"):
            resid = cache[f"layer{cfg.n_layers - 1}.resid_post"].float()
            ln = model.ln_final
            eps = getattr(ln, "eps", None) or getattr(ln, "variance_epsilon")  # nn.LayerNorm / Hugging Face RMSNorm
            spread = resid.var(dim=-1, unbiased=False) if norm == "layernorm" else resid.pow(2).mean(-1)
            scale = (spread + eps).rsqrt()  # [B, T]
            if ln.weight is not None:
                u = u * ln.weight.detach().float().to(dev)[:, None]
            if norm == "layernorm":
                u = u - u.mean(dim=0, keepdim=True)
        fmask = batch.get("feature_mask")
        fmask = None if fmask is None else fmask.to(dev).bool()
        out = []
        w_o_all = _ov_weights(model)[1].detach().float().to(dev)  # [L, H, dh, dm]
        for l in range(cfg.n_layers):
            src = cache[f"layer{l}.pattern"].float().argmax(dim=-1)  # [B, H, T]
            src_tok = tokens.gather(1, src.flatten(1)).view_as(src)  # [B, H, T]
            ok = valid[:, None, :] & (src_tok < d_out)
            if fmask is not None:
                ok &= ~fmask.gather(1, src.flatten(1)).view_as(src)
            readout = (w_o_all[l] @ u).transpose(1, 2)  # [H, d_out, dh]: head h's z -> its value for target t
            heads = torch.arange(readout.shape[0], device=dev)[None, :, None]
            val = (cache[f"layer{l}.z"].float() * readout[heads, src_tok.clamp(max=d_out - 1)]).sum(-1)  # [B, H, T]
            if scale is not None:
                val = val * scale[:, None, :]
            val = torch.where(ok, val, torch.zeros((), device=dev))
            out.append(val.sum(dim=(0, 2)) / ok.sum(dim=(0, 2)).float())
    return torch.stack(out)


def all_head_scores(
    model, batch: Mapping[str, torch.Tensor], run: tuple[torch.Tensor, Mapping[str, torch.Tensor]] | None = None
) -> dict[str, torch.Tensor]:
    """Every score that the batch supports, from one forward; ``{name: [n_layers, n_heads]}``.

    Always: ``prev_token``, ``attn_sink``, ``copying``, ``copying_eigen``. With ``copy_src``:
    ``induction`` (with ``repeat_start`` and ``period``, the repeated-token definition of
    :func:`repeated_tokens_induction_score`; otherwise attention to ``copy_src``), ``retrieval``
    (:func:`teacher_forced_copy_score`, not Wu et al.'s decoded score) and
    ``retrieval_given_correct`` (predictions = argmax of this forward's logits).
    Without a ``feature_mask`` (pure token tasks): ``prefix_matching``. With ``feature_mask``:
    ``label_to_exemplar``, and with ``query_pos`` and ``classes`` too ``induction_strength``
    (Singh et al.). With ``query_pos`` and ``match_pos`` / ``match_exemplar_pos``:
    ``query_to_match`` / ``query_to_exemplar``.
    
    ``run``: a ``(logits, cache)`` already computed by :func:`forward_with_cache` on this batch,
    so a caller that also needs the logits pays for one forward.
"""
    logits, cache = run if run is not None else forward_with_cache(model, batch)
    pats = patterns_from_cache(cache, model.cfg.n_layers)
    dev = pats[0].device
    b = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    out = {
        "prev_token": previous_token_score(pats),
        "attn_sink": attention_sink_mass(pats),
        "copying": copying_score(model, b, cache),
        "copying_eigen": copying_eigen_score(model).to(dev),
    }
    if "copy_src" in b:
        if "repeat_start" in b and "period" in b:
            out["induction"] = repeated_tokens_induction_score(pats, b["repeat_start"], b["period"])
        else:
            out["induction"] = induction_score(pats, b["copy_src"])
        out["teacher_forced_copy"] = teacher_forced_copy_score(pats, b["tokens"], b["copy_src"], logits, b["loss_mask"])
        out["retrieval_given_correct"] = retrieval_score_given_correct(pats, b["tokens"], b["copy_src"], logits, b["loss_mask"])
    if b.get("feature_mask") is None:
        out["prefix_matching"] = prefix_matching_score(pats, b["tokens"])
    else:
        out["label_to_exemplar"] = label_to_exemplar_attention(pats, b["feature_mask"])
        if "query_pos" in b and "classes" in b:
            out["induction_strength"] = induction_strength(pats, b["query_pos"], b["classes"], b["feature_mask"])
    if "query_pos" in b:
        if "match_pos" in b:
            out["query_to_match"] = query_to_match_attention(pats, b["query_pos"], b["match_pos"])
        if "match_exemplar_pos" in b:
            out["query_to_exemplar"] = query_to_exemplar_attention(pats, b["query_pos"], b["match_exemplar_pos"])
    return out
