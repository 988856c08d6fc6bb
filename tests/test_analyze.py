"""`clamp analyze`: head analyses of a checkpoint, checked against direct interventions on the same model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from clamp.analyze import analyze, load_eval_batch, load_model
from clamp.cli import main
from clamp.interventions.engine import intervene
from clamp.training import masked_loss_and_accuracy
from models import Transformer, TransformerConfig
from synthetic_data.base import model_inputs

CONFIG = {
    "seed_everything": 3,
    "torch_threads": 1,
    "data": {"task": {"class_path": "synthetic_data.BurstyClassification",
                      "init_args": {"n_classes": 40, "dim": 8, "n_context": 2, "n_labels": 5}},
             "eval_size": 200},
}


def _run(tmp_path: Path) -> tuple[Path, Transformer]:
    """A run folder as `clamp fit` leaves it: config.yaml and checkpoints/last.ckpt (random weights)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    torch.manual_seed(0)
    cfg = TransformerConfig(n_layers=2, n_heads=4, d_model=16, init_std=0.3)
    model = Transformer(cfg.resolved(d_vocab=6, n_ctx=5, d_feature=8, d_out=5))
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"transformer": asdict(cfg), "task": {"d_vocab": 6, "n_ctx": 5, "d_feature": 8, "d_out": 5}},
            "global_step": 40}
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    return run, model.eval()


def _loss_acc(model, batch, items) -> tuple[float, float]:
    with torch.no_grad(), intervene(model, items):
        loss, acc = masked_loss_and_accuracy(model(*model_inputs(batch)), batch)
    return float(loss), float(acc)


def test_analyses_agree_with_direct_interventions(tmp_path: Path) -> None:
    run, model = _run(tmp_path)
    loaded = load_model(run / "checkpoints" / "last.ckpt")
    split, batch = load_eval_batch(run / "config.yaml")
    assert split == "ic" and batch["tokens"].shape[0] == 200
    r = analyze(loaded, batch)
    zero = lambda layer, hs: [{"site": f"layer{layer}.head{h}.z", "op": {"kind": "zero"}, "name": f"z{layer}{h}"} for h in hs]
    base = _loss_acc(model, batch, [])
    assert (r["base"]["loss"], r["base"]["acc"]) == pytest.approx(base, rel=1e-5)
    # every list is per head / per step, and the orders agree with the strengths
    order, s = r["strength"]["order"], r["strength"]["per_head"]
    assert sorted(order) == [0, 1, 2, 3] and all(s[a] >= s[b] for a, b in zip(order, order[1:]))
    assert (r["remove_one"][2]["loss"], r["remove_one"][2]["acc"]) == pytest.approx(_loss_acc(model, batch, zero(1, [2])), rel=1e-5)
    assert (r["keep_one"][1]["loss"], r["keep_one"][1]["acc"]) == pytest.approx(_loss_acc(model, batch, zero(1, [0, 2, 3])), rel=1e-5)
    # adding back: 0 heads = the layer ablated, all heads = the intact model, 1 head = the strongest kept alone
    assert r["add_back"][0]["loss"] == pytest.approx(_loss_acc(model, batch, zero(1, range(4)))[0], rel=1e-5)
    assert r["add_back"][-1]["loss"] == pytest.approx(base[0], rel=1e-5)
    assert r["add_back"][1]["loss"] == pytest.approx(r["keep_one"][order[0]]["loss"], rel=1e-6)
    # fraction of the strongest head's errors fixed by another head, recomputed by hand
    top, other = order[0], order[1]
    def correct(items):
        with torch.no_grad(), intervene(model, items):
            logits = model(*model_inputs(batch))
        return logits[:, -1].argmax(-1) == batch["targets"][:, -1]
    errors = ~correct(zero(1, [h for h in range(4) if h != top]))
    fixed = (correct(zero(1, [h for h in range(4) if h not in (top, other)])) & errors).sum() / errors.sum()
    got = {x["head"]: x["fraction_fixed"] for x in r["fix_strongest_errors"]["per_head"]}
    assert got[other] == pytest.approx(float(fixed)) and top not in got
    # path ablations: plain = zero-ablation; preserving both patterns and values of layer 1 would leave only
    # layer 0's direct path; preserving patterns must give exactly the clean layer-1 patterns
    plain = r["path_ablations"][0]["plain"]
    assert (plain["loss"], plain["acc"]) == pytest.approx(_loss_acc(model, batch, zero(0, [0])), rel=1e-5)
    all_row = r["path_ablations"][-1]
    assert all_row["ablated"] == "L0 all" and len(r["path_ablations"]) == 5
    assert all_row["patterns_preserved"]["loss"] != pytest.approx(all_row["plain"]["loss"], rel=1e-4)


