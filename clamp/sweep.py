"""``clamp sweep SWEEP.yaml``: a grid of config overrides x seeds, expanded into ordinary runs.

A sweep file names a base config, overrides for every run, a grid of conditions and the seeds::

    experiment: lr_study                 # runs land in <save_dir>/lr_study/<condition>/seed<k>/
    base: ../induction_default.yaml      # relative to the sweep file (a list: merged in order)
    save_dir: runs                       # optional (default: runs, relative to the working dir)
    seeds: 3                             # 0, 1, 2 (or a list: [0, 5, 7])
    overrides: {trainer.max_steps: 2000} # every run
    grid:                                # cartesian product of the axes
      lr: {slow: {model.optimizer.lr: 0.0005}, fast: {model.optimizer.lr: 0.002}}
      model.transformer.n_heads: [4, 8]  # shorthand: levels named n_heads=4, n_heads=8

Override keys are dotted paths into the config; mappings merge, other values replace, and a key
ending in ``+`` appends to a list (``trainer.callbacks+: [{class_path: clamp.ClampCallback, ...}]``).
A level may also name config files, ``config: clamps/match.yaml`` (or a list), merged before its
other overrides exactly as a further ``clamp fit --config`` would be, so a condition can reuse a
clamp config instead of restating it.
A condition's name joins its level names with ``_`` (``slow_n_heads=4``).

Every run is an ordinary ``clamp fit --config <run>/run.yaml`` whose folder also holds
``condition.json`` (experiment, condition, levels, seed, overrides), written by the run itself
through :class:`ConditionRecord`, which marks it finished at the end of fit. So a sweep re-run
after a crash skips finished runs and resumes the others from ``checkpoints/last.ckpt``, and
runs launched by a cluster scheduler from ``--dry-run``'s commands are recorded the same way.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback

SWEEP_KEYS = ("experiment", "base", "save_dir", "seeds", "overrides", "grid")
RECORD_CLASS = "clamp.sweep.ConditionRecord"


class SweepError(ValueError):
    """A malformed sweep file or an inconsistent run folder (the message names the field or folder)."""


# ---------------------------------------------------------------------------------- overrides
def apply_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any], where: str = "overrides") -> dict[str, Any]:
    """A copy of ``config`` with dotted-key ``overrides`` applied (mappings merge, ``key+`` appends)."""
    out = copy.deepcopy(dict(config))
    for key, value in overrides.items():
        append = key.endswith("+")
        parts = key.rstrip("+").split(".")
        if not all(parts):
            raise SweepError(f"{where}: bad key {key!r}; use dotted paths like 'model.optimizer.lr' or 'trainer.callbacks+'")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SweepError(f"{where}: {key!r} descends into {'.'.join(parts[: i + 1])!r}, which is {type(child).__name__}, not a mapping")
            node = child
        leaf = parts[-1]
        if append:
            current = node.get(leaf) or []
            if not isinstance(current, list) or not isinstance(value, list):
                raise SweepError(f"{where}: {key!r} appends a list to a list; got {type(value).__name__} onto {type(current).__name__}")
            node[leaf] = current + copy.deepcopy(value)
        elif isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = _merge(node[leaf], value)
        else:
            node[leaf] = copy.deepcopy(value)
    return out


def _merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def merge_config(config: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """``other`` (a config file's contents) merged into ``config`` as a second ``--config`` is:
    mappings merge, other values replace, a ``key+`` list appends to ``key``."""
    out = copy.deepcopy(dict(config))
    for key, value in other.items():
        if key.endswith("+"):
            out = apply_overrides(out, {key: value}, "config")
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _config_files(value: Any, where: Path, what: str) -> list[dict[str, Any]]:
    """The contents of the config file(s) ``value`` names (paths relative to the sweep file)."""
    paths = value if isinstance(value, list) else [value]
    if not paths or not all(isinstance(v, str) and v for v in paths):
        raise SweepError(f"{where}: {what} must be a config file path or a non-empty list of them, got {value!r}")
    out = []
    for rel in paths:
        path = (where.parent / rel).resolve()
        if not path.is_file():
            raise SweepError(f"{where}: {what} {str(path)!r} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise SweepError(f"{where}: {what} {str(path)!r} is not a mapping")
        out.append(loaded)
    return out


# ---------------------------------------------------------------------------------- the plan
@dataclass
class Run:
    """One run of a sweep: where it goes, what it is, and its full config."""

    experiment: str
    condition: str
    levels: dict[str, str]
    seed: int
    overrides: dict[str, Any]
    config: dict[str, Any]
    dir: Path
    sweep_file: str = ""
    config_digest: str = ""  # fingerprint of the config (without the record), to tell a finished run from a changed one

    @property
    def config_path(self) -> Path:
        return self.dir / "run.yaml"

    @property
    def record_path(self) -> Path:
        return self.dir / "condition.json"

    @property
    def last_ckpt(self) -> Path:
        return self.dir / "checkpoints" / "last.ckpt"

    def record(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment, "condition": self.condition, "levels": self.levels, "seed": self.seed,
            "overrides": self.overrides, "sweep": self.sweep_file, "config_digest": self.config_digest,
        }

    def status(self) -> str:
        """'done', 'resume' (a checkpoint of an unfinished run exists) or 'new'."""
        if self.record_path.exists():
            rec = json.loads(self.record_path.read_text())
            if rec.get("finished"):
                if rec.get("config_digest") != self.config_digest:
                    raise SweepError(
                        f"run {str(self.dir)!r} finished with a different config than the sweep now asks for; "
                        "delete that folder or change `experiment` to keep both"
                    )
                return "done"
        return "resume" if self.last_ckpt.exists() else "new"

    def fit_args(self) -> list[str]:
        args = ["fit", "--config", str(self.config_path)]
        if self.status() == "resume":
            args += ["--ckpt_path", str(self.last_ckpt)]
        return args

    def command(self) -> str:
        return " ".join(["clamp", *self.fit_args()])

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))


def _levels(axis: str, spec: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(spec, Mapping):
        if not spec:
            raise SweepError(f"{where}: axis {axis!r} has no levels")
        out = []
        for name, ov in spec.items():
            if ov is None:
                ov = {}
            if not isinstance(ov, Mapping):
                raise SweepError(f"{where}: level {axis}.{name} must map dotted keys to values, got {type(ov).__name__}")
            out.append((str(name), dict(ov)))
        return out
    if isinstance(spec, list) and spec:
        leaf = axis.rstrip("+").rsplit(".", 1)[-1]
        return [(f"{leaf}={v}", {axis: v}) for v in spec]
    raise SweepError(f"{where}: axis {axis!r} must be a non-empty mapping of named levels or a list of values, got {spec!r}")


def _seeds(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        if len(set(value)) != len(value):
            raise SweepError(f"seeds {value} repeat a seed")
        return list(value)
    raise SweepError(f"seeds must be a positive count or a non-empty list of ints, got {value!r}")


def load_sweep(path: str | Path, save_dir: str | None = None) -> list[Run]:
    """Expand a sweep file into its runs (conditions in grid order, then seeds)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with keys {list(SWEEP_KEYS)}")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {unknown}; valid keys: {list(SWEEP_KEYS)}")
    for key in ("experiment", "base"):
        if not spec.get(key):
            raise SweepError(f"{path}: `{key}` is required")
    experiment = str(spec["experiment"])
    if experiment.startswith(("/", "~")) or any(part in ("..", ".", "") for part in experiment.replace("\\", "/").split("/")):
        raise SweepError(f"{path}: experiment={experiment!r} must be a relative folder name inside save_dir (no '..', '.', "
                         "empty or absolute parts), e.g. lr_study or studies/lr")
    base: dict[str, Any] = {}
    for loaded in _config_files(spec["base"], path, "base config"):
        base = merge_config(base, loaded)
    base = apply_overrides(base, spec.get("overrides") or {}, f"{path}: overrides")
    root = Path(save_dir or spec.get("save_dir") or "runs")
    seeds = _seeds(spec.get("seeds", 1))
    grid = spec.get("grid") or {}
    if not isinstance(grid, Mapping):
        raise SweepError(f"{path}: `grid` must map axis names to levels, got {type(grid).__name__}")
    axes = [(axis, _levels(axis, levels, str(path))) for axis, levels in grid.items()]
    combos = list(itertools.product(*(lv for _, lv in axes))) if axes else [()]
    runs: list[Run] = []
    seen: set[str] = set()
    for combo in combos:
        condition = "_".join(name for name, _ in combo) or "base"
        if condition in seen:
            raise SweepError(f"{path}: two grid cells are both named {condition!r}; rename a level")
        seen.add(condition)
        levels = {axis: name for (axis, _), (name, _) in zip(axes, combo)}
        overrides: dict[str, Any] = {}
        cond_cfg = base
        for _, ov in combo:
            ov = dict(ov)
            if "config" in ov:
                files = ov.pop("config")
                for loaded in _config_files(files, path, f"condition {condition!r}: config"):
                    cond_cfg = merge_config(cond_cfg, loaded)
                overrides.setdefault("config", []).extend(files if isinstance(files, list) else [files])
            overrides.update(ov)
        cond_cfg = apply_overrides(cond_cfg, {k: v for k, v in overrides.items() if k != "config"}, f"{path}: condition {condition!r}")
        for seed in seeds:
            run_dir = root / experiment / condition / f"seed{seed}"
            run = Run(experiment, condition, levels, seed, overrides, {}, run_dir, str(path))
            run.config = _run_config(cond_cfg, run, root)
            runs.append(run)
    return runs


