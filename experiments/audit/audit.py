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
    rc = _wait_child(pid, timeout)
    return Result(rc=rc, err=err_path.read_text() if err_path.exists() else "", runs=runs, tmp=tmp)


def _wait_child(pid: int, timeout: float) -> int | str:
    """The forked child's exit code, or ``"timeout"`` after killing it once ``timeout`` seconds have passed."""
    deadline = time.time() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.2)


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
    return [ln for ln in err.splitlines() if ln.startswith(("clamp: error:", "clamp sweep: error:", "clamp analyze: error:"))]


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


def classify_diverged(r: Result, run: Path) -> tuple[str, str]:
    """A run that must stop as diverged: one 'training diverged' line, no traceback or native crash, and
    its summary.json kept, marked incomplete."""
    if r.rc == 0:
        return "silent", "trained to the end with exit 0"
    lines = error_lines(r.err)
    if not isinstance(r.rc, int) or not 0 < r.rc < 128 or "Traceback" in r.err or len(lines) != 1 or "diverged" not in lines[0]:
        return "crash", f"rc {r.rc}: {r.err.strip()[-300:]}"
    problem = _summary_ok(run, complete=False)
    return ("data lost", problem) if problem else ("clear error", lines[0][:200])


def divergence_case(tmp: Path) -> tuple[str, str]:
    r = run_cli(tmp, [*one(iv(op={"kind": "scale", "k": 1.0}))(tmp), "--model.optimizer.lr", "1e4", "--model.optimizer.warmup_steps", "0",
                      "--trainer.max_steps", "60", "--trainer.log_every_n_steps", "5", "--trainer.gradient_clip_val", "null", "--experiment", "nan"])
    return classify_diverged(r, tmp / "runs" / "nan" / "version_0")


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


# ======================================================================================== issue 23 cases
# Sweeps, ensembles and the end of fit keep `clamp fit`'s guarantees (issue 23): a NaN ensemble member,
# an edited sweep resumed with and without --ensemble, a mixed valid/invalid ensemble, a text-data
# ensemble, SIGTERM during the end of fit, non-finite intervention values, and a full disk.
I23_OVERRIDES = {
    "trainer.max_steps": 12, "trainer.val_check_interval": 6, "trainer.log_every_n_steps": 4, "trainer.enable_progress_bar": False,
    "trainer.callbacks": [CHECKPOINT, EMERGENCE], "data.batch_size": 8, "data.eval_size": 16,
    "model.transformer": {"d_model": 16, "n_heads": 2}, "torch_threads": 1,
}  # fmt: skip


def i23_sweep(tmp: Path, grid: dict | None = None, seeds: list[int] | None = None, **extra: Any) -> Path:
    """A sweep file of the shrunken default experiment (runs under ``tmp/runs/i23``)."""
    spec: dict[str, Any] = {"experiment": "i23", "base": str(DEFAULT), "save_dir": str(tmp / "runs"), "seeds": seeds or [0], "overrides": {**I23_OVERRIDES, **extra}}
    if grid:
        spec["grid"] = grid
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def i23_clamp(*interventions: dict) -> dict:
    return {"trainer.callbacks+": [{"class_path": "clamp.ClampCallback", "init_args": {"interventions": list(interventions)}}]}


def i23_forked(tmp: Path, argv: list[str], patch: Callable[[], None] | None = None, timeout: float = 300) -> Result:
    """``clamp <argv>`` in a forked child (``patch`` runs there first, e.g. to simulate a full disk);
    ``err`` holds stdout and stderr together (a sweep prints its failures on stdout)."""
    out_path = tmp / f"output{len(list(tmp.glob('output*.txt')))}.txt"
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)
            os.chdir(tmp)
            if patch is not None:
                patch()
            sys.argv = ["clamp", *argv]
            clamp_main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # an exception escaping main() is a crash: record its traceback
            traceback.print_exc()
            code = 99
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return Result(rc=_wait_child(pid, timeout), err=out_path.read_text(), runs=tmp / "runs", tmp=tmp)


def i23_failed_lines(out: str) -> list[str]:
    return [ln.strip() for ln in out.splitlines() if ln.strip().startswith("failed ")]


