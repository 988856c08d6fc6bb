"""Needle-in-a-haystack probe and the top-k vs random-k retrieval-head ablation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clamp.metrics import heads
from clamp.metrics.probes import needle_batch, text_span_needles, top_vs_random_ablation
from models.hf import HFModelConfig


def test_needle_batch_marks_exactly_the_copy_steps() -> None:
    hay = torch.randint(0, 50, (6, 40), generator=torch.Generator().manual_seed(0))
    b = needle_batch(hay, 5, 50, np.random.default_rng(0))
    assert int(b["loss_mask"].sum()) == 6 * 4  # needle tokens 2..5 of the second copy
    rows, pos = b["loss_mask"].nonzero(as_tuple=True)
    src = b["copy_src"][rows, pos]
    assert torch.equal(b["tokens"][rows, src], b["targets"][rows, pos])  # the source holds the token to predict
    assert torch.all(src < 40 // 2 + 5) and torch.all(pos >= 35)
    assert torch.equal(b["tokens"][:, 35:], b["tokens"][torch.arange(6)[:, None], b["needle_pos"][:, None] + torch.arange(5)])
    untouched = torch.ones_like(hay, dtype=torch.bool)
    untouched[:, 35:] = False
    for r in range(6):
        untouched[r, b["needle_pos"][r] : b["needle_pos"][r] + 5] = False
    assert torch.equal(b["tokens"][untouched], hay[untouched])  # the rest is the real haystack
    with pytest.raises(ValueError, match="needle_len=20 must be in 2..10"):
        needle_batch(hay, 20, 50, np.random.default_rng(0))


def test_needle_batch_takes_given_needles() -> None:
    hay = torch.randint(0, 50, (4, 40), generator=torch.Generator().manual_seed(0))
    given = torch.arange(20).view(4, 5) + 100  # tokens that cannot come from the haystack
    b = needle_batch(hay, 5, 50, np.random.default_rng(0), needles=given)
    assert torch.equal(b["tokens"][:, 35:], given)
    assert torch.equal(b["tokens"][torch.arange(4)[:, None], b["needle_pos"][:, None] + torch.arange(5)], given)
    with pytest.raises(ValueError, match=r"needles must have shape \[4, 5\]"):
        needle_batch(hay, 5, 50, np.random.default_rng(0), needles=given[:, :3])


def test_text_span_needles_are_spans_of_another_row() -> None:
    hay = torch.arange(6 * 40).view(6, 40)  # every token says where it came from
    needles = text_span_needles(hay, 5, np.random.default_rng(0))
    assert needles.shape == (6, 5)
    rows, cols = needles // 40, needles % 40
    assert torch.equal(rows, ((torch.arange(6) + 3) % 6)[:, None].expand(6, 5))  # borrowed from row i + N/2
    assert torch.all(cols[:, 1:] - cols[:, :-1] == 1)  # a contiguous span
    from clamp.metrics.callback import EmergenceCallback

    with pytest.raises(ValueError, match="needle_from='words'; valid: 'random', 'text'"):
        EmergenceCallback(needle_len=4, needle_from="words")


def test_top_vs_random_ablation_reports_both_sides() -> None:
    torch.manual_seed(0)
    model = HFModelConfig("gpt2", {"n_layer": 2, "n_head": 2, "n_embd": 16, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}).build(30, 32).eval()
    batch = needle_batch(torch.randint(0, 30, (8, 32), generator=torch.Generator().manual_seed(1)), 4, 30, np.random.default_rng(1))
    scores = torch.tensor([[0.1, 0.9], [0.0, 0.5]])
    r = top_vs_random_ablation(model, batch, scores, k=2, n_random=3)
    assert r["top"]["heads"] == ["L0H1", "L1H1"] and len(r["random"]) == 3
    assert r["top"]["loss"] != r["baseline"]["loss"]
    every = top_vs_random_ablation(model, batch, scores, k=4, n_random=1)  # all heads: top and random coincide
    assert every["top"]["loss"] == pytest.approx(every["random"][0]["loss"])
    assert heads.all_head_scores(model, batch)["teacher_forced_copy"].shape == (2, 2)


def test_emergence_callback_refuses_fsdp_clearly() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from clamp import EmergenceCallback

    with pytest.raises(ValueError, match="FSDP.*trainer.strategy: ddp"):
        EmergenceCallback().setup(SimpleNamespace(strategy=FSDPStrategy()), None, "fit")  # type: ignore[arg-type]


def test_needle_control_scores_the_batch_without_its_first_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: curves/needle/acc_no_first_copy is accuracy on the control batch (first copy overwritten by the
    text it hid): the forward it runs sees exactly that batch, and the value equals an independent recomputation."""
    from contextlib import ExitStack

    from clamp import EmergenceCallback
    from clamp.metrics import curves
    from clamp.metrics.probes import without_first_copy

    torch.manual_seed(0)
    model = HFModelConfig("gpt2", {"n_layer": 2, "n_head": 2, "n_embd": 16, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}).build(30, 32).eval()
    hay = torch.randint(0, 30, (16, 32), generator=torch.Generator().manual_seed(1))
    batch = needle_batch(hay, 6, 30, np.random.default_rng(1))
    control = without_first_copy(batch, hay)
    assert not torch.equal(control["tokens"], batch["tokens"])
    cb = EmergenceCallback(needle_len=6)
    cb._probes = {"task": {"tokens": hay}, "needle": batch}
    seen: list[torch.Tensor] = []
    real = heads.forward_with_cache
    monkeypatch.setattr(heads, "forward_with_cache", lambda m, b, *a, **k: (seen.append(b["tokens"]), real(m, b, *a, **k))[1])
    with torch.no_grad():
        out = cb._needle_control(model, batch, 0.75, ExitStack(), None)
        expected = float(curves.accuracy(real(model, control)[0], control["targets"], control["loss_mask"]))
    assert len(seen) == 1 and torch.equal(seen[0], control["tokens"])
    assert out["curves/needle/acc_no_first_copy"] == pytest.approx(expected)
    assert out["curves/needle/retrieval_gain"] == pytest.approx(0.75 - expected)
