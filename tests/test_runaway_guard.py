"""A divergence that stays finite (loss far above its start) stops the run like a NaN does (issue 18.4)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from clamp.guards import RunawayLossError, RunawayLossGuard
from clamp.training import DivergenceError


def _feed(guard: RunawayLossGuard, losses: list[float], log_every: int = 1) -> None:
    module = SimpleNamespace(optimizer_config=SimpleNamespace(lr=10.0))
    for step, loss in enumerate(losses):
        trainer = SimpleNamespace(global_step=step, log_every_n_steps=log_every)
        guard.on_train_batch_end(trainer, module, {"loss": torch.tensor(loss)}, None, step)


def test_a_loss_that_stays_far_above_its_start_stops_with_a_divergence_error() -> None:
    guard = RunawayLossGuard(max_ratio=10, patience=3)
    with pytest.raises(RunawayLossError, match=r"train/loss 698 at step 4 has stayed above 10x its initial 2.08 for 3 logging steps") as e:
        _feed(guard, [2.08, 1.9, 50.0, 300.0, 698.0])
    assert isinstance(e.value, DivergenceError)  # the same stop as a non-finite loss


def test_healthy_curves_and_single_spikes_do_not_fire() -> None:
    _feed(RunawayLossGuard(), [2.08, 1.5, 0.9, 0.7, 0.69, 0.3, 0.01] * 20)
    _feed(RunawayLossGuard(patience=3), [2.08, 1.5, 40.0, 1.0, 40.0, 40.0, 0.5, 0.4])  # never 3 in a row
    _feed(RunawayLossGuard(enabled=False), [2.08, 100.0, 100.0, 100.0, 100.0])


def test_the_guard_reads_only_logging_steps_and_keeps_its_state_across_resume() -> None:
    guard = RunawayLossGuard(patience=2)
    _feed(guard, [2.0, 900.0, 900.0, 900.0], log_every=2)  # steps 1 and 3 are not read: one step above
    assert guard.above == 1
    resumed = RunawayLossGuard(patience=2)
    resumed.load_state_dict(guard.state_dict())
    assert (resumed.initial, resumed.above) == (2.0, 1)


def test_bad_settings_name_the_value() -> None:
    with pytest.raises(ValueError, match="max_ratio=1.0: must be a finite number > 1"):
        RunawayLossGuard(max_ratio=1.0)
    with pytest.raises(ValueError, match="patience=0"):
        RunawayLossGuard(patience=0)
