"""A researcher's daily loop through the real ``clamp`` CLI: fit -> terminal summary -> load in Python ->
kill and resume -> report, plus ``clamp --help``/``--version``/``sites``.

One tiny run with stateful interventions (a running mean, a metric-triggered release) is trained
uninterrupted; a copy is SIGKILLed mid-run in a subprocess and resumed, and must match it exactly.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import numpy as np
import torch
import yaml

import clamp
from clamp.cli import main
from clamp.training import TrainingModule, masked_loss_and_accuracy

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "experiments" / "induction_default.yaml"
CLAMPS = {  # state that must survive a kill: a running mean and a release triggered by a metric
    "class_path": "clamp.ClampCallback",
    "init_args": {"interventions": [
        {"site": "layer1.head1.z", "op": {"kind": "mean", "over": "running", "momentum": 0.5}, "during": ["train"]},
        {"site": "layer0.head0.z", "op": {"kind": "zero"}, "during": ["train"],
         "schedule": {"until": {"metric": "val/ic/loss", "threshold": 3.47, "mode": "below"}}},
    ]},
}  # train-time only, so validation scores the bare model and a reloaded model must reproduce it  # fmt: skip


def tiny_args(runs: Path, steps: int = 40, callbacks: list[dict] | None = None) -> list[str]:
    """The default experiment shrunk to seconds: 2 heads, d_model 16, validation and probes every 10 steps.

    ``callbacks`` are added to the checkpointing and probing ones (e.g. a ``clamp.ClampCallback``).
    """
    extra = runs.parent / f"callbacks{len(list(runs.parent.glob('callbacks*.yaml')))}.yaml"
    extra.parent.mkdir(parents=True, exist_ok=True)
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        {"class_path": "clamp.EmergenceCallback", "init_args": {"every_n_steps": 10, "probe_size": 16, "heatmap_every_n_steps": 20}},
        *(callbacks or []),
    ]}}))  # fmt: skip
    return [
        "--config", str(DEFAULT),
        "--config", str(extra),
        "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", "10",
        "--trainer.logger.init_args.save_dir", str(runs),
        "--data.batch_size", "16",
        "--data.eval_size", "32",
        "--model.transformer.d_model", "16",
        "--model.transformer.n_heads", "2",
    ]  # fmt: skip


def run_cli(args: list[str]) -> str:
    """``clamp <args>`` in this process; returns what it printed (stdout is a StringIO: not a terminal)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        main(args)
    return out.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    runs = tmp_path_factory.mktemp("loop") / "runs"
    printed = run_cli(["fit", *tiny_args(runs, callbacks=[CLAMPS]), "--experiment", "loop"])
    return runs / "loop" / "version_0", printed


def test_fit_prints_plain_progress_and_an_end_of_run_summary(trained: tuple[Path, str]) -> None:
    run_dir, printed = trained
    summary = json.loads((run_dir / "summary.json").read_text())
    # plain lines every 5 % when stdout is not a terminal, with real numbers in them
    assert "step 20/40 (50%)" in printed and "steps/s" in printed
    # the summary names the folder, the final metrics (as in summary.json) and the next commands
    assert f"run folder: {os.path.relpath(run_dir)}" in printed
    assert f"val/ic/acc                         {summary['final']['val/ic/acc']:.4g}" in printed
    assert "phase changes" in printed
    for command in ("tensorboard --logdir", "clamp report", "clamp.load_run(", "clamp fit --resume"):
        assert command in printed
    # no third-party noise
    for noise in ("Tip:", "GPU available", "v_num", "Epoch 0", "LeafSpec", "litlogger"):
        assert noise not in printed, noise


