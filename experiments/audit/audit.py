"""Reliability audit: bad configs, hostile files, kills, signals, divergence and DDP against the real CLI.

Every case runs ``clamp fit`` on a shrunken default experiment (in a forked child of this
process, so the imports are paid once; DDP and SIGKILL cases in real subprocesses) and is
classified:

* ``clear error``     - exit status != 0, stderr has exactly one ``clamp: error:`` line that names the
                        expected field/value, no traceback, no usage dump, no empty run folder;
* ``accepted``        - a valid config (or a warned-about one) ran to the end as it should;
* ``silent``          - a bad config ran without an error (or a warning naming the problem);
* ``crash``           - a traceback, a message not naming the problem, a hang, an empty run folder
                        left behind, or a valid config rejected;
* ``data lost``       - a kill/signal/divergence case without its checkpoint or a valid summary.json,
                        or a resume that does not reproduce the uninterrupted run bit for bit.

Usage: ``python experiments/audit/audit.py [--out experiments/audit/results.json] [-k substring]``
(about 10 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(1)

from clamp.cli import main as clamp_main  # noqa: E402  (imported once, before forking)

DEFAULT = ROOT / "experiments" / "induction_default.yaml"
SHRINK = [
    "--trainer.max_steps", "12", "--trainer.val_check_interval", "6", "--trainer.enable_progress_bar", "false",
    "--data.batch_size", "8", "--data.eval_size", "16", "--model.transformer.d_model", "16",
    "--model.transformer.n_heads", "2", "--torch_threads", "1",
]
EMERGENCE = {"class_path": "clamp.EmergenceCallback", "init_args": {"every_n_steps": 6, "probe_size": 8, "causal": False, "heatmap_every_n_steps": 0}}
CHECKPOINT = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}


# ---------------------------------------------------------------------------------------- running
class Result(dict):
    """rc, err (stderr text), runs (the save_dir), tmp (the case's folder)."""

    __getattr__ = dict.__getitem__


def _ordered(args: list[str], runs: Path) -> list[str]:
    """Config files first, then the shrinking flags, then the case's own flags (later ones win)."""
    configs, rest, i = [], [], 0
    while i < len(args):
        if args[i] == "--config" and i + 1 < len(args):
            configs += args[i : i + 2]
            i += 2
        else:
            rest.append(args[i])
            i += 1
    return ["--config", str(DEFAULT), *configs, *SHRINK, "--trainer.logger.init_args.save_dir", str(runs), *rest]


def run_cli(tmp: Path, args: list[str], timeout: float = 240) -> Result:
    """``clamp fit`` in a forked child: exit status and stderr, with a timeout."""
    runs = tmp / "runs"
    err_path = tmp / "stderr.txt"
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)
            os.chdir(tmp)
            argv = ["fit", *_ordered(args, runs)]
            sys.argv = ["clamp", *argv]
            clamp_main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # an exception escaping main() is a crash: record its traceback
            traceback.print_exc()
            code = 99
        finally:
            sys.stderr.flush()
            os._exit(code)
    deadline = time.time() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return Result(rc="timeout", err=err_path.read_text() if err_path.exists() else "", runs=runs, tmp=tmp)
        time.sleep(0.2)
    rc = os.waitstatus_to_exitcode(status)
    return Result(rc=rc, err=err_path.read_text() if err_path.exists() else "", runs=runs, tmp=tmp)


