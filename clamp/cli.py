"""``clamp`` command line: ``fit``/``validate`` (LightningCLI) plus the commands in :data:`COMMANDS`.

One YAML file holds model, data, trainer and callbacks (``class_path``/``init_args``). The data's
:class:`TaskSpec` is linked into the model so users never repeat vocabulary or context sizes, and
``seed_everything`` seeds the model init, the training stream and the eval sets alike. ``data`` is
a :class:`SyntheticDataModule` unless it names another ``class_path`` (e.g.
``clamp.text.TextDataModule``); any DataModule with a ``spec`` property and a ``seed`` argument fits.

Errors print one line (``clamp: error: ...``) and exit 2 for a bad config, 1 for a failure while
running; ``--debug`` (or ``CLAMP_DEBUG=1``) shows the traceback instead. Everything that can be
checked before training (the config, every callback's ``check``) is checked before the run
folder ``runs/<experiment>/version_N`` is created. SIGTERM / SIGINT stop at a step boundary
with a checkpoint and an incomplete ``summary.json`` (see :mod:`clamp.preemption`).

``clamp fit --resume runs/<exp>/version_N`` (or ``--ckpt_path last``) continues a run in its own
folder and TensorBoard run; its ``config.yaml`` is used unless ``--config`` is given.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import signal
import sys
import tempfile
import warnings
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePath
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from clamp.checkpoint_io import AtomicCheckpointIO, load_checkpoint
from clamp.console import ProgressLines, StepProgressBar, print_run_summary
from clamp.guards import RunawayLossGuard
from clamp.preemption import GracefulStop, StoppedAtEndOfFit, end_of_command, received_signal
from clamp.resume import check_checkpoint_hparams, check_run_config
from clamp.run_files import name_event_file_errors
from clamp.runs import find_checkpoint, run_dir_of
from clamp.training import TrainingModule

DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs", "name": "default", "default_hp_metric": False},
}

#: Trainer subcommands (LightningCLI) and what they do; test/predict are not offered (no test/predict steps).
TRAINER_COMMANDS = {
    "fit": "train a model (--config X.yaml); --resume runs/<exp>/version_N continues a run",
    "validate": "evaluate a checkpoint on the eval splits (--resume runs/<exp>/version_N)",
}

#: Other subcommands: name -> ("module:function", one-line help[, takes --debug]). Adding one is one line here.
COMMANDS: dict[str, tuple] = {
    "report": ("clamp.report:main", "compare runs: curves, heatmaps, phase changes, report.md; --group-by condition: differences with 95% CIs"),
    "sites": ("clamp.cli:sites_main", "list the intervention sites of a config's model, with shapes"),
    "sweep": ("clamp.sweep:main", "run a grid of configs x seeds as ordinary runs (skips finished ones)"),
    "analyze": ("clamp.analyze:main", "per-head ablations and path analyses of a checkpoint", True),
    "null": ("clamp.cli:null_main", "head scores of N untrained models (the null a head must beat to count as formed): null.json"),
}


class ConfigError(ValueError):
    """A config that cannot run (reported in one line, exit status 2)."""


def check_experiment_name(name: str) -> None:
    """An experiment name is a folder under the logger's save_dir: no absolute paths, no ``..``."""
    parts = PurePath(name).parts
    if not name.strip() or PurePath(name).is_absolute() or ".." in parts or name.startswith("~"):
        raise ConfigError(f"experiment={name!r}: must be a relative folder name under runs/ (letters, digits, '_', '-', '/'), without '..'")


class _RunConfigSaver(SaveConfigCallback):
    """Saves ``config.yaml`` without ``resume``/``ckpt_path``, so the file re-runs the experiment, not the resume."""

    def setup(self, trainer, pl_module, stage: str) -> None:  # noqa: ANN001 (Lightning types)
        self.config = self.config.clone()
        for key in ("resume", "ckpt_path"):
            if key in self.config:
                self.config[key] = None
        super().setup(trainer, pl_module, stage)
        # its work is done: Lightning would otherwise dispatch every per-step hook to it (a list rebuilt,
        # not mutated, since Lightning is iterating over trainer.callbacks right now)
        trainer.callbacks = [c for c in trainer.callbacks if c is not self]