def _run_config(cfg: dict[str, Any], run: Run, root: Path) -> dict[str, Any]:
    """The condition's config for one seed, logging into the run's folder and recording its condition."""
    cfg = copy.deepcopy(cfg)
    cfg["seed_everything"] = run.seed
    cfg["experiment"] = f"{run.experiment}/{run.condition}"
    trainer = cfg.setdefault("trainer", {})
    logger = trainer.get("logger")
    if logger not in (None, True) and not (isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("TensorBoardLogger")):
        raise SweepError(f"run {run.condition}/seed{run.seed}: sweeps log with TensorBoardLogger; the config sets trainer.logger={logger!r}")
    init = dict((logger or {}).get("init_args", {})) if isinstance(logger, dict) else {}
    init.update(save_dir=str(root), name=f"{run.experiment}/{run.condition}", version=f"seed{run.seed}")
    init.setdefault("default_hp_metric", False)
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": init}
    callbacks = [c for c in trainer.get("callbacks") or [] if not (isinstance(c, dict) and c.get("class_path") == RECORD_CLASS)]
    trainer["callbacks"] = callbacks
    run.config_digest = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]
    # as JSON text: the config parser would otherwise build the callbacks named inside the overrides
    callbacks.append({"class_path": RECORD_CLASS, "init_args": {"record": json.dumps(run.record(), sort_keys=True, default=str)}})
    return cfg