def test_load_run_gives_model_task_and_batches_in_three_lines(trained: tuple[Path, str]) -> None:
    run_dir, _ = trained
    run = clamp.load_run(run_dir)
    batch = run.batch(32)  # the whole fixed in-context eval set, as validation saw it
    loss, acc = masked_loss_and_accuracy(run.model(batch["tokens"], batch["features"], batch["feature_mask"]), batch)
    # the reloaded weights on the reloaded eval set reproduce the run's last validation exactly
    assert float(acc) == pytest.approx(run.summary["final"]["val/ic/acc"], abs=1e-6)
    assert float(loss.detach()) == pytest.approx(run.summary["final"]["val/ic/loss"], rel=1e-5)
    assert run.splits == ("ic", "iw") and run.config["experiment"] == "loop"
    assert run.ckpt.name == "last.ckpt" and type(run.task).__name__ == "BurstyClassification"
    # a checkpoint path works too, and so does Lightning's own loader (hyper-parameters are dicts there)
    same = clamp.load_run(run.ckpt)
    module = TrainingModule.load_from_checkpoint(run.ckpt)
    for p, q, r in zip(run.model.parameters(), same.model.parameters(), module.model.parameters(), strict=True):
        assert torch.equal(p, q) and torch.equal(p, r)
    train = run.batch(4, split="train", index=3)
    assert train["tokens"].shape == (4, 5)
    with pytest.raises(ValueError, match=r"unknown split 'test'.*'train', 'ic', 'iw'"):
        run.batch(4, split="test")


def test_run_with_cache_takes_intervention_selectors_and_refuses_missing_features(trained: tuple[Path, str]) -> None:
    run = clamp.load_run(trained[0])
    batch = run.batch(8)
    logits, cache = run.model.run_with_cache(batch, names=["layer1.head*.pattern", "layer*.resid_post", "layer0.head1.z", "embed"])
    assert set(cache) == {"layer1.head0.pattern", "layer1.head1.pattern", "layer0.resid_post", "layer1.resid_post", "layer0.head1.z", "embed"}
    assert cache["layer1.head1.pattern"].shape == (8, 5, 5) and cache["layer0.head1.z"].shape == (8, 5, 8)
    _, full = run.model.run_with_cache(batch, names=["layer1.pattern", "layer0.z"])
    assert torch.equal(cache["layer1.head1.pattern"], full["layer1.pattern"][:, 1])
    assert torch.equal(cache["layer0.head1.z"], full["layer0.z"][:, 1])
    assert torch.allclose(logits, run.model(batch["tokens"], batch["features"], batch["feature_mask"]), atol=1e-5)
    # the exemplars are features: tokens alone would silently compute something else
    with pytest.raises(ValueError, match=r"d_feature=64.*run_with_cache\(batch\)"):
        run.model.run_with_cache(batch["tokens"], names=["embed"])
    # an explicit token-only probe is allowed, and differs
    no_feat, _ = run.model.run_with_cache(batch["tokens"], names=["embed"], allow_missing_features=True)
    assert not torch.allclose(no_feat, logits)
    with pytest.raises(KeyError, match="matches no site"):
        run.model.run_with_cache(batch, names=["layer9.pattern"])


def test_cli_help_version_sites_and_no_broken_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--help"])
    text = capsys.readouterr().out
    for command in ("fit", "validate", "report", "sites"):
        assert f"\n  {command} " in text
    assert "predict" not in text and "  test " not in text
    main(["--version"])
    assert capsys.readouterr().out.startswith("clamp 0.")
    for gone in ("test", "predict"):
        with pytest.raises(SystemExit, match=rf"unknown command '{gone}'.*fit, validate, report, sites"):
            main([gone])
    main(["sites", "--config", str(DEFAULT), "--model.transformer.n_layers", "3"])
    text = capsys.readouterr().out
    assert "3 layers x 8 heads" in text
    assert "layer2.pattern" in text and "[batch=128, head=8, q_pos=5, k_pos=5]" in text
    assert "layer0.z" in text and "[batch=128, head=8, pos=5, d_head=8]" in text


def _scalars(run_dir: Path) -> dict[tuple[str, int], float]:
    from clamp.report import read_scalars

    df = read_scalars(run_dir)
    return {(t, int(s)): float(v) for t, s, v in zip(df["tag"], df["step"], df["value"], strict=True)}


