"""clamp.metrics.null: head scores of untrained models, the bar a head must clear to count as formed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clamp.cli import main
from clamp.metrics import heads
from clamp.metrics.callback import EmergenceCallback
from clamp.metrics.null import NullBaseline, null_scores
from helpers import bursty_datamodule, tiny_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def null() -> NullBaseline:
    dm = bursty_datamodule()
    return null_scores(tiny_module(dm), dm, EmergenceCallback(probe_size=32, causal=False), n=4)


def test_shapes_and_quantiles(null: NullBaseline) -> None:
    assert null.seeds == [0, 1, 2, 3]
    assert null.scores["task/prev_token"].shape == (4, 2, 2)  # seeds x layers x heads of tiny_module
    assert {"task/label_to_exemplar", "task/query_to_match"} <= set(null.scores)
    lm = null.layer_max("task/prev_token")
    assert lm.shape == (4, 2) and np.allclose(lm, null.scores["task/prev_token"].max(-1))
    thr = null.threshold("task/prev_token", 0.95)
    assert thr.shape == (2,) and (thr <= lm.max(0) + 1e-12).all() and (thr >= np.median(lm, 0) - 1e-12).all()
    data = null.to_dict()
    entry = data["metrics"]["task/prev_token"]
    assert len(entry["layer_max"]) == 2 and len(entry["layer_max"][0]) == 4
    assert set(entry["layer_max_quantiles"]) == {"q50", "q95", "q99"} and np.array(entry["head_quantiles"]["q95"]).shape == (2, 2)
    with pytest.raises(KeyError, match="no metric 'nope'; valid:"):
        null.threshold("nope")


def test_a_perfect_previous_token_head_clears_the_null(null: NullBaseline) -> None:
    t = 5
    uniform = torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]
    perfect = torch.zeros(t, t)
    perfect[0, 0] = 1.0
    perfect[torch.arange(1, t), torch.arange(t - 1)] = 1.0
    layer0 = torch.stack([perfect, uniform])[None].expand(8, 2, t, t)  # head 0 perfect, head 1 uniform
    layer1 = torch.stack([uniform, uniform])[None].expand(8, 2, t, t)
    scores = heads.previous_token_score([layer0, layer1])
    assert scores[0, 0] == pytest.approx(1.0)
    assert (null.threshold("task/prev_token", 0.99) < 1.0).all()  # untrained models are below a perfect head
    formed = null.formed("task/prev_token", scores, q=0.95)
    assert formed[0, 0] and formed.sum() == 1
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        null.formed("task/prev_token", np.zeros(3))


def test_deterministic_for_seeds_and_leaves_the_global_rng_alone(null: NullBaseline, tmp_path: Path) -> None:
    dm = bursty_datamodule()
    module = tiny_module(dm)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    again = null_scores(module, dm, EmergenceCallback(probe_size=32, causal=False), seeds=[0, 1, 2, 3])
    assert torch.rand(1) == before
    for m in null.scores:
        np.testing.assert_array_equal(again.scores[m], null.scores[m])
    other = null_scores(tiny_module(dm), dm, EmergenceCallback(probe_size=32, causal=False), seeds=[7])
    assert not np.allclose(other.scores["task/prev_token"][0], null.scores["task/prev_token"][0])
    loaded = NullBaseline.load(null.write(tmp_path))
    np.testing.assert_allclose(loaded.threshold("task/prev_token"), null.threshold("task/prev_token"))


def test_cli_writes_null_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = ["--config", str(ROOT / "experiments" / "induction_default.yaml"), "--data.eval_size", "32",
              "--model.transformer.d_model", "16", "--model.transformer.n_heads", "2"]  # fmt: skip
    main(["null", *config, "--n", "2", "--out", str(tmp_path / "null")])
    data = json.loads((tmp_path / "null" / "null.json").read_text())
    assert data["seeds"] == [0, 1] and np.array(data["metrics"]["task/query_to_match"]["scores"]).shape == (2, 2, 2)
    out = capsys.readouterr().out
    assert "| task/query_to_match | 1 |" in out and "null baseline written to" in out
    with pytest.raises(SystemExit):
        main(["null", *config, "--n", "0"])
    assert "--n 0: must be >= 1" in capsys.readouterr().err
