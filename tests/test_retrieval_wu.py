"""Wu et al.'s retrieval score (greedy decoding, token match, > 50 % recall filter) on a hand-built model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clamp.metrics import heads
from clamp.metrics.probes import needle_batch
from clamp.metrics.retrieval import greedy_decode_needle, wu_retrieval_score
from models import Transformer, TransformerConfig
from models.hf import HFModelConfig

V, T = 64, 40


class OracleCopier(torch.nn.Module):
    """One layer, three heads, built by hand for a needle batch.

    When predicting the second copy's token ``j`` (query ``q + j - 1``) the model emits the token
    at the first copy's position ``p + j`` (computed from positions, so it also holds while it
    decodes), except on the steps listed in ``wrong[row]``, where it emits that token + 1. Head 0
    attends exactly to ``p + j`` (a perfect retrieval head), head 1 to ``p + j - 1`` (inside the
    needle, another token), head 2 to position 0 (outside the needle).
    """

    def __init__(self, needle_pos: torch.Tensor, needle_len: int, wrong: dict[int, set[int]]) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(n_layers=1, n_heads=3)
        self._dummy = torch.nn.Parameter(torch.zeros(1))
        self.p, self.L, self.wrong = needle_pos.long(), needle_len, wrong

    def run_with_cache(self, tokens: torch.Tensor, names=None, allow_missing_features=False):  # noqa: ANN001
        n, t = tokens.shape
        q = T - self.L
        logits = torch.zeros(n, t, V)
        pattern = torch.zeros(n, 3, t, t)
        pattern[:, :, :, 0] = 1.0
        for r in range(n):
            for i in range(q, min(t, T - 1)):
                j = i - q + 1
                s = int(self.p[r]) + j
                tok = int(tokens[r, s]) + (1 if j in self.wrong.get(r, set()) else 0)
                logits[r, i, tok % V] = 1.0
                pattern[r, :, i] = 0.0
                pattern[r, 0, i, s] = 1.0
                pattern[r, 1, i, s - 1] = 1.0
                pattern[r, 2, i, 0] = 1.0
        return logits, {"layer0.pattern": pattern}


def _batch(n: int, needle_len: int) -> dict[str, torch.Tensor]:
    hay = torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(0))
    needles = torch.stack([torch.randperm(V, generator=torch.Generator().manual_seed(r))[:needle_len] for r in range(n)])  # distinct tokens
    return needle_batch(hay, needle_len, V, np.random.default_rng(0), needles=needles)


def test_perfect_head_scores_one_per_decode_step_and_wrong_token_heads_zero() -> None:
    b = _batch(4, 8)
    r = wu_retrieval_score(OracleCopier(b["needle_pos"], 8, {}), b)
    assert r.counted.all() and r.recall.tolist() == [1.0] * 4
    assert r.score[0, 0].item() * 8 / 7 == pytest.approx(1.0)  # 7 hits in 7 decode steps; 7/8 of the needle
    assert r.score[0, 1].item() == 0.0  # top attention inside the needle, on another token
    assert r.score[0, 2].item() == 0.0  # top attention outside the needle


def test_right_position_but_different_generated_token_scores_zero() -> None:
    b = _batch(2, 8)
    r = wu_retrieval_score(OracleCopier(b["needle_pos"], 8, {1: {3}}), b)  # row 1 gets step 3 wrong: recall 6/7
    assert r.counted.all()
    assert r.per_trial[0, 0, 0].item() == pytest.approx(7 / 8)
    assert r.per_trial[1, 0, 0].item() == pytest.approx(6 / 8)  # the wrong step scores 0 though head 0 sits on the needle token
    assert r.score[0, 0].item() == pytest.approx((7 / 8 + 6 / 8) / 2)


def test_recall_filter_keeps_only_trials_above_half() -> None:
    b = _batch(3, 9)  # 8 decode steps
    wrong = {1: {1, 2, 3, 4}, 2: {1, 2, 3}}  # row 1: recall 4/8 = 0.5 (excluded), row 2: 5/8 (counted)
    r = wu_retrieval_score(OracleCopier(b["needle_pos"], 9, wrong), b)
    assert r.recall.tolist() == pytest.approx([1.0, 0.5, 0.625])
    assert r.counted.tolist() == [True, False, True]
    assert r.score[0, 0].item() == pytest.approx((8 / 9 + 5 / 9) / 2)
    none = wu_retrieval_score(OracleCopier(b["needle_pos"], 9, {r_: set(range(1, 9)) for r_ in range(3)}), b)
    assert not none.counted.any() and torch.isnan(none.score).all()  # no trial counted: not measurable, not 0


def test_half_the_trials_right_gives_0875_where_the_teacher_forced_score_gives_050() -> None:
    b = _batch(4, 8)
    model = OracleCopier(b["needle_pos"], 8, {2: set(range(1, 8)), 3: set(range(1, 8))})
    wu = wu_retrieval_score(model, b)
    assert wu.counted.tolist() == [True, True, False, False]
    assert wu.score[0, 0].item() == pytest.approx(0.875)
    logits, cache = model.run_with_cache(b["tokens"])
    old = heads.teacher_forced_copy_score(cache["layer0.pattern"], b["tokens"], b["copy_src"], logits, b["loss_mask"])
    assert old[0].item() == pytest.approx(0.50)


@pytest.mark.parametrize("kind", ["transformer", "gpt_neox"])
def test_greedy_decode_is_the_models_own_argmax_on_its_own_output(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "transformer":
        model = Transformer(TransformerConfig(n_layers=2, n_heads=2, d_model=16).resolved(d_vocab=V, n_ctx=T)).eval()
    else:
        cfg = {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 16, "intermediate_size": 32}
        model = HFModelConfig("gpt_neox", cfg).build(V, T).eval()
    b = _batch(3, 6)
    d = greedy_decode_needle(model, b)
    q = T - 6
    assert d.sequence.shape == (3, T) and torch.equal(d.sequence[:, : q + 1], b["tokens"][:, : q + 1])
    logits, cache = model.run_with_cache(d.sequence, names=["layer*.pattern"], allow_missing_features=True)
    assert torch.equal(d.generated, logits[:, q : T - 1].argmax(-1))  # each decoded token is the argmax given the decoded prefix
    pats = torch.stack([cache["layer0.pattern"], cache["layer1.pattern"]], dim=1)[:, :, :, q : T - 1]  # [N, L, H, steps, T]
    assert torch.equal(d.top, pats.argmax(-1).permute(0, 3, 1, 2))
    assert not model.training


def test_without_first_copy_leaves_nothing_to_retrieve() -> None:
    from clamp.metrics import curves
    from clamp.metrics.probes import without_first_copy

    b = _batch(4, 8)
    hay = torch.randint(0, V, (4, T), generator=torch.Generator().manual_seed(0))  # the haystack _batch used
    ctrl = without_first_copy(b, hay)
    rows, cols = torch.arange(4)[:, None], b["needle_pos"][:, None] + torch.arange(8)
    assert torch.equal(ctrl["tokens"][rows, cols], hay[rows, cols]) and torch.equal(ctrl["tokens"][:, -8:], b["tokens"][:, -8:])
    assert torch.equal(ctrl["loss_mask"], b["loss_mask"]) and "copy_src" not in ctrl
    model = OracleCopier(b["needle_pos"], 8, {})  # copies whatever sits at the first copy's positions
    acc = curves.accuracy(model.run_with_cache(b["tokens"])[0], b["targets"], b["loss_mask"])
    acc_ctrl = curves.accuracy(model.run_with_cache(ctrl["tokens"])[0], ctrl["targets"], ctrl["loss_mask"])
    assert float(acc) == 1.0 and float(acc_ctrl) < 0.2


def test_ablation_script_reports_control_and_intervals_over_seeds() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "experiments" / "natural_text" / "retrieval_ablation.py"
    spec = importlib.util.spec_from_file_location("retrieval_ablation", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    cfg = {"n_layer": 2, "n_head": 2, "n_embd": 16, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    models = [(f"s{i}", HFModelConfig("gpt2", cfg).build(V, T).eval(), torch.randint(0, V, (16, T), generator=torch.Generator().manual_seed(i))) for i in range(2)]
    one = mod.analyse(models[:1], ks=[1, 2], n_random=3, seeds=[0, 1, 2], needle_len=6, source="text")
    agg = one["aggregate"]
    assert agg["over"] == "needle seeds of one trained model" and agg["acc"]["n"] == 3 and agg["acc"]["low"] is not None
    s0 = one["runs"][0]["seeds"][0]
    assert s0["retrieval_gain"] == pytest.approx(s0["acc"] - s0["acc_no_first_copy"])
    assert s0["ranked_by"] in ("wu", "teacher_forced_copy") and len(s0["tests"]) == 2
    assert agg["by_k"]["2"]["top_minus_random_acc"]["n"] == 3
    two = mod.analyse(models, ks=[1], n_random=2, seeds=[0, 1, 2], needle_len=6, source="random")
    assert two["aggregate"]["over"] == "training seeds (runs)" and two["aggregate"]["acc"]["n"] == 2