def check_configs(runs: Sequence[Run]) -> None:
    """Parse every run's config with ``clamp fit``'s own parser, so a misspelt key or a bad value fails
    the whole sweep before anything is written, instead of each run failing on its own."""
    if not runs:
        return
    from clamp.cli import fit_parser

    parser = fit_parser()
    keys: list[str] | None = None
    for run in runs:
        try:
            parser.parse_object(copy.deepcopy(run.config))  # the parser edits what it is given
        except Exception as e:  # noqa: BLE001 (jsonargparse reports every config problem as some error)
            if keys is None:
                keys = list(parser.get_defaults().keys())
            cell = f"grid cell {run.levels}" if run.levels else "the base config and overrides"
            raise SweepError(f"{run.sweep_file}: condition {run.condition!r} ({cell}), seed {run.seed}: {_config_problem(e, keys)}") from None


_GROUP_KEY = re.compile(r"""Group '([^']+)' does not accept option '([^']+)'""")
_TOP_KEY = re.compile(r"""^Option '([^']+)' is not accepted""")
_CLASS_KEY = re.compile(r"""Parser key "([^"]+)":.*?Problem with given class_path '([^']+)':\s*Option '([^']+)' is not accepted""", re.S)


def _config_problem(e: BaseException, keys: list[str]) -> str:
    """One line: the unknown key with its closest valid keys (or all of them), else the parser's reason."""
    import difflib
    import inspect

    from clamp.cli import one_line
    from clamp.interventions.ops import import_callable

    text = str(e)
    if m := _GROUP_KEY.search(text) or _TOP_KEY.search(text):
        key = ".".join(m.groups())
        group, leaf = key.rsplit(".", 1) if "." in key else ("", key)
        while group and not any(k.startswith(f"{group}.") for k in keys):  # a misspelt section: offer its parent's keys
            group, leaf = group.rsplit(".", 1) if "." in group else ("", group)
        prefix = f"{group}." if group else ""
        children = (prefix + k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix))
        choices = list(dict.fromkeys(children))  # the keys one level below the group, in the parser's order
    elif m := _CLASS_KEY.search(text):
        where, class_path, leaf = m.groups()
        key = f"{where}: {class_path} init_args.{leaf}"
        try:
            params = inspect.signature(import_callable(class_path)).parameters
            choices = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        except Exception:  # noqa: BLE001 (no choices to offer: still name the key)
            choices = []
    else:
        return one_line(e)
    close = difflib.get_close_matches(leaf, [c.rsplit(".", 1)[-1] for c in choices], n=3, cutoff=0.6)
    full = [c for c in choices if c.rsplit(".", 1)[-1] in close]
    hint = f"did you mean {', '.join(full)}?" if full else f"valid: {', '.join(choices)}"
    return f"unknown key {key}; {hint}"


