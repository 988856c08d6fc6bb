"""`clamp sweep` through the real CLI on tiny runs: grid x seeds, records, skipping, resuming, dry runs, --jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from clamp.cli import main
from clamp.sweep import SweepError, apply_overrides, load_sweep

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "trainer.max_steps": 6,
    "trainer.val_check_interval": 3,
    "trainer.enable_progress_bar": False,
    "trainer.callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}],
    "data.batch_size": 8,
    "data.eval_size": 16,
    "model.transformer": {"d_model": 16, "n_heads": 2},
}
CLAMP = {
    "trainer.callbacks+": [
        {"class_path": "clamp.ClampCallback", "init_args": {"interventions": [{"site": "layer0.head1.z", "op": {"kind": "zero"}}]}}
    ]
}


def _sweep(tmp_path: Path, grid: dict | None = None, seeds: int | list[int] = 2, **extra) -> Path:
    spec = {
        "experiment": "study",
        "base": str(ROOT / "experiments" / "induction_default.yaml"),
        "save_dir": str(tmp_path / "runs"),
        "seeds": seeds,
        "overrides": {**TINY, **extra},
    }
    if grid is not None:
        spec["grid"] = grid
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_overrides_merge_mappings_replace_values_and_append_lists() -> None:
    base = {"model": {"transformer": {"d_model": 64, "n_heads": 8}}, "trainer": {"callbacks": [{"a": 1}]}}
    out = apply_overrides(base, {"model.transformer": {"n_heads": 2}, "model.optimizer.lr": 0.1, "trainer.callbacks+": [{"b": 2}]})
    assert out["model"] == {"transformer": {"d_model": 64, "n_heads": 2}, "optimizer": {"lr": 0.1}}
    assert out["trainer"]["callbacks"] == [{"a": 1}, {"b": 2}]
    assert base["trainer"]["callbacks"] == [{"a": 1}]  # the base is not modified
    with pytest.raises(SweepError, match="descends into 'model.transformer.d_model'"):
        apply_overrides(base, {"model.transformer.d_model.x": 1})


def test_grid_expands_to_named_conditions_and_seeds(tmp_path: Path) -> None:
    path = _sweep(tmp_path, grid={"clamp": {"none": {}, "l0h1": CLAMP}, "model.optimizer.lr": [0.001, 0.003]}, seeds=[3, 5])
    runs = load_sweep(path)
    names = sorted({r.condition for r in runs})
    assert names == ["l0h1_lr=0.001", "l0h1_lr=0.003", "none_lr=0.001", "none_lr=0.003"]
    assert len(runs) == 8 and sorted({r.seed for r in runs}) == [3, 5]
    run = next(r for r in runs if r.condition == "l0h1_lr=0.003" and r.seed == 5)
    assert run.dir == tmp_path / "runs" / "study" / "l0h1_lr=0.003" / "seed5"
    assert run.config["seed_everything"] == 5 and run.config["model"]["optimizer"]["lr"] == 0.003
    assert run.levels == {"clamp": "l0h1", "model.optimizer.lr": "lr=0.003"}
    kinds = [c["class_path"] for c in run.config["trainer"]["callbacks"]]
    assert kinds == ["lightning.pytorch.callbacks.ModelCheckpoint", "clamp.ClampCallback", "clamp.sweep.ConditionRecord"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"experiment": "x", "base": "b.yaml", "seedz": 3}, r"unknown key\(s\) \['seedz'\]"),
        ({"experiment": "x"}, "`base` is required"),
        ({"experiment": "x", "base": "missing.yaml"}, "base config .* does not exist"),
        ({"experiment": "../..", "base": "b.yaml"}, r"experiment='\.\./\.\.' must be a relative folder name inside save_dir"),
        ({"experiment": "/tmp/x", "base": "b.yaml"}, "must be a relative folder name"),
    ],
)
def test_bad_sweep_files_name_the_problem(tmp_path: Path, spec: dict, match: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepError, match=match):
        load_sweep(path)


def _hparams(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    (events,) = run.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    return HParamsPluginData.FromString(acc.summary_metadata["_hparams_/session_start_info"].plugin_data.content).session_start_info.hparams


def test_sweep_runs_show_condition_and_seed_as_hparams_columns(tmp_path: Path) -> None:
    emergence = {"class_path": "clamp.metrics.EmergenceCallback", "init_args": {"every_n_steps": 3}}
    path = _sweep(tmp_path, grid={"clamp": {"l0h1": {"trainer.callbacks+": [emergence, *CLAMP["trainer.callbacks+"]]}}}, seeds=[3])
    main(["sweep", str(path)])
    hp = _hparams(tmp_path / "runs" / "study" / "l0h1" / "seed3")
    assert hp["condition"].string_value == "l0h1" and hp["seed"].number_value == 3 and hp["experiment"].string_value == "study"


def test_sweep_runs_records_skips_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _sweep(tmp_path, grid={"clamp": {"none": {}, "l0h1": CLAMP}}, seeds=1)
    main(["sweep", str(path), "--dry-run"])
    out = capsys.readouterr()
    commands = out.out.strip().splitlines()
    assert commands == [f"clamp fit --config {tmp_path}/runs/study/{c}/seed0/run.yaml" for c in ("none", "l0h1")]
    assert "2 to run" in out.err

    main(["sweep", str(path)])
    for cond in ("none", "l0h1"):
        run = tmp_path / "runs" / "study" / cond / "seed0"
        rec = json.loads((run / "condition.json").read_text())
        assert rec["condition"] == cond and rec["seed"] == 0 and rec["finished"] and rec["step"] == 6
        assert list(run.glob("events.out.tfevents.*")) and (run / "checkpoints" / "last.ckpt").exists()
    rec = json.loads((tmp_path / "runs" / "study" / "l0h1" / "seed0" / "condition.json").read_text())
    assert rec["overrides"]["trainer.callbacks+"][0]["class_path"] == "clamp.ClampCallback"
    capsys.readouterr()

    main(["sweep", str(path)])  # everything finished: nothing runs
    assert "0 ran, 0 failed, 2 already finished" in capsys.readouterr().out

    # a crash after the last checkpoint: the run resumes from it
    rec_path = tmp_path / "runs" / "study" / "none" / "seed0" / "condition.json"
    rec_path.write_text(json.dumps({**json.loads(rec_path.read_text()), "finished": False}))
    main(["sweep", str(path), "--dry-run"])
    assert capsys.readouterr().out.strip().endswith("--ckpt_path " + str(rec_path.parent / "checkpoints" / "last.ckpt"))

    # a finished run whose config the sweep now changes is not silently reused
    path.write_text(path.read_text().replace("trainer.max_steps: 6", "trainer.max_steps: 7"))
    with pytest.raises(SystemExit):
        main(["sweep", str(path)])
    assert "finished with a different config" in capsys.readouterr().err


def test_jobs_run_as_separate_processes(tmp_path: Path) -> None:
    path = _sweep(tmp_path, seeds=2, **{"trainer.max_steps": 3})
    main(["sweep", str(path), "--jobs", "2"])
    for seed in (0, 1):
        run = tmp_path / "runs" / "study" / "base" / f"seed{seed}"
        assert json.loads((run / "condition.json").read_text())["finished"]
        assert (run / "fit.log").exists() and (run / "config.yaml").exists()


def test_base_list_and_level_config_files_merge_like_further_configs(tmp_path: Path) -> None:
    clamp_file = tmp_path / "clamp.yaml"
    clamp_file.write_text(yaml.safe_dump({"experiment": "ignored", "model": {"optimizer": {"lr": 0.5}}, "trainer": {"callbacks+": CLAMP["trainer.callbacks+"]}}))
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"data": {"eval_batch_size": 4, "batch_size": 2}}))
    path = _sweep(tmp_path, grid={"clamp": {"none": {}, "l0h1": {"config": "clamp.yaml", "model.optimizer.warmup_steps": 0}}}, seeds=1)
    spec = yaml.safe_load(path.read_text())
    spec["base"] = [spec["base"], "extra.yaml"]
    path.write_text(yaml.safe_dump(spec))
    runs = {r.condition: r for r in load_sweep(path)}
    none, l0h1 = runs["none"].config, runs["l0h1"].config
    assert none["data"]["eval_batch_size"] == l0h1["data"]["eval_batch_size"] == 4  # from the second base file
    assert none["data"]["batch_size"] == 8  # the sweep's overrides apply after the base files
    classes = [c["class_path"] for c in l0h1["trainer"]["callbacks"]]
    assert classes[:2] == ["lightning.pytorch.callbacks.ModelCheckpoint", "clamp.ClampCallback"]
    assert l0h1["model"]["optimizer"]["lr"] == 0.5 and l0h1["model"]["optimizer"]["warmup_steps"] == 0
    assert "clamp.ClampCallback" not in [c["class_path"] for c in none["trainer"]["callbacks"]]
    assert runs["l0h1"].overrides["config"] == ["clamp.yaml"] and l0h1["experiment"] == "study/l0h1"
    bad = _sweep(tmp_path, grid={"clamp": {"x": {"config": "missing.yaml"}}})
    with pytest.raises(SweepError, match="condition 'x': config .*missing.yaml' does not exist"):
        load_sweep(bad)


@pytest.mark.parametrize("ensemble", [0, 2])
def test_sweep_prints_progress_and_a_closing_table_of_results(tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, ensemble: int) -> None:
    """Issue 21.4: a progress line per ensemble (step, steps/s, eta), Lightning's set-up lines once per
    ensemble rather than per member, and condition x headline finals as mean ± std (n) at the end."""
    emergence = {"class_path": "clamp.metrics.EmergenceCallback", "init_args": {"every_n_steps": 3}}
    path = _sweep(tmp_path, grid={"clamp": {"none": {}, "l0h1": CLAMP}}, seeds=2, **{"trainer.callbacks": [emergence]})
    import clamp.ensemble.runner as runner

    quiet: list[int] = []
    real = runner.quiet_set_up

    def counted():  # noqa: ANN202
        quiet.append(1)
        return real()

    monkeypatch.setattr(runner, "quiet_set_up", counted)
    main(["sweep", str(path), *(["--ensemble", str(ensemble)] if ensemble else [])])
    out, err = capfd.readouterr()
    table = out[out.index("final values, mean ± std (n seeds):") :].splitlines()[1:]
    assert table[0].startswith("| condition | val/ic/acc | val/iw/acc |") and len(table) == 4, table
    finals = {c: [json.loads((tmp_path / "runs" / "study" / c / f"seed{s}" / "summary.json").read_text())["final"]["val/ic/loss"] for s in (0, 1)] for c in ("none", "l0h1")}
    for row in table[2:]:
        cond = row.split("|")[1].strip()
        mean = sum(finals[cond]) / 2
        assert f"{mean:.3f} ± " in row and row.count("(2)") == len(table[0].split("|")) - 3, (row, finals)
    if ensemble:
        lines = [l for l in err.splitlines() if l.startswith("ensemble ")]
        assert len(lines) == 2 and all("step 6/6" in l and "steps/s" in l and "eta" in l for l in lines), lines
        assert quiet == [1, 1], quiet  # each ensemble's 2nd member is built without the set-up lines


def test_quiet_set_up_silences_lightnings_info_lines_and_restores_them() -> None:
    import logging
    import warnings

    from clamp.console import SET_UP_LOGGERS, quiet_set_up

    loggers = [logging.getLogger(n) for n in SET_UP_LOGGERS]
    before = [lg.level for lg in loggers]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_set_up():
            assert not any(lg.isEnabledFor(logging.INFO) for lg in loggers)
            warnings.warn("LightningCLI's args parameter is intended to run from within Python", UserWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]
    assert [lg.level for lg in loggers] == before


def test_plain_sweep_prints_its_own_lines_without_lightnings_set_up_lines(tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """Issue 21.4: a plain sweep (no --ensemble) runs each ``clamp fit`` without Lightning's set-up lines
    (seed, GPU/TPU, tips, "fit stopped"), prints one line per finished run and its closing lines, and
    leaves Lightning's loggers as they were for a later ``clamp fit``. Under pytest Lightning's records
    go to pytest's log handler (not its own stream handler), so they are looked for in both."""
    import logging

    from clamp.console import SET_UP_LOGGERS

    before = [logging.getLogger(n).level for n in SET_UP_LOGGERS]
    emergence = {"class_path": "clamp.metrics.EmergenceCallback", "init_args": {"every_n_steps": 3}}  # writes summary.json
    path = _sweep(tmp_path, seeds=2, **{"trainer.callbacks": [emergence]})
    main(["sweep", str(path)])
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    for noise in ("GPU available", "TPU available", "Seed set to", "Tip:", "`Trainer.fit` stopped"):
        assert noise not in text, (noise, text)
    runs = tmp_path / "runs" / "study" / "base"
    for i, seed in ((1, 0), (2, 1)):
        assert f"sweep: run {i}/2 done: {runs / f'seed{seed}'} (" in err, err
    assert f"sweep {path}: 2 ran, 0 failed, 0 already finished" in out, out
    assert "final values, mean ± std (n seeds):" in out and "| base | " in out, out
    assert [logging.getLogger(n).level for n in SET_UP_LOGGERS] == before


def test_a_misspelt_key_fails_the_sweep_before_any_run_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _sweep(tmp_path, grid={"steps": {"ok": {}, "typo": {"trainer.max_stepz": 3}}}, seeds=2)
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, no usage block
    assert "unknown key trainer.max_stepz" in err and "condition 'typo'" in err and "did you mean trainer.max_steps" in err
    assert not (tmp_path / "runs").exists()  # not even the valid condition's runs were written or started
