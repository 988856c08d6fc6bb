"""Stop cleanly on SIGTERM (cluster preemption) and SIGINT (Ctrl+C): checkpoint, summary, non-zero exit.

Lightning stops with ``SIGTERMException`` after the step in which its SIGTERM flag was set.
:class:`GracefulStop` sets that flag for SIGTERM and the first SIGINT; under DDP the ranks first
agree (an all-reduce at the end of every step, since a signal reaches ranks at different points),
so every rank stops after the same step. On that exception it saves ``last.ckpt`` in the
checkpoint folder (all ranks take part, as a checkpoint needs). ``EmergenceCallback`` writes ``summary.json`` marked ``"complete": false``. A second
Ctrl+C aborts at once, without a checkpoint. The ``clamp`` command exits with 128 + the signal
number (130 for SIGINT, 143 for SIGTERM).

The promise holds until the command ends: a signal that arrives during the end of fit (phase
detection, ``summary.json``, the last checkpoint) is noted too, that work finishes (the run had
trained to its end), and the command then stops with its message and exit status
(:class:`StoppedAtEndOfFit`, raised by :func:`end_of_command`). Lightning restores the process's
own handlers before ``on_fit_end``, where the default SIGTERM handler would kill the process
without a summary; :class:`GracefulStop` keeps its handlers installed until the command ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

_received: list[int] = []  # signals seen by this process, in order
_held: dict[int, Any] = {}  # signal -> the handler to restore when the command ends (GracefulStop's are kept until then)


class StoppedAtEndOfFit(SIGTERMException):
    """A stop signal arrived during the end of fit: the run had finished and its files are written; the
    command stops as the signal asked (exit 128 + signal) instead of being killed mid-write."""


def received_signal() -> int | None:
    """The first stop signal this process received (None: none)."""
    return _received[0] if _received else None


def stop_reason(exception: BaseException) -> str:
    """One line saying why a run ended early (for ``summary.json``'s ``stopped``)."""
    if isinstance(exception, SIGTERMException) or isinstance(exception, KeyboardInterrupt):
        sig = received_signal() or (signal.SIGINT if isinstance(exception, KeyboardInterrupt) else signal.SIGTERM)
        return f"interrupted by {signal.Signals(sig).name}"
    text = str(exception).strip().splitlines()
    return f"{type(exception).__name__}: {text[0] if text else ''}".rstrip(": ")


class GracefulStop(Callback):
    """Checkpoint and stop at the next step boundary on SIGTERM or the first SIGINT (added by the ``clamp`` command)."""

    def __init__(self) -> None:
        self._previous: dict[int, tuple[Any, Any]] = {}  # signal -> (our handler, the one it replaced)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        _received.clear()  # a signal noted by an earlier fit in this process is not this one's

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # installed here, after Lightning registered its own SIGTERM handler (which this one replaces)
        _received.clear()
        if threading.current_thread() is not threading.main_thread():
            return
        # the handlers only note the signal: no collective may run inside a signal handler (Lightning's
        # own SIGTERM handler broadcasts there, which deadlocks DDP when ranks are signalled at different
        # points); under DDP the ranks agree at the next step boundary (on_train_batch_end)
        distributed = trainer.world_size > 1

        def note(signum: int) -> None:
            _received.append(signum)
            if not distributed:
                trainer._signal_connector.received_sigterm = True  # Lightning stops after this step

        def on_term(signum: int, frame: Any) -> None:
            first = not _received
            note(signum)
            launcher = trainer.strategy.launcher
            if first and launcher is not None and getattr(launcher, "procs", None):
                launcher.kill(signum)  # rank 0 of a script launch: pass it on to the other ranks

        def on_int(signum: int, frame: Any) -> None:
            if signal.SIGINT in _received:  # second press: abort now
                raise KeyboardInterrupt
            note(signum)
            rank_zero_info("\nSIGINT: saving a checkpoint after this step, then stopping (Ctrl+C again aborts without one)")

        # Lightning's teardown (before on_fit_end) re-installs the handlers it found at the start of fit:
        # have it re-install ours, and restore those when the command ends (end_of_command)
        originals = getattr(getattr(trainer, "_signal_connector", None), "_original_handlers", None)
        originals = originals if isinstance(originals, dict) else {}
        self._previous = {}
        for sig, ours in ((signal.SIGTERM, on_term), (signal.SIGINT, on_int)):
            self._previous[sig] = (ours, originals.get(sig, signal.getsignal(sig)))
            signal.signal(sig, ours)
            if sig in originals:
                originals[sig] = ours

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.world_size > 1:  # one tiny all-reduce per step: every rank stops at the same step
            if trainer.strategy.reduce_boolean_decision(bool(_received), all=False):
                trainer._signal_connector.received_sigterm = True

    def _restore(self) -> None:
        for sig, (ours, before) in self._previous.items():
            if signal.getsignal(sig) is ours and before is not None:  # leave handlers others set since alone
                signal.signal(sig, before)
        self._previous = {}

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        try:
            if isinstance(exception, SIGTERMException) and trainer.checkpoint_callback is not None:
                # every rank is here (the flag is broadcast at a step boundary), so the collective save is safe
                dirpath = getattr(trainer.checkpoint_callback, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
                path = Path(dirpath) / "last.ckpt"
                trainer.save_checkpoint(path, weights_only=False)  # the full state, so resuming is exact
                rank_zero_info(f"{stop_reason(exception)}: saved {path} at step {trainer.global_step}")
        finally:
            self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Keep noting signals until the command ends (:func:`end_of_command` restores the handlers)."""
        for sig, (ours, before) in self._previous.items():
            if signal.getsignal(sig) is ours and before is not None:
                _held[sig] = before
        self._previous = {}


def end_of_command() -> None:
    """Where a command that ran a fit ends: restore the handlers :class:`GracefulStop` kept installed,
    then raise :class:`StoppedAtEndOfFit` if a stop signal arrived during the end of fit."""
    held = dict(_held)
    _held.clear()
    for sig, before in held.items():
        signal.signal(sig, before)
    if _received:
        raise StoppedAtEndOfFit()


@contextmanager
def stop_signals() -> Iterator[list[int]]:
    """For a training loop outside Lightning (the ensemble's): while the block runs, SIGTERM and the
    first SIGINT are only noted in the yielded list (a second SIGINT aborts at once), so the loop can
    checkpoint and stop at its next step boundary as :class:`GracefulStop` makes Lightning do."""
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield _received
        return

    def on_term(signum: int, frame: Any) -> None:
        _received.append(signum)

    def on_int(signum: int, frame: Any) -> None:
        if signal.SIGINT in _received:  # second press: abort now
            raise KeyboardInterrupt
        _received.append(signum)
        rank_zero_info("\nSIGINT: saving checkpoints after this step, then stopping (Ctrl+C again aborts without them)")

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_term), signal.SIGINT: signal.signal(signal.SIGINT, on_int)}
    try:
        yield _received
    finally:
        for sig, before in previous.items():
            if before is not None:
                signal.signal(sig, before)