class ClampCLI(LightningCLI):
    """LightningCLI with clamp's links and defaults (runs land in ``runs/<experiment>/<version>/``)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k in TRAINER_COMMANDS}

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        parser.add_argument("--experiment", type=str, default="default", help="Run name: logs go to runs/<experiment>/<version>/.")
        parser.add_argument("--torch_threads", type=int, default=0, help="torch intra-op threads (0: torch's default). Tiny models run fastest with 1.")
        parser.add_argument(
            "--resume", type=str | None, default=None,
            help="Run folder runs/<exp>/version_N (or a checkpoint in it) to continue: same folder, same TensorBoard run; "
            "its config.yaml is used unless --config is given.",
        )  # fmt: skip
        parser.link_arguments("data.spec", "model.task", apply_on="instantiate")
        parser.set_defaults({"trainer.logger": DEFAULT_LOGGER, "seed_everything": 0})
        if self.subclass_mode_data:  # `clamp fit`: any DataModule; a bare `data:` block means SyntheticDataModule
            parser.link_arguments("seed_everything", "data.init_args.seed")
            parser.set_defaults({"data": {"class_path": "synthetic_data.SyntheticDataModule"}})
        else:  # a caller that fixed the DataModule class
            parser.link_arguments("seed_everything", "data.seed")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if cfg.torch_threads < 0:
            raise ConfigError(f"torch_threads={cfg.torch_threads}: must be >= 0")
        check_experiment_name(cfg.experiment)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        logger = cfg.trainer.logger
        tensorboard = getattr(logger, "class_path", "").endswith("TensorBoardLogger")
        if tensorboard and logger.init_args.name == "default":
            logger.init_args.name = cfg.experiment
        _merge_clamp_callbacks(cfg.trainer.callbacks)
        if self.subcommand is None:  # `clamp sites`, the ensemble runner: built, not run
            return
        if self.subcommand == "fit" and cfg.ckpt_path == "last" and not cfg.resume:
            if not tensorboard:
                raise ConfigError("--ckpt_path last: finding the last run needs the TensorBoard logger; pass --resume runs/<experiment>/version_<N>")
            cfg.resume = str(_latest_run(Path(logger.init_args.save_dir) / logger.init_args.name))
        if cfg.resume:
            ckpt = Path(cfg.resume) if Path(cfg.resume).is_file() else find_checkpoint(cfg.resume)
            cfg.ckpt_path = str(ckpt)
            if self.subcommand == "fit" and tensorboard:
                _continue_in(logger.init_args, run_dir_of(ckpt), ckpt)
            if self.subcommand == "fit":
                _check_time_budget(cfg.trainer.max_time, ckpt)
        if self.subcommand == "fit" and cfg.ckpt_path:
            self._check_resume_config(cfg, Path(cfg.ckpt_path))
        if self.subcommand == "validate":  # evaluating a checkpoint prints its metrics; it writes no run folder or file
            if not cfg.resume:
                raise ConfigError("validate needs a trained model: clamp validate --resume runs/<experiment>/version_<N>")
            cfg.trainer.logger = False
            self.save_config_callback = None

    def _parse_ckpt_path(self) -> None:
        """Lightning's CLI would replace the given model section by the checkpoint's hyper-parameters, so
        an edited config resumed with ``--ckpt_path`` trained on with the old settings while recording the
        new ones; clamp compares the two instead (:mod:`clamp.resume`) and refuses a different experiment."""

    def _check_resume_config(self, cfg: Any, ckpt: Path) -> None:
        """The config given against the run's ``config.yaml`` (the one rule of :func:`clamp.resume.check_resume`)."""
        given = yaml.safe_load(self._parser(self.subcommand).dump(cfg, skip_none=False))
        check_run_config(given, ckpt, error=ConfigError)  # none beside a moved checkpoint: its hyper-parameters are checked in _run_subcommand

    def instantiate_trainer(self, **kwargs: Any):  # noqa: ANN201 (Trainer)
        """The configured trainer plus clamp's terminal output: a step bar on a terminal, plain lines otherwise."""
        name_event_file_errors()  # a full log disk: one line naming the event file (fit and ensemble members)
        if self.subcommand is None:  # built, not run: no terminal output
            return super().instantiate_trainer(**kwargs)
        trainer_cfg = self.config_init[self.subcommand]["trainer"]
        kwargs["plugins"] = _with_atomic_checkpoints(trainer_cfg.get("plugins"))
        if trainer_cfg.get("enable_progress_bar", True) is not False:
            kwargs["callbacks"] = [*(trainer_cfg.get("callbacks") or []), StepProgressBar() if sys.stdout.isatty() else ProgressLines()]
            kwargs["enable_progress_bar"] = sys.stdout.isatty()
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        print_run_summary(self.trainer)

    def _run_subcommand(self, subcommand: str) -> None:
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand == "fit" else None
        if ckpt and Path(ckpt).is_file():  # the model built from the config against the one the checkpoint was trained as
            check_checkpoint_hparams(load_checkpoint(ckpt, mmap=True).get("hyper_parameters"), self.model.hparams, ckpt, error=ConfigError)
        # validate every callback against the instantiated model before anything touches the run
        # folder (the logger creates it lazily, at the start of fit)
        for cb in self.trainer.callbacks:
            check = getattr(cb, "check", None)
            if callable(check):
                check(self.trainer, self.model, self.datamodule)
        super()._run_subcommand(subcommand)