def i23_finite_ckpt(path: Path) -> bool:
    return path.exists() and all(torch.isfinite(v).all() for v in _ckpt(path)["state_dict"].values() if v.is_floating_point())


def i23_nan_member(tmp: Path) -> tuple[str, str]:
    """23.1: from step 7 `scale k: 1e38` makes one member's loss NaN; its sibling must train on."""
    blow_up = {"site": "layer0.resid_post", "op": {"kind": "scale", "k": 1e38}, "schedule": {"start": 7}}
    r = i23_forked(tmp, ["sweep", str(i23_sweep(tmp, {"clamp": {"none": {}, "diverge": i23_clamp(blow_up)}})), "--ensemble", "2"])
    bad, good = (tmp / "runs" / "i23" / c / "seed0" for c in ("diverge", "none"))
    if r.rc == 0:
        return "silent", "exit 0: the NaN member passed as a finished run"
    if r.rc != 1 or "1 ran, 1 failed" not in r.err or "Traceback" in r.err:
        return "crash", r.err.strip()[-300:]
    failed = i23_failed_lines(r.err)
    if len(failed) != 1 or str(bad) not in failed[0] or "training diverged" not in failed[0]:
        return "crash", f"failure lines do not name the diverged run: {failed}"
    if not i23_finite_ckpt(bad / "checkpoints" / "last.ckpt"):
        return "data lost", "the diverged member's last good checkpoint is missing or holds non-finite weights"
    if json.loads((bad / "condition.json").read_text()).get("finished") is not False:
        return "silent", "condition.json of the diverged member says finished"
    problem = _summary_ok(bad, complete=False) or _summary_ok(good, complete=True)
    if problem:
        return "data lost", problem
    return "clear error", failed[0][:200]


def i23_edited_sweep(ensemble: bool) -> Callable[[Path], tuple[str, str]]:
    """23.2: a sweep killed after its last checkpoint, its file edited (lr 0.003 -> 0.03), run again."""

    def case(tmp: Path) -> tuple[str, str]:
        extra = ["--ensemble", "2"] if ensemble else []
        path = i23_sweep(tmp, **{"model.optimizer.lr": 0.003})
        first = i23_forked(tmp, ["sweep", str(path), *extra])
        if first.rc != 0:
            return "crash", f"the first sweep failed: {first.err.strip()[-300:]}"
        run = tmp / "runs" / "i23" / "base" / "seed0"
        record = run / "condition.json"
        record.write_text(json.dumps({**json.loads(record.read_text()), "finished": False}))  # as if killed after its last checkpoint
        path.write_text(path.read_text().replace("model.optimizer.lr: 0.003", "model.optimizer.lr: 0.03"))
        r = i23_forked(tmp, ["sweep", str(path), *extra])
        kept = "lr: 0.003" in (run / "config.yaml").read_text() and _ckpt(run / "checkpoints" / "last.ckpt")["hyper_parameters"]["optimizer"]["lr"] == 0.003
        if r.rc == 0 or json.loads(record.read_text()).get("finished"):
            return "silent", "the edited sweep resumed" + ("" if kept else " and recorded the new settings")
        if not kept:
            return "data lost", "config.yaml or the checkpoint was rewritten with the edited settings"
        failed = i23_failed_lines(r.err)
        want = [f"resuming {run} with a different experiment than its config.yaml", "model.optimizer.lr: 0.003 -> 0.03"]
        if "Traceback" in r.err or len(failed) != 1 or not all(w in failed[0] for w in want):
            return "crash", f"the refusal does not name the change: {r.err.strip()[-300:]}"
        return "clear error", failed[0][failed[0].index("resuming") :][:160]

    return case