# ---------------------------------------------------------------------------------- the record
class ConditionRecord(Callback):
    """Writes ``condition.json`` into the run folder: the run's sweep condition, and ``finished`` at the end of fit.

    Added to every sweep run's config by ``clamp sweep``; reports group runs by ``condition``.
    """

    def __init__(self, record: str) -> None:
        """``record``: the condition as JSON text (experiment, condition, levels, seed, overrides, sweep, config_digest)."""
        self.record = json.loads(record)

    def _write(self, trainer: L.Trainer, finished: bool) -> None:
        if not trainer.is_global_zero or not trainer.log_dir:
            return
        self._run_dir = Path(trainer.log_dir)
        write_record(self._run_dir, {**self.record, "finished": finished, "step": trainer.global_step})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.max_steps is None or trainer.max_steps < 0 or trainer.global_step >= trainer.max_steps
        self._write(trainer, bool(done and not trainer.interrupted))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Not finished, and why (divergence, an error, a signal): a re-run resumes it instead of skipping it."""
        from clamp.preemption import stop_reason

        run_dir = getattr(self, "_run_dir", None)  # resolved at fit start: log_dir is a collective under DDP
        if trainer.is_global_zero and run_dir:
            write_record(run_dir, {**self.record, "finished": False, "failed": stop_reason(exception), "step": trainer.global_step})


def write_record(run_dir: Path, record: Mapping[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "condition.json.tmp"
    tmp.write_text(json.dumps(dict(record), indent=2, default=str))
    tmp.replace(run_dir / "condition.json")


# ---------------------------------------------------------------------------------- running
@dataclass
class SweepResult:
    ran: list[Run] = field(default_factory=list)
    skipped: list[Run] = field(default_factory=list)
    failed: list[tuple[Run, str]] = field(default_factory=list)
    planned: list[Run] = field(default_factory=list)  # --dry-run: printed, not run


def _run_in_process(run: Run) -> str | None:
    """One ``clamp fit`` in this process, without Lightning's set-up lines (seed, GPU/TPU, tips, "fit
    stopped"): repeated for every run they buried the sweep's own lines; warnings and errors still show."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from clamp.cli import cli_main
    from clamp.console import quiet_set_up

    try:
        with quiet_set_up():
            cli_main(run.fit_args())
    except SIGTERMException:  # preempted (a SystemExit without a code): the run is checkpointed; stop the sweep
        raise
    except SystemExit as e:  # jsonargparse reports config errors by exiting
        return None if not e.code else f"exit status {e.code}"
    except Exception as e:  # noqa: BLE001 (one failed run must not stop the sweep)
        return f"{type(e).__name__}: {e}"
    return None