@pytest.fixture(scope="module")
def killed(trained: tuple[Path, str]) -> tuple[Path, list[str], int, bool, str]:
    """The same run SIGKILLed at step 25 in a subprocess, then resumed with ``--ckpt_path last``."""
    runs = trained[0].parent.parent.parent / "killed_runs"
    args = tiny_args(runs, callbacks=[CLAMPS, {"class_path": "tests.helpers.KillAt", "init_args": {"step": 25}}])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "clamp.cli", "fit", *args, "--experiment", "loop"], env=env, capture_output=True, text=True, timeout=300)
    run_dir = runs / "loop" / "version_0"
    summary_after_kill = (run_dir / "summary.json").exists()
    printed = run_cli(["fit", *args, "--experiment", "loop", "--ckpt_path", "last"])
    return run_dir, args, proc.returncode, summary_after_kill, printed + proc.stderr[-3000:]


def test_kill_then_resume_continues_the_same_run_with_the_same_curves(trained: tuple[Path, str], killed) -> None:  # noqa: ANN001
    full_dir, _ = trained
    run_dir, args, returncode, summary_after_kill, printed = killed
    runs = run_dir.parent.parent
    assert returncode == -9, printed  # SIGKILL at step 25: the last checkpoint is step 20's
    assert not summary_after_kill

    # `--ckpt_path last` found that checkpoint and continued in the same folder (no version_1)
    assert f"resuming {run_dir} from step 20" in printed
    assert [d.name for d in (runs / "loop").iterdir()] == ["version_0"]
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # one TensorBoard run, written twice

    # the same curves as the uninterrupted run: every scalar at every step, interventions included
    full, resumed = _scalars(full_dir), _scalars(run_dir)
    assert set(full) == set(resumed) and any(t.startswith("clamp/alpha/") for t, _ in full)
    assert all(resumed[k] == pytest.approx(v, rel=1e-6, abs=1e-7) for k, v in full.items())
    a, b = (json.loads((d / "summary.json").read_text()) for d in (full_dir, run_dir))
    assert a["final"] == b["final"] and a["phase_changes"] == b["phase_changes"]
    ca, cb = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=False) for d in (full_dir, run_dir))
    for k, v in ca["state_dict"].items():
        assert torch.equal(v, cb["state_dict"][k]), k
    clamp_state = [k for k in ca["callbacks"] if "ClampCallback" in k]
    assert clamp_state and str(ca["callbacks"][clamp_state[0]]) == str(cb["callbacks"][clamp_state[0]])

    # HParams stay in that run (written once, at step 0), with their end-of-run metrics
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(runs))
    mux.Reload()
    hparams = mux.PluginRunToTagToContent("hparams")
    assert list(mux.Runs()) == list(hparams) == ["loop/version_0"]
    assert "_hparams_/session_start_info" in hparams["loop/version_0"]
    assert ("hp/run/steps", 40) in resumed and resumed[("hp/run/steps", 40)] == 40.0


