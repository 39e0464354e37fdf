"""What ``speechbs pretrain`` and ``speechbs finetune`` share: their arguments and how they start training.

Both commands take a recipe, ``--set`` overrides, a process-group backend and the resume
options, and both run the shared loop under the launcher's process group; they differ
only in how the config is resolved and which task they train.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from speechbs.train import resume

if TYPE_CHECKING:
    from speechbs.config import Config
    from speechbs.train.loop import TaskFactory


def add_training_arguments(parser: argparse.ArgumentParser, *, recipe_help: str, set_example: str) -> None:
    """The recipe, ``--set``, ``--backend``, ``--allow-change`` and ``--restart-from`` of a training command."""
    parser.add_argument("recipe", help=recipe_help)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override one config field, e.g. --set {set_example} (repeatable)")
    parser.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"],
                        help="process-group backend under torchrun (auto: NCCL on GPU, gloo on CPU)")
    resume.add_arguments(parser)


def run_training(command: str, args: argparse.Namespace, cfg: Config, build_task: TaskFactory) -> int:
    """Train ``cfg`` with the task ``build_task`` builds, as ``speechbs <command>`` was asked to; exit status 0.

    The resume options are checked before the process group is joined, so a wrong
    ``--allow-change`` fails at once on every rank.
    """
    from speechbs.dist import distributed
    from speechbs.train.loop import train

    options = resume.options_from_args(command, args)
    with distributed(args.backend, timeout_s=cfg.train.collective_timeout_s) as ctx:
        train(cfg, build_task, ctx, options)
    return 0
