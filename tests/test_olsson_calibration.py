"""issue 20.1's rule (experiments/natural_text/olsson_calibration.py) on made-up event files: it can say both."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("olsson_calibration", ROOT / "experiments" / "natural_text" / "olsson_calibration.py")
calib = importlib.util.module_from_spec(spec)
spec.loader.exec_module(calib)


def _run(tmp_path: Path, head: np.ndarray, icl: np.ndarray, null: float) -> Path:
    run = tmp_path / "runs" / "exp" / "version_0"
    writer = SummaryWriter(str(run))
    steps = np.arange(len(head)) * 100
    for i, s in enumerate(steps):
        writer.add_scalar("train/loss", 5.0 - 0.01 * i, s)
        writer.add_scalar("val/heldout/loss", 5.0 - 0.01 * i, s)
        writer.add_scalar("curves/task/icl_score", float(icl[i]), s)
        writer.add_scalar("repeat/induction/L1H0", float(head[i]), s)
        writer.add_scalar("repeat/induction/L1H1", 0.01, s)
    writer.close()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"init_args": {"batch_size": 4, "n_ctx": 8}}}))
    (run / "null.json").write_text(json.dumps({"metrics": {"repeat/induction": {"layer_max": [[0.01, 0.01], [null, null]]}}}))
    return run


def _sigmoid(n: int, lo: float, hi: float) -> np.ndarray:
    t = np.arange(n)
    return lo + (hi - lo) / (1 + np.exp(-(t - n / 2) / 1.5))


@pytest.mark.parametrize("case", ["formed", "flat", "below_null", "no_icl_drop"])
def test_rule_says_formed_only_when_every_part_holds(tmp_path: Path, case: str) -> None:
    n = 60
    rng = np.random.default_rng(0)
    head = _sigmoid(n, 0.01, 0.6) + rng.normal(0, 0.005, n)
    icl = _sigmoid(n, 0.0, -1.5) + rng.normal(0, 0.01, n)
    null = 0.05
    if case == "flat":
        head = 0.01 + rng.normal(0, 0.002, n)
    elif case == "below_null":
        null = 0.9
    elif case == "no_icl_drop":
        icl = 0.0 + rng.normal(0, 0.01, n)
    text, formed = calib.evidence(_run(tmp_path, head, icl, null))
    assert formed == (case == "formed"), text
    assert ("**Formed.**" in text) == formed
