"""experiments/singh2024: the paper's configuration trains end to end with its splits, model options and dense checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clamp.cli import main

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "experiments" / "singh2024" / "base.yaml"


def test_base_config_trains_with_paper_splits_and_dense_checkpoints(tmp_path: Path) -> None:
    cfg = yaml.safe_load(BASE.read_text())
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint") and "every_n_train_steps" in cb["init_args"]:
            cb["init_args"]["every_n_train_steps"] = 2
        if cb["class_path"].endswith("EmergenceCallback"):
            cb["init_args"].update(every_n_steps=2, probe_size=16, causal=False)
    cfg["trainer"].update(max_steps=4, val_check_interval=2, log_every_n_steps=1, enable_progress_bar=False)
    cfg["data"].update(eval_size=32, eval_batch_size=32)
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])

    run = tmp_path / "runs" / "singh2024_base" / "version_0"
    assert {p.name for p in (run / "checkpoints").glob("*.ckpt")} >= {"step=2.ckpt", "step=4.ckpt", "last.ckpt"}
    final = json.loads((run / "summary.json").read_text())["final"]
    for split in ("ic", "ic_holdout_classes", "ic_holdout_exemplars", "ic_holdout_labels"):
        assert f"val/{split}/loss" in final, split
    assert 0 < final["task/match_clamp/loss"] != final["curves/task/loss"]  # the clamp-based progress measure
    events = EventAccumulator(str(run)).Reload()
    seqs = [e.value for e in events.Scalars("train/sequences")]
    assert seqs and all(v % 32 == 0 for v in seqs) and seqs[-1] <= 4 * 32
    resolved = yaml.safe_load((run / "config.yaml").read_text())["model"]["transformer"]
    assert (resolved["positional"], resolved["attn_bias"], resolved["init"]) == ("rotary", False, "lecun")


def test_toy_model_plateau_shortens_with_each_clamped_factor(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("toy_model", ROOT / "experiments" / "singh2024" / "toy_model.py")
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    summary = toy.run(out=str(tmp_path), steps=300)
    half = [summary[c]["steps_to_50pct"] for c in ("nothing clamped", "c clamped", "b, c clamped")]
    assert half[0] > half[1] > half[2]  # plateau, shorter plateau, none
    curves = json.loads((tmp_path / "toy_model.json").read_text())["curves"]
    free, smooth = curves["nothing clamped"], curves["b, c clamped"]
    assert free[100] > 0.5 * free[0]  # still on the plateau after 100 steps ...
    assert free[299] < 1e-3 * free[0]  # ... then the abrupt drop
    drops = [a - b for a, b in zip(smooth, smooth[1:])]
    assert all(d >= 0 for d in drops) and drops.index(max(drops)) == 0  # b, c clamped: no plateau, fastest at once
    assert (tmp_path / "toy_model.png").stat().st_size > 10_000
