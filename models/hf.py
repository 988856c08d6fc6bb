"""Hugging Face causal LMs with the same named sites as :class:`models.Transformer`.

The adapter wraps a ``transformers`` model (GPT-2, Llama, GPT-NeoX) without copying or
re-implementing it: it adds :class:`Site` s at the places the project's transformer has them and
lets the Hugging Face code run as is. Three mechanisms, all inactive while no hook is attached:

* residual-stream, MLP, embedding and logit sites are PyTorch forward (pre-)hooks on the
  Hugging Face submodules that rewrite their input or output;
* ``q``, ``k``, ``v``, ``attn_scores``, ``pattern`` and ``z`` live in an attention function
  registered with ``transformers.AttentionInterface`` under the name ``clamp_sites``. Idle, it
  is Hugging Face's own SDPA function (so logits are bit-for-bit those of the plain model);
  with ``q``/``k``/``v``/``z`` hooks it stays on the fused kernel; a hook on ``attn_scores`` or
  ``pattern`` makes *that layer* compute attention explicitly (logged once per layer);
* ``result`` (per-head ``z @ W_O``) recomputes the output projection head by head, only when
  hooked, and sums the heads (plus bias) back into the module's output.

``resid_mid`` is edited through the attention output (``resid_mid = resid_pre + attn_out``), so
the decoder layer's own code needs no change; it is absent for GPT-NeoX with parallel residuals.
Grouped-query attention (Llama with fewer key/value heads): ``k`` and ``v`` are per query head
(shared heads repeated) whenever a per-head attention site is hooked.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.sites import Site, SiteInfo, SiteModelMixin

log = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "clamp_sites"
_HEAD_SITES = ("q", "k", "v", "attn_scores", "pattern", "z")


# --------------------------------------------------------------------------- architectures as data


def _heads_in_out(w: torch.Tensor, n: int, d_head: int) -> torch.Tensor:
    """``[n * d_head, d_model]`` (rows per head) -> ``[n, d_model, d_head]``."""
    return w.reshape(n, d_head, w.shape[-1]).transpose(1, 2)


def _gpt2_w_v(attn: nn.Module, n_heads: int, d_head: int) -> torch.Tensor:
    w = attn.c_attn.weight  # Conv1D [d_model, 3 * d_model]: columns q | k | v
    dm = w.shape[0]
    return w[:, 2 * dm :].reshape(dm, n_heads, d_head).permute(1, 0, 2)


def _llama_w_v(attn: nn.Module, n_heads: int, d_head: int) -> torch.Tensor:
    w = attn.v_proj.weight  # [kv_heads * d_head, d_model]
    kv = w.shape[0] // d_head
    return _heads_in_out(w, kv, d_head).repeat_interleave(n_heads // kv, dim=0)


def _neox_w_v(attn: nn.Module, n_heads: int, d_head: int) -> torch.Tensor:
    w = attn.query_key_value.weight  # [heads * (q|k|v) * d_head, d_model], interleaved per head
    return w.reshape(n_heads, 3, d_head, w.shape[-1])[:, 2].transpose(1, 2)


@dataclass(frozen=True)
class Layout:
    """Where a ``transformers`` architecture keeps the modules the sites attach to (dotted paths)."""

    layers: str  # the ModuleList of decoder layers, from the CausalLM
    embed: str
    final_norm: str
    attn: str  # inside a layer
    attn_proj: str  # output projection, inside the attention module
    mlp: str  # inside a layer
    mlp_proj: str  # MLP output projection, inside the MLP
    w_v: Callable[[nn.Module, int, int], torch.Tensor]  # attention module -> [head, d_model, d_head]
    conv1d: bool = False  # GPT-2's Conv1D stores weights [in, out]
    normalization: str = "layernorm"


LAYOUTS: dict[str, Layout] = {
    "gpt2": Layout("transformer.h", "transformer.wte", "transformer.ln_f", "attn", "c_proj", "mlp", "c_proj", _gpt2_w_v, conv1d=True),
    "llama": Layout("model.layers", "model.embed_tokens", "model.norm", "self_attn", "o_proj", "mlp", "down_proj", _llama_w_v, normalization="rmsnorm"),
    "gpt_neox": Layout("gpt_neox.layers", "gpt_neox.embed_in", "gpt_neox.final_layer_norm", "attention", "dense", "mlp", "dense_4h_to_h", _neox_w_v),
}


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


# --------------------------------------------------------------------------- config


@dataclass
class HFSiteConfig:
    """The sizes every site model exposes as ``model.cfg`` (what the metrics and the engine read)."""

    arch: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_out: int
    normalization: str
    attn_only: bool = False


@dataclass
class HFModelConfig:
    """A Hugging Face causal LM to train or study, randomly initialised or loaded.

    Args:
        arch: ``transformers`` model type; with sites: ``gpt2``, ``llama``, ``gpt_neox``.
        config: keyword arguments of that architecture's config class (``GPT2Config``,
            ``LlamaConfig``, ``GPTNeoXConfig``), e.g. ``{n_layer: 2, n_head: 4, n_embd: 128}``.
            ``vocab_size`` and the context length default to the data's.
        pretrained: a local directory (or, on a machine that reaches the hub, a model name)
            whose weights ``from_pretrained`` loads; ``arch`` must match and ``config`` entries
            override the loaded config (e.g. dropout).
    """

    arch: str = "gpt2"
    config: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None

    def validate(self) -> None:
        if self.arch not in LAYOUTS:
            raise ValueError(f"HFModelConfig.arch={self.arch!r}; architectures with sites: {sorted(LAYOUTS)}")
        self._check_config_keys()

    def _check_config_keys(self) -> None:
        """Refuse keys the architecture's config class does not know: ``transformers`` would keep a misspelt
        ``n_layers`` as an unused attribute and build its default size (GPT-2: 12 layers, 12 heads)."""
        import difflib
        import inspect

        import transformers

        cls = transformers.AutoConfig.for_model(self.arch).__class__
        valid = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        valid |= set(getattr(cls, "attribute_map", {})) | set(transformers.PretrainedConfig().to_dict())
        valid |= set(cls().to_dict())
        try:  # legacy names a config still reads from its **kwargs (e.g. GPT-NeoX's rotary_pct)
            valid |= set(re.findall(r"""kwargs\.(?:pop|get)\(\s*["'](\w+)["']""", inspect.getsource(cls)))
        except (OSError, TypeError):
            pass
        for key in self.config:
            if key not in valid:
                close = difflib.get_close_matches(key, sorted(valid), n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"model.hf.config.{key}: not a {cls.__name__} setting{hint} "
                                 f"(the {self.arch} config's keys are those of transformers.{cls.__name__})")

    def build(self, d_vocab: int = 0, n_ctx: int = 0) -> HFSiteModel:
        """The adapted model; ``d_vocab`` / ``n_ctx`` (from the data) fill sizes the config leaves out."""
        import transformers

        self.validate()
        kwargs = dict(self.config)
        if self.pretrained:
            hf = transformers.AutoModelForCausalLM.from_pretrained(self.pretrained, attn_implementation="sdpa", **kwargs)
            if hf.config.model_type != self.arch:
                raise ValueError(f"HFModelConfig.pretrained={self.pretrained!r} is a {hf.config.model_type!r} model, but arch={self.arch!r}")
        else:
            cfg = transformers.AutoConfig.for_model(self.arch, **kwargs)
            if "vocab_size" not in kwargs and d_vocab:
                cfg.vocab_size = d_vocab
            if not any(k in kwargs for k in ("n_positions", "max_position_embeddings")) and n_ctx:
                cfg.max_position_embeddings = n_ctx
            cfg.use_cache = False
            hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
        model = HFSiteModel(hf)
        if d_vocab > model.cfg.d_vocab:
            raise ValueError(f"the data has {d_vocab} token ids but the {self.arch} model's vocab_size is {model.cfg.d_vocab}")
        if n_ctx > model.cfg.n_ctx:
            raise ValueError(f"the data's context {n_ctx} exceeds the {self.arch} model's {model.cfg.n_ctx} positions")
        return model


# --------------------------------------------------------------------------- hooks (module-level: deepcopy-safe)


def _sites(module: nn.Module) -> nn.ModuleDict:
    return module.__dict__["_clamp_sites"]


def _mid(sites: nn.ModuleDict) -> Site | None:
    """The layer's ``resid_mid`` site when it has one and it is hooked."""
    return sites["resid_mid"] if "resid_mid" in sites and sites["resid_mid"].active else None


def _output_site(module: nn.Module, args: tuple, out: Any) -> Any:
    site: Site = module.__dict__["_clamp_site"]
    if not site.active:
        return None
    if isinstance(out, tuple):
        return (site(out[0]), *out[1:])
    if hasattr(out, "last_hidden_state"):  # never for the modules hooked here, kept for safety
        return None
    return site(out)


def _layer_pre(layer: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
    s = _sites(layer)
    mid = _mid(s)
    if not (s["resid_pre"].active or mid is not None):
        return None
    x = args[0] if args else kwargs["hidden_states"]
    x = s["resid_pre"](x)
    if mid is not None:
        layer.__dict__["_clamp_resid_pre"] = x
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}


def _layer_post(layer: nn.Module, args: tuple, out: Any) -> Any:
    layer.__dict__.pop("_clamp_resid_pre", None)
    site = _sites(layer)["resid_post"]
    if not site.active:
        return None
    return (site(out[0]), *out[1:]) if isinstance(out, tuple) else site(out)


def _attn_post(attn: nn.Module, args: tuple, out: tuple) -> tuple | None:
    s = _sites(attn)
    mid = _mid(s)
    if not (s["attn_out"].active or mid is not None):
        return None
    a = s["attn_out"](out[0])
    if mid is not None:
        pre = attn.__dict__["_clamp_layer"].__dict__["_clamp_resid_pre"]
        a = mid(pre + a) - pre
    return (a, *out[1:])


def _result_post(proj: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
    site = _sites(proj)["result"]
    if not site.active:
        return None
    n_heads, d_head = site.info.sizes["head"], proj.__dict__["_clamp_d_head"]
    z = args[0]
    w_o = (proj.weight if proj.__dict__["_clamp_conv1d"] else proj.weight.T).reshape(n_heads, d_head, -1)
    result = site(torch.einsum("bthd,hdm->bhtm", z.reshape(*z.shape[:-1], n_heads, d_head), w_o))
    total = result.sum(dim=1)
    return (total if proj.bias is None else total + proj.bias).to(out.dtype)


def _mlp_hidden_pre(proj: nn.Module, args: tuple) -> tuple | None:
    site = _sites(proj)["mlp_hidden"]
    return (site(args[0]), *args[1:]) if site.active else None


def _mlp_post(mlp: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
    site = _sites(mlp)["mlp_out"]
    return site(out) if site.active else None


# --------------------------------------------------------------------------- attention function


def clamp_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Any):
    """Hugging Face attention function with per-head sites (``[batch, head, pos, ...]``)."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    s: nn.ModuleDict | None = module.__dict__.get("_clamp_sites")
    if s is None or not any(s[n].active for n in _HEAD_SITES):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if not any(s[n].active for n in ("q", "k", "v", "attn_scores", "pattern")):
        out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        return s["z"](out.transpose(1, 2)).transpose(1, 2), weights
    groups = getattr(module, "num_key_value_groups", 1)
    q, k, v = s["q"](query), s["k"](repeat_kv(key, groups)), s["v"](repeat_kv(value, groups))
    scaling = kwargs.get("scaling") or q.shape[-1] ** -0.5
    dropout = kwargs.get("dropout", 0.0) if module.training else 0.0
    tq, tk = q.shape[-2], k.shape[-2]
    if s["attn_scores"].active or s["pattern"].active:
        if not module.__dict__.get("_clamp_said_eager"):
            log.info("layer %s: a pattern/attn_scores site is hooked, so this layer computes attention explicitly (eager)", getattr(module, "layer_idx", "?"))
            module.__dict__["_clamp_said_eager"] = True
        if attention_mask is None:
            allowed = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        elif attention_mask.dtype == torch.bool:
            allowed = attention_mask
        else:
            allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
        scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
        scores = s["attn_scores"](scores.masked_fill(~allowed, float("-inf")))
        if s["attn_scores"].active:  # hooks must not un-mask the future
            scores = scores.masked_fill(~allowed, float("-inf"))
        pattern = s["pattern"](scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype))
        z = torch.matmul(F.dropout(pattern, p=dropout, training=module.training), v)
    else:
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=attention_mask is None and tq > 1)
    return s["z"](z).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, clamp_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


# --------------------------------------------------------------------------- the adapter


class HFSiteModel(SiteModelMixin, nn.Module):
    """A ``transformers`` causal LM (``.hf``) whose activations are named :class:`Site` s.

    ``forward(tokens) -> logits [batch, pos, vocab]``, like :class:`models.Transformer`; the
    weights stay the Hugging Face model's own (``model.hf.save_pretrained(...)`` works).
    """

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        c = hf.config
        if c.model_type not in LAYOUTS:
            raise ValueError(f"no site layout for transformers model_type {c.model_type!r}; supported: {sorted(LAYOUTS)}")
        layout = LAYOUTS[c.model_type]
        n_heads = c.num_attention_heads
        d_head = getattr(c, "head_dim", None) or c.hidden_size // n_heads
        parallel = bool(getattr(c, "use_parallel_residual", False))
        d_mlp = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * c.hidden_size
        self.cfg = HFSiteConfig(
            arch=c.model_type, n_layers=c.num_hidden_layers, n_heads=n_heads, d_model=c.hidden_size, d_head=d_head,
            d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, d_out=c.vocab_size, normalization=layout.normalization,
        )
        self.n_layers, self.n_heads = self.cfg.n_layers, n_heads
        self.layout = layout
        _register_attention()
        hf.set_attn_implementation(ATTN_IMPLEMENTATION)
        self.hf = hf

        dm = {"d_model": c.hidden_size}
        self.embed = self._bind_output(_get(hf, layout.embed), Site(SiteInfo("embed", ("batch", "pos", "d_model"), dm)))
        self.layer_sites = nn.ModuleList()
        for l, layer in enumerate(_get(hf, layout.layers)):
            sites = self._layer_sites(l, n_heads, d_head, c.hidden_size, d_mlp, parallel, layer)
            self.layer_sites.append(sites)
            attn, mlp = _get(layer, layout.attn), _get(layer, layout.mlp)
            proj, mlp_proj = _get(attn, layout.attn_proj), _get(mlp, layout.mlp_proj)
            for m in (layer, attn, proj, mlp, mlp_proj):
                m.__dict__["_clamp_sites"] = sites
            attn.__dict__["_clamp_layer"] = layer
            proj.__dict__["_clamp_d_head"], proj.__dict__["_clamp_conv1d"] = d_head, layout.conv1d
            layer.register_forward_pre_hook(_layer_pre, with_kwargs=True)
            layer.register_forward_hook(_layer_post)
            attn.register_forward_hook(_attn_post)
            proj.register_forward_hook(_result_post)
            mlp.register_forward_hook(_mlp_post)
            mlp_proj.register_forward_pre_hook(_mlp_hidden_pre)
        self.final_resid = self._bind_output(_get(hf, layout.final_norm), Site(SiteInfo("final_resid", ("batch", "pos", "d_model"), dm)))
        self.logits = self._bind_output(hf.get_output_embeddings(), Site(SiteInfo("logits", ("batch", "pos", "d_out"), {"d_out": c.vocab_size})))

    @staticmethod
    def _bind_output(module: nn.Module, site: Site) -> Site:
        module.__dict__["_clamp_site"] = site
        module.register_forward_hook(_output_site)
        return site

    @staticmethod
    def _layer_sites(l: int, h: int, dh: int, dm: int, d_mlp: int, parallel: bool, layer: nn.Module) -> nn.ModuleDict:
        p = f"layer{l}."
        head = {"head": h, "d_head": dh}
        resid = ("batch", "pos", "d_model")
        sites = {
            "resid_pre": SiteInfo(p + "resid_pre", resid, {"d_model": dm}, l),
            "q": SiteInfo(p + "q", ("batch", "head", "pos", "d_head"), head, l),
            "k": SiteInfo(p + "k", ("batch", "head", "pos", "d_head"), head, l),
            "v": SiteInfo(p + "v", ("batch", "head", "pos", "d_head"), head, l),
            "attn_scores": SiteInfo(p + "attn_scores", ("batch", "head", "q_pos", "k_pos"), {"head": h}, l),
            "pattern": SiteInfo(p + "pattern", ("batch", "head", "q_pos", "k_pos"), {"head": h}, l),
            "z": SiteInfo(p + "z", ("batch", "head", "pos", "d_head"), head, l),
            "result": SiteInfo(p + "result", ("batch", "head", "pos", "d_model"), {"head": h, "d_model": dm}, l),
            "attn_out": SiteInfo(p + "attn_out", resid, {"d_model": dm}, l),
        }
        # resid_mid is edited through attn_out; it does not exist with parallel attention + MLP, and
        # GPT-NeoX drops out the attention output after its module, where the edit could not follow
        drop = getattr(layer, "post_attention_dropout", None)
        if not parallel and not (isinstance(drop, nn.Dropout) and drop.p > 0):
            sites["resid_mid"] = SiteInfo(p + "resid_mid", resid, {"d_model": dm}, l)
        sites["mlp_hidden"] = SiteInfo(p + "mlp_hidden", ("batch", "pos", "d_mlp"), {"d_mlp": d_mlp}, l)
        sites["mlp_out"] = SiteInfo(p + "mlp_out", resid, {"d_model": dm}, l)
        sites["resid_post"] = SiteInfo(p + "resid_post", resid, {"d_model": dm}, l)
        return nn.ModuleDict({k: Site(v) for k, v in sites.items()})

    # ------------------------------------------------------------------ weights the metrics read
    @property
    def W_E(self) -> nn.Module:
        """Token embedding module (``.weight`` is ``[d_vocab, d_model]``)."""
        return _get(self.hf, self.layout.embed)

    @property
    def W_U(self) -> torch.Tensor:
        """``[d_model, d_vocab]`` unembedding."""
        return self.hf.get_output_embeddings().weight.T

    @property
    def ln_final(self) -> nn.Module:
        return _get(self.hf, self.layout.final_norm)

    def ov_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W_V [L, H, d_model, d_head]`` and ``W_O [L, H, d_head, d_model]`` (per query head)."""
        c, lay = self.cfg, self.layout
        w_v, w_o = [], []
        for layer in _get(self.hf, lay.layers):
            attn = _get(layer, lay.attn)
            proj = _get(attn, lay.attn_proj)
            w_v.append(lay.w_v(attn, c.n_heads, c.d_head))
            w_o.append((proj.weight if lay.conv1d else proj.weight.T).reshape(c.n_heads, c.d_head, c.d_model))
        return torch.stack(w_v), torch.stack(w_o)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor | None = None, feature_mask: torch.Tensor | None = None) -> torch.Tensor:
        if features is not None:
            raise ValueError(f"{self.cfg.arch} models take token ids only; this batch has continuous `features` (use models.Transformer with d_feature > 0)")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds the model's {self.cfg.n_ctx} positions")
        return self.hf(input_ids=tokens, use_cache=False).logits