def test_resume_extends_a_run_and_report_compares_runs_honestly(trained: tuple[Path, str], killed, tmp_path: Path) -> None:  # noqa: ANN001
    full_dir, _ = trained
    run_dir = killed[0]
    # `--resume DIR` alone (its config.yaml is read) trains further in the same folder
    printed = run_cli(["fit", "--resume", str(run_dir), "--trainer.max_steps", "50"])
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 50 and "final metrics (step 50)" in printed
    assert [d.name for d in run_dir.parent.iterdir()] == ["version_0"]

    # a stray run folder with an event file but no scalars (what a failed start leaves)
    from torch.utils.tensorboard import SummaryWriter

    stray = run_dir.parent / "version_1"
    with SummaryWriter(str(stray)) as w:
        w.add_text("note", "nothing trained")
    out = tmp_path / "report"
    printed = run_cli(["report", str(full_dir), str(run_dir.parent), "--labels", "uninterrupted", "killed+resumed",
                       "--formats", "png", "pdf", "svg", "--out", str(out)])  # fmt: skip
    assert f"skipping {stray}: no scalars" in printed
    data = json.loads((out / "report.json").read_text())
    last, ends = data["common_range"]["last_step"], data["common_range"]["run_ends"]
    assert ends["killed+resumed"] == ends["uninterrupted"] + 10 and last == ends["uninterrupted"]
    assert f"Compared on steps 0-{last}, the common range: uninterrupted (ends at {last}) end(s) before the others ({last + 10})." in printed
    assert list(data["runs"]) == ["uninterrupted", "killed+resumed"]
    # on the common range the two runs are the same run: same finals, same phase changes
    a, b = (data["runs"][n]["tags"] for n in ("uninterrupted", "killed+resumed"))
    assert a == b and a["val/ic/acc"]["final_step"] == last
    assert data["chance"]["val/ic/acc"] == pytest.approx(1 / 32) and data["chance"]["val/ic/loss"] == pytest.approx(np.log(32))
    for fmt in ("png", "pdf", "svg"):
        assert (out / f"curves_val_ic_acc.{fmt}").stat().st_size > 5000
        assert (out / f"heatmap_task_query_to_match.{fmt}").is_file()
    md = (out / "report.md").read_text()
    assert f"Compared on steps 0-{last}, the common range" in md and "![val/ic/acc](curves_val_ic_acc.png)" in md

    # one run, compared whole: its phase changes are read from its summary.json, not recomputed
    alone = tmp_path / "alone"
    run_cli(["report", str(full_dir), "--out", str(alone)])
    summary = json.loads((full_dir / "summary.json").read_text())
    run = json.loads((alone / "report.json").read_text())["runs"]["loop/version_0"]
    for tag, r in run["tags"].items():
        assert r["phase_change"] == summary["phase_changes"].get(tag, r["phase_change"])


def test_report_titles_in_words() -> None:
    from clamp.report import title

    assert title("val/ic/acc") == "Validation in-context accuracy (val/ic/acc)"
    assert title("task/query_to_match/L1H6") == "Task probe query -> matching label attention, layer 1 head 6 (task/query_to_match/L1H6)"


def test_validate_evaluates_a_run_without_a_new_run_folder(trained: tuple[Path, str]) -> None:
    run_dir, _ = trained
    printed = run_cli(["validate", "--resume", str(run_dir)])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{summary['final']['val/ic/acc']:.4g}" in printed or f"{summary['final']['val/ic/acc']}" in printed
    assert [d.name for d in run_dir.parent.iterdir()] == ["version_0"]
    assert not (Path.cwd() / "config.yaml").exists() and not (Path.cwd() / "checkpoints").exists()
    out = io.StringIO()
    with pytest.raises(SystemExit) as stop, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        main(["validate", "--config", str(DEFAULT)])
    assert stop.value.code == 2 and "clamp: error: validate needs a trained model" in out.getvalue()  # one line


def test_dashboard_headline_first_no_empty_categories_and_hparams_that_tell_runs_apart(trained: tuple[Path, str]) -> None:
    import re

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir, _ = trained
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = tags["scalars"]
    assert not [t for t in scalars if t.startswith("phase/")]  # phase changes: a text table and HParams metrics
    assert "phase_changes/text_summary" in tags["tensors"]
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    categories = [c.title for c in layout.category]
    assert categories[0] == "headline" and categories[1].startswith("task/")
    for category in layout.category:  # every chart of every category shows at least one logged curve
        for chart in category.chart:
            regexes = list(chart.multiline.tag)
            assert any(re.search(r, t) for r in regexes for t in scalars), (category.title, chart.title)
    assert "task/query_to_match/max" in scalars and "task/query_to_match/median" in scalars
    for tag in tags["images"]:  # no blank heatmap: every cell of an image is not the same colour
        import io as _io

        from PIL import Image

        img = Image.open(_io.BytesIO(acc.Images(tag)[-1].encoded_image_string))
        assert len(img.getcolors(maxcolors=1 << 16) or [0, 0]) > 20, tag
    content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hp = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hp["seed"].number_value == 0 and hp["trainer/max_steps"].number_value == 40 and hp["data/batch_size"].number_value == 16
    assert "mean" in hp["clamp/summary"].string_value
    assert acc.Scalars("hp/run/steps")[-1].value == 40