def run_subprocess(tmp: Path, args: list[str], timeout: float = 400, kill_when: Callable[[], bool] | None = None) -> Result:
    """``python -m clamp.cli fit`` in a real subprocess (DDP launches ranks by re-running the command)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "clamp.cli", "fit", *_ordered(args, tmp / "runs")]
    with open(tmp / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.time() + timeout
        while proc.poll() is None:
            if kill_when is not None and kill_when():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            if time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return Result(rc="timeout", err=(tmp / "stderr.txt").read_text(), runs=tmp / "runs", tmp=tmp)
            time.sleep(0.1)
    return Result(rc=proc.returncode, err=(tmp / "stderr.txt").read_text(), runs=tmp / "runs", tmp=tmp)


def config(tmp: Path, callbacks: list[dict] | None = None, **sections: Any) -> list[str]:
    """A --config file holding ``callbacks`` (replacing the default list) and other sections."""
    body: dict[str, Any] = dict(sections)
    if callbacks is not None:
        body.setdefault("trainer", {})["callbacks"] = callbacks
    path = tmp / f"case{len(list(tmp.glob('case*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(body))
    return ["--config", str(path)]  # after the default experiment's file (see _ordered)


def clamps(*interventions: dict, emergence: bool = True) -> list[dict]:
    cbs = [CHECKPOINT, {"class_path": "clamp.ClampCallback", "init_args": {"interventions": list(interventions)}}]
    return cbs + ([EMERGENCE] if emergence else [])


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("clamp: error:")]


def empty_run_folders(runs: Path) -> list[str]:
    if not runs.exists():
        return []
    return [str(p) for p in runs.glob("*/version_*") if p.is_dir() and not any(p.iterdir())]


def classify_bad(r: Result, expect: list[str]) -> tuple[str, str]:
    """A bad config: one clear line naming every ``expect`` string, before any run folder exists."""
    lines = error_lines(r.err)
    if r.rc == "timeout":
        return "crash", "timed out"
    if r.rc == 0:
        warned = [ln for ln in r.err.splitlines() if "Warning" in ln and all(e in ln for e in expect)]
        return ("accepted", "warned: " + warned[0][:200]) if warned else ("silent", "exit 0")
    if "Traceback" in r.err or "usage:" in r.err:
        return "crash", "traceback or usage dump: " + r.err.strip().splitlines()[-1][:200]
    if len(lines) != 1:
        return "crash", f"{len(lines)} error lines: {r.err.strip()[-300:]}"
    if not all(e in lines[0] for e in expect):
        return "crash", f"message does not name {expect}: {lines[0][:300]}"
    empty = empty_run_folders(r.runs)
    if empty:
        return "crash", f"left empty run folder {empty[0]}"
    return "clear error", lines[0][:300]


def classify_good(r: Result) -> tuple[str, str]:
    if r.rc != 0:
        return "crash", f"valid config rejected (rc {r.rc}): {(error_lines(r.err) or r.err.strip().splitlines() or [''])[-1][:300]}"
    summaries = list(r.runs.glob("*/version_*/summary.json"))
    for s in summaries:
        data = json.loads(s.read_text())  # strict JSON
        if data.get("complete") is not True:
            return "data lost", f"{s} not marked complete"
    return "accepted", f"ran; {len(summaries)} summary.json"


# ---------------------------------------------------------------------------------------- cases
Case = tuple[str, str, Callable[[Path], tuple[str, str]]]
CASES: list[Case] = []


def bad(name: str, expect: list[str], build: Callable[[Path], list[str]]) -> None:
    CASES.append((name, "bad config", lambda tmp: classify_bad(run_cli(tmp, build(tmp)), expect)))


def good(name: str, build: Callable[[Path], list[str]]) -> None:
    CASES.append((name, "valid config", lambda tmp: classify_good(run_cli(tmp, build(tmp)))))


def iv(site: str = "layer0.head1.z", op: dict | None = None, **kw: Any) -> dict:
    return {"site": site, "op": op or {"kind": "zero"}, **kw}


def one(*interventions: dict, **kw: Any) -> Callable[[Path], list[str]]:
    return lambda tmp: config(tmp, clamps(*interventions, **kw))


# sites and selectors
bad("unknown site", ["layer0.head1.zz", "embed"], one(iv("layer0.head1.zz")))
bad("head out of range", ["head 9", "0..1"], one(iv("layer0.head9.z")))
bad("layer out of range", ["layer9.z"], one(iv("layer9.z")))
bad("head selector on a site without heads", ["resid_post", "head"], one(iv("layer0.head0.resid_post")))
# ops: kinds, parameters, types
bad("unknown op kind", ["zap", "zero"], one(iv(op={"kind": "zap"})))
bad("op without kind", ["kind"], one(iv(op={"k": 1.0})))
bad("unknown op parameter", ["foo", "valid"], one(iv(op={"kind": "zero", "foo": 1})))
bad("scale without k", ["scale", "`k`"], one(iv(op={"kind": "scale"})))
bad("scale k is a string", ["`k`", "half"], one(iv(op={"kind": "scale", "k": "half"})))
bad("constant without value", ["constant", "`value`"], one(iv(op={"kind": "constant"})))
bad("constant wrong shape", ["constant", "[3]", "layer0.resid_post"], one(iv("layer0.resid_post", {"kind": "constant", "value": [1.0, 2.0, 3.0]})))
bad("constant ragged list", ["`value`"], one(iv("layer0.resid_post", {"kind": "constant", "value": [[1.0], [1.0, 2.0]]})))
bad("constant file missing", ["`value`", "nope.npy"], one(iv("layer0.resid_post", {"kind": "constant", "value": "nope.npy"})))
bad("constant bad suffix", ["`value`", "suffix"], lambda tmp: ((tmp / "v.txt").write_text("1"), one(iv("layer0.resid_post", {"kind": "constant", "value": str(tmp / "v.txt")}))(tmp))[1])
bad("noise std negative", ["std", "-1"], one(iv(op={"kind": "noise", "std": -1.0})))
bad("noise std string", ["std", "big"], one(iv(op={"kind": "noise", "std": "big"})))
bad("mean over unknown", ["over", "time", "running"], one(iv(op={"kind": "mean", "over": "time"})))
bad("mean momentum 0", ["momentum"], one(iv(op={"kind": "mean", "over": "running", "momentum": 0})))
bad("mean momentum 2", ["momentum"], one(iv(op={"kind": "mean", "over": "running", "momentum": 2})))
bad("patch unknown transform", ["blur", "shuffle_positions"], one(iv(op={"kind": "patch", "transform": "blur"})))
bad("patch transform not importable", ["nope.mod.fn"], one(iv(op={"kind": "patch", "transform": "nope.mod.fn"})))
bad("construct without fn", ["construct", "`fn`"], one(iv("layer0.head0.pattern", {"kind": "construct"})))
bad("construct fn not importable", ["nope.fn"], one(iv("layer0.head0.pattern", {"kind": "construct", "fn": "nope.fn"})))
bad("construct fn not callable", ["math.pi", "callable"], one(iv("layer0.head0.pattern", {"kind": "construct", "fn": "math.pi"})))
bad("construct fn wrong type", ["`fn`"], one(iv("layer0.head0.pattern", {"kind": "construct", "fn": 3})))
# references
bad("reference missing", ["missing.ckpt"], one(iv(op={"kind": "clamp_to_reference", "reference": "missing.ckpt"})))
bad("reference empty string", ["reference"], one(iv(op={"kind": "clamp_to_reference", "reference": ""})))
bad("reference is a directory", ["directory"], lambda tmp: one(iv(op={"kind": "clamp_to_reference", "reference": str(tmp)}))(tmp))


def _corrupt(tmp: Path, content: bytes, name: str = "corrupt.ckpt") -> Path:
    p = tmp / name
    p.write_bytes(content)
    return p


bad("reference empty file", ["corrupt.ckpt", "myref"], lambda tmp: one(iv(op={"kind": "clamp_to_reference", "reference": str(_corrupt(tmp, b""))}, name="myref"))(tmp))
bad("reference garbage file", ["corrupt.ckpt", "myref"], lambda tmp: one(iv(op={"kind": "clamp_to_reference", "reference": str(_corrupt(tmp, os.urandom(256)))}, name="myref"))(tmp))
bad("reference truncated zip", ["corrupt.ckpt", "myref"], lambda tmp: one(iv(op={"kind": "clamp_to_reference", "reference": str(_corrupt(tmp, b"PK\x03\x04" + os.urandom(64)))}, name="myref"))(tmp))
bad("reference garbage safetensors", ["bad.safetensors", "myref"], lambda tmp: one(iv(op={"kind": "clamp_to_reference", "reference": str(_corrupt(tmp, os.urandom(64), "bad.safetensors"))}, name="myref"))(tmp))
bad("reference holds a list", ["list"], lambda tmp: (torch.save([1, 2], tmp / "list.pt"), one(iv(op={"kind": "clamp_to_reference", "reference": str(tmp / "list.pt")}))(tmp))[1])


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


def hostile(tmp: Path, what: str) -> tuple[str, str]:
    marker = tmp / "PWNED"
    evil = tmp / ("evil.ckpt" if what == "reference" else "evil.pt")
    torch.save({"state_dict": {}, "x": _Payload(str(marker))} if what == "reference" else _Payload(str(marker)), evil)
    op = {"kind": "clamp_to_reference", "reference": str(evil)} if what == "reference" else {"kind": "constant", "value": str(evil)}
    r = run_cli(tmp, one(iv("layer0.resid_post", op, name="evil"))(tmp))
    if marker.exists():
        return "crash", "the planted payload RAN (file created)"
    return classify_bad(r, ["evil"])


CASES.append(("hostile pickle as reference", "hostile file", lambda tmp: hostile(tmp, "reference")))
CASES.append(("hostile pickle as constant .pt", "hostile file", lambda tmp: hostile(tmp, "constant")))

# selection
bad("positions empty", ["positions", "empty"], one(iv(positions=[])))
bad("positions out of range", ["positions", "99"], one(iv(positions=[99])))
bad("features empty", ["features", "empty"], one(iv(features=[])))
bad("features out of range on pattern", ["features", "k_pos"], one(iv("layer0.head0.pattern", features=[99])))
bad("features out of range on resid", ["features", "999"], one(iv("layer0.resid_post", features=[999])))
bad("features not ints", ["features"], one(iv("layer0.resid_post", features=["a"])))
bad("during unknown", ["during", "training"], one(iv(during=["training"])))
bad("intervention key typo", ["sitee"], one({"sitee": "layer0.z", "op": {"kind": "zero"}}))
bad("duplicate names", ["duplicated"], one(iv(name="a"), iv("layer1.head0.z", name="a")))
bad("conflicting replacements", ["conflicting"], one(iv(op={"kind": "zero"}), iv(op={"kind": "mean"})))
# schedules
bad("schedule key typo", ["strat"], one(iv(schedule={"strat": 5})))
bad("schedule start negative", ["start", "-1"], one(iv(schedule={"start": -1})))
bad("schedule stop before start", ["stop=5"], one(iv(schedule={"start": 8, "stop": 5})))
bad("ramp_out without stop", ["ramp_out"], one(iv(schedule={"ramp_out": 3})))
bad("windows and start", ["windows"], one(iv(schedule={"start": 2, "windows": [{"start": 0, "stop": 4}]})))
bad("windows empty", ["windows"], one(iv(schedule={"windows": []})))
bad("period without on", ["period"], one(iv(schedule={"period": 4})))
bad("on greater than period", ["on=5"], one(iv(schedule={"period": 4, "on": 5})))
bad("strength above 1", ["strength"], one(iv(schedule={"strength": 2.0})))
bad("start after max_steps", ["max_steps", "500"], one(iv(schedule={"start": 500})))
bad("until mode unknown", ["mode", "sideways"], one(iv(schedule={"until": {"metric": "val/ic/acc", "threshold": 0.5, "mode": "sideways"}})))
bad("until metric empty", ["metric"], one(iv(schedule={"until": {"metric": "", "threshold": 0.5}})))
bad("until metric typo", ["val/ic/accc", "val/ic/acc"], one(iv(schedule={"until": {"metric": "val/ic/accc", "threshold": 0.5}})))
bad("until metric of a probe, typo", ["curves/task/los"], one(iv(schedule={"until": {"metric": "curves/task/los", "threshold": 0.5}})))
# optimizer, model, data, trainer, CLI
bad("lr 0", ["model.optimizer.lr"], lambda tmp: ["--model.optimizer.lr", "0"])
bad("lr negative", ["model.optimizer.lr"], lambda tmp: ["--model.optimizer.lr", "-1"])
bad("lr nan", ["model.optimizer.lr"], lambda tmp: ["--model.optimizer.lr", "nan"])
bad("warmup negative", ["warmup_steps"], lambda tmp: ["--model.optimizer.warmup_steps", "-5"])
bad("lr schedule unknown", ["schedule", "linear"], lambda tmp: ["--model.optimizer.schedule", "linear"])
bad("beta1 above 1", ["beta1"], lambda tmp: ["--model.optimizer.beta1", "1.5"])
bad("batch_size 0", ["batch_size"], lambda tmp: ["--data.batch_size", "0"])
bad("eval_size 0", ["eval_size"], lambda tmp: ["--data.eval_size", "0"])
bad("n_layers 0", ["n_layers"], lambda tmp: ["--model.transformer.n_layers", "0"])
bad("n_heads 0", ["n_heads"], lambda tmp: ["--model.transformer.n_heads", "0"])
bad("trainer key typo", ["max_stepz"], lambda tmp: ["--trainer.max_stepz", "3"])
bad("max_steps not an int", ["max_steps", "abc"], lambda tmp: ["--trainer.max_steps", "abc"])
bad("seed not an int", ["seed_everything"], lambda tmp: ["--seed_everything", "x"])
bad("torch_threads negative", ["torch_threads"], lambda tmp: ["--torch_threads", "-1"])
bad("experiment escapes runs/", ["experiment", "../../x"], lambda tmp: ["--experiment", "../../x"])
bad("experiment absolute", ["experiment", "/tmp/abs"], lambda tmp: ["--experiment", "/tmp/abs"])
bad("unknown callback class", ["clamp.Nope"], lambda tmp: config(tmp, [{"class_path": "clamp.Nope"}]))
bad("unknown task class", ["synthetic_data.Nope"], lambda tmp: config(tmp, data={"task": {"class_path": "synthetic_data.Nope"}}))
bad("emergence every_n_steps 0", ["every_n_steps"], lambda tmp: config(tmp, [{"class_path": "clamp.EmergenceCallback", "init_args": {"every_n_steps": 0}}]))
bad("config file missing", ["nope.yaml", "no such file"], lambda tmp: ["--config", "nope.yaml"])
bad("config file empty", ["empty"], lambda tmp: ((tmp / "e.yaml").write_text(""), ["--config", str(tmp / "e.yaml")])[1])
bad("config file is a list", ["mapping"], lambda tmp: ((tmp / "l.yaml").write_text("- 1\n- 2\n"), ["--config", str(tmp / "l.yaml")])[1])
bad("config file not YAML", ["YAML"], lambda tmp: ((tmp / "b.yaml").write_text("a: [1, 2\n"), ["--config", str(tmp / "b.yaml")])[1])

# valid configs that must run
good("alternating windows (zero / mean)", one(
    iv(op={"kind": "zero"}, schedule={"windows": [{"start": 0, "stop": 3}, {"start": 6, "stop": 9}]}, name="a"),
    iv(op={"kind": "mean"}, schedule={"windows": [{"start": 3, "stop": 6}, {"start": 9, "stop": 12}]}, name="b")))
good("complementary period/on gates", one(
    iv(op={"kind": "zero"}, schedule={"period": 4, "on": 2}, name="a"),
    iv(op={"kind": "resample"}, schedule={"start": 2, "period": 4, "on": 2}, name="b")))
good("scale and noise on one site", one(iv(op={"kind": "scale", "k": 0.5}), iv(op={"kind": "noise", "std": 0.1})))
good("until on a validation metric", one(iv(schedule={"until": {"metric": "val/ic/acc", "threshold": 0.0}})))
good("until on an emergence metric", one(iv(schedule={"until": {"metric": "curves/task/loss", "threshold": 100.0, "mode": "below"}})))
good("until on train/loss", one(iv(schedule={"until": {"metric": "train/loss", "threshold": 100.0, "mode": "below"}})))
good("constant of the right shape", one(iv("layer0.resid_post", {"kind": "constant", "value": [0.5] * 16}, positions=[-1])))
good("construct previous-token pattern", one(iv("layer0.head0.pattern", {"kind": "construct", "fn": "clamp.interventions.constructors.previous_token_pattern"})))
good("patch shuffle_positions", one(iv(op={"kind": "patch", "transform": "shuffle_positions"})))
good("reference init", one(iv("layer0.head0.pattern", {"kind": "clamp_to_reference", "reference": "init"})))
good("running mean with accumulate_grad_batches 2", lambda tmp: [*one(iv(op={"kind": "mean", "over": "running"}))(tmp), "--trainer.accumulate_grad_batches", "2"])
good("features and positions on a pattern", one(iv("layer0.head0.pattern", positions=[-1], features=[0, 1])))


# ---------------------------------------------------------------------------------------- run cases
def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = _ckpt(a)["state_dict"], _ckpt(b)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _summary_ok(run: Path, complete: bool) -> str | None:
    path = run / "summary.json"
    if not path.exists():
        return "no summary.json"
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        return f"summary.json is not valid JSON ({e})"
    if data.get("complete") is not complete:
        return f"summary.json complete={data.get('complete')!r}, expected {complete}"
    return None


RUN_CLAMPS = (
    iv("layer1.head1.z", {"kind": "mean", "over": "running", "momentum": 0.3}, name="mean"),
    iv("layer0.head0.z", {"kind": "noise", "std": 0.3}, name="noise"),
    iv("layer0.head1.pattern", {"kind": "clamp_to_reference", "reference": "init"}, name="ref",
       schedule={"until": {"metric": "val/ic/acc", "threshold": 0.0}}),
)


def reference_run(tmp: Path) -> Path:
    r = run_cli(tmp, [*one(*RUN_CLAMPS)(tmp), "--experiment", "full"])
    assert r.rc == 0, r.err[-2000:]
    return tmp / "runs" / "full" / "version_0" / "checkpoints" / "last.ckpt"


def signal_case(signame: str) -> Callable[[Path], tuple[str, str]]:
    def case(tmp: Path) -> tuple[str, str]:
        signum = int(getattr(signal, signame))
        full = reference_run(tmp)
        stop = {"class_path": "tests.helpers.SendSignal", "init_args": {"step": 8, "signum": signum}}
        sys.path.insert(0, str(ROOT))
        r = run_cli(tmp, [*config(tmp, [*clamps(*RUN_CLAMPS), stop]), "--experiment", "cut"])
        run = tmp / "runs" / "cut" / "version_0"
        if r.rc != 128 + signum:
            return "crash", f"exit status {r.rc}, expected {128 + signum}: {r.err.strip()[-300:]}"
        if not (run / "checkpoints" / "last.ckpt").exists() or _ckpt(run / "checkpoints" / "last.ckpt")["global_step"] != 8:
            return "data lost", "no checkpoint of the step the signal arrived at"
        problem = _summary_ok(run, complete=False)
        if problem:
            return "data lost", problem
        r2 = run_cli(tmp, [*one(*RUN_CLAMPS)(tmp), "--experiment", "cut", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
        if r2.rc != 0:
            return "crash", f"resume failed: {r2.err.strip()[-300:]}"
        if not _same_weights(full, tmp / "runs" / "cut" / "version_1" / "checkpoints" / "last.ckpt"):
            return "data lost", "resumed run differs from the uninterrupted one"
        return "clean stop", f"exit {r.rc}; checkpoint at step 8; summary incomplete; resume bitwise identical"

    return case


def sigkill_case(tmp: Path) -> tuple[str, str]:
    full = reference_run(tmp)
    ckpt_dir = tmp / "runs" / "cut" / "version_0" / "checkpoints"
    r = run_subprocess(tmp, [*one(*RUN_CLAMPS)(tmp), "--experiment", "cut"], kill_when=lambda: (ckpt_dir / "last.ckpt").exists())
    if not (ckpt_dir / "last.ckpt").exists():
        return "data lost", f"no checkpoint after SIGKILL (rc {r.rc})"
    step = _ckpt(ckpt_dir / "last.ckpt")["global_step"]
    r2 = run_cli(tmp, [*one(*RUN_CLAMPS)(tmp), "--experiment", "cut", "--ckpt_path", str(ckpt_dir / "last.ckpt")])
    if r2.rc != 0:
        return "crash", f"resume failed: {r2.err.strip()[-300:]}"
    if not _same_weights(full, tmp / "runs" / "cut" / "version_1" / "checkpoints" / "last.ckpt"):
        return "data lost", "resumed run differs from the uninterrupted one"
    return "clean stop", f"killed after the step-{step} checkpoint; resume bitwise identical"


def edited_resume_case(tmp: Path) -> tuple[str, str]:
    reference_run(tmp)
    ckpt = tmp / "runs" / "full" / "version_0" / "checkpoints" / "last.ckpt"
    edited = (
        iv("layer1.head1.z", {"kind": "mean", "over": "running", "momentum": 0.5}, name="mean"),
        RUN_CLAMPS[2],
        iv("layer1.head0.z", {"kind": "scale", "k": 0.5}, name="new"),
    )
    r = run_cli(tmp, [*one(*edited)(tmp), "--experiment", "edited", "--trainer.max_steps", "18", "--ckpt_path", str(ckpt)])
    if r.rc != 0:
        return "crash", f"edited resume failed: {(error_lines(r.err) or [r.err.strip()[-300:]])[0]}"
    text = " ".join(r.err.split())
    wanted = ["'mean' changed (op.momentum: 0.3 -> 0.5): running mean kept", "'new' is new", "'noise' was removed"]
    missing = [w for w in wanted if w not in text]
    if missing:
        return "silent", f"resume did not say {missing}"
    problem = _summary_ok(tmp / "runs" / "edited" / "version_0", complete=True)
    return ("data lost", problem) if problem else ("accepted", "resume explained every change; released `ref` stayed released")


def divergence_case(tmp: Path) -> tuple[str, str]:
    r = run_cli(tmp, [*one(iv(op={"kind": "scale", "k": 1.0}))(tmp), "--model.optimizer.lr", "1e4", "--model.optimizer.warmup_steps", "0",
                      "--trainer.max_steps", "60", "--trainer.log_every_n_steps", "5", "--trainer.gradient_clip_val", "null", "--experiment", "nan"])
    run = tmp / "runs" / "nan" / "version_0"
    if r.rc == 0:
        return "silent", "trained to the end with exit 0"
    lines = error_lines(r.err)
    if len(lines) != 1 or "diverged" not in lines[0]:
        return "crash", r.err.strip()[-300:]
    problem = _summary_ok(run, complete=False)
    return ("data lost", problem) if problem else ("clear error", lines[0][:200])


def ddp_case(tmp: Path) -> tuple[str, str]:
    default_callbacks = yaml.safe_load(DEFAULT.read_text())["trainer"]["callbacks"]
    for cb in default_callbacks:
        if cb["class_path"] == "clamp.EmergenceCallback":
            cb["init_args"].update(every_n_steps=6, probe_size=8)
    cbs = [*default_callbacks, {"class_path": "clamp.ClampCallback", "init_args": {"interventions": [
        iv("layer1.head0.z", {"kind": "scale", "k": 0.5}, schedule={"until": {"metric": "curves/task/loss", "threshold": 100.0, "mode": "below"}})]}}]
    r = run_subprocess(tmp, [*config(tmp, cbs), "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--experiment", "ddp"])
    if r.rc != 0:
        return "crash", f"rc {r.rc}: {r.err.strip()[-300:]}"
    problem = _summary_ok(tmp / "runs" / "ddp" / "version_0", complete=True)
    return ("data lost", problem) if problem else ("accepted", "2 gloo ranks ran the default callbacks to the end; summary.json complete")


def ddp_sigterm_case(tmp: Path) -> tuple[str, str]:
    cbs = [*clamps(*RUN_CLAMPS), {"class_path": "tests.helpers.SendSignal", "init_args": {"step": 8, "signum": int(signal.SIGTERM)}}]
    r = run_subprocess(tmp, [*config(tmp, cbs), "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--experiment", "ddp"])
    run = tmp / "runs" / "ddp" / "version_0"
    if r.rc == 0 or r.rc == "timeout":
        return "crash", f"rc {r.rc}"
    if not (run / "checkpoints" / "last.ckpt").exists() or _ckpt(run / "checkpoints" / "last.ckpt")["global_step"] < 8:
        return "data lost", f"no checkpoint of step 8 (rc {r.rc}): {r.err.strip()[-300:]}"
    problem = _summary_ok(run, complete=False)
    return ("data lost", problem) if problem else ("clean stop", f"rc {r.rc}; checkpoint at step {_ckpt(run / 'checkpoints' / 'last.ckpt')['global_step']}; summary incomplete")


CASES += [
    ("SIGTERM mid-run, then resume", "kill/resume", signal_case("SIGTERM")),
    ("SIGINT mid-run, then resume", "kill/resume", signal_case("SIGINT")),
    ("SIGKILL after a checkpoint, then resume", "kill/resume", sigkill_case),
    ("edit interventions, then resume", "kill/resume", edited_resume_case),
    ("lr 1e4 (divergence)", "runtime", divergence_case),
    ("DDP 2 CPU ranks, default callbacks + clamp", "ddp", ddp_case),
    ("DDP 2 CPU ranks, SIGTERM at step 8", "ddp", ddp_sigterm_case),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "experiments" / "audit" / "results.json"))
    ap.add_argument("-k", default="", help="only cases whose name or group contains one of these '|'-separated strings")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="clamp-audit-") as root:
        for i, (name, group, fn) in enumerate(c for c in CASES if any(k in c[0] or k in c[1] for k in args.k.split("|"))):
            tmp = Path(root) / f"case{i:03d}"
            tmp.mkdir()
            t0 = time.time()
            try:
                outcome, detail = fn(tmp)
            except Exception as e:  # the audit itself must not hide a failure
                outcome, detail = "crash", f"audit harness: {type(e).__name__}: {e}"
            results.append({"case": name, "group": group, "outcome": outcome, "detail": detail, "seconds": round(time.time() - t0, 1)})
            print(f"[{outcome:>11}] {group:>12} | {name}: {detail[:160]}", flush=True)
    counts = Counter(r["outcome"] for r in results)
    totals = {
        "cases tried": len(results),
        "clear errors": counts["clear error"],
        "valid configs accepted / clean stops": counts["accepted"] + counts["clean stop"],
        "silent acceptances": counts["silent"],
        "crashes": counts["crash"],
        "runs with data lost": counts["data lost"],
    }
    Path(args.out).write_text(json.dumps({"totals": totals, "results": results}, indent=2))
    print(json.dumps(totals, indent=2))


if __name__ == "__main__":
    main()