def i23_mixed_members(tmp: Path) -> tuple[str, str]:
    """23.3: an unknown site in one member must not fail its valid sibling."""
    typo = {"site": "layer0.head1.zz", "op": {"kind": "zero"}}
    r = i23_forked(tmp, ["sweep", str(i23_sweep(tmp, {"clamp": {"none": {}, "typo": i23_clamp(typo)}})), "--ensemble", "2"])
    good, bad = (tmp / "runs" / "i23" / c / "seed0" for c in ("none", "typo"))
    if r.rc == 0:
        return "silent", "exit 0 with an invalid member"
    failed = i23_failed_lines(r.err)
    if "Traceback" in r.err or len(failed) != 1 or str(bad) not in failed[0] or "layer0.head1.zz" not in failed[0] or str(good) in failed[0]:
        return "crash", f"failure lines: {failed or r.err.strip()[-300:]}"
    if not (good / "condition.json").exists() or not json.loads((good / "condition.json").read_text()).get("finished"):
        return "crash", "the valid sibling did not train"
    problem = _summary_ok(good, complete=True)
    return ("data lost", problem) if problem else ("clear error", failed[0][:200])


def i23_text_ensemble(tmp: Path) -> tuple[str, str]:
    """23.4: a clamp.text.TextDataModule sweep trains as an ensemble (or is refused by name in one line)."""
    from tests.test_text_data import corpus

    (tmp / "corpus.txt").write_text("\n\n".join(corpus()))
    data = {"class_path": "clamp.text.TextDataModule", "init_args": {
        "path": str(tmp / "corpus.txt"), "n_ctx": 16, "batch_size": 4, "vocab_size": 300, "eval_size": 8, "eval_batch_size": 8, "cache_dir": str(tmp / "cache")}}
    base = {"model": {"transformer": {"n_layers": 2, "n_heads": 2, "d_model": 16, "attn_only": True}}, "data": data, "trainer": {
        "max_steps": 6, "val_check_interval": 3, "check_val_every_n_epoch": None, "log_every_n_steps": 3, "accelerator": "cpu",
        "enable_progress_bar": False, "enable_model_summary": False, "callbacks": [CHECKPOINT]}}  # fmt: skip
    (tmp / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp / "sweep.yaml").write_text(yaml.safe_dump({"experiment": "text", "base": "base.yaml", "save_dir": str(tmp / "runs"), "seeds": [0, 1]}))
    r = i23_forked(tmp, ["sweep", str(tmp / "sweep.yaml"), "--ensemble", "2"])
    if r.rc != 0:
        return "crash", f"rc {r.rc}: {r.err.strip()[-300:]}"
    runs = sorted((tmp / "runs" / "text").glob("*/seed*"))
    unfinished = [str(d) for d in runs if not json.loads((d / "condition.json").read_text()).get("finished")]
    if len(runs) != 2 or unfinished:
        return "data lost", f"{len(runs)} runs, unfinished: {unfinished}"
    return "accepted", "2 TextDataModule members trained as one ensemble"


