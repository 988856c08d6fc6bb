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


def test_bad_intervention_in_yaml_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
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
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_shrink(tmp_path), "--config", str(cfg)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layer0.head1.zz" in err[0] and "embed" in err[0]  # one line, with the valid sites
    assert not (tmp_path / "runs").exists()  # no empty run folder


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


def _signal_config(tmp_path: Path, extra: list[dict]) -> str:
    callbacks = yaml.safe_load(DEFAULT.read_text())["trainer"]["callbacks"]
    for cb in callbacks:
        if cb["class_path"] == "clamp.EmergenceCallback":
            cb["init_args"].update(every_n_steps=5, probe_size=8, heatmap_every_n_steps=0, causal=False)
    clamps = {"class_path": "clamp.ClampCallback", "init_args": {"interventions": [
        {"site": "layer1.head1.z", "op": {"kind": "mean", "over": "running", "momentum": 0.3}},
        {"site": "layer0.head0.z", "op": {"kind": "noise", "std": 0.3}}]}}
    path = tmp_path / f"signal{len(list(tmp_path.glob('signal*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": [*callbacks, clamps, *extra]}}))
    return str(path)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_saves_checkpoint_and_incomplete_summary_and_resume_matches(tmp_path: Path, signame: str) -> None:
    import signal

    import torch

    signum = int(getattr(signal, signame))
    common = [*_shrink(tmp_path, steps=10), "--trainer.val_check_interval", "5"]
    stop = {"class_path": "tests.helpers.SendSignal", "init_args": {"step": 7, "signum": signum}}
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *common, "--config", _signal_config(tmp_path, [stop]), "--experiment", "cut"])
    assert exit_info.value.code == 128 + signum
    run = tmp_path / "runs" / "cut" / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 7  # the step the signal arrived at, not the last validation (5)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is False and summary["stopped"] == f"interrupted by {signame}"
    if signame == "SIGINT":
        return  # the same mechanism; the resume check below runs once
    main(["fit", *common, "--config", _signal_config(tmp_path, []), "--experiment", "cut", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    main(["fit", *common, "--config", _signal_config(tmp_path, []), "--experiment", "full"])
    resumed = torch.load(tmp_path / "runs" / "cut" / "version_1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    full = torch.load(tmp_path / "runs" / "full" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == full["global_step"] == 10
    for k, v in full["state_dict"].items():
        assert torch.equal(resumed["state_dict"][k], v), k
    assert json.loads((tmp_path / "runs" / "cut" / "version_1" / "summary.json").read_text())["complete"] is True


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--model.optimizer.lr", "0"], "model.optimizer.lr=0.0: must be a finite number > 0"),
        (["--experiment", "../../escape"], "experiment='../../escape': must be a relative folder name under runs/"),
        (["--trainer.max_steps", "abc"], "trainer.max_steps: Expected a <class 'int'>"),
    ],
)
def test_errors_are_one_line_without_traceback_and_leave_no_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expect: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_shrink(tmp_path), *extra])
    assert exit_info.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("clamp:") or "Traceback" in ln or "usage:" in ln]
    assert err == [f"clamp: error: {err[0].removeprefix('clamp: error: ')}"] and expect in err[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "escape").exists()


def test_empty_config_file_and_debug_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(empty)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"clamp: error: --config {str(empty)!r} is empty: expected a mapping with model/data/trainer sections"
    with pytest.raises(ValueError, match="model.optimizer.lr"):  # --debug: the real exception, with its traceback
        main(["fit", *_shrink(tmp_path), "--model.optimizer.lr", "0", "--debug"])
    monkeypatch.setenv("CLAMP_DEBUG", "1")
    with pytest.raises(ValueError, match="model.optimizer.lr"):
        main(["fit", *_shrink(tmp_path), "--model.optimizer.lr", "0"])


def test_clamp_callbacks_from_two_config_files_merge_into_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Layering two clamp configs onto a run (each with its own ClampCallback) gives one callback with
    both interventions; Lightning alone would refuse two callbacks sharing a checkpoint state key."""

    def clamp_file(name: str, site: str, **init: object) -> str:
        path = tmp_path / f"{name}.yaml"
        cb = {"class_path": "clamp.ClampCallback", "init_args": {"interventions": [{"name": name, "site": site, "op": {"kind": "zero"}}], **init}}
        path.write_text(yaml.safe_dump({"trainer": {"callbacks+": [cb]}}))
        return str(path)

    main(["fit", *_shrink(tmp_path, steps=4), "--experiment", "two_clamps", "--config", clamp_file("a", "layer1.head0.z"), "--config", clamp_file("b", "layer0.head1.z")])
    cfg = yaml.safe_load((tmp_path / "runs" / "two_clamps" / "version_0" / "config.yaml").read_text())
    clamps = [c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("ClampCallback")]
    assert len(clamps) == 1 and [i["name"] for i in clamps[0]["init_args"]["interventions"]] == ["a", "b"]
    summary = json.loads((tmp_path / "runs" / "two_clamps" / "version_0" / "summary.json").read_text())
    assert [i["name"] for i in summary["interventions"]] == ["a", "b"]

    with pytest.raises(SystemExit):
        main(["fit", *_shrink(tmp_path, steps=4), "--experiment", "two_seeds", "--config", clamp_file("c", "layer1.head0.z", seed=1), "--config", clamp_file("d", "layer0.head1.z", seed=2)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ClampCallbacks" in err[0] and "seed" in err[0]


def test_resume_with_a_used_up_max_time_is_refused_with_the_total_to_give(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """max_time counts the whole run across resumes: a budget the run has used would stop at once, silently."""
    main(["fit", *_shrink(tmp_path, steps=10), "--experiment", "timed", "--trainer.max_time", "00:01:00:00"])
    run = tmp_path / "runs" / "timed" / "version_0"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--resume", str(run), "--trainer.max_steps", "20", "--trainer.max_time", "00:00:00:00"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "trainer.max_time='00:00:00:00'" in err and "counts the whole run across resumes" in err and "--trainer.max_time 00:01:00:" in err
    main(["fit", "--resume", str(run), "--trainer.max_steps", "20", "--trainer.max_time", "00:01:00:00"])  # a total budget: trains on
    assert json.loads((run / "summary.json").read_text())["step"] == 20


def test_resume_into_a_read_only_run_folder_is_one_line_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18.9: a resume writes checkpoints and events into the run folder; a read-only one must be
    refused before training, in one line naming the folder (it printed a 27-frame traceback mid-run).
    The tests run as root, for whom chmod does not stop writes, so the file system's refusal is simulated."""
    import errno
    import tempfile

    main(["fit", *_shrink(tmp_path, steps=4), "--experiment", "ro"])
    run = tmp_path / "runs" / "ro" / "version_0"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    real = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, A002
        if dir is not None and Path(dir).resolve().is_relative_to(run.resolve()):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--resume", str(run), "--trainer.max_steps", "8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0] and "Read-only file system" in err[0] and "writable" in err[0]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # nothing written
