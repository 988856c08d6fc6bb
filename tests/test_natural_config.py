"""The GPU config pythia70m_tinystories.yaml: Pythia-70m's shape, and 3 steps of the same config on a tiny local corpus."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from clamp.cli import main
from models.hf import HFModelConfig
from tests.test_text_data import corpus

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "natural_text" / "pythia70m_tinystories.yaml"
NOCLAMP = ROOT / "experiments" / "natural_text" / "pythia70m_tinystories_noclamp.yaml"


def _callback(cfg: dict, name: str) -> dict:
    return next(c for c in cfg["trainer"]["callbacks"] if c["class_path"] == name)


def test_config_is_pythia70m_on_streamed_tinystories_without_downloading_weights() -> None:
    cfg = yaml.safe_load(CONFIG.read_text())
    data = cfg["data"]["init_args"]
    assert data["path"] == "roneneldan/TinyStories" and data["streaming"] is True
    model = HFModelConfig(**cfg["model"]["hf"]).build(50277, data["n_ctx"])  # random init from the config: no hub access
    assert sum(p.numel() for p in model.parameters()) == 70_426_624  # EleutherAI/pythia-70m's parameter count
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.d_vocab) == (6, 8, 512, 50304)
    assert _callback(cfg, "clamp.ClampCallback")["init_args"]["interventions"][0]["site"] == "layer0.head*.z"


def test_noclamp_layer_drops_only_the_clamp(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIG), "--config", str(NOCLAMP), "--print_config"])
    merged = yaml.safe_load(capsys.readouterr().out)
    names = [c["class_path"] for c in merged["trainer"]["callbacks"]]
    assert "clamp.ClampCallback" not in names and "clamp.EmergenceCallback" in names
    assert merged["data"]["init_args"]["path"] == "roneneldan/TinyStories"


def test_same_config_runs_three_steps_on_a_tiny_local_corpus(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("\n\n".join(corpus(200)))
    cfg = copy.deepcopy(yaml.safe_load(CONFIG.read_text()))
    data = cfg["data"]["init_args"]
    data.update(path=str(tmp_path / "corpus.txt"), streaming=False, tokenizer=None, vocab_size=300, n_ctx=32, batch_size=4,
                eval_size=16, num_workers=0, cache_dir=str(tmp_path / "cache"))
    hf = cfg["model"]["hf"]["config"]
    hf.update(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    del hf["vocab_size"]  # the tiny BPE's
    cfg["trainer"].update(max_steps=3, val_check_interval=3, accelerator="cpu", precision="32-true",
                          logger={"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(tmp_path / "runs"), "name": "default"}})
    _callback(cfg, "clamp.EmergenceCallback")["init_args"].update(every_n_steps=3, probe_size=8, icl_positions=[4, 20], needle_len=4)
    _callback(cfg, "clamp.ClampCallback")["init_args"]["interventions"][0]["schedule"]["stop"] = 2
    cfg["torch_threads"] = 1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(tmp_path / "c.yaml")])
    run = tmp_path / "runs" / cfg["experiment"] / "version_0"
    summary = json.loads((run / "summary.json").read_text())
    for key in ("curves/task/icl_score", "curves/needle/acc", "val/heldout/loss"):
        assert key in summary["final"], key
    assert (run / "checkpoints" / "last.ckpt").exists()