def i23_sigterm_end_of_fit(how: str) -> Callable[[Path], tuple[str, str]]:
    """23.5: SIGTERM while the end-of-fit work (phase detection, summary) runs, in `clamp fit` and in an ensemble."""

    def case(tmp: Path) -> tuple[str, str]:
        from clamp.sweep import load_sweep
        from tests.test_ensemble_guarantees import SIGNAL_IN_PHASE_DETECTION

        path = i23_sweep(tmp, seeds=[0, 1])
        runs = load_sweep(path, str(tmp / "runs"))
        runs[0].write_config()
        args = ["fit", "--config", str(runs[0].config_path)] if how == "fit" else ["sweep", str(path), "--ensemble", "2"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", SIGNAL_IN_PHASE_DETECTION, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode != 128 + signal.SIGTERM or "stopped by SIGTERM" not in proc.stderr:
            return "crash", f"rc {proc.returncode}, no stop message: {proc.stderr.strip()[-300:]}"
        if not (runs[0].dir / "checkpoints" / "last.ckpt").exists():
            return "data lost", "no last.ckpt"
        problem = _summary_ok(runs[0].dir, complete=True)
        return ("data lost", problem) if problem else ("clean stop", f"rc {proc.returncode}; 'stopped by SIGTERM'; summary.json complete, checkpoint kept")

    return case


def i23_nan_constant(tmp: Path) -> list[str]:
    import numpy as np

    values = np.zeros(16, dtype=np.float32)
    values[3] = np.nan
    np.save(tmp / "bad.npy", values)
    return one(iv("layer0.resid_post", {"kind": "constant", "value": str(tmp / "bad.npy")}))(tmp)


def i23_until_on_nan(tmp: Path) -> tuple[str, str]:
    """23.6: validation loss NaN (a `scale 1e38` applied during validation only) under an `until` on it."""
    nan_val = iv("layer0.resid_post", {"kind": "scale", "k": 1e38}, during=["val"], name="nan_val")
    gated = iv("layer0.head1.z", schedule={"until": {"metric": "val/ic/loss", "threshold": 0.01, "mode": "below"}}, name="gated")
    r = run_cli(tmp, [*config(tmp, clamps(nan_val, gated)), "--experiment", "nanval"])
    if r.rc == 0:
        return "silent", "exit 0: the until never fired and the run ended complete"
    lines = error_lines(r.err)
    if "Traceback" in r.err or len(lines) != 1 or "val/ic/loss" not in lines[0] or "nan" not in lines[0]:
        return "crash", r.err.strip()[-300:]
    problem = _summary_ok(tmp / "runs" / "nanval" / "version_0", complete=False)
    return ("data lost", problem) if problem else ("clear error", lines[0][:200])


def i23_enospc_events() -> None:  # in the child: the 6th event record hits a full disk
    from tensorboard.summary.writer import record_writer

    real, n = record_writer.RecordWriter.write, [0]

    def write(self: Any, data: bytes) -> None:
        n[0] += 1
        if n[0] > 5:
            raise OSError(28, "No space left on device")
        real(self, data)

    record_writer.RecordWriter.write = write  # type: ignore[method-assign]


def i23_enospc_checkpoints(keep: int) -> Callable[[], None]:
    def patch() -> None:  # in the child: checkpoint writes after the first ``keep`` write 100 bytes, then fail
        real, n = torch.save, [0]

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            n[0] += 1
            if n[0] <= keep:
                return real(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            real(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[:100])
            raise OSError(28, "No space left on device")

        torch.save = save

    return patch


def i23_full_log_disk(tmp: Path) -> tuple[str, str]:
    """23.7: the log disk fills while event files are written."""
    r = i23_forked(tmp, ["fit", *_ordered([*config(tmp, clamps(emergence=True)), "--experiment", "full"], tmp / "runs")], patch=i23_enospc_events)
    run = tmp / "runs" / "full" / "version_0"
    if r.rc == 0:
        return "silent", "exit 0 although events were lost"
    lines = error_lines(r.err)
    events = [str(p) for p in run.glob("events.out.tfevents.*")]
    if "Traceback" in r.err or len(lines) != 1 or not events or events[0] not in lines[0] or "No space left on device" not in lines[0]:
        return "crash", f"the error does not name the event file in one line: {r.err.strip()[-300:]}"
    problem = _summary_ok(run, complete=False)
    return ("data lost", problem) if problem else ("clear error", lines[0][:200])


def i23_full_checkpoint_disk(ensemble: bool) -> Callable[[Path], tuple[str, str]]:
    """23.7: the disk fills while a checkpoint is written: the previous one survives, no 0-byte file beside it."""

    def case(tmp: Path) -> tuple[str, str]:
        if ensemble:  # two members: their step-6 checkpoints are written, the step-12 ones fail
            r = i23_forked(tmp, ["sweep", str(i23_sweep(tmp, seeds=[0, 1])), "--ensemble", "2"], patch=i23_enospc_checkpoints(2))
            dirs = sorted((tmp / "runs" / "i23").glob("*/seed*/checkpoints"))
            named = i23_failed_lines(r.err)
        else:  # clamp fit: the step-6 checkpoint (epoch file, then last.ckpt: save_last=True copies) is written, the step-12 one fails
            r = i23_forked(tmp, ["fit", *_ordered([*config(tmp, clamps(emergence=False)), "--experiment", "full"], tmp / "runs")], patch=i23_enospc_checkpoints(2))
            dirs = [tmp / "runs" / "full" / "version_0" / "checkpoints"]
            named = error_lines(r.err)
        if r.rc == 0:
            return "silent", "exit 0 although a checkpoint write failed"
        if "Traceback" in r.err or not named or not all("could not write checkpoint" in ln and "No space left on device" in ln for ln in named):
            return "crash", f"the error does not name the checkpoint: {r.err.strip()[-300:]}"
        for d in dirs:
            stray = [p.name for p in d.iterdir() if p.name.endswith(".tmp") or (not p.is_symlink() and p.stat().st_size == 0)]
            if stray or not d.joinpath("last.ckpt").exists() or _ckpt(d / "last.ckpt")["global_step"] != 6:
                return "data lost", f"{d}: stray {stray}, last.ckpt {'missing' if not (d / 'last.ckpt').exists() else _ckpt(d / 'last.ckpt')['global_step']}"
        return "clear error", f"{len(dirs)} run(s) kept the step-6 checkpoint; " + named[0][:140]

    return case


CASES += [
    ("23.1 NaN member in a 2-member ensemble", "issue 23", i23_nan_member),
    ("23.2 edited sweep resumed", "issue 23", i23_edited_sweep(ensemble=False)),
    ("23.2 edited sweep resumed with --ensemble", "issue 23", i23_edited_sweep(ensemble=True)),
    ("23.3 invalid member beside a valid one", "issue 23", i23_mixed_members),
    ("23.4 TextDataModule ensemble", "issue 23", i23_text_ensemble),
    ("23.5 SIGTERM during the end of fit", "issue 23", i23_sigterm_end_of_fit("fit")),
    ("23.5 SIGTERM during an ensemble's end of fit", "issue 23", i23_sigterm_end_of_fit("ensemble")),
    ("23.6 NaN inside a constant's .npy", "issue 23", lambda tmp: classify_bad(run_cli(tmp, i23_nan_constant(tmp)), ["bad.npy", "not finite"])),
    ("23.6 scale k: inf", "issue 23", lambda tmp: classify_bad(run_cli(tmp, one(iv(op={"kind": "scale", "k": float("inf")}))(tmp)), ["`k`", "inf", "finite"])),
    ("23.6 until on a NaN validation loss", "issue 23", i23_until_on_nan),
    ("23.7 full log disk (event file)", "issue 23", i23_full_log_disk),
    ("23.7 full disk at a checkpoint (clamp fit)", "issue 23", i23_full_checkpoint_disk(ensemble=False)),
    ("23.7 full disk at a checkpoint (ensemble)", "issue 23", i23_full_checkpoint_disk(ensemble=True)),
]
# ==================================================================================== end of issue 23 cases


# ======================================================================================== issue 18 cases
# Runs on any machine and refuses what would corrupt a run (issue 18): each numbered item of the issue
# against the real CLI. 18.3 (a full disk at a checkpoint) is case "23.7 full disk at a checkpoint"; 18.7's
# spawn-started DDP workers need a process group (tests/test_ddp_spawn_workers.py).
def i18_run(tmp: Path, name: str = "r", *extra: str) -> Path:
    """A finished shrunken default run (checkpoint, config.yaml, summary.json) to resume or attack."""
    r = run_cli(tmp, [*config(tmp, [CHECKPOINT]), "--experiment", name, *extra])
    assert r.rc == 0, r.err[-2000:]
    return tmp / "runs" / name / "version_0"


def i18_refused(r: Result, expect: list[str], untouched: dict[Path, bytes] | None = None) -> tuple[str, str]:
    """One ``clamp: error:`` line naming ``expect``, no traceback; the files in ``untouched`` unchanged."""
    if r.rc == 0:
        return "silent", "exit 0"
    lines = error_lines(r.err)
    if r.rc == "timeout" or "Traceback" in r.err or len(lines) != 1:
        return "crash", f"rc {r.rc}: {r.err.strip()[-300:]}"
    if not all(e in lines[0] for e in expect):
        return "crash", f"message does not name {expect}: {lines[0][:300]}"
    changed = [str(f) for f, b in (untouched or {}).items() if not f.exists() or f.read_bytes() != b]
    return ("data lost", f"changed: {changed}") if changed else ("clear error", lines[0][:300])


def i18_resume_changed(*flags: str, expect: list[str]) -> Callable[[Path], tuple[str, str]]:
    """18.2: a resume that would make the run a different experiment is refused, naming each key."""

    def case(tmp: Path) -> tuple[str, str]:
        run = i18_run(tmp)
        keep = {run / "config.yaml": (run / "config.yaml").read_bytes(), run / "checkpoints" / "last.ckpt": (run / "checkpoints" / "last.ckpt").read_bytes()}
        return i18_refused(i23_forked(tmp, ["fit", "--resume", str(run), "--trainer.max_steps", "16", *flags]), expect, keep)

    return case


def i18_runaway(tmp: Path) -> tuple[str, str]:
    """18.4: lr 10 stays finite but far above its start: the guard stops it like a NaN, checkpoint and summary kept."""
    r = run_cli(tmp, [*config(tmp, [CHECKPOINT, EMERGENCE]), "--model.optimizer.lr", "10", "--model.optimizer.warmup_steps", "0", "--trainer.max_steps", "80",
                      "--trainer.log_every_n_steps", "2", "--trainer.gradient_clip_val", "null", "--experiment", "runaway"])
    return classify_diverged(r, tmp / "runs" / "runaway" / "version_0")


def i18_nan_probe(tmp: Path) -> tuple[str, str]:
    """18.1: weights go non-finite with the emergence probes (copying's eigenvalues) due every step: a clear
    'training diverged', never a native crash (on Intel, LAPACK segfaulted on NaN input)."""
    every = {"class_path": "clamp.EmergenceCallback", "init_args": {"every_n_steps": 1, "probe_size": 8, "causal": False, "heatmap_every_n_steps": 0}}
    r = run_cli(tmp, [*config(tmp, [CHECKPOINT, every]), "--model.optimizer.lr", "1e30", "--model.optimizer.warmup_steps", "0",
                      "--trainer.gradient_clip_val", "null", "--experiment", "nan"])
    return classify_diverged(r, tmp / "runs" / "nan" / "version_0")


def i18_planted_checkpoint(tmp: Path) -> tuple[str, str]:
    """18.5: a checkpoint carrying a pickled call is refused on resume, and the call never runs."""
    run = i18_run(tmp)
    last, marker = run / "checkpoints" / "last.ckpt", tmp / "PWNED"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt.setdefault("callbacks", {})["planted"] = _Payload(str(marker))
    torch.save(ckpt, last)
    r = i23_forked(tmp, ["fit", "--resume", str(run), "--trainer.max_steps", "16"])
    if marker.exists():
        return "crash", "the planted payload RAN (file created)"
    return i18_refused(r, ["last.ckpt"])


def i18_text(tmp: Path, path: str, model: dict | None = None, **init_args: Any) -> list[str]:
    """``fit --config`` on a tiny text-data experiment reading ``path`` (``model``: its model section)."""
    data = {"class_path": "clamp.text.TextDataModule", "init_args": {"path": path, "n_ctx": 16, "batch_size": 4, "vocab_size": 300, "eval_size": 8,
                                                                   "eval_batch_size": 8, "cache_dir": str(tmp / "cache"), **init_args}}
    base = {"experiment": "text", "model": model or {"transformer": {"n_layers": 2, "n_heads": 2, "d_model": 16, "attn_only": True}}, "data": data,
            "trainer": {"max_steps": 6, "val_check_interval": 3, "check_val_every_n_epoch": None, "log_every_n_steps": 3, "accelerator": "cpu",
                        "enable_progress_bar": False, "enable_model_summary": False, "callbacks": [CHECKPOINT],
                        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(tmp / "runs")}}}}  # fmt: skip
    (tmp / "text.yaml").write_text(yaml.safe_dump(base))
    return ["fit", "--config", str(tmp / "text.yaml")]


