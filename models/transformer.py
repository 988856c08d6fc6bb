"""A compact decoder-only transformer written for interpretability, with every activation a named site.

Design choices that matter for circuit studies:

* attention-only by default (no MLPs), as in the induction-head literature;
* inputs may mix discrete tokens and continuous feature vectors (exemplars of the bursty
  classification task), selected per position by ``feature_mask``;
* the output head is either an LM unembedding over the vocabulary or a classifier over
  ``n_classes`` labels (``d_out``), read at every position; tasks choose where the loss goes;
* the fused ``scaled_dot_product_attention`` kernel is used unless a hook needs the pattern
  or the per-head results, which are then materialised explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.sites import Site, SiteInfo, SiteModelMixin


@dataclass
class TransformerConfig:
    """Architecture. Sizes left at 0 (``d_vocab``, ``n_ctx``, ``d_feature``, ``d_out``) come from the task."""

    n_layers: int = 2
    n_heads: int = 8
    d_model: int = 64
    d_head: int = 0  # 0 -> d_model // n_heads
    attn_only: bool = True
    d_mlp: int = 0  # 0 -> 4 * d_model (ignored when attn_only)
    act_fn: Literal["gelu", "relu"] = "gelu"
    normalization: Literal["layernorm", "none"] = "layernorm"
    positional: Literal["learned", "rotary", "none"] = "learned"
    rotary_base: float = 10000.0
    tie_embeddings: bool = False
    bias: bool = True  # embedding (feature_in), unembedding and MLP biases
    attn_bias: bool | None = None  # q/k/v and output-projection biases; None -> same as ``bias``
    init: Literal["normal", "lecun"] = "normal"
    init_std: float = 0.02
    d_vocab: int = 0
    n_ctx: int = 0
    d_feature: int = 0  # >0 adds a linear embedding for continuous inputs
    d_out: int = 0  # 0 -> d_vocab (LM head); otherwise a classifier over d_out labels

    def resolved(self, *, d_vocab: int = 0, n_ctx: int = 0, d_feature: int = 0, d_out: int = 0) -> TransformerConfig:
        """Fill task-dependent sizes that the user left at 0 and validate the whole config."""
        cfg = replace(
            self,
            d_vocab=self.d_vocab or d_vocab,
            n_ctx=self.n_ctx or n_ctx,
            d_feature=self.d_feature or d_feature,
        )
        cfg.d_out = self.d_out or d_out or cfg.d_vocab
        cfg.d_head = self.d_head or (cfg.d_model // cfg.n_heads if cfg.n_heads > 0 else 0)  # n_heads <= 0: validate names it
        cfg.d_mlp = self.d_mlp or 4 * cfg.d_model
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TransformerConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.normalization not in ("layernorm", "none"):
            raise ValueError(f"normalization={self.normalization!r}; valid: 'layernorm', 'none'")
        if self.positional not in ("learned", "rotary", "none"):
            raise ValueError(f"positional={self.positional!r}; valid: 'learned', 'rotary', 'none'")
        if self.init not in ("normal", "lecun"):
            raise ValueError(f"init={self.init!r}; valid: 'normal', 'lecun'")
        if not self.init_std > 0:
            raise ValueError(f"init_std={self.init_std} must be > 0")
        if self.act_fn not in ("gelu", "relu"):
            raise ValueError(f"act_fn={self.act_fn!r}; valid: 'gelu', 'relu'")
        if self.positional == "rotary" and self.d_head % 2:
            raise ValueError(f"rotary positions need an even d_head, got {self.d_head}")
        if self.tie_embeddings and self.d_out != self.d_vocab:
            raise ValueError(f"tie_embeddings needs d_out == d_vocab, got d_out={self.d_out}, d_vocab={self.d_vocab}")


# std of a standard normal truncated to [-2, 2] (jax.nn.initializers.variance_scaling divides by it)
_TRUNC_STD = 0.87962566103423978


def _norm(cfg: TransformerConfig) -> nn.Module:
    return nn.LayerNorm(cfg.d_model) if cfg.normalization == "layernorm" else nn.Identity()


def _rotary_tables(cfg: TransformerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / cfg.rotary_base ** (torch.arange(0, cfg.d_head, 2, dtype=torch.float32) / cfg.d_head)
    ang = torch.arange(cfg.n_ctx, dtype=torch.float32)[:, None] * inv[None, :]
    return ang.cos(), ang.sin()


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    t = x.shape[-2]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:t].to(x.dtype), sin[:t].to(x.dtype)
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class Attention(nn.Module):
    """Multi-head causal self-attention exposing q, k, v, scores, pattern, z and per-head results."""

    def __init__(self, cfg: TransformerConfig, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        h, dh, dm = cfg.n_heads, cfg.d_head, cfg.d_model
        bias = cfg.bias if cfg.attn_bias is None else cfg.attn_bias
        self.qkv = nn.Linear(dm, 3 * h * dh, bias=bias)
        self.out = nn.Linear(h * dh, dm, bias=bias)
        head = {"head": h, "d_head": dh}
        p = f"layer{layer}."
        self.q = Site(SiteInfo(p + "q", ("batch", "head", "pos", "d_head"), head, layer))
        self.k = Site(SiteInfo(p + "k", ("batch", "head", "pos", "d_head"), head, layer))
        self.v = Site(SiteInfo(p + "v", ("batch", "head", "pos", "d_head"), head, layer))
        self.attn_scores = Site(SiteInfo(p + "attn_scores", ("batch", "head", "q_pos", "k_pos"), {"head": h}, layer))
        self.pattern = Site(SiteInfo(p + "pattern", ("batch", "head", "q_pos", "k_pos"), {"head": h}, layer))
        self.z = Site(SiteInfo(p + "z", ("batch", "head", "pos", "d_head"), head, layer))
        self.result = Site(SiteInfo(p + "result", ("batch", "head", "pos", "d_model"), {"head": h, "d_model": dm}, layer))
        if cfg.positional == "rotary":
            cos, sin = _rotary_tables(cfg)
            self.register_buffer("rot_cos", cos, persistent=False)
            self.register_buffer("rot_sin", sin, persistent=False)

    @property
    def W_Q(self) -> torch.Tensor:
        """[head, d_model, d_head] query weights (views of the fused projection)."""
        return self._split_in(0)

    @property
    def W_K(self) -> torch.Tensor:
        return self._split_in(1)

    @property
    def W_V(self) -> torch.Tensor:
        return self._split_in(2)

    @property
    def W_O(self) -> torch.Tensor:
        """[head, d_head, d_model] output weights."""
        h, dh = self.cfg.n_heads, self.cfg.d_head
        return self.out.weight.T.reshape(h, dh, self.cfg.d_model)

    def _split_in(self, i: int) -> torch.Tensor:
        h, dh = self.cfg.n_heads, self.cfg.d_head
        w = self.qkv.weight[i * h * dh : (i + 1) * h * dh]  # [h*dh, d_model]
        return w.reshape(h, dh, self.cfg.d_model).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h, dh = self.cfg.n_heads, self.cfg.d_head
        q, k, v = self.qkv(x).view(b, t, 3, h, dh).permute(2, 0, 3, 1, 4).unbind(0)
        if self.cfg.positional == "rotary":
            q = _apply_rotary(q, self.rot_cos, self.rot_sin)
            k = _apply_rotary(k, self.rot_cos, self.rot_sin)
        q, k, v = self.q(q), self.k(k), self.v(v)
        blank = q.new_empty(b, h, t, t) if self.pattern.active and not self.attn_scores.active else None
        if blank is not None and self.pattern.overwrites(blank):
            z = self.pattern(blank) @ v  # the pattern is replaced whole without being read: no scores, no softmax
        elif self.pattern.active or self.attn_scores.active:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            scores = self.attn_scores(scores.masked_fill(~mask, float("-inf")))
            if self.attn_scores.active:  # re-mask: hooks must not un-mask the future (and -inf - -inf = NaN there)
                scores = scores.masked_fill(~mask, float("-inf"))
            pattern = self.pattern(scores.softmax(dim=-1))
            z = pattern @ v
        else:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        z = self.z(z)  # [b, h, t, dh]
        if self.result.active:
            result = self.result(torch.einsum("bhtd,hdm->bhtm", z, self.W_O))
            out = result.sum(dim=1)
            return out + self.out.bias if self.out.bias is not None else out
        return self.out(z.transpose(1, 2).reshape(b, t, h * dh))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)
        self.act = nn.GELU() if cfg.act_fn == "gelu" else nn.ReLU()
        self.hidden = Site(SiteInfo(f"layer{layer}.mlp_hidden", ("batch", "pos", "d_mlp"), {"d_mlp": cfg.d_mlp}, layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.hidden(self.act(self.fc_in(x))))


class Block(nn.Module):
    """Pre-norm block: resid_pre -> attn -> resid_mid -> mlp -> resid_post."""

    def __init__(self, cfg: TransformerConfig, layer: int) -> None:
        super().__init__()
        dm = {"d_model": cfg.d_model}
        p = f"layer{layer}."

        def resid(name: str) -> Site:
            return Site(SiteInfo(p + name, ("batch", "pos", "d_model"), dm, layer))

        self.resid_pre = resid("resid_pre")
        self.ln1 = _norm(cfg)
        self.attn = Attention(cfg, layer)
        self.attn_out = resid("attn_out")
        self.mlp: MLP | None = None
        if not cfg.attn_only:
            self.resid_mid = resid("resid_mid")
            self.ln2 = _norm(cfg)
            self.mlp = MLP(cfg, layer)
            self.mlp_out = resid("mlp_out")
        self.resid_post = resid("resid_post")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resid_pre(x)
        x = x + self.attn_out(self.attn(self.ln1(x)))
        if self.mlp is not None:
            x = self.resid_mid(x)
            x = x + self.mlp_out(self.mlp(self.ln2(x)))
        return self.resid_post(x)


class Transformer(SiteModelMixin, nn.Module):
    """Decoder-only transformer whose activations are all named :class:`Site` s.

    ``forward(tokens, features=None, feature_mask=None) -> logits [batch, pos, d_out]``.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.n_layers, self.n_heads = cfg.n_layers, cfg.n_heads
        dm = {"d_model": cfg.d_model}
        self.W_E = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.feature_in = nn.Linear(cfg.d_feature, cfg.d_model, bias=cfg.bias) if cfg.d_feature else None
        self.embed = Site(SiteInfo("embed", ("batch", "pos", "d_model"), dm))
        self.W_pos = nn.Embedding(cfg.n_ctx, cfg.d_model) if cfg.positional == "learned" else None
        self.pos_embed = Site(SiteInfo("pos_embed", ("batch", "pos", "d_model"), dm)) if self.W_pos is not None else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_final = _norm(cfg)
        self.final_resid = Site(SiteInfo("final_resid", ("batch", "pos", "d_model"), dm))
        self.unembed = nn.Linear(cfg.d_model, cfg.d_out, bias=cfg.bias and not cfg.tie_embeddings)
        if cfg.tie_embeddings:
            self.unembed.weight = self.W_E.weight
        self.logits = Site(SiteInfo("logits", ("batch", "pos", "d_out"), {"d_out": cfg.d_out}))
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        """``normal``: every weight N(0, init_std). ``lecun`` (Singh et al. 2024's JAX model): linear
        weights LeCun-normal as ``jax.nn.initializers.lecun_normal`` (normal truncated at 2 sigma,
        rescaled to std 1/sqrt(fan_in)); embedding tables N(0, init_std) truncated at 2 sigma. Biases 0."""
        if not isinstance(m, (nn.Linear, nn.Embedding)):
            return
        if self.cfg.init == "normal":
            nn.init.normal_(m.weight, std=self.cfg.init_std)
        else:
            std = 1.0 / math.sqrt(m.in_features) / _TRUNC_STD if isinstance(m, nn.Linear) else self.cfg.init_std
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def ov_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W_V [L, H, d_model, d_head]`` and ``W_O [L, H, d_head, d_model]`` of every block."""
        return torch.stack([b.attn.W_V for b in self.blocks]), torch.stack([b.attn.W_O for b in self.blocks])

    @property
    def W_U(self) -> torch.Tensor:
        """[d_model, d_out] unembedding (classifier) matrix."""
        return self.unembed.weight.T

    def forward(
        self,
        tokens: torch.Tensor,
        features: torch.Tensor | None = None,
        feature_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t = tokens.shape
        if t > self.cfg.n_ctx:
            raise ValueError(f"sequence length {t} exceeds n_ctx={self.cfg.n_ctx}")
        x = self.W_E(tokens)
        if features is not None:
            if self.feature_in is None:
                raise ValueError("this model was built with d_feature=0 and cannot take continuous features")
            f = self.feature_in(features.to(x.dtype))
            x = f if feature_mask is None else torch.where(feature_mask[..., None], f, x)
        x = self.embed(x)
        if self.W_pos is not None:
            x = x + self.pos_embed(self.W_pos.weight[:t].expand(b, t, -1))
        return self.forward_from(0, x)

    def forward_from(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """The logits from ``layer``'s input residual stream (``layer{layer}.resid_pre``) on: analyses
        that vary only that layer and later ones (e.g. ablating its heads) run the earlier layers once."""
        x = resid
        for block in self.blocks[layer:]:
            x = block(x)
        x = self.final_resid(self.ln_final(x))
        return self.logits(self.unembed(x))
