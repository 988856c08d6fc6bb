"""DDP with 2 CPU processes (gloo) through the real CLI: the default experiment's own callbacks
(ModelCheckpoint, EmergenceCallback, LearningRateMonitor) plus a ClampCallback run to the end;
ranks end with identical weights and clamp state, and summary.json is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_ddp_two_cpu_processes_default_callbacks_with_interventions(tmp_path: Path) -> None:
    default_callbacks = yaml.safe_load((ROOT / "experiments" / "induction_default.yaml").read_text())["trainer"]["callbacks"]
    for cb in default_callbacks:
        if cb["class_path"] == "clamp.EmergenceCallback":  # the real callback, probing often on few sequences
            cb["init_args"].update(every_n_steps=6, probe_size=16, heatmap_every_n_steps=6)
    assert {cb["class_path"] for cb in default_callbacks} >= {"clamp.EmergenceCallback", "lightning.pytorch.callbacks.ModelCheckpoint"}
    config = {
        "experiment": "ddp",
        "trainer": {
            "accelerator": "cpu",
            "devices": 2,
            "strategy": "ddp",
            "callbacks": [
                *default_callbacks,
                {
                    "class_path": "clamp.ClampCallback",
                    "init_args": {
                        "interventions": [
                            {"site": "layer0.head0.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}},
                            {"site": "layer1.head1.z", "op": {"kind": "mean", "over": "running", "momentum": 0.5}},
                            {"site": "layer0.head1.z", "op": {"kind": "zero"}, "schedule": {"start": 5, "stop": 10}},
                            # released by a metric only rank 0 measures: both ranks must follow it
                            {"site": "layer1.head0.z", "op": {"kind": "scale", "k": 0.5}, "name": "until_probe",
                             "schedule": {"until": {"metric": "curves/task/loss", "threshold": 1000.0, "mode": "below"}}},
                        ]
                    },
                },
                {"class_path": "tests.helpers.RankFingerprint", "init_args": {"out_dir": str(tmp_path / "ranks")}},
            ],
        },
    }
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable, "-m", "clamp.cli", "fit",
        "--config", str(ROOT / "experiments" / "induction_default.yaml"),
        "--config", str(cfg_path),
        "--trainer.max_steps", "12",
        "--trainer.val_check_interval", "6",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--data.batch_size", "8",
        "--data.eval_size", "16",
        "--model.transformer.d_model", "16",
        "--model.transformer.n_heads", "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [12, 12]
    assert ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["running_means"] == ranks[1]["running_means"] != 0.0
    assert ranks[0]["released"] == ranks[1]["released"] == {"until_probe": 6}
    run = tmp_path / "runs" / "ddp" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is True and summary["step"] == 12 and "val/ic/acc" in summary["final"]
