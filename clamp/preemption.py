"""Stop cleanly on SIGTERM (cluster preemption) and SIGINT (Ctrl+C): checkpoint, summary, non-zero exit.

Lightning turns SIGTERM into a flag that every rank sees at the next step boundary (it is
broadcast from rank 0 under DDP) and then raises ``SIGTERMException``. :class:`GracefulStop`
routes the first SIGINT into the same flag, so both signals stop between optimizer steps, and on
that exception saves ``last.ckpt`` in the checkpoint folder (all ranks take part, as a checkpoint
needs). ``EmergenceCallback`` writes ``summary.json`` marked ``"complete": false``. A second
Ctrl+C aborts at once, without a checkpoint. The ``clamp`` command exits with 128 + the signal
number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

_received: list[int] = []  # signals seen by this process, in order


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

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _received.clear()
        if threading.current_thread() is not threading.main_thread():
            return
        lightning_term = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: Any) -> None:
            _received.append(signum)
            if callable(lightning_term):
                lightning_term(signum, frame)  # Lightning's: sets the flag, forwards to DDP children

        def on_int(signum: int, frame: Any) -> None:
            if _received:  # second press: abort now
                raise KeyboardInterrupt
            _received.append(signum)
            rank_zero_info("\nSIGINT: saving a checkpoint after this step, then stopping (Ctrl+C again aborts without one)")
            trainer._signal_connector.received_sigterm = True

        self._previous = {signal.SIGTERM: (on_term, lightning_term), signal.SIGINT: (on_int, signal.getsignal(signal.SIGINT))}
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)

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
                trainer.save_checkpoint(path)
                rank_zero_info(f"{stop_reason(exception)}: saved {path} at step {trainer.global_step}")
        finally:
            self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()