def _with_atomic_checkpoints(plugins: Any) -> list[Any]:
    """The configured trainer plugins plus :class:`AtomicCheckpointIO`, unless one of them already is a
    ``CheckpointIO`` (a full disk must never truncate ``last.ckpt``)."""
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    return plugins if any(isinstance(p, CheckpointIO) for p in plugins) else [*plugins, AtomicCheckpointIO()]


def _merge_clamp_callbacks(callbacks: list[Any] | None) -> None:
    """Several ``ClampCallback`` entries (e.g. two clamp config files layered onto one run) become one
    callback holding all their interventions, in order: Lightning refuses two callbacks with one
    checkpoint state key, and one engine sees every intervention (conflict rule, unique names)."""
    clamps = [c for c in callbacks or [] if str(getattr(c, "class_path", "")).split(".")[-1] == "ClampCallback"]
    if len(clamps) < 2:
        return
    first = clamps[0].init_args
    for other in clamps[1:]:
        for key in ("seed", "log_alpha"):
            if getattr(other.init_args, key, None) != getattr(first, key, None):
                raise ConfigError(
                    f"trainer.callbacks has {len(clamps)} ClampCallbacks, merged into one, but they set different {key} "
                    f"({getattr(first, key, None)!r} vs {getattr(other.init_args, key, None)!r}); give them the same {key}"
                )
        first.interventions = [*first.interventions, *other.init_args.interventions]
        roles = dict(getattr(first, "roles", None) or {})
        for name, role in (getattr(other.init_args, "roles", None) or {}).items():
            if name in roles and roles[name] != role:
                raise ConfigError(f"trainer.callbacks: two ClampCallbacks define role {name!r} differently ({roles[name]!r} vs {role!r}); rename one or make them equal")
            roles[name] = role
        if roles:
            first.roles = roles
        callbacks.remove(other)


def _latest_run(experiment_dir: Path) -> Path:
    """The newest ``version_N`` under ``experiment_dir`` that has a checkpoint (for ``--ckpt_path last``)."""
    candidates = [d for d in experiment_dir.glob("version_*") if d.is_dir() and list(d.glob("checkpoints/*.ckpt"))]
    if not candidates:
        raise FileNotFoundError(
            f"--ckpt_path last: no run with a checkpoint under {str(experiment_dir)!r}; "
            "train first, or pass --resume runs/<experiment>/version_<N>"
        )
    return max(candidates, key=lambda d: int(d.name.split("_")[-1]) if d.name.split("_")[-1].isdigit() else -1)


def _as_seconds(max_time: Any) -> float | None:
    """Lightning's ``max_time`` ("DD:HH:MM:SS", a dict of timedelta fields or a timedelta) in seconds."""
    if max_time is None:
        return None
    if isinstance(max_time, timedelta):
        return max_time.total_seconds()
    if isinstance(max_time, str):
        days, hours, minutes, seconds = (int(x) for x in max_time.strip().split(":"))
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
    return timedelta(**dict(max_time)).total_seconds()


def _check_time_budget(max_time: Any, ckpt: Path) -> None:
    """Refuse a resume whose ``max_time`` the run has already used: Lightning's Timer counts the whole
    run across resumes, so it would stop at once, having trained nothing."""
    try:
        limit = _as_seconds(max_time)
    except (ValueError, TypeError):  # a malformed max_time: Lightning's own check names it
        return
    if limit is None:
        return
    state = load_checkpoint(ckpt, mmap=True).get("callbacks", {}).get("Timer", {})
    used = float(state.get("time_elapsed", {}).get("train", 0.0))
    if used >= limit:
        hms = lambda t: str(timedelta(seconds=round(t)))  # noqa: E731
        raise ConfigError(
            f"trainer.max_time={max_time!r} ({hms(limit)}): the run already trained for {hms(used)} and max_time counts "
            f"the whole run across resumes, so it would stop at once; give the total budget, e.g. "
            f"--trainer.max_time 00:{hms(used + 3600).zfill(8)} for one more hour"
        )


