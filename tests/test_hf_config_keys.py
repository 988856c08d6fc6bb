"""A misspelt Hugging Face config key is refused with the closest valid names (issue 18.8)."""

from __future__ import annotations

import pytest

from clamp.training import TrainingModule
from models import TransformerConfig
from models.hf import HFModelConfig
from synthetic_data.base import TaskSpec


def test_misspelt_keys_name_the_closest_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"model.hf.config.n_layers: not a GPT2Config setting; did you mean 'n_layer'"):
        HFModelConfig("gpt2", {"n_layers": 2, "n_head": 2, "n_embd": 16}).validate()
    with pytest.raises(ValueError, match=r"model.hf.config.num_layers: not a LlamaConfig setting; did you mean .*num_hidden_layers"):
        HFModelConfig("llama", {"num_layers": 2}).validate()


def test_valid_keys_including_aliases_and_common_settings_pass() -> None:
    HFModelConfig("gpt2", {"n_layer": 2, "n_head": 2, "n_embd": 16, "num_hidden_layers": 2, "resid_pdrop": 0.0}).validate()
    HFModelConfig("gpt_neox", {"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}).validate()


def test_hf_and_transformer_together_are_refused() -> None:
    spec = TaskSpec(d_vocab=16, n_ctx=8)
    hf = HFModelConfig("gpt2", {"n_layer": 1, "n_head": 2, "n_embd": 16})
    with pytest.raises(ValueError, match="model.hf and model.transformer are both set"):
        TrainingModule(transformer=TransformerConfig(n_layers=3), task=spec, hf=hf)
    with pytest.raises(ValueError, match="model.hf and model.transformer are both set"):  # even one equal to the defaults
        TrainingModule(transformer=TransformerConfig(), task=spec, hf=hf)
    assert TrainingModule(task=spec).model.cfg.n_layers == TransformerConfig().n_layers  # neither given: the default transformer
    assert TrainingModule(task=spec, hf=hf).model.cfg.n_layers == 1