def i18_text_file(content: bytes, expect: list[str]) -> Callable[[Path], tuple[str, str]]:
    """18.6: an empty, binary or non-UTF-8 corpus: one line naming the file and the cause."""

    def case(tmp: Path) -> tuple[str, str]:
        (tmp / "corpus.txt").write_bytes(content)
        return i18_refused(i23_forked(tmp, i18_text(tmp, str(tmp / "corpus.txt"))), ["corpus.txt", *expect])

    return case


def i18_truncated_cache(tmp: Path) -> tuple[str, str]:
    """18.6: a token cache cut short by a kill is rebuilt (with a warning naming it), not fatal to every later run."""
    from tests.test_text_data import corpus

    (tmp / "corpus.txt").write_text("\n\n".join(corpus()))
    argv = i18_text(tmp, str(tmp / "corpus.txt"))
    first = i23_forked(tmp, argv)
    if first.rc != 0:
        return "crash", f"valid text run rejected: {first.err.strip()[-300:]}"
    caches = sorted((tmp / "cache").glob("*/train_tokens.npy"))
    if not caches:
        return "crash", "audit harness: no train_tokens.npy written"
    caches[0].write_bytes(caches[0].read_bytes()[:100])
    again = i23_forked(tmp, argv)
    if again.rc != 0:
        return "crash", f"rc {again.rc} after truncating {caches[0].name}: {again.err.strip()[-300:]}"
    if str(caches[0]) not in again.err:
        return "silent", "rebuilt without naming the truncated cache"
    return "accepted", f"rebuilt {caches[0].name}, warned naming it"