def _check_writable(run_dir: Path) -> None:
    """A resume writes checkpoints, events and summary.json into the run folder: refuse a read-only one
    before training starts (else the first write fails deep inside Lightning, mid-run)."""
    for folder in (run_dir, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise ConfigError(
                f"--resume {run_dir}: cannot write into {folder} ({e.strerror or e}); a resume adds checkpoints, "
                "events and summary.json there: make it writable or copy the run folder somewhere writable"
            ) from None


def _continue_in(logger_args: Any, run_dir: Path, ckpt: Path) -> None:
    """Point the TensorBoard logger at the resumed run's folder; drop the steps logged after the checkpoint."""
    _check_writable(run_dir)
    logger_args.save_dir = str(run_dir.parent.parent)
    logger_args.name = run_dir.parent.name
    logger_args.version = run_dir.name
    step = int(load_checkpoint(ckpt, mmap=True).get("global_step", 0))
    logger_args.purge_step = step  # TensorBoard discards this run's events at steps >= the checkpoint's
    print(f"resuming {run_dir} from step {step} ({ckpt.name})", flush=True)


def cli_main(args: list[str] | None = None, run: bool = True) -> ClampCLI:
    """Build (and by default run) the Lightning CLI (``args=None``: read ``sys.argv``)."""
    no_exit = {"exit_on_error": False}
    cli = ClampCLI(
        TrainingModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_callback=_RunConfigSaver,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={**no_exit, **{sub: dict(no_exit) for sub in TRAINER_COMMANDS}},
        trainer_defaults={"callbacks": [GracefulStop(), RunawayLossGuard()]},
    )
    if run:
        end_of_command()  # a signal during the end of fit still stops the command (StoppedAtEndOfFit)
    return cli


class _ParserBuilt(Exception):  # noqa: N818 (a signal, not an error)
    pass


def fit_parser():  # noqa: ANN201 (jsonargparse.ArgumentParser)
    """The parser ``clamp fit`` reads its config with, built and left unused: ``clamp sweep`` checks
    every run's config with it before the first run starts, so a misspelt key fails the sweep at once."""

    class _ParseOnly(ClampCLI):
        def parse_arguments(self, parser, args) -> None:  # noqa: ANN001 (jsonargparse types)
            raise _ParserBuilt(self._parser("fit"))

    no_exit = {"exit_on_error": False}
    try:
        _ParseOnly(TrainingModule, L.LightningDataModule, subclass_mode_data=True, args=[],
                   parser_kwargs={**no_exit, **{sub: dict(no_exit) for sub in TRAINER_COMMANDS}})
    except _ParserBuilt as built:
        return built.args[0]
    raise AssertionError("LightningCLI parsed no arguments")  # pragma: no cover


def _check_config_files(args: list[str]) -> None:
    """Catch empty / non-mapping YAML files with a message naming the file (jsonargparse's is cryptic)."""
    for i, a in enumerate(args):
        path = args[i + 1] if a in ("--config", "-c") and i + 1 < len(args) else a.split("=", 1)[1] if a.startswith("--config=") else None
        if path is None:
            continue
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {path!r}: no such file")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ConfigError(f"--config {path!r}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
        if data is None:
            raise ConfigError(f"--config {path!r} is empty: expected a mapping with model/data/trainer sections")
        if not isinstance(data, dict):
            raise ConfigError(f"--config {path!r} holds a {type(data).__name__}: expected a mapping with model/data/trainer sections")


def one_line(e: BaseException) -> str:
    """The message of ``e`` as one line; for jsonargparse's nested reports, the innermost reason
    prefixed by the chain of keys and classes that leads to it."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    raw = [ln for ln in text.rstrip().splitlines() if ln.strip()]
    if not raw:
        return type(e).__name__
    if len(raw) == 1:
        return raw[0].strip()
    if raw[0].startswith("Does not validate against any of the Union subtypes"):  # e.g. data's class raised: its reason, not the Namespace dump
        reasons = [ln.strip()[2:] for ln in raw if ln.strip().startswith("- ") and not ln.strip().startswith("- Expected a <class 'NoneType'>")]
        if reasons:
            return "; ".join(reasons)
    if not type(e).__name__.endswith("ArgumentError"):  # e.g. "unknown site ...; valid sites are:\n  a\n  b"
        return f"{raw[0].strip()} {', '.join(' '.join(ln.split()) for ln in raw[1:])}"
    indent = [len(ln) - len(ln.lstrip(" -")) for ln in raw]
    deepest = max(range(len(raw)), key=lambda k: (indent[k], -k))
    chain, level = [], indent[deepest]
    for k in range(deepest - 1, -1, -1):  # ancestors: the nearest line of each smaller indentation
        if indent[k] < level:
            chain.append(raw[k].strip().removeprefix("- "))
            level = indent[k]
    names = []
    for ln in reversed(chain):
        m = re.search(r"""(?:Parser key|class_path|Key) ["']([^"']+)["']""", ln)
        if m:
            names.append(m.group(1))
    reason = raw[deepest].strip().removeprefix("- ")
    return f"{' > '.join(names)}: {reason}" if names else reason


def sites_main(argv: list[str]) -> None:
    """``clamp sites --config X.yaml [overrides]``: the model's sites, shapes filled in from the config."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: clamp sites --config X.yaml [--model.transformer.n_layers 4 ...]\n\n"
              "Lists every site interventions can target (name and shape) for the config's model and task.")  # fmt: skip
        return
    _quiet_third_parties()
    _check_config_files(argv)
    cli = cli_main(argv, run=False)
    model = cli.model.model
    n_ctx, batch = model.cfg.n_ctx, getattr(cli.datamodule, "batch_size", "B")
    sized = {"batch": batch, "pos": n_ctx, "q_pos": n_ctx, "k_pos": n_ctx}
    print(f"{type(model).__name__}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, d_model {model.cfg.d_model}, "
          f"context {n_ctx}; shapes at batch size {batch}")  # fmt: skip
    for info in model.sites():
        shape = ", ".join(f"{d}={info.sizes.get(d, sized.get(d))}" for d in info.dims)
        print(f"  {info.name:<22} [{shape}]")
    print("selectors: layer<L>.head<H>.<site> (H in 0..{0} or *) picks heads; layer*.<site> every layer".format(model.cfg.n_heads - 1))
    print("TransformerLens hook names are accepted too, e.g. blocks.0.attn.hook_pattern = layer0.pattern, blocks.1.attn.hook_z = layer1.z")
    task = getattr(cli.datamodule, "task", None)
    layout = task.layout() if task is not None and hasattr(task, "layout") else None
    if layout:
        print(f"positions of {type(task).__name__} (the pos / q_pos / k_pos axes; `positions: [-1]` is the last):")
        for i, what in enumerate(layout):
            print(f"  pos {i:<3} {what}")


