"""Per-head scores, curves and TensorBoard helpers on hand-built patterns and weights with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clamp.metrics.curves import accuracy, accuracy_by_position, in_context_learning_score, loss_by_position
from clamp.metrics.heads import (
    all_head_scores,
    attention_sink_mass,
    copying_eigen_score,
    copying_score,
    induction_score,
    label_to_exemplar_attention,
    prefix_matching_score,
    previous_token_score,
    query_to_exemplar_attention,
    query_to_match_attention,
    retrieval_score,
    retrieval_score_given_correct,
)
from clamp.metrics.tb import custom_scalar_layout, head_scalars, heatmap_image
from models import Transformer, TransformerConfig

# --------------------------------------------------------------------------- pattern builders


def prev_pattern(t: int) -> torch.Tensor:
    """[T, T]: row i attends to i-1 (row 0 to itself)."""
    p = torch.zeros(t, t)
    p[0, 0] = 1.0
    p[torch.arange(1, t), torch.arange(t - 1)] = 1.0
    return p


def uniform_pattern(t: int) -> torch.Tensor:
    """[T, T]: uniform causal attention, row i = 1/(i+1) on 0..i."""
    m = torch.ones(t, t).tril()
    return m / m.sum(-1, keepdim=True)


def pointer_pattern(t: int, src: torch.Tensor, default: int = 0) -> torch.Tensor:
    """[T, T]: row i attends fully to src[i] (or to `default` where src[i] < 0)."""
    p = torch.zeros(t, t)
    idx = torch.where(src >= 0, src, torch.full_like(src, default))
    p[torch.arange(t), idx] = 1.0
    return p


def heads(*ps: torch.Tensor, batch: int = 1) -> torch.Tensor:
    """Stack per-head [T, T] patterns into [batch, head, T, T]."""
    return torch.stack(ps)[None].expand(batch, -1, -1, -1).clone()


# --------------------------------------------------------------------------- previous token / sink


def test_previous_token_exact_and_uniform():
    t = 9
    p = heads(prev_pattern(t), uniform_pattern(t), batch=3)
    s = previous_token_score(p)
    expected_uniform = sum(1 / (i + 1) for i in range(1, t)) / (t - 1)
    assert s.shape == (2,)
    assert s[0].item() == pytest.approx(1.0)
    assert s[1].item() == pytest.approx(expected_uniform, rel=1e-6)


def test_previous_token_mask_and_layers():
    t = 6
    p = heads(prev_pattern(t), uniform_pattern(t), batch=2)
    mask = torch.zeros(2, t, dtype=torch.bool)
    mask[:, 1] = True  # only query 1: uniform gives 1/2
    s = previous_token_score(p, mask)
    assert s.tolist() == pytest.approx([1.0, 0.5])
    # empty mask -> NaN, not 0
    assert torch.isnan(previous_token_score(p, torch.zeros(2, t, dtype=torch.bool))).all()
    # several layers: list and 5-D tensor give [L, H], layer order kept
    p2 = heads(uniform_pattern(t), prev_pattern(t), batch=2)
    s_list = previous_token_score([p, p2])
    s_5d = previous_token_score(torch.stack([p, p2], dim=1))
    assert s_list.shape == (2, 2)
    torch.testing.assert_close(s_list, s_5d)
    assert s_list[0, 0].item() == pytest.approx(1.0) and s_list[1, 1].item() == pytest.approx(1.0)
    assert s_list[0, 1].item() < 0.5


def test_attention_sink_mass():
    t = 7
    sink = torch.zeros(t, t)
    sink[:, 0] = 1.0
    s = attention_sink_mass(heads(sink, uniform_pattern(t), prev_pattern(t)))
    expected_uniform = sum(1 / (i + 1) for i in range(1, t)) / (t - 1)
    assert s[0].item() == pytest.approx(1.0)
    assert s[1].item() == pytest.approx(expected_uniform, rel=1e-6)
    assert s[2].item() == pytest.approx(1 / (t - 1))  # only query 1 attends to 0


# --------------------------------------------------------------------------- induction / prefix matching


def repeated_tokens(prefix: int = 3, period: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique random prefix, a segment of `period` unique tokens, then the segment again; TL-style copy_src."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randperm(50, generator=g)[: prefix + period] + 1
    seg = ids[prefix:]
    tokens = torch.cat([ids[:prefix], seg, seg])
    t = tokens.numel()
    copy_src = torch.full((t,), -1)
    i = torch.arange(prefix + period, t)
    copy_src[i] = i - period + 1
    return tokens, copy_src


def test_induction_and_prefix_matching_on_repeated_tokens():
    tokens, copy_src = repeated_tokens()
    t = tokens.numel()
    p = heads(pointer_pattern(t, copy_src), prev_pattern(t), uniform_pattern(t), batch=2)
    tok, src = tokens[None].repeat(2, 1), copy_src[None].repeat(2, 1)
    ind = induction_score(p, src)
    pm = prefix_matching_score(p, tok)
    assert ind[0].item() == pytest.approx(1.0)
    assert pm[0].item() == pytest.approx(1.0)
    assert ind[1].item() == pytest.approx(0.0)  # previous-token head: not induction
    assert pm[1].item() == pytest.approx(0.0)
    # uniform head: mean over the second repeat of 1/(i+1); prefix matching agrees (one match per query)
    i = torch.arange(8, t)
    assert ind[2].item() == pytest.approx((1 / (i + 1.0)).mean().item(), rel=1e-6)
    assert pm[2].item() == pytest.approx(ind[2].item(), rel=1e-6)
    # no copyable position -> NaN
    assert torch.isnan(induction_score(p, torch.full_like(src, -1))).all()


def test_prefix_matching_multiple_matches_hand_computed():
    tokens = torch.tensor([[1, 2, 1, 2, 1]])  # A B A B A
    p = heads(uniform_pattern(5))
    # i=2 (A): j=1 -> 1/3 ; i=3 (B): j=2 -> 1/4 ; i=4 (A): j in {1,3} -> 2/5
    expected = (1 / 3 + 1 / 4 + 2 / 5) / 3
    assert prefix_matching_score(p, tokens)[0].item() == pytest.approx(expected, rel=1e-6)
    mask = torch.tensor([[False, False, False, False, True]])
    assert prefix_matching_score(p, tokens, mask)[0].item() == pytest.approx(2 / 5, rel=1e-6)
    # a run of one token: key j must be strictly before i (i=1 has no j; i=2 only j=1)
    run = torch.tensor([[3, 3, 3]])
    assert prefix_matching_score(heads(uniform_pattern(3)), run)[0].item() == pytest.approx(1 / 3, rel=1e-6)


# --------------------------------------------------------------------------- retrieval


def test_retrieval_given_correct_counts_only_correct_copied_predictions():
    t = 6
    tokens = torch.tensor([[7, 8, 9, 7, 8, 9]])
    copy_src = torch.tensor([[-1, -1, 1, 2, -1, -1]])  # targets at 2, 3 are tokens 8, 9 copied from 1, 2
    # position 4: copy_src=-1 (not scored). Predictions: correct at 2 and 3, and a wrong one we make at 3 below.
    good = pointer_pattern(t, copy_src[0], default=0)  # argmax on copy_src where defined
    soft = 0.3 * uniform_pattern(t) + 0.7 * good  # still argmax on copy_src
    bad = pointer_pattern(t, torch.full((t,), 0))  # always position 0
    half = good.clone()
    half[3] = 0.0
    half[3, 0] = 1.0  # argmax on copy_src only at position 2
    p = heads(good, soft, bad, half)
    preds = torch.tensor([[0, 0, 8, 9, 0, 0]])
    loss_mask = torch.ones(1, t, dtype=torch.bool)
    s = retrieval_score_given_correct(p, tokens, copy_src, preds, loss_mask)
    assert s.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.5])
    # a wrong prediction at 3 removes that position: the "half" head becomes perfect
    s_wrong = retrieval_score_given_correct(p, tokens, copy_src, torch.tensor([[0, 0, 8, 4, 0, 0]]), loss_mask)
    assert s_wrong.tolist() == pytest.approx([1.0, 1.0, 0.0, 1.0])
    # loss_mask excludes position 2 likewise: "half" head gets 0
    lm = loss_mask.clone()
    lm[0, 2] = False
    assert retrieval_score_given_correct(p, tokens, copy_src, preds, lm)[3].item() == pytest.approx(0.0)
    # logits work as predictions
    logits = torch.nn.functional.one_hot(preds, 10).float()
    torch.testing.assert_close(retrieval_score_given_correct(p, tokens, copy_src, logits, loss_mask), s)
    # nothing correct -> NaN
    assert torch.isnan(retrieval_score_given_correct(p, tokens, copy_src, torch.zeros_like(preds), loss_mask)).all()


def test_retrieval_score_is_wu_et_al_over_all_copy_steps():
    t = 6
    tokens = torch.tensor([[7, 8, 9, 7, 8, 9]])
    copy_src = torch.tensor([[-1, -1, 1, 2, -1, -1]])  # two copy steps: 2 and 3
    good = pointer_pattern(t, copy_src[0], default=0)
    bad = pointer_pattern(t, torch.full((t,), 0))
    p = heads(good, bad)
    loss_mask = torch.ones(1, t, dtype=torch.bool)
    both = torch.tensor([[0, 0, 8, 9, 0, 0]])
    one = torch.tensor([[0, 0, 8, 4, 0, 0]])  # the copy at 3 fails
    assert retrieval_score(p, tokens, copy_src, both, loss_mask).tolist() == pytest.approx([1.0, 0.0])
    # Wu et al. divide by every copy step: a failed copy counts against the head ...
    assert retrieval_score(p, tokens, copy_src, one, loss_mask).tolist() == pytest.approx([0.5, 0.0])
    # ... while the conditional score ignores it: Wu's score = conditional score x copy accuracy
    assert retrieval_score_given_correct(p, tokens, copy_src, one, loss_mask).tolist() == pytest.approx([1.0, 0.0])
    # nothing copied correctly: 0 for Wu (a measurable failure), NaN for the conditional score
    none = torch.zeros_like(both)
    assert retrieval_score(p, tokens, copy_src, none, loss_mask).tolist() == pytest.approx([0.0, 0.0])
    assert torch.isnan(retrieval_score_given_correct(p, tokens, copy_src, none, loss_mask)).all()


# --------------------------------------------------------------------------- bursty task attention


def test_query_and_label_attention():
    # layout [x1, l1, x2, l2, xq]: features at 0, 2, 4
    t = 5
    feature_mask = torch.tensor([[True, False, True, False, True]] * 3)
    query_pos = torch.tensor([4, 4, 4])
    match_pos = torch.tensor([1, 3, -1])
    match_ex = torch.tensor([0, 2, -1])
    p = torch.zeros(3, 2, t, t)
    p[:, 0] = prev_pattern(t)
    p[:, 1] = uniform_pattern(t)
    p[0, 0, 4] = torch.tensor([0.1, 0.7, 0.0, 0.0, 0.2])  # head 0 attends from query to match label
    p[1, 0, 4] = torch.tensor([0.0, 0.0, 0.1, 0.5, 0.4])
    p[2, 0, 4] = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])  # no match: ignored
    q = query_to_match_attention(p, query_pos, match_pos)
    assert q.tolist() == pytest.approx([(0.7 + 0.5) / 2, 0.2])
    e = query_to_exemplar_attention(p, query_pos, match_ex)
    assert e.tolist() == pytest.approx([(0.1 + 0.1) / 2, 0.2])
    lab = label_to_exemplar_attention(p, feature_mask)  # label positions 1 and 3
    assert lab.tolist() == pytest.approx([1.0, (1 / 2 + 1 / 4) / 2])


# --------------------------------------------------------------------------- copying (weights and behaviour)


def _set_head(attn, which: int, h: int, w: torch.Tensor) -> None:
    """Set W_Q/W_K/W_V (which = 0/1/2) of head h to w [d_model, d_head] in the fused qkv Linear."""
    n, dh = attn.cfg.n_heads, attn.cfg.d_head
    attn.qkv.weight[which * n * dh + h * dh : which * n * dh + (h + 1) * dh] = w.T


def _set_w_o(attn, h: int, w: torch.Tensor) -> None:
    """Set W_O of head h to w [d_head, d_model]."""
    dh = attn.cfg.d_head
    attn.out.weight[:, h * dh : (h + 1) * dh] = w.T


def copy_model(normalization: str = "none", d_vocab: int = 4, d_out: int = 0) -> Transformer:
    """1 layer, 2 heads, d_model = d_head = 4; W_E, W_U identity on the first 4 ids.

    Both heads attend to earlier copies of the current token (Q = K = 10 I); head 0 has W_V W_O = I
    (copier), head 1 has W_V W_O = -I (anti-copier).
    """
    cfg = TransformerConfig(n_layers=1, n_heads=2, d_model=4, d_head=4, positional="none", bias=False,
                            normalization=normalization)
    model = Transformer(cfg.resolved(d_vocab=d_vocab, n_ctx=16, d_out=d_out))
    eye = torch.eye(4)
    with torch.no_grad():
        w_e = torch.zeros(d_vocab, 4)
        w_e[:4] = eye
        if d_vocab > 4:
            w_e[4:] = -torch.ones(d_vocab - 4, 4)  # rows the classifier restriction must ignore
        model.W_E.weight.copy_(w_e)
        model.unembed.weight.copy_(eye[: model.cfg.d_out])
        attn = model.blocks[0].attn
        for h, sign in ((0, 1.0), (1, -1.0)):
            _set_head(attn, 0, h, 10 * eye)
            _set_head(attn, 1, h, 10 * eye)
            _set_head(attn, 2, h, eye)
            _set_w_o(attn, h, sign * eye)
    return model


def test_copying_eigen_identity_and_minus_identity():
    s = copying_eigen_score(copy_model())
    assert s.shape == (1, 2)
    assert s[0, 0].item() == pytest.approx(1.0)
    assert s[0, 1].item() == pytest.approx(-1.0)
    # classifier head: d_out=4 < d_vocab=6, rows 4,5 of W_E ignored
    s_cls = copying_eigen_score(copy_model(d_vocab=6, d_out=4))
    assert s_cls[0].tolist() == pytest.approx([1.0, -1.0])


def test_copying_eigen_matches_full_eigendecomposition():
    torch.manual_seed(0)
    cfg = TransformerConfig(n_layers=2, n_heads=2, d_model=8, d_head=3, positional="none")
    model = Transformer(cfg.resolved(d_vocab=5, n_ctx=8))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    got = copying_eigen_score(model)
    for l, blk in enumerate(model.blocks):
        for h in range(2):
            m = (model.W_E.weight @ blk.attn.W_V[h] @ blk.attn.W_O[h] @ model.W_U).detach().double().numpy()
            ev = np.linalg.eigvals(m)
            assert got[l, h].item() == pytest.approx(ev.real.sum() / np.abs(ev).sum(), abs=1e-5)


@pytest.mark.parametrize("normalization", ["none", "layernorm"])
def test_copying_score_signs(normalization):
    model = copy_model(normalization)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 4, (3, 10), generator=g)
    batch = {"tokens": tokens, "loss_mask": torch.ones(3, 10, dtype=torch.bool)}
    s = copying_score(model, batch)
    assert s.shape == (1, 2)
    assert s[0, 0].item() > 0 and s[0, 1].item() < 0
    if normalization == "none":
        # attention is one-hot on same-token positions, z = e_t: the logit gap is exactly +-1
        assert s[0].tolist() == pytest.approx([1.0, -1.0], abs=1e-4)


def test_copying_score_classifier_restricts_sources_to_labels():
    model = copy_model(d_vocab=6, d_out=4)
    tokens = torch.tensor([[4, 5, 4, 5, 0, 1]])
    mask = torch.tensor([[True, True, True, True, False, False]])  # only non-label sources scored
    s = copying_score(model, {"tokens": tokens, "loss_mask": mask})
    assert torch.isnan(s).all()
    mask[0, 4] = True
    s = copying_score(model, {"tokens": tokens, "loss_mask": mask})
    assert s[0].tolist() == pytest.approx([1.0, -1.0], abs=1e-4)


def test_copying_score_skips_feature_sources():
    model = copy_model()
    tokens = torch.tensor([[0, 1, 0, 1]])
    batch = {"tokens": tokens, "loss_mask": torch.ones(1, 4, dtype=torch.bool)}
    # heads attend to the first copy of the current token (positions 0 and 1): exemplar positions
    batch["feature_mask"] = torch.tensor([[True, True, False, False]])
    assert torch.isnan(copying_score(model, batch)).all()
    batch["feature_mask"] = torch.tensor([[False, True, False, False]])
    assert copying_score(model, batch)[0].tolist() == pytest.approx([1.0, -1.0], abs=1e-4)


def test_all_head_scores_consistent():
    model = copy_model()
    tokens, copy_src = repeated_tokens(prefix=2, period=4)
    tokens = (tokens % 4)[None]
    batch = {"tokens": tokens, "loss_mask": torch.ones_like(tokens, dtype=torch.bool), "copy_src": copy_src[None]}
    out = all_head_scores(model, batch)
    assert {"prev_token", "attn_sink", "copying", "copying_eigen", "induction", "teacher_forced_copy", "retrieval_given_correct", "prefix_matching"} <= set(out)
    assert all(v.shape == (1, 2) for v in out.values())
    _, cache = model.run_with_cache(tokens, names=["layer0.pattern"])
    torch.testing.assert_close(out["prev_token"][0], previous_token_score(cache["layer0.pattern"]))


# --------------------------------------------------------------------------- curves


def test_loss_by_position_hand_computed():
    logits = torch.tensor(
        [
            [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
            [[0.0, 0.0, 3.0], [1.0, 1.0, 0.0], [5.0, 0.0, 0.0]],
        ]
    )
    targets = torch.tensor([[0, 1, -1], [1, 0, -1]])
    mask = torch.tensor([[True, True, False], [True, False, False]])

    def ce(row: list[float], k: int) -> float:
        return math.log(sum(math.exp(v) for v in row)) - row[k]

    lbp = loss_by_position(logits, targets, mask)
    assert lbp[0].item() == pytest.approx((ce([2, 0, 0], 0) + ce([0, 0, 3], 1)) / 2, rel=1e-6)
    assert lbp[1].item() == pytest.approx(ce([0, 1, 0], 1), rel=1e-6)
    assert math.isnan(lbp[2].item())
    icl = in_context_learning_score(lbp, early=0, late=1)
    assert icl.item() == pytest.approx(lbp[1].item() - lbp[0].item())
    assert icl.item() < 0
    with pytest.raises(IndexError):
        in_context_learning_score(lbp, 0, 3)
    # argmax: [0, 1] correct in row 0; row 0 of batch 1 predicts 2 != 1
    assert accuracy(logits, targets, mask).item() == pytest.approx(2 / 3)
    abp = accuracy_by_position(logits, targets, mask)
    assert abp[:2].tolist() == pytest.approx([0.5, 1.0]) and math.isnan(abp[2].item())


# --------------------------------------------------------------------------- TensorBoard helpers


def test_head_scalars_and_layout(tmp_path):
    import re

    scores = torch.arange(6.0).reshape(2, 3)
    d = head_scalars("induction", scores)
    assert d == {f"induction/L{l}H{h}": float(3 * l + h) for l in range(2) for h in range(3)}
    layout = custom_scalar_layout(["induction", "prev_token"], n_layers=2, n_heads=3)
    assert set(layout) == {"induction", "prev_token"}
    charts = layout["induction"]
    assert set(charts) == {"induction all heads", "induction L0", "induction L1"}
    for kind, regexes in charts.values():
        assert kind == "Multiline" and isinstance(regexes, list)
    all_re = re.compile(charts["induction all heads"][1][0])
    l1_re = re.compile(charts["induction L1"][1][0])
    assert all(all_re.search(k) for k in d)
    assert {k for k in d if l1_re.search(k)} == {"induction/L1H0", "induction/L1H1", "induction/L1H2"}
    assert not all_re.search("prev_token/L0H0") and not l1_re.search("induction/L1H12")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as w:  # the format add_custom_scalars accepts
        w.add_custom_scalars(layout)


def test_heatmap_image():
    from matplotlib import colormaps

    from clamp.metrics import tb

    img = heatmap_image(torch.tensor([[0.1, 0.9, float("nan")], [0.5, 0.2, 0.3]]), "induction", vmin=0, vmax=1)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] > 50 and img.shape[1] > 50

    def cell(l: int, h: int) -> np.ndarray:
        y, x = tb._TOP + l * tb._CELL_H, tb._LEFT + h * tb._CELL_W
        return img[y + 1 : y + tb._CELL_H, x + 1 : x + tb._CELL_W].reshape(-1, 3).astype(int)

    def viridis(v: float) -> np.ndarray:
        return np.round(np.asarray(colormaps["viridis"](v)[:3]) * 255).astype(int)

    for (l, h), v in {(0, 0): 0.1, (0, 1): 0.9, (1, 0): 0.5}.items():
        pixels = cell(l, h)
        background = (pixels == viridis(v)).all(1)
        assert background.mean() > 0.7  # the cell is coloured by its value ...
        assert (~background).sum() > 20  # ... and carries its value as text
    assert not np.array_equal(cell(0, 0)[0], cell(0, 1)[0])  # different values, different colours
    nan = cell(0, 2)
    assert (nan == tb._NAN_RGB).all(1).mean() > 0.7 and (nan.sum(1) < 300).sum() > 10  # grey, with dark "nan" text
    assert (img[: tb._TOP - 4] < 128).any()  # a title
    # texts differ: "0.10" and "0.90" are not the same pixels
    assert not np.array_equal(cell(0, 0) == viridis(0.1), cell(0, 1) == viridis(0.9))
    # a colour bar beside the grid, yellow (max) at the top and purple (min) at the bottom
    bar_x = tb._LEFT + 3 * tb._CELL_W + tb._GAP + tb._BAR_W // 2
    assert np.abs(img[tb._TOP, bar_x].astype(int) - viridis(1.0)).max() <= 2
    assert np.abs(img[tb._TOP + 2 * tb._CELL_H - 1, bar_x].astype(int) - viridis(0.0)).max() <= 2

    bigger = heatmap_image(np.zeros((4, 8)), "x")
    assert bigger.shape[1] > img.shape[1] and bigger.shape[0] > img.shape[0]
    assert heatmap_image(np.full((1, 1), np.nan), "a metric this task does not define " * 3).shape[1] > 200  # room for the title

def _copying_score_reference(model, batch, cache):
    """copying_score as first written: the frozen-LN direct logit effect of every head at every
    position, materialised over d_model ([batch, head, pos, d_model]), then the source token's logit
    minus the mean of the others."""
    from clamp.metrics.heads import _ov_weights

    cfg, d_out = model.cfg, model.cfg.d_out
    tokens, valid = batch["tokens"].long(), batch["loss_mask"].bool()
    w_u = model.W_U.detach().float()
    w_u_sum = w_u.sum(dim=1)
    norm = cfg.normalization
    if norm in ("layernorm", "rmsnorm"):
        resid = cache[f"layer{cfg.n_layers - 1}.resid_post"].float()
        ln = model.ln_final
        eps = getattr(ln, "eps", None) or getattr(ln, "variance_epsilon")
        spread = resid.var(dim=-1, unbiased=False) if norm == "layernorm" else resid.pow(2).mean(-1)
        scale = (spread + eps).rsqrt()
        gamma = ln.weight.detach().float() if ln.weight is not None else None
    fmask = batch.get("feature_mask")
    out = []
    w_o_all = _ov_weights(model)[1].detach().float()
    for l in range(cfg.n_layers):
        src = cache[f"layer{l}.pattern"].float().argmax(dim=-1)
        src_tok = tokens.gather(1, src.flatten(1)).view_as(src)
        ok = valid[:, None, :] & (src_tok < d_out)
        if fmask is not None:
            ok &= ~fmask.bool().gather(1, src.flatten(1)).view_as(src)
        res = torch.einsum("bhtd,hdm->bhtm", cache[f"layer{l}.z"].float(), w_o_all[l])
        if norm in ("layernorm", "rmsnorm"):
            if norm == "layernorm":
                res = res - res.mean(dim=-1, keepdim=True)
            res = res * scale[:, None, :, None]
            if gamma is not None:
                res = res * gamma
        own = (res * w_u.T[src_tok.clamp(max=d_out - 1)]).sum(-1)
        others = (res @ w_u_sum - own) / max(d_out - 1, 1)
        val = torch.where(ok, own - others, torch.zeros(()))
        out.append(val.sum(dim=(0, 2)) / ok.sum(dim=(0, 2)).float())
    return torch.stack(out)


@pytest.mark.parametrize("case", ["layernorm", "none", "classifier_with_features", "hf_llama_rmsnorm", "hf_gpt2"])
def test_copying_score_equals_the_materialised_definition(case):
    from clamp.metrics.heads import forward_with_cache

    torch.manual_seed(0)
    if case.startswith("hf_"):
        from models.hf import HFModelConfig
        from tests.test_hf_models import TINY

        arch = case.split("_")[1]
        model = HFModelConfig(arch=arch, config=TINY[arch]).build(d_vocab=40, n_ctx=12).eval()
        vocab, d_feature = 40, 0
    else:
        norm = "none" if case == "none" else "layernorm"
        d_out, d_feature = (5, 3) if case == "classifier_with_features" else (0, 0)
        cfg = TransformerConfig(n_layers=2, n_heads=3, d_model=12, normalization=norm, init_std=0.5)
        model = Transformer(cfg.resolved(d_vocab=9, n_ctx=12, d_feature=d_feature, d_out=d_out)).eval()
        vocab = 9
    with torch.no_grad():
        ln = getattr(model, "ln_final", None)
        if getattr(ln, "weight", None) is not None:
            ln.weight.uniform_(0.5, 2.0)  # a gamma that is not ones: it must move onto the readout correctly
    batch = {"tokens": torch.randint(0, vocab, (6, 12)), "loss_mask": torch.rand(6, 12) > 0.2}
    if d_feature:
        batch["feature_mask"] = torch.rand(6, 12) > 0.6
        batch["features"] = torch.randn(6, 12, d_feature)
    _, cache = forward_with_cache(model, batch)
    got, want = copying_score(model, batch, cache), _copying_score_reference(model, batch, cache)
    assert torch.isfinite(want).all() and want.abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