def i18_hf_case(model: dict, expect: list[str]) -> Callable[[Path], tuple[str, str]]:
    """18.8: a misspelt Hugging Face config key, or model.hf beside model.transformer, is refused by name."""

    def case(tmp: Path) -> tuple[str, str]:
        from tests.test_text_data import corpus

        (tmp / "corpus.txt").write_text("\n\n".join(corpus()))
        return i18_refused(i23_forked(tmp, i18_text(tmp, str(tmp / "corpus.txt"), model=model)), expect)

    return case


def i18_read_only_resume(tmp: Path) -> tuple[str, str]:
    """18.9: resuming into a run folder that cannot be written (the file system's refusal is simulated in the
    child: the audit runs as root, for whom chmod does not stop writes)."""
    run = i18_run(tmp)
    keep = {f: f.read_bytes() for f in run.rglob("*") if f.is_file()}

    def read_only() -> None:
        import errno
        import tempfile as tf

        real = tf.TemporaryFile

        def refuse(*args: Any, dir: Any = None, **kwargs: Any) -> Any:  # noqa: A002
            if dir is not None and Path(dir).resolve().is_relative_to(run.resolve()):
                raise OSError(errno.EROFS, "Read-only file system")
            return real(*args, dir=dir, **kwargs)

        tf.TemporaryFile = refuse

    return i18_refused(i23_forked(tmp, ["fit", "--resume", str(run), "--trainer.max_steps", "16"], patch=read_only), [str(run), "Read-only"], keep)


