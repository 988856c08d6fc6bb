"""``clamp`` command line: LightningCLI for ``fit``/``validate``/..., plus ``clamp report`` and ``clamp sites``.

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
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path, PurePath

import lightning as L
import torch
import yaml
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from clamp.preemption import GracefulStop, received_signal
from clamp.training import TrainingModule

DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs", "name": "default", "default_hp_metric": False},
}
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class ConfigError(ValueError):
    """A config that cannot run (reported in one line, exit status 2)."""


def check_experiment_name(name: str) -> None:
    """An experiment name is a folder under the logger's save_dir: no absolute paths, no ``..``."""
    parts = PurePath(name).parts
    if not name.strip() or PurePath(name).is_absolute() or ".." in parts or name.startswith("~"):
        raise ConfigError(f"experiment={name!r}: must be a relative folder name under runs/ (letters, digits, '_', '-', '/'), without '..'")


class ClampCLI(LightningCLI):
    """LightningCLI with clamp's links and defaults (runs land in ``runs/<experiment>/<version>/``)."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        parser.add_argument("--experiment", type=str, default="default", help="Run name: logs go to runs/<experiment>/<version>/.")
        parser.add_argument("--torch_threads", type=int, default=0, help="torch intra-op threads (0: torch's default). Tiny models run fastest with 1.")
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
        if getattr(logger, "class_path", "").endswith("TensorBoardLogger") and logger.init_args.name == "default":
            logger.init_args.name = cfg.experiment

    def _run_subcommand(self, subcommand: str) -> None:
        # validate every callback against the instantiated model before anything touches the run
        # folder (the logger creates it lazily, at the start of fit)
        for cb in self.trainer.callbacks:
            check = getattr(cb, "check", None)
            if callable(check):
                check(self.trainer, self.model, self.datamodule)
        super()._run_subcommand(subcommand)


def cli_main(args: list[str] | None = None) -> ClampCLI:
    """Build and run the Lightning CLI (``args=None``: read ``sys.argv``)."""
    no_exit = {"exit_on_error": False}
    return ClampCLI(
        TrainingModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={**no_exit, **{sub: dict(no_exit) for sub in SUBCOMMANDS}},
        trainer_defaults={"callbacks": [GracefulStop()]},
    )


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


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("CLAMP_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    if args and args[0] == "report":
        from clamp.report import main as report_main

        report_main(args[1:])
        return
    if args and args[0] == "sweep":
        from clamp.sweep import main as sweep_main

        sweep_main(args[1:])
        return
    if args and args[0] == "analyze":
        from clamp.analyze import main as analyze_main

        analyze_main(args[1:] + (["--debug"] if debug else []))
        return
    if argv is None:  # LightningCLI reads sys.argv itself (and warns when given both)
        sys.argv = [sys.argv[0], *args]
    run_args = None if argv is None else args
    if debug:
        return _run(run_args, args)
    try:
        _run(run_args, args)
    except SIGTERMException:
        sig = received_signal() or signal.SIGTERM
        print(f"clamp: stopped by {signal.Signals(sig).name}; checkpoint and summary.json (complete: false) saved", file=sys.stderr)
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


def _run(run_args: list[str] | None, args: list[str]) -> None:
    _check_config_files(args)
    cli_main(run_args)


if __name__ == "__main__":
    main()