def null_main(argv: list[str]) -> None:
    """``clamp null --config X.yaml [--n 20] [--out DIR] [overrides]`` or ``clamp null --run RUN_DIR``: see :mod:`clamp.metrics.null`."""
    import argparse

    parser = argparse.ArgumentParser(prog="clamp null", description="Head scores of N untrained models (init seeds 0..N-1) of a "
                                     "config's architecture on its EmergenceCallback's probes; writes OUT/null.json.")  # fmt: skip
    parser.add_argument("--n", type=int, default=20, help="untrained models (default 20)")
    parser.add_argument("--out", default=None, help="folder for null.json (default: the run folder with --run, else reports/null/<config name>)")
    parser.add_argument("--run", default=None, help="a run folder (runs/<exp>/version_N): its architecture, task and probes")
    opts, rest = parser.parse_known_args(argv)
    if opts.n < 1:
        parser.error(f"--n {opts.n}: must be >= 1 (e.g. 20)")
    if (opts.run is None) == (not rest):
        parser.error("give either --config X.yaml [overrides] or --run RUN_DIR")
    from clamp.metrics.null import EmergenceCallback, null_of_run, null_scores, table

    _quiet_third_parties()
    if opts.run:
        baseline, out = null_of_run(opts.run, n=opts.n), opts.out or opts.run
    else:
        cli = cli_main(rest, run=False)
        cb = next((c for c in cli.trainer.callbacks if isinstance(c, EmergenceCallback)), None)
        baseline = null_scores(cli.model, cli.datamodule, cb, n=opts.n)
        config = next((rest[i + 1] for i, a in enumerate(rest[:-1]) if a in ("--config", "-c")), "config")
        out = opts.out or str(Path("reports") / "null" / Path(config).stem)
    print("\n".join(table(baseline)))
    print(f"null baseline written to {baseline.write(out)}")