def _run_subprocess(run: Run) -> str | None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = run.dir / "fit.log"
    with log.open("a") as f:
        rc = subprocess.run([sys.executable, "-m", "clamp.cli", *run.fit_args()], stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    return None if rc == 0 else f"exit status {rc} (see {log})"


def run_sweep(
    sweep: str,
    jobs: int = 1,
    dry_run: bool = False,
    ensemble: int = 0,
    save_dir: str | None = None,
) -> SweepResult:
    """Run every unfinished run of a sweep file.

    Args:
        sweep: path to the sweep YAML.
        jobs: runs at a time; above 1 each is its own process with one torch thread.
        dry_run: write each run's config and print its ``clamp fit`` command instead of running it.
        ensemble: train runs that differ only in seed and interventions as ensembles of up to this
            many members in one process (``clamp.ensemble``); 0 runs them one by one.
        save_dir: where runs go (default: the sweep file's ``save_dir``, else ``runs``).
    """
    if jobs < 1:
        raise SweepError(f"jobs={jobs} must be >= 1")
    if ensemble < 0:
        raise SweepError(f"ensemble={ensemble} must be >= 0 (0: no ensembles)")
    runs = load_sweep(sweep, save_dir)
    check_configs(runs)  # before any run folder exists: a bad key fails the sweep, not each run
    result = SweepResult()
    todo = []
    for run in runs:
        if run.status() == "done":
            result.skipped.append(run)
        else:
            todo.append(run)
    for run in todo:
        run.write_config()
    if dry_run:
        for run in todo:
            print(run.command())
        result.planned = todo
        return result
    if ensemble > 0:
        from clamp.ensemble.runner import run_ensembles

        for run, err in run_ensembles(todo, ensemble, jobs):
            (result.failed.append((run, err)) if err else result.ran.append(run))
        return result
    work = _run_in_process if jobs == 1 else _run_subprocess

    def timed(run: Run) -> tuple[str | None, float]:
        t0 = time.monotonic()
        return work(run), time.monotonic() - t0

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for i, (run, (err, seconds)) in enumerate(zip(todo, pool.map(timed, todo)), 1):
            (result.failed.append((run, err)) if err else result.ran.append(run))
            state = "failed" if err else "done"
            print(f"sweep: run {i}/{len(todo)} {state}: {run.dir} ({seconds:.1f} s)", file=sys.stderr, flush=True)
    return result


#: the closing table's columns: the finals every run's summary.json holds
RESULT_TAG = re.compile(r"^(val/[^/]+/(acc|loss)|train/loss)$")


def results_table(runs: Sequence[Run]) -> list[str]:
    """Markdown rows: condition x headline metric (final value in each run's ``summary.json``), as
    ``mean ± std (n)`` over the seeds that have it; runs without a summary are left out of n."""
    finals: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        path = run.dir / "summary.json"
        try:
            final = json.loads(path.read_text()).get("final") or {}
        except (OSError, ValueError):
            continue
        finals.setdefault(run.condition, []).append({k: float(v) for k, v in final.items() if RESULT_TAG.match(k) and v is not None})
    tags = sorted({t for rows in finals.values() for row in rows for t in row}, key=lambda t: (t == "train/loss", not t.endswith("acc"), t))
    if not tags:
        return []

    def cell(values: list[float]) -> str:
        if not values:
            return "–"
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {std:.3f} ({len(values)})"

    lines = ["| condition | " + " | ".join(tags) + " |", "|---|" + "---|" * len(tags)]
    for cond, rows in finals.items():
        lines.append(f"| {cond} | " + " | ".join(cell([r[t] for r in rows if t in r]) for t in tags) + " |")
    return lines


def build_parser():  # noqa: ANN201 (jsonargparse.ArgumentParser)
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="clamp sweep", description="Expand a sweep file (base config x grid x seeds) into runs and run the unfinished ones.")
    parser.add_argument("sweep", type=str, help="Sweep YAML file.")
    parser.add_argument("--jobs", type=int, default=1, help="Runs at a time; above 1 each runs as its own process with one torch thread.")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="Write each run's config and print its command instead of running it.")
    parser.add_argument("--ensemble", type=int, default=0, help="Train runs differing only in seed/interventions as ensembles of up to N members per process.")
    parser.add_argument("--save_dir", type=str, default=None, help="Where runs go (default: the sweep's save_dir, else runs).")
    return parser


def main(argv: list[str] | None = None) -> None:
    """``clamp sweep SWEEP.yaml [--jobs N] [--dry-run] [--ensemble N]``."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from clamp.preemption import received_signal

    parser = build_parser()
    cfg = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = run_sweep(cfg.sweep, jobs=cfg.jobs, dry_run=cfg.dry_run, ensemble=cfg.ensemble, save_dir=cfg.save_dir)
    except (SweepError, FileNotFoundError) as err:  # one line, no usage block: the problem is in the file, not the arguments
        print(f"clamp sweep: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except SIGTERMException:  # preempted: the running run(s) checkpointed; a re-run resumes them
        sig = received_signal() or signal.SIGTERM
        print(f"sweep {cfg.sweep}: stopped by {signal.Signals(sig).name}; the running runs saved checkpoints, run it again to resume", file=sys.stderr)
        raise SystemExit(128 + int(sig)) from None
    out = sys.stderr if cfg.dry_run else sys.stdout
    counts = f"{len(result.planned)} to run" if cfg.dry_run else f"{len(result.ran)} ran, {len(result.failed)} failed"
    print(f"sweep {cfg.sweep}: {counts}, {len(result.skipped)} already finished", file=out)
    for run, err in result.failed:
        print(f"  failed {run.dir}: {err}", file=out)
    if not cfg.dry_run and (table := results_table([*result.ran, *result.skipped])):
        print("final values, mean ± std (n seeds):", *table, sep="\n", file=out)
    if result.failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