def test_preserved_patterns_come_from_the_clean_pass(tmp_path: Path) -> None:
    run, model = _run(tmp_path)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    _, batch = load_eval_batch(run / "config.yaml")
    inputs = model_inputs(batch)
    with torch.no_grad():
        _, clean = model.run_with_cache(*inputs, names=["layer1.pattern", "layer1.v"])
        items = [{"site": "layer0.head*.z", "op": {"kind": "zero"}}]
        with intervene(model, items):
            _, ablated = model.run_with_cache(*inputs, names=["layer1.pattern", "layer1.v"])
        keep = items + [{"site": "layer1.pattern", "op": {"kind": "clamp_to_reference", "reference": ckpt}}]
        with intervene(model, keep):
            _, kept = model.run_with_cache(*inputs, names=["layer1.pattern", "layer1.v"])
    assert not torch.allclose(ablated["layer1.pattern"], clean["layer1.pattern"])  # the ablation does reach layer 1
    torch.testing.assert_close(kept["layer1.pattern"], clean["layer1.pattern"])
    torch.testing.assert_close(kept["layer1.v"], ablated["layer1.v"])  # values still see the ablation


def test_cli_writes_json_markdown_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = _run(tmp_path)
    # configs written with the DataModule as class_path/init_args read the same
    cfg = dict(CONFIG, data={"class_path": "synthetic_data.SyntheticDataModule", "init_args": CONFIG["data"]})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    main(["analyze", str(run / "checkpoints" / "last.ckpt"), "--eval_size", "64"])
    out = run / "analysis" / "step_40"  # by the checkpoint's step: last.ckpt moves on as the run continues
    assert not (run / "analysis" / "last").exists()
    result = json.loads((out / "analysis.json").read_text())
    assert result["n_eval"] == 64 and result["split"] == "ic" and result["induction_layer"] == 1
    assert (out / "analysis.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "| head | strength | remove-one acc" in printed and "| L0 all |" in printed
    with pytest.raises(SystemExit):
        main(["analyze", str(run / "checkpoints" / "last.ckpt"), "--split", "nope"])
    assert "split='nope' is not an eval split of this task; valid: ['ic', 'iw']" in capsys.readouterr().err


def test_grouped_path_ablations_split_heads_by_their_measured_previous_token_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's grouped form: previous-token heads (scored on the batch's real patterns) ablated together, the rest together."""
    import clamp.analyze as A
    from clamp.metrics import heads

    run, model = _run(tmp_path)
    _, batch = load_eval_batch(run / "config.yaml")
    pt = heads.all_head_scores(model, batch)["label_to_exemplar"][0]
    cut = float(pt.median())  # random weights: split the heads at their median score, so both groups exist
    monkeypatch.setattr(A, "PREV_TOKEN_FORMED", cut)
    groups = {g["group"]: g for g in analyze(load_model(run / "checkpoints" / "last.ckpt"), batch)["grouped_path_ablations"]}
    prev = [h for h in range(4) if float(pt[h]) > cut]
    assert groups["previous-token heads"]["heads"] == prev and groups["other heads"]["heads"] == [h for h in range(4) if h not in prev]
    zero = [{"site": f"layer0.head{h}.z", "op": {"kind": "zero"}, "name": f"z{h}"} for h in prev]
    plain = groups["previous-token heads"]["plain"]
    assert (plain["loss"], plain["acc"]) == pytest.approx(_loss_acc(model, batch, zero), rel=1e-5)
    kept = groups["previous-token heads"]["patterns_preserved"]["loss"]
    assert kept != pytest.approx(plain["loss"], rel=1e-4)  # keeping layer 1's clean patterns changes the outcome


def test_output_folder_is_named_by_the_checkpoints_step(tmp_path: Path) -> None:
    """``step_<global_step>``; a weights-only file (no step recorded) keeps its own name."""
    from clamp.analyze import _step_folder

    torch.save({"state_dict": {}, "global_step": 1234}, tmp_path / "last.ckpt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "weights.pt")
    assert _step_folder(tmp_path / "last.ckpt") == "step_1234"
    assert _step_folder(tmp_path / "weights.pt") == "weights"


def test_a_garbage_checkpoint_or_an_unwritable_output_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18.9: `clamp analyze` on a truncated file or a read-only run folder: one line naming the file, exit 2."""
    import clamp.analyze as A

    run, _ = _run(tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 3])  # a kill during the write
    with pytest.raises(SystemExit) as e:
        A.main([str(ckpt)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "checkpoint" in err and "reference" not in err and str(ckpt) in err
    ckpt.write_bytes(good)

    def read_only(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(SystemExit) as e:
        A.main([str(ckpt)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Permission denied" in err and "analysis" in err