def _version() -> str:
    try:
        return version("clamp")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _help() -> str:
    rows = [*TRAINER_COMMANDS.items(), *((k, v[1]) for k, v in COMMANDS.items())]
    width = max(len(k) for k, _ in rows)
    lines = [
        "usage: clamp <command> [options]      (clamp <command> --help for a command's options)",
        "",
        "Training-time interventions on transformers.",
        "",
        "commands:",
        *(f"  {k:<{width}}  {v}" for k, v in rows),
        "",
        "options:",
        "  -h, --help     this message",
        "  --version      print clamp's version",
        "  --debug        show tracebacks instead of one-line errors",
        "",
        "example: clamp fit --config experiments/induction_default.yaml",
    ]
    return "\n".join(lines)


def _quiet_third_parties() -> None:
    """No adverts, device banners or upstream deprecation noise in the terminal; warnings that matter still show."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*treespec.*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")  # clamp passes args on purpose
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # a resumed run's own folder


def _with_run_config(args: list[str]) -> list[str]:
    """``fit --resume DIR`` without ``--config``: read the run's own ``config.yaml`` first."""
    if "--config" in args or any(a.startswith("--config=") for a in args):
        return args
    for i, a in enumerate(args):
        value = args[i + 1] if a == "--resume" and i + 1 < len(args) else a.split("=", 1)[1] if a.startswith("--resume=") else None
        if value:
            config = run_dir_of(value) / "config.yaml"
            if not config.is_file():
                raise ConfigError(f"--resume {value}: no config.yaml in {run_dir_of(value)}; pass --config too")
            return [args[0], "--config", str(config), *args[1:]]
    return args


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("CLAMP_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help"):
        print(_help())
        return
    if args[0] == "--version":
        print(f"clamp {_version()}")
        return
    if args[0] in COMMANDS:
        target, _, *takes_debug = COMMANDS[args[0]]
        module, fn = target.split(":")
        command = getattr(importlib.import_module(module), fn)
        rest = args[1:] + (["--debug"] if debug and takes_debug and takes_debug[0] else [])
        run = lambda: command(rest)  # noqa: E731
    elif args[0] not in TRAINER_COMMANDS:
        raise SystemExit(f"clamp: unknown command {args[0]!r}; valid: {', '.join([*TRAINER_COMMANDS, *COMMANDS])} (clamp --help)")
    else:
        _quiet_third_parties()
        run = lambda: _run(argv, args)  # noqa: E731
    if debug:
        return run()
    try:
        run()
    except SIGTERMException as e:
        sig = received_signal() or signal.SIGTERM
        name = signal.Signals(sig).name
        if isinstance(e, StoppedAtEndOfFit):
            line = f"clamp: stopped by {name} during the end of fit; the run had finished: checkpoint and summary.json saved"
        else:
            line = f"clamp: stopped by {name}; checkpoint and summary.json (complete: false) saved"
        if os.environ.get("LOCAL_RANK", "0") == "0":  # DDP: one line, from the launching process
            print(line, file=sys.stderr)
        sys.exit(128 + int(sig))
    except KeyboardInterrupt:
        print("clamp: aborted (second Ctrl+C): no checkpoint saved", file=sys.stderr)
        sys.exit(128 + int(signal.SIGINT))
    except Exception as e:  # noqa: BLE001 (the one place that turns errors into one line)
        config = isinstance(e, (ConfigError, KeyError, ValueError, TypeError, FileNotFoundError)) or type(e).__name__.endswith("ArgumentError")
        print(f"clamp: error: {one_line(e)}", file=sys.stderr)
        if not config:
            print("clamp: (run again with --debug or CLAMP_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(2 if config else 1)


def _run(argv: list[str] | None, args: list[str]) -> None:
    args = _with_run_config(args)
    _check_config_files(args)
    if argv is None:  # LightningCLI reads sys.argv itself (and warns when given both)
        sys.argv = [sys.argv[0], *args]
    cli_main(None if argv is None else args)


if __name__ == "__main__":
    main()
