"""Induction scores against their published definitions, on a real model's attention patterns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clamp.metrics.heads import (
    all_head_scores,
    forward_with_cache,
    induction_score,
    induction_strength,
    repeated_tokens_induction_score,
)
from models import Transformer, TransformerConfig
from synthetic_data import BurstyClassification, RepeatedTokens


def _model(d_vocab: int, n_ctx: int, d_feature: int = 0, d_out: int = 0, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(n_layers=2, n_heads=4, d_model=32, init_std=0.5)  # large init: peaked, varied patterns
    return Transformer(cfg.resolved(d_vocab=d_vocab, n_ctx=n_ctx, d_feature=d_feature, d_out=d_out)).eval()


def test_repeated_tokens_induction_score_is_the_literature_definition_on_real_patterns() -> None:
    task = RepeatedTokens(vocab_size=20, seq_len=32, min_period=4, max_period=12)
    batch = task.sample(np.random.default_rng(0), 64)
    model = _model(20, 32)
    _, cache = forward_with_cache(model, batch)
    for layer in range(2):
        p = cache[f"layer{layer}.pattern"]
        got = repeated_tokens_induction_score(p, batch["repeat_start"], batch["period"])
        # the definition, literally: rows in the second copy, key i - period + 1
        want = torch.zeros(4)
        for h in range(4):
            vals = [p[b, h, i, i - int(batch["period"][b]) + 1] for b in range(64) for i in range(int(batch["repeat_start"][b]), 32)]
            want[h] = torch.stack(vals).mean()
        torch.testing.assert_close(got, want)
        # the copy_src pointer selects other rows (one row before the repeat, not the last row)
        assert not torch.allclose(induction_score(p, batch["copy_src"]), want)
    # the probe's `induction` score is this one whenever the batch carries the repeat structure
    scores = all_head_scores(model, batch)
    torch.testing.assert_close(scores["induction"][1], repeated_tokens_induction_score(cache["layer1.pattern"], batch["repeat_start"], batch["period"]))


def test_perfect_induction_head_scores_one_but_not_through_copy_src() -> None:
    task = RepeatedTokens(vocab_size=20, seq_len=32, min_period=4, max_period=12)
    b = task.sample(np.random.default_rng(1), 32)
    t = 32
    p = torch.zeros(32, 1, t, t)
    for n in range(32):
        rs, per = int(b["repeat_start"][n]), int(b["period"][n])
        for i in range(t):
            p[n, 0, i, i - per + 1 if i >= rs else i] = 1.0
    assert repeated_tokens_induction_score(p, b["repeat_start"], b["period"]).item() == pytest.approx(1.0)
    # fed the next-token pointer, a perfect head reads low: row repeat_start - 1 comes in, the last row drops out
    assert induction_score(p, b["copy_src"]).item() < 0.99


def _bursty_batch() -> dict[str, torch.Tensor]:
    task = BurstyClassification(n_classes=20, dim=8, n_context=2, n_labels=5)
    task.setup(0)
    return task.sample(np.random.default_rng(0), 256, "ic")


def test_induction_strength_hand_built_patterns() -> None:
    batch = _bursty_batch()
    B, T = batch["tokens"].shape
    correct = batch["match_pos"]  # the two labels sit at 1 and 3
    other = torch.where(batch["match_pos"] == 1, torch.full_like(correct, 3), torch.full_like(correct, 1))
    p = torch.zeros(B, 4, T, T)
    p[:, :, :, 0] = 1.0
    rows = torch.arange(B)
    p[rows, 0, T - 1] = 0.0
    p[rows, 0, T - 1, correct] = 1.0  # perfect induction head
    p[rows, 1, T - 1] = 0.0
    p[rows, 1, T - 1, other] = 1.0  # anti-induction
    p[rows, 2, T - 1] = 0.0
    p[rows, 2, T - 1, correct] = 0.5
    p[rows, 2, T - 1, other] = 0.5  # 50/50: the plateau solution scores 0, not 0.5
    # head 3 attends to the query itself: no label at all -> 0
    p[rows, 3, T - 1] = 0.0
    p[rows, 3, T - 1, T - 1] = 1.0
    got = induction_strength(p, batch["query_pos"], batch["classes"], batch["feature_mask"])
    assert got.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0])


def test_induction_strength_on_real_patterns_matches_definition() -> None:
    batch = _bursty_batch()
    model = _model(6, 5, d_feature=8, d_out=5)
    scores = all_head_scores(model, batch)
    _, cache = forward_with_cache(model, batch)
    p = cache["layer1.pattern"]
    q = batch["classes"][:, -1]
    want = []
    for h in range(4):
        vals = []
        for n in range(len(q)):
            lab = {1: int(batch["classes"][n, 0]), 3: int(batch["classes"][n, 2])}
            c = sum(p[n, h, -1, j] for j, k in lab.items() if k == q[n])
            o = sum(p[n, h, -1, j] for j, k in lab.items() if k != q[n])
            vals.append(c - o)
        want.append(torch.stack(vals).mean())
    torch.testing.assert_close(scores["induction_strength"][1], torch.stack(want))
    assert scores["induction_strength"].abs().max() > 0.01  # the model's patterns are not uniform


def test_probe_interventions_and_learning_speed(tmp_path) -> None:
    import json

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from clamp import EmergenceCallback
    from clamp.interventions.engine import intervene
    from clamp.training import OptimizerConfig, TrainingModule, masked_loss_and_accuracy
    from synthetic_data import SyntheticDataModule
    from synthetic_data.base import model_inputs

    pt = [{"site": "layer0.head0.pattern", "op": {"kind": "construct", "fn": "clamp.interventions.constructors.previous_token_pattern"}}]
    no_l1 = [{"site": "layer1.head*.z", "op": {"kind": "zero"}}]
    emerge = EmergenceCallback(every_n_steps=10, probe_size=64, causal=False, heatmap_every_n_steps=0,
                               probe_interventions={"pt_clamp": pt, "no_l1": no_l1}, learning_speed_threshold=10.0)
    L.seed_everything(0, verbose=False)
    dm = SyntheticDataModule(BurstyClassification(n_classes=64, dim=16, n_context=2, n_labels=8), batch_size=16, eval_size=64, seed=0)
    module = TrainingModule(TransformerConfig(n_layers=2, n_heads=2, d_model=16), OptimizerConfig(lr=1e-3), dm.spec)
    L.Trainer(max_steps=20, val_check_interval=10, check_val_every_n_epoch=None, logger=CSVLogger(tmp_path), callbacks=[emerge],
              enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0).fit(module, datamodule=dm)
    h = emerge.history
    assert [s for s, _ in h["task/pt_clamp/loss"]] == [0, 10, 20] and "task/no_l1/acc" in h
    # the logged value is the probe's loss under the set (recomputed here), and the set applied only there
    probe = {k: v[:64] for k, v in dm.eval_set("ic").items()}
    model = module.model.eval()
    with torch.no_grad(), intervene(model, pt):
        want = float(masked_loss_and_accuracy(model(*model_inputs(probe)), probe)[0])
    assert h["task/pt_clamp/loss"][-1][1] == pytest.approx(want, rel=1e-5)
    assert h["task/pt_clamp/loss"][-1][1] != pytest.approx(h["curves/task/loss"][-1][1], rel=1e-4)
    summary = json.loads((tmp_path / "lightning_logs" / "version_0" / "summary.json").read_text())
    assert summary["sequences_per_step"] == 16
    assert summary["learning_speed"] == {"curve": "val/ic/loss", "threshold": 10.0, "step": 10, "sequences": 160}
    emerge.learning_speed_threshold = 0.0  # never reached
    assert emerge.learning_speed()["step"] is None and emerge.learning_speed()["sequences"] is None
    with pytest.raises(KeyError, match=r"probe_interventions.bad: .*layer9"):
        EmergenceCallback(probe_interventions={"bad": [{"site": "layer9.z", "op": {"kind": "zero"}}]})._check_probe_interventions(model)
