"""What keeps a run's files trustworthy: atomic checkpoint writes, safe checkpoint reads, resumes that
refuse a different experiment, and the runaway-loss guard (issues 18 and 23)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import resource
import signal
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from clamp.checkpoint_io import CheckpointWriteError, load_checkpoint, save_atomic
from clamp.cli import main
from clamp.ensemble.trainer import EnsembleError, read_checkpoint
from tests.test_cli import _shrink


def _fit(tmp_path: Path, name: str, steps: int = 10, *extra: str) -> Path:
    main(["fit", *_shrink(tmp_path, steps=steps), "--experiment", name, *extra])
    return tmp_path / "runs" / name / "version_0"


def _disk_full_after(n_bytes: int):  # noqa: ANN202 (a torch.save stand-in)
    """A ``torch.save`` that writes ``n_bytes`` of the checkpoint, then fails as a full disk does."""
    real = torch.save

    def save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[:n_bytes])
        raise OSError(28, "No space left on device")

    return save


# ============================================================ 18.3 / 23.7: atomic checkpoints


def test_failed_write_keeps_the_previous_file_and_leaves_no_partial_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_atomic({"step": 1, "w": torch.ones(3)}, tmp_path / "last.ckpt")
    monkeypatch.setattr(torch, "save", _disk_full_after(100))
    with pytest.raises(CheckpointWriteError, match=rf"could not write checkpoint {path} \(OSError: .*No space left on device\)"):
        save_atomic({"step": 2, "w": torch.zeros(3)}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary or 0-byte file beside it


@contextlib.contextmanager
def _file_size_limit(n_bytes: int) -> Iterator[None]:
    """Writes past ``n_bytes`` of any file fail (EFBIG), as on a full disk, wherever the writing code is."""
    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_clamp_fit_writes_checkpoints_atomically_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A disk that fills while ``clamp fit`` saves: the error names the file, the previous checkpoint still resumes."""
    run = _fit(tmp_path, "full", 10)
    ckpts = run / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpts.iterdir() if not p.is_symlink()}
    with pytest.raises(SystemExit) as exit_info, _file_size_limit(min(len(b) for b in before.values()) // 2):
        main(["fit", "--resume", str(run), "--trainer.max_steps", "20"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"could not write checkpoint {ckpts}" in err and "File too large" in err, err
    assert not [p for p in ckpts.iterdir() if p.name not in before and not p.is_symlink()]  # nothing half-written
    assert {p.name: p.read_bytes() for p in ckpts.iterdir() if not p.is_symlink()} == before
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 10
    main(["fit", "--resume", str(run), "--trainer.max_steps", "20"])  # the kept checkpoint resumes
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 20


def test_a_full_disk_during_an_ensemble_keeps_each_members_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The ensemble loop writes through the atomic writer too: the third checkpoint write (step 6) fails
    half-way, and each member keeps its step-3 checkpoint, with no 0-byte or temporary file beside it."""
    from tests.test_sweep import _sweep

    real, full, calls = torch.save, _disk_full_after(100), []

    def save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        calls.append(getattr(f, "name", f))
        return (real if len(calls) <= 2 else full)(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(SystemExit):
        main(["sweep", str(_sweep(tmp_path, seeds=2)), "--ensemble", "2"])
    out = capsys.readouterr().out
    assert "0 ran, 2 failed" in out and "could not write checkpoint" in out and "No space left on device" in out, out
    for ckpts in (tmp_path / "runs" / "study").glob("*/seed*/checkpoints"):
        assert [p.name for p in ckpts.iterdir()] == ["last.ckpt"]
        assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 3
    assert len(list((tmp_path / "runs" / "study").glob("*/seed*/checkpoints"))) == 2


def _one_error(err: str) -> str:
    """The command's one error line (the other stderr line is the --debug hint); no thread traceback or warning."""
    lines = [ln for ln in err.strip().splitlines() if "--debug" not in ln]
    assert len(lines) == 1 and lines[0].startswith("clamp: error: "), lines
    return lines[0]


def test_a_full_log_disk_names_the_event_file_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """TensorBoard's writer thread fails on a full disk: the command stops with one line naming the event
    file and the cause (it printed a thread traceback and '[Errno 28] No space left on device' before)."""
    from tensorboard.summary.writer import record_writer

    real, writes = record_writer.RecordWriter.write, []

    def write(self, data: bytes) -> None:  # noqa: ANN001
        writes.append(len(data))
        if len(writes) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    with pytest.raises(SystemExit) as exit_info:
        _fit(tmp_path, "full_log", 20)
    assert exit_info.value.code == 1
    run = tmp_path / "runs" / "full_log" / "version_0"
    (events,) = run.glob("events.out.tfevents.*")
    line = _one_error(capsys.readouterr().err)
    assert f"could not write event file {events} (No space left on device)" in line, line
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is False and str(events) in summary["stopped"]


def test_a_failed_summary_write_at_the_end_of_fit_is_one_line_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_mkstemp, real_fdopen, full = tempfile.mkstemp, os.fdopen, set()

    def mkstemp(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        fd, name = real_mkstemp(*args, **kwargs)
        if Path(name).name.startswith(".summary.json."):
            full.add(fd)
        return fd, name

    def fdopen(fd: int, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        f = real_fdopen(fd, *args, **kwargs)
        if fd in full:
            f.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))  # type: ignore[method-assign]
        return f

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(SystemExit) as exit_info, warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(tmp_path, "full_summary", 20)
    assert exit_info.value.code == 1 and full
    assert not [w for w in record if "could not write summary.json" in str(w.message)]  # no second report of the same failure
    run = tmp_path / "runs" / "full_summary" / "version_0"
    line = _one_error(capsys.readouterr().err)
    assert f"could not write {run / 'summary.json'} (No space left on device)" in line, line
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name == "summary.json"]
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 20  # the checkpoint is whole


# ============================================================ 18.5: checkpoints load with weights_only=True


class _Payload:
    """Pickles as a call that creates ``marker``: loading it with weights_only=False would run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_a_planted_checkpoint_is_refused_in_one_line_and_runs_no_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fit(tmp_path, "planted", 10)
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    marker = tmp_path / "code_ran"
    ckpt["callbacks"]["planted"] = _Payload(marker)
    torch.save(ckpt, last.resolve())
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--resume", str(run), "--trainer.max_steps", "20"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"checkpoint {last}" in err[0] and "pickled objects" in err[0] and "it pickles getattr" in err[0], err
    with pytest.raises(EnsembleError, match="pickled objects"):
        read_checkpoint(last, run)
    assert not marker.exists()


def test_a_failed_summary_write_names_the_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    from clamp.run_files import write_summary

    path = write_summary(tmp_path, {"final": {"x": 1.0}}, complete=True)
    with pytest.raises(OSError, match=rf"could not write {path} \(File too large\)"), _file_size_limit(10):
        write_summary(tmp_path, {"final": {"x": 2.0}}, complete=True)
    assert json.loads(path.read_text())["final"] == {"x": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


# ============================================================ 18.2 / 23.2: one resume rule for every path


def _one_error_line(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_resume_refuses_a_different_experiment_naming_every_key_and_allows_safe_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fit(tmp_path, "edited", 10)
    config_before = (run / "config.yaml").read_text()
    err = _one_error_line(capsys, "fit", "--resume", str(run), "--model.transformer.n_heads", "4", "--seed_everything", "1", "--model.optimizer.lr", "0.01")
    assert f"resuming {run} with a different experiment than its config.yaml" in err
    for change in ("model.transformer.n_heads: 2 -> 4", "seed_everything: 0 -> 1", "model.optimizer.lr: 0.001 -> 0.01"):
        assert change in err, err
    assert "trainer.max_steps" in err  # says what may change
    assert (run / "config.yaml").read_text() == config_before  # nothing rewritten
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 10
    # --config X --ckpt_path FILE: the same rule (Lightning's CLI would have swapped in the checkpoint's model)
    edited = tmp_path / "edited.yaml"
    edited.write_text(config_before.replace("lr: 0.001", "lr: 0.01"))
    err = _one_error_line(capsys, "fit", "--config", str(edited), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert "model.optimizer.lr: 0.001 -> 0.01" in err and "n_heads" not in err
    # safe changes train on
    main(["fit", "--resume", str(run), "--trainer.max_steps", "20", "--trainer.log_every_n_steps", "5"])
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 20


def test_a_checkpoint_outside_its_run_folder_is_checked_against_its_hyper_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fit(tmp_path, "moved", 10)
    moved = tmp_path / "elsewhere.ckpt"
    moved.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    edited = tmp_path / "edited.yaml"
    edited.write_text((run / "config.yaml").read_text().replace("lr: 0.001", "lr: 0.01"))
    err = _one_error_line(capsys, "fit", "--config", str(edited), "--ckpt_path", str(moved))
    assert f"than its checkpoint {moved}" in err and "model.optimizer.lr: 0.001 -> 0.01" in err


@pytest.mark.parametrize("ensemble", [[], ["--ensemble", "2"]], ids=["plain", "ensemble"])
def test_a_sweep_resumed_after_its_file_was_edited_refuses_the_new_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str], ensemble: list[str]) -> None:
    """The same edit refused by the same rule and message (clamp.resume) with and without --ensemble."""
    from tests.test_sweep import _sweep

    path = _sweep(tmp_path, seeds=1, **{"model.optimizer.lr": 0.003})
    main(["sweep", str(path), *ensemble])
    run = tmp_path / "runs" / "study" / "default" / "seed0"
    if not run.is_dir():
        run = next((tmp_path / "runs" / "study").glob("*/seed0"))
    rec_path = run / "condition.json"
    rec_path.write_text(json.dumps({**json.loads(rec_path.read_text()), "finished": False}))  # killed after its last checkpoint
    path.write_text(path.read_text().replace("model.optimizer.lr: 0.003", "model.optimizer.lr: 0.03"))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["sweep", str(path), *ensemble])
    out = capsys.readouterr()
    assert f"resuming {run} with a different experiment than its config.yaml" in out.out + out.err
    assert "model.optimizer.lr: 0.003 -> 0.03" in out.out + out.err
    assert json.loads(rec_path.read_text())["finished"] is False
    assert "lr: 0.003" in (run / "config.yaml").read_text()
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["hyper_parameters"]["optimizer"]["lr"] == 0.003
