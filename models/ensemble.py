"""N copies of :class:`models.Transformer` computed as one batched forward (a leading member axis).

At the project's sizes (tens of thousands of parameters) a training step costs per-operation
overhead, not arithmetic, so N members batched into each matmul cost little more than one.
Every parameter has the name it has in ``Transformer`` with a leading ``[member]`` axis, so
``{k: v[m] for k, v in ensemble.state_dict().items()}`` is member ``m``'s ordinary state dict.
Every activation is a :class:`Site` named as in ``Transformer`` with dims ``("member", ...)``.

The forward mirrors ``Transformer.forward`` operation for operation (a test holds each member
equal to a ``Transformer`` with its weights, for every architecture option).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.sites import Site, SiteInfo, SiteModelMixin
from models.transformer import TransformerConfig, _apply_rotary, _rotary_tables


def _site(name: str, dims: tuple[str, ...], sizes: dict[str, int], members: int, layer: int | None = None) -> Site:
    return Site(SiteInfo(name, ("member", *dims), {"member": members, **sizes}, layer))


class StackedLinear(nn.Module):
    """``members`` independent ``nn.Linear`` s: weight ``[M, out, in]``, input ``[M, ..., in]``."""

    def __init__(self, members: int, d_in: int, d_out: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(members, d_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, *lead, d = x.shape
        flat = x.reshape(m, -1, d)
        w = self.weight.transpose(1, 2)
        y = torch.bmm(flat, w) if self.bias is None else torch.baddbmm(self.bias[:, None, :], flat, w)
        return y.view(m, *lead, -1)


class StackedLayerNorm(nn.Module):
    def __init__(self, members: int, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, d))
        self.bias = nn.Parameter(torch.zeros(members, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        return torch.addcmul(self.bias.view(shape), F.layer_norm(x, x.shape[-1:]), self.weight.view(shape))


class StackedEmbedding(nn.Module):
    def __init__(self, members: int, n: int, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, n, d))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # [M, B, T] -> [M, B, T, d]
        m = idx.shape[0]
        offset = torch.arange(m, device=idx.device).view(m, *(1,) * (idx.dim() - 1)) * self.weight.shape[1]
        return F.embedding(idx + offset, self.weight.reshape(-1, self.weight.shape[-1]))


def _norm(cfg: TransformerConfig, members: int) -> nn.Module:
    return StackedLayerNorm(members, cfg.d_model) if cfg.normalization == "layernorm" else nn.Identity()


class EnsembleAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer: int, members: int) -> None:
        super().__init__()
        self.cfg = cfg
        h, dh, dm, M = cfg.n_heads, cfg.d_head, cfg.d_model, members
        bias = cfg.bias if cfg.attn_bias is None else cfg.attn_bias
        self.qkv = StackedLinear(M, dm, 3 * h * dh, bias)
        self.out = StackedLinear(M, h * dh, dm, bias)
        head = {"head": h, "d_head": dh}
        p = f"layer{layer}."
        for name in ("q", "k", "v", "z"):
            setattr(self, name, _site(p + name, ("batch", "head", "pos", "d_head"), head, M, layer))
        self.attn_scores = _site(p + "attn_scores", ("batch", "head", "q_pos", "k_pos"), {"head": h}, M, layer)
        self.pattern = _site(p + "pattern", ("batch", "head", "q_pos", "k_pos"), {"head": h}, M, layer)
        self.result = _site(p + "result", ("batch", "head", "pos", "d_model"), {"head": h, "d_model": dm}, M, layer)
        if cfg.positional == "rotary":
            cos, sin = _rotary_tables(cfg)
            self.register_buffer("rot_cos", cos, persistent=False)
            self.register_buffer("rot_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, b, t, _ = x.shape
        h, dh = self.cfg.n_heads, self.cfg.d_head
        q, k, v = self.qkv(x).view(m, b, t, 3, h, dh).permute(3, 0, 1, 4, 2, 5).unbind(0)
        if self.cfg.positional == "rotary":
            q = _apply_rotary(q, self.rot_cos, self.rot_sin)
            k = _apply_rotary(k, self.rot_cos, self.rot_sin)
        q, k, v = self.q(q), self.k(k), self.v(v)
        if self.pattern.active or self.attn_scores.active:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            scores = self.attn_scores(scores.masked_fill(~mask, float("-inf")))
            if self.attn_scores.active:
                scores = scores.masked_fill(~mask, float("-inf"))
            pattern = self.pattern(scores.softmax(dim=-1))
            z = pattern @ v
        else:
            z = F.scaled_dot_product_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), is_causal=True).view(m, b, h, t, dh)
        z = self.z(z)  # [m, b, h, t, dh]
        if self.result.active:
            w_o = self.out.weight.transpose(1, 2).reshape(m, h, dh, -1)
            result = self.result(torch.einsum("mbhtd,mhdn->mbhtn", z, w_o))
            out = result.sum(dim=2)
            return out + self.out.bias[:, None, None, :] if self.out.bias is not None else out
        return self.out(z.transpose(2, 3).reshape(m, b, t, h * dh))


class EnsembleMLP(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer: int, members: int) -> None:
        super().__init__()
        self.fc_in = StackedLinear(members, cfg.d_model, cfg.d_mlp, cfg.bias)
        self.fc_out = StackedLinear(members, cfg.d_mlp, cfg.d_model, cfg.bias)
        self.act = nn.GELU() if cfg.act_fn == "gelu" else nn.ReLU()
        self.hidden = _site(f"layer{layer}.mlp_hidden", ("batch", "pos", "d_mlp"), {"d_mlp": cfg.d_mlp}, members, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.hidden(self.act(self.fc_in(x))))


class EnsembleBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer: int, members: int) -> None:
        super().__init__()
        dm = {"d_model": cfg.d_model}
        p = f"layer{layer}."

        def resid(name: str) -> Site:
            return _site(p + name, ("batch", "pos", "d_model"), dm, members, layer)

        self.resid_pre = resid("resid_pre")
        self.ln1 = _norm(cfg, members)
        self.attn = EnsembleAttention(cfg, layer, members)
        self.attn_out = resid("attn_out")
        self.mlp: EnsembleMLP | None = None
        if not cfg.attn_only:
            self.resid_mid = resid("resid_mid")
            self.ln2 = _norm(cfg, members)
            self.mlp = EnsembleMLP(cfg, layer, members)
            self.mlp_out = resid("mlp_out")
        self.resid_post = resid("resid_post")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resid_pre(x)
        x = x + self.attn_out(self.attn(self.ln1(x)))
        if self.mlp is not None:
            x = self.resid_mid(x)
            x = x + self.mlp_out(self.mlp(self.ln2(x)))
        return self.resid_post(x)


class EnsembleTransformer(SiteModelMixin, nn.Module):
    """``members`` transformers of one architecture: ``forward(tokens [M, B, T], features [M, B, T, F], feature_mask [M, B, T]) -> [M, B, T, d_out]``.

    Parameters start uninitialised: load members' weights with :meth:`load_members`.
    """

    def __init__(self, cfg: TransformerConfig, members: int) -> None:
        super().__init__()
        cfg.validate()
        if members < 1:
            raise ValueError(f"members={members} must be >= 1")
        self.cfg, self.members = cfg, members
        self.n_layers, self.n_heads = cfg.n_layers, cfg.n_heads
        M, dm = members, {"d_model": cfg.d_model}
        self.W_E = StackedEmbedding(M, cfg.d_vocab, cfg.d_model)
        self.feature_in = StackedLinear(M, cfg.d_feature, cfg.d_model, cfg.bias) if cfg.d_feature else None
        self.embed = _site("embed", ("batch", "pos", "d_model"), dm, M)
        self.W_pos = StackedEmbedding(M, cfg.n_ctx, cfg.d_model) if cfg.positional == "learned" else None
        self.pos_embed = _site("pos_embed", ("batch", "pos", "d_model"), dm, M) if self.W_pos is not None else None
        self.blocks = nn.ModuleList(EnsembleBlock(cfg, i, M) for i in range(cfg.n_layers))
        self.ln_final = _norm(cfg, M)
        self.final_resid = _site("final_resid", ("batch", "pos", "d_model"), dm, M)
        self.unembed = StackedLinear(M, cfg.d_model, cfg.d_out, cfg.bias and not cfg.tie_embeddings)
        if cfg.tie_embeddings:
            self.unembed.weight = self.W_E.weight
        self.logits = _site("logits", ("batch", "pos", "d_out"), {"d_out": cfg.d_out}, M)

    @torch.no_grad()
    def load_members(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Stack ``members`` ordinary ``Transformer`` state dicts into this ensemble."""
        if len(states) != self.members:
            raise ValueError(f"got {len(states)} member states for an ensemble of {self.members}")
        own = dict(self.named_parameters())
        for i, state in enumerate(states):
            params = {k: v for k, v in state.items() if k in own or not k.endswith(("rot_cos", "rot_sin"))}
            missing, unexpected = sorted(set(own) - set(params)), sorted(set(params) - set(dict(self.state_dict())))
            shapes = [k for k in own if k in params and tuple(params[k].shape) != tuple(own[k].shape[1:])]
            if missing or unexpected or shapes:
                raise ValueError(
                    f"member {i} does not fit this ensemble (does EnsembleTransformer mirror every Transformer option?): "
                    f"missing {missing[:8]}, unexpected {unexpected[:8]}, shapes differ for {shapes[:8]}"
                )
        for name, p in own.items():
            p.copy_(torch.stack([s[name].to(p) for s in states]))

    def forward(self, tokens: torch.Tensor, features: torch.Tensor | None = None, feature_mask: torch.Tensor | None = None) -> torch.Tensor:
        m, b, t = tokens.shape
        if m != self.members:
            raise ValueError(f"inputs have {m} members on dim 0; this ensemble has {self.members}")
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
            x = x + self.pos_embed(self.W_pos.weight[:, None, :t].expand(m, b, t, -1))
        for block in self.blocks:
            x = block(x)
        x = self.final_resid(self.ln_final(x))
        return self.logits(self.unembed(x))