def i18_broken_link(tmp: Path) -> tuple[str, str]:
    """18.9: a `save_last: link` whose target was deleted is named as a broken link on resume."""
    link = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": "link"}}
    r = run_cli(tmp, [*config(tmp, [link]), "--experiment", "link"])
    run = tmp / "runs" / "link" / "version_0"
    if r.rc != 0:
        return "crash", f"save_last: link rejected: {r.err.strip()[-300:]}"
    last = run / "checkpoints" / "last.ckpt"
    if not last.is_symlink():
        return "crash", "audit harness: last.ckpt is not a link"
    (last.parent / last.readlink()).unlink()
    return i18_refused(i23_forked(tmp, ["fit", "--resume", str(run), "--trainer.max_steps", "16"]), ["broken link"])


def i18_analyze_garbage(tmp: Path) -> tuple[str, str]:
    """18.9: `clamp analyze` on a run's checkpoint cut short (a kill mid-write) or overwritten with garbage:
    one line naming the file, no traceback, and not called a "reference checkpoint"."""
    run = i18_run(tmp)
    ckpt = run / "checkpoints" / "last.ckpt"
    good_bytes = ckpt.read_bytes()
    outcomes = []
    for what, content in (("truncated", good_bytes[: len(good_bytes) // 3]), ("garbage", os.urandom(512))):
        ckpt.write_bytes(content)
        r = i23_forked(tmp, ["analyze", str(ckpt)])
        lines = error_lines(r.err)
        if r.rc == 0:
            return "silent", f"{what}: exit 0"
        if "Traceback" in r.err or len(lines) != 1 or str(ckpt) not in lines[0] or "reference" in lines[0]:
            return "crash", f"{what}: rc {r.rc}: {r.err.strip()[-300:]}"
        outcomes.append(lines[0])
    return "clear error", outcomes[-1][:300]


def i18_sweep_escape(tmp: Path) -> tuple[str, str]:
    """18.9: a sweep whose experiment escapes save_dir is refused before it writes anything."""
    path = i23_sweep(tmp)
    spec = yaml.safe_load(path.read_text())
    spec["experiment"] = "../.."
    path.write_text(yaml.safe_dump(spec))
    before = {f for f in tmp.parent.rglob("run.yaml")}
    r = i23_forked(tmp, ["sweep", str(path)])
    written = sorted(str(f) for f in tmp.parent.rglob("run.yaml") if f not in before)
    if written:
        return "data lost", f"wrote {written} before refusing"
    return i18_refused(r, ["experiment", "../.."])


def i18_sweep_key_typo(tmp: Path) -> tuple[str, str]:
    """18.9: a misspelt override key fails the sweep before its first run starts (no run folder)."""
    path = i23_sweep(tmp, seeds=[0, 1], **{"trainer.max_stepz": 3})
    r = i23_forked(tmp, ["sweep", str(path)])
    started = sorted(str(d) for d in (tmp / "runs").rglob("checkpoints"))
    if started:
        return "silent", f"runs started before the refusal: {started[:2]}"
    return i18_refused(r, ["max_stepz"])


CASES += [
    ("18.1 lr 1e30: NaN weights before the copying probe", "issue 18", i18_nan_probe),
    ("18.2 resume with n_heads 4", "issue 18", i18_resume_changed("--model.transformer.n_heads", "4", expect=["model.transformer.n_heads: 2 -> 4"])),
    ("18.2 resume with --seed_everything 1", "issue 18", i18_resume_changed("--seed_everything", "1", expect=["seed_everything: 0 -> 1"])),
    ("18.4 lr 10 (finite runaway loss)", "issue 18", i18_runaway),
    ("18.5 planted pickle in a resumed checkpoint", "issue 18", i18_planted_checkpoint),
    ("18.6 empty text file", "issue 18", i18_text_file(b"", ["empty"])),
    ("18.6 binary text file", "issue 18", i18_text_file(bytes(range(256)) * 8, [])),
    ("18.6 non-UTF-8 text file", "issue 18", i18_text_file("café au lait\n".encode("latin-1") * 50, [])),
    ("18.6 missing local tokenizer folder", "issue 18", lambda tmp: ((tmp / "c.txt").write_text("a b c\n" * 50),
        i18_refused(i23_forked(tmp, i18_text(tmp, str(tmp / "c.txt"), tokenizer=str(tmp / "no_tok"))), ["no_tok", "not found"]))[1]),
    ("18.6 truncated token cache", "issue 18", i18_truncated_cache),
    ("18.8 hf config key n_layers", "issue 18", i18_hf_case({"hf": {"arch": "gpt2", "config": {"n_layers": 2, "n_head": 2, "n_embd": 16}}}, ["n_layers", "n_layer"])),
    ("18.8 model.hf and model.transformer", "issue 18", i18_hf_case({"hf": {"arch": "gpt2", "config": {"n_layer": 1, "n_head": 2, "n_embd": 16}}, "transformer": {"n_layers": 2}}, ["model.hf", "model.transformer"])),
    ("18.9 analyze a garbage checkpoint", "issue 18", i18_analyze_garbage),
    ("18.9 resume a read-only run folder", "issue 18", i18_read_only_resume),
    ("18.9 save_last link target deleted", "issue 18", i18_broken_link),
    ("18.9 zero-length window", "issue 18", lambda tmp: classify_bad(run_cli(tmp, one(iv(schedule={"start": 3, "stop": 3}))(tmp)), ["start=3 == stop=3"])),
    ("18.9 sweep experiment ../..", "issue 18", i18_sweep_escape),
    ("18.9 sweep override key typo", "issue 18", i18_sweep_key_typo),
]

# ==================================================================================== end of issue 18 cases


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
