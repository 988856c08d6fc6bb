"""``clamp`` command line: LightningCLI for ``fit``/``validate``/..., plus ``clamp report`` and ``clamp sites``.

One YAML file holds model, data, trainer and callbacks (``class_path``/``init_args``). The data's
:class:`TaskSpec` is linked into the model so users never repeat vocabulary or context sizes, and
``seed_everything`` seeds the model init, the training stream and the eval sets alike. ``data`` is
a :class:`SyntheticDataModule` unless it names another ``class_path`` (e.g.
``clamp.text.TextDataModule``); any DataModule with a ``spec`` property and a ``seed`` argument fits.
"""

from __future__ import annotations

import sys

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI

from clamp.training import TrainingModule

DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs", "name": "default", "default_hp_metric": False},
}


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
            raise ValueError(f"torch_threads={cfg.torch_threads} must be >= 0")
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        logger = cfg.trainer.logger
        if getattr(logger, "class_path", "").endswith("TensorBoardLogger") and logger.init_args.name == "default":
            logger.init_args.name = cfg.experiment


def cli_main(args: list[str] | None = None) -> ClampCLI:
    """Build and run the Lightning CLI (``args=None``: read ``sys.argv``)."""
    return ClampCLI(
        TrainingModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "report":
        from clamp.report import main as report_main

        report_main(args[1:])
        return
    if args and args[0] == "sweep":
        from clamp.sweep import main as sweep_main

        sweep_main(args[1:])
        return
    cli_main(argv)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
