"""Nothing may depend on the CPU vendor (issue 18.1): LAPACK never sees a non-finite matrix, and a
hard crash of one test names that test and fails the suite.

oneMKL (torch's LAPACK on Intel CPUs) segfaults in ``eigvals`` on a NaN matrix; OpenBLAS (AMD) returns
NaN. Running on AMD cannot show the crash, so the tests assert the cause instead: every LAPACK-backed
``torch.linalg`` / ``numpy.linalg`` entry point is wrapped to fail on non-finite input, then the code
paths that meet diverged weights run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from clamp import EmergenceCallback
from clamp.metrics.heads import copying_eigen_score
from clamp.metrics.phase import detect_phase_change
from clamp.training import DivergenceError
from models import Transformer, TransformerConfig
from tests.helpers import bursty_datamodule, tiny_module, trainer

TORCH_LAPACK = ("eigvals", "eig", "eigh", "eigvalsh", "svd", "svdvals", "inv", "solve", "lstsq", "qr",
                "cholesky", "det", "slogdet", "matrix_rank", "pinv", "matrix_norm", "cond")
NUMPY_LAPACK = ("eigvals", "eig", "eigh", "svd", "inv", "solve", "lstsq", "qr", "cholesky", "det", "pinv")


@pytest.fixture
def finite_lapack(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap LAPACK entry points: a non-finite argument fails the test; returns the names called."""
    called: list[str] = []

    def guard(name: str, fn, isfinite):
        def wrapped(*args, **kwargs):
            for a in args:
                if isinstance(a, (torch.Tensor, np.ndarray)):
                    assert bool(isfinite(a).all()), f"non-finite input reached linalg.{name}"
            called.append(name)
            return fn(*args, **kwargs)
        return wrapped

    for name in TORCH_LAPACK:
        monkeypatch.setattr(torch.linalg, name, guard(name, getattr(torch.linalg, name), torch.isfinite))
    for name in NUMPY_LAPACK:
        monkeypatch.setattr(np.linalg, name, guard(name, getattr(np.linalg, name), np.isfinite))
    return called


def test_the_guard_itself_fails_on_nan(finite_lapack: list[str]) -> None:
    with pytest.raises(AssertionError, match="non-finite input reached linalg.eigvals"):
        torch.linalg.eigvals(torch.full((4, 4), float("nan")))


def test_copying_score_of_diverged_heads_is_nan_without_lapack_seeing_them(finite_lapack: list[str]) -> None:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(n_layers=2, n_heads=2, d_model=16).resolved(d_vocab=16, n_ctx=8))
    clean = copying_eigen_score(model)
    with torch.no_grad():
        model.blocks[1].attn.out.weight.fill_(float("nan"))  # layer 1 diverged, layer 0 did not
    score = copying_eigen_score(model)
    assert "eigvals" in finite_lapack
    assert torch.isnan(score[1]).all()
    torch.testing.assert_close(score[0], clean[0])


def test_phase_detection_on_a_curve_with_nan_keeps_lapack_finite(finite_lapack: list[str]) -> None:
    t = np.arange(100.0)
    y = 1 / (1 + np.exp((t - 50) / 3))
    y[[10, 70]] = np.nan
    y[80] = np.inf
    assert detect_phase_change(t, y) is not None


class _PoisonWeights(L.Callback):
    """At step 10 every weight becomes NaN: what a diverged optimizer leaves, without depending on rounding."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == 10:  # a probe step: the probe right after sees NaN weights
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


def test_nan_weights_under_the_emergence_callback_stop_as_divergence_not_a_crash(tmp_path: Path, finite_lapack: list[str]) -> None:
    dm = bursty_datamodule()
    emerge = EmergenceCallback(every_n_steps=5, probe_size=8, causal=False, heatmap_every_n_steps=0)
    t = trainer(tmp_path, 60, [_PoisonWeights(), emerge], val_check_interval=5)
    with pytest.raises(DivergenceError, match="training diverged"):
        t.fit(tiny_module(dm), datamodule=dm)
    assert "eigvals" in finite_lapack  # the probe ran on the NaN weights: LAPACK saw only finite heads


def test_a_crashing_test_is_named_and_fails_the_run(tmp_path: Path) -> None:
    """A segfault kills pytest itself; its faulthandler must name the test, and the exit code is non-zero."""
    (tmp_path / "test_crash.py").write_text(textwrap.dedent("""
        import ctypes
        def test_ok():
            pass
        def test_dies_with_a_segfault():
            ctypes.string_at(0)
    """))
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path / "test_crash.py")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "test_dies_with_a_segfault" in out and "Segmentation fault" in out, out[-2000:]
