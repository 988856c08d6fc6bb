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
    events = EventAccumulator(str(run)).Reload()
    seqs = [e.value for e in events.Scalars("train/sequences")]
    assert seqs and all(v % 32 == 0 for v in seqs) and seqs[-1] <= 4 * 32
    resolved = yaml.safe_load((run / "config.yaml").read_text())["model"]["transformer"]
    assert (resolved["positional"], resolved["attn_bias"], resolved["init"]) == ("rotary", False, "lecun")
