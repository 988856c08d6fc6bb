"""Sweeps, ensembles and the end of fit keep every guarantee `clamp fit` gives (issue 23): non-finite
intervention values refused at bind time, a diverged ensemble member stopped alone, invalid members
named without failing their siblings, any batchable DataModule, and SIGTERM during the end of fit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clamp.interventions import InterventionEngine
from clamp.interventions.ops import make_op
from models import Transformer, TransformerConfig


# ---------------------------------------------------------------------------------- non-finite intervention values
def test_a_constant_with_nonfinite_values_is_refused_naming_the_file_and_the_count(tmp_path: Path) -> None:
    values = np.zeros(16, dtype=np.float32)
    values[[2, 5, 7]] = [np.nan, np.inf, -np.inf]
    np.save(tmp_path / "bad.npy", values)
    with pytest.raises(ValueError, match=r"`value`=.*bad\.npy.*3 of 16 values are not finite"):
        make_op({"kind": "constant", "value": str(tmp_path / "bad.npy")})
    with pytest.raises(ValueError, match=r"`value`=\[1\.0, nan\]: 1 of 2 values are not finite"):
        make_op({"kind": "constant", "value": [1.0, math.nan]})
    make_op({"kind": "constant", "value": [1.0, 2.0]})  # finite values pass


@pytest.mark.parametrize("op", [{"kind": "scale", "k": math.inf}, {"kind": "scale", "k": math.nan}, {"kind": "noise", "std": math.nan}, {"kind": "noise", "std": math.inf}])
def test_nonfinite_op_parameters_are_refused(op: dict) -> None:
    field = "k" if op["kind"] == "scale" else "std"
    with pytest.raises(ValueError, match=rf"op '{op['kind']}' field `{field}`=(inf|nan): must be a finite number"):
        make_op(op)


def test_until_on_a_nan_metric_is_an_error_naming_the_metric() -> None:
    """NaN crosses no threshold: without the check the clamp never releases and the run ends complete."""
    model = Transformer(TransformerConfig(n_layers=1, n_heads=2, d_model=16).resolved(d_vocab=8, n_ctx=6))
    engine = InterventionEngine(model, [{"site": "layer0.head0.z", "op": {"kind": "zero"}, "schedule": {"until": {"metric": "val/ic/loss", "threshold": 0.5, "mode": "below"}}}])
    engine.observe(6, {"val/ic/loss": 0.9})  # finite, not crossed: still on
    assert engine.released == {}
    with pytest.raises(ValueError, match=r"until\.metric='val/ic/loss' is nan.*can never be decided"):
        engine.observe(12, {"val/ic/loss": torch.tensor(float("nan"))})
