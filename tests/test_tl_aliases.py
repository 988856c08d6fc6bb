"""TransformerLens hook names are aliases of sites: the same activation, the same intervention."""

from __future__ import annotations

import torch

from clamp.interventions.engine import intervene
from models import Transformer, TransformerConfig
from models.sites import from_transformer_lens


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(n_layers=2, n_heads=2, d_model=8, attn_only=False).resolved(d_vocab=5, n_ctx=4)).eval()


def test_every_mapped_hook_name_is_a_site_of_the_model() -> None:
    m = _model()
    names = {s.name for s in m.sites()}
    for hook in ("hook_embed", "hook_pos_embed", "blocks.1.hook_resid_pre", "blocks.0.attn.hook_q", "blocks.0.attn.hook_pattern",
                 "blocks.1.attn.hook_z", "blocks.0.attn.hook_result", "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid",
                 "blocks.0.mlp.hook_post", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"):
        assert from_transformer_lens(hook) in names, hook
    assert from_transformer_lens("layer0.pattern") == "layer0.pattern"
    assert [s.name for s, _ in m.resolve_sites("blocks.*.attn.hook_pattern")] == ["layer0.pattern", "layer1.pattern"]


def test_an_intervention_on_a_hook_name_equals_the_same_on_the_site() -> None:
    m = _model()
    tokens = torch.randint(0, 5, (3, 4))
    with torch.no_grad():
        clean = m(tokens)
        with intervene(m, [{"site": "blocks.1.attn.hook_z", "op": {"kind": "zero"}}]):
            by_hook = m(tokens)
        with intervene(m, [{"site": "layer1.z", "op": {"kind": "zero"}}]):
            by_site = m(tokens)
    torch.testing.assert_close(by_hook, by_site)
    assert not torch.allclose(by_hook, clean)
    _, cache = m.run_with_cache(tokens, names=["blocks.0.attn.hook_pattern"])
    _, ref = m.run_with_cache(tokens, names=["layer0.pattern"])
    torch.testing.assert_close(next(iter(cache.values())), ref["layer0.pattern"])


def test_clamp_sites_prints_the_task_positions_and_refuses_a_missing_config_in_one_line(capsys, tmp_path) -> None:
    import pytest

    from clamp.cli import main

    main(["sites", "--config", "experiments/induction_default.yaml"])
    out = capsys.readouterr().out
    assert "pos 0   exemplar 1 (features)" in out and "pos 1   label 1 (token)" in out and "query exemplar" in out
    assert "blocks.0.attn.hook_pattern = layer0.pattern" in out
    with pytest.raises(SystemExit) as e:
        main(["sites", "--config", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "no such file" in err
