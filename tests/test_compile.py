"""torch.compile with interventions attached: the compiled model follows every change of the clamps."""

from __future__ import annotations

import copy

import pytest
import torch

from clamp.interventions.engine import InterventionEngine
from clamp.training import TrainingModule
from models import TransformerConfig
from synthetic_data.base import TaskSpec


def test_compiled_model_tracks_clamps_as_they_change() -> None:
    torch.manual_seed(0)
    spec = TaskSpec(d_vocab=20, n_ctx=8)
    module = TrainingModule(TransformerConfig(n_layers=2, n_heads=2, d_model=16), task=spec, compile="aot_eager")
    assert module.model._compiled_call_impl is not None
    eager = copy.deepcopy(module.model)
    eager.__dict__.pop("_compiled_call_impl", None)  # the twin runs uncompiled
    x = torch.randint(0, 20, (3, 8))
    clamp = [{"site": "layer0.head1.z", "op": {"kind": "scale", "k": 0.0}, "schedule": {"start": 1, "stop": 3, "ramp": 2}}]
    engines = [InterventionEngine(m, clamp) for m in (module.model, eager)]
    for step in range(4):  # alpha 0 (no hook), 0.5, 1, 0 again
        for e in engines:
            e.update(step)
        got, want = module.model(x), eager(x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        got.square().mean().backward()
        want.square().mean().backward()
    for p, q in zip(module.model.parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="model.compile='nope'; valid torch.compile backends: .*inductor"):
        TrainingModule(TransformerConfig(n_layers=1, n_heads=2, d_model=16), task=spec, compile="nope")
