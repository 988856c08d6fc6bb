"""The committed Omniglot exemplar file: shape, geometry, provenance, and the overlay config that trains on it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clamp.cli import main

ROOT = Path(__file__).resolve().parents[1]
DIR = ROOT / "experiments" / "singh2024" / "omniglot"
NPY, PROV = DIR / "omniglot_resnet18_features.npy", DIR / "omniglot_resnet18_features.json"


def test_feature_file_shape_dtype_and_values() -> None:
    f = np.load(NPY, allow_pickle=False)
    assert f.shape == (150, 5, 512) and f.dtype == np.float32
    assert np.isfinite(f).all() and (f >= 0).all()  # post-ReLU average pool
    assert (np.linalg.norm(f, axis=2) > 0).all()


def test_classes_are_distinct_and_correlated() -> None:
    f = np.load(NPY).astype(np.float64)
    u = f / np.linalg.norm(f, axis=2, keepdims=True)
    cos = np.einsum("ced,kfd->ckef", u, u)  # [class, class, exemplar, exemplar]
    eye_c, eye_e = np.eye(150, dtype=bool), np.eye(5, dtype=bool)
    within = cos[eye_c][:, ~eye_e].mean()
    between = cos[~eye_c].mean()
    assert between < within
    assert between > 0.2  # non-negative CNN features share directions, unlike isotropic Gaussian means (~0)


def test_provenance_matches_file() -> None:
    prov = json.loads(PROV.read_text())
    assert prov["sha256"] == hashlib.sha256(NPY.read_bytes()).hexdigest()
    assert prov["shape"] == [150, 5, 512]
    classes = prov["classes"]
    assert [c["index"] for c in classes] == list(range(150))
    assert [c["split"] for c in classes] == ["train"] * 50 + ["holdout"] * 100
    names = {f"{c['alphabet']}/{c['character']}" for c in classes}
    assert len(names) == 150 and not names & set(prov["extractor"]["characters"])  # extractor never saw them
    assert {c["alphabet"] for c in classes[:50]} == {c["alphabet"] for c in classes[50:]}
    f = np.load(NPY)
    assert prov["geometry"]["fraction_zeros"] == pytest.approx(float((f == 0).mean()))


def test_overlay_config_trains_on_the_file_with_all_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the overlay's exemplars path is relative to the repository root
    cfg = yaml.safe_load((ROOT / "experiments" / "singh2024" / "omniglot.yaml").read_text())
    assert cfg["data"]["task"]["init_args"]["exemplars"] == os.path.relpath(NPY, ROOT)
    main([
        "fit",
        "--config", "experiments/singh2024/base.yaml",
        "--config", "experiments/singh2024/studies/compressed.yaml",
        "--config", "experiments/singh2024/omniglot.yaml",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.callbacks", "[]",
        "--trainer.enable_progress_bar", "false",
        "--data.eval_size", "32", "--data.eval_batch_size", "32",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
    ])
    run = next((tmp_path / "runs").glob("*/version_0"))
    events = EventAccumulator(str(run)).Reload()  # no summary.json: its callback is switched off to stay fast
    for split in ("ic", "ic_holdout_classes", "ic_holdout_exemplars", "ic_holdout_labels"):
        assert np.isfinite(events.Scalars(f"val/{split}/loss")[-1].value), split
    task = yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]["task"]["init_args"]
    assert (task["exemplars"], task["exemplars_per_class"], task["within_class_noise"]) == (cfg["data"]["task"]["init_args"]["exemplars"], 0, 0.0)


def test_300_class_file_extends_the_150_class_file_with_rotated_training_characters() -> None:
    """Study 6's 200 training classes: rows 0-49 and 200-299 are the 150-class file's rows (same extractor,
    same drawings), rows 50-199 the same 50 training characters at 90/180/270 degrees, all distinct."""
    big, small = np.load(DIR / "omniglot_resnet18_features_300.npy"), np.load(NPY)
    prov = json.loads((DIR / "omniglot_resnet18_features_300.json").read_text())
    assert big.shape == (300, 5, 512) and prov["sha256"] == hashlib.sha256((DIR / "omniglot_resnet18_features_300.npy").read_bytes()).hexdigest()
    np.testing.assert_array_equal(big[:50], small[:50])
    np.testing.assert_array_equal(big[200:], small[50:])
    assert [c["rotation_degrees"] for c in prov["classes"]] == [0] * 50 + [90] * 50 + [180] * 50 + [270] * 50 + [0] * 100
    assert [c["split"] for c in prov["classes"]] == ["train"] * 200 + ["holdout"] * 100
    train_chars = {(c["alphabet"], c["character"]) for c in prov["classes"][:200]}
    assert len(train_chars) == 50 and not train_chars & {(c["alphabet"], c["character"]) for c in prov["classes"][200:]}
    means = big.mean(1)
    assert not any(np.allclose(means[i], means[i + 50 * r]) for i in range(50) for r in (1, 2, 3))  # a rotation is a new class
