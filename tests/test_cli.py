"""`clamp fit --config ...` end to end on a shrunken default experiment, plus config printing and early errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from clamp.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "experiments" / "induction_default.yaml"


def _shrink(tmp_path: Path, steps: int = 20) -> list[str]:
    return [
        "--config", str(DEFAULT),
        "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", "10",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--data.batch_size", "16",
        "--data.eval_size", "32",
        "--model.transformer.d_model", "16",
        "--model.transformer.n_heads", "2",
    ]


def test_fit_writes_tensorboard_checkpoint_and_summary(tmp_path: Path) -> None:
    main(["fit", *_shrink(tmp_path), "--experiment", "cli_smoke"])
    run = tmp_path / "runs" / "cli_smoke" / "version_0"
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "config.yaml").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert "val/ic/acc" in summary["final"] and "task/query_to_match" in summary["top_heads"]
    # the data's sizes reached the model through the link (d_out = n_labels = 32)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["experiment"] == "cli_smoke" and cfg["model"]["transformer"]["d_model"] == 16


def test_print_config_shows_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(DEFAULT), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["transformer"]["n_layers"] == 2
    assert printed["data"]["class_path"] == "synthetic_data.SyntheticDataModule"  # the default when `data:` names none
    assert printed["data"]["init_args"]["task"]["class_path"] == "synthetic_data.BurstyClassification"
    assert printed["seed_everything"] == 0


def test_bad_intervention_in_yaml_fails_before_training(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "callbacks": [
                        {"class_path": "clamp.ClampCallback", "init_args": {"interventions": [{"site": "layer0.head1.zz", "op": {"kind": "zero"}}]}}
                    ]
                }
            }
        )
    )
    with pytest.raises(KeyError, match=r"layer0\.head1\.zz.*\n.*embed"):
        main(["fit", *_shrink(tmp_path), "--config", str(cfg)])
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_schedule_typos_are_rejected_by_the_parser(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "callbacks": [
                        {"class_path": "clamp.ClampCallback", "init_args": {"interventions": [{"site": "layer0.z", "op": {"kind": "zero"}, "schedule": {"strat": 5}}]}}
                    ]
                }
            }
        )
    )
    with pytest.raises(SystemExit):
        main(["fit", *_shrink(tmp_path), "--config", str(cfg)])
    assert "strat" in capsys.readouterr().err


def test_bf16_mixed_precision_with_interventions(tmp_path: Path) -> None:
    cfg = tmp_path / "clamps.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "precision": "bf16-mixed",
                    "callbacks": [
                        {
                            "class_path": "clamp.ClampCallback",
                            "init_args": {
                                "interventions": [
                                    {"site": "layer0.head0.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}},
                                    {"site": "layer1.head1.z", "op": {"kind": "noise", "std": 0.1}},
                                    {"site": "layer0.resid_post", "op": {"kind": "constant", "value": 0.0}, "positions": [-1]},
                                ]
                            },
                        },
                        {"class_path": "clamp.EmergenceCallback", "init_args": {"every_n_steps": 5, "probe_size": 8, "heatmap_every_n_steps": 0}},
                    ],
                }
            }
        )
    )
    main(["fit", *_shrink(tmp_path, steps=10), "--config", str(cfg), "--experiment", "bf16"])
    summary = json.loads((tmp_path / "runs" / "bf16" / "version_0" / "summary.json").read_text())
    assert summary["step"] == 10 and len(summary["interventions"]) == 3
