"""Shared fixtures: tiny models and one CPU thread (small tensors run fastest and most reproducibly that way)."""

from __future__ import annotations

import pytest
import torch

from models import Transformer, TransformerConfig

torch.set_num_threads(1)


@pytest.fixture
def tiny_model() -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(n_layers=2, n_heads=4, d_model=32, attn_only=False).resolved(d_vocab=16, n_ctx=12)
    return Transformer(cfg)
