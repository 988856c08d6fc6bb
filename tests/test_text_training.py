"""Natural text end to end: `clamp fit` with a Hugging Face model, clamps and the text probes; 2-process DDP == 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clamp.cli import main
from tests.test_text_data import corpus

ROOT = Path(__file__).resolve().parents[1]


def config(tmp_path: Path, *, batch_size: int, devices: int = 1, precision: str = "32-true", steps: int = 8) -> dict:
    return {
        "experiment": "text",
        "seed_everything": 0,
        "torch_threads": 1,
        "model": {
            "hf": {"arch": "gpt2", "config": {"n_layer": 2, "n_head": 2, "n_embd": 16, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}},
            "optimizer": {"lr": 0.003},
        },
        "data": {
            "class_path": "clamp.text.TextDataModule",
            "init_args": {"path": str(tmp_path / "corpus.txt"), "n_ctx": 32, "batch_size": batch_size, "vocab_size": 300, "eval_size": 16, "cache_dir": str(tmp_path / "cache")},
        },
        "trainer": {
            "max_steps": steps,
            "val_check_interval": 4,
            "check_val_every_n_epoch": None,
            "accelerator": "cpu",
            "devices": devices,
            "strategy": "ddp" if devices > 1 else "auto",
            "precision": precision,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(tmp_path / "runs"), "name": "default"}},
            "callbacks": [
                {
                    "class_path": "clamp.ClampCallback",
                    "init_args": {
                        "interventions": [
                            {"site": "layer0.head1.z", "op": {"kind": "zero"}, "schedule": {"stop": 4}},
                            {"site": "layer1.head0.pattern", "op": {"kind": "construct", "fn": "clamp.interventions.constructors.previous_token_pattern"}},
                        ]
                    },
                },
                {"class_path": "clamp.EmergenceCallback", "init_args": {"every_n_steps": 4, "probe_size": 8, "causal": False, "needle_len": 4, "needle_from": "text"}},
                {"class_path": "tests.helpers.LossTrace", "init_args": {"out_path": str(tmp_path / f"loss_{devices}.json")}},
            ],
        },
    }


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    (tmp_path / "corpus.txt").write_text("\n\n".join(corpus(200)))
    return tmp_path


def test_hf_model_on_text_with_clamps_and_probes_bf16(corpus_dir: Path) -> None:
    cfg = corpus_dir / "c.yaml"
    cfg.write_text(yaml.safe_dump(config(corpus_dir, batch_size=4, precision="bf16-mixed")))
    main(["fit", "--config", str(cfg)])
    run = corpus_dir / "runs" / "text" / "version_0"
    summary = json.loads((run / "summary.json").read_text())
    for key in ("curves/task/icl_score", "curves/needle/acc", "curves/repeat/loss", "curves/task/loss_pos/031", "val/heldout/loss"):
        assert key in summary["final"], key
    f = summary["final"]  # every needle result carries its no-first-copy control (issue 20)
    assert f["curves/needle/retrieval_gain"] == pytest.approx(f["curves/needle/acc"] - f["curves/needle/acc_no_first_copy"], abs=1e-6)
    for metric in ("needle/induction", "repeat/induction", "task/prev_token"):
        assert summary["top_heads"][metric], metric
    assert "needle/teacher_forced_copy" in summary["top_heads"]  # NaN (no head listed) until the model copies a needle token right
    # the constructed previous-token pattern is what the probes measured on the clamped head
    assert summary["top_heads"]["task/prev_token"][0] == {"head": "L1H0", "score": pytest.approx(1.0)}
    assert (run / "tokenizer" / "tokenizer.json").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["hf"]["arch"] == "gpt2"


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(corpus_dir: Path) -> None:
    single = corpus_dir / "single.yaml"
    single.write_text(yaml.safe_dump(config(corpus_dir, batch_size=8)))
    main(["fit", "--config", str(single)])
    ddp = corpus_dir / "ddp.yaml"
    ddp.write_text(yaml.safe_dump(config(corpus_dir, batch_size=4, devices=2)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "clamp.cli", "fit", "--config", str(ddp)], cwd=corpus_dir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one = json.loads((corpus_dir / "loss_1.json").read_text())
    two = json.loads((corpus_dir / "loss_2.json").read_text())
    assert len(one) == len(two) == 8
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4, (one, two)
    assert one[-1] < one[0]
