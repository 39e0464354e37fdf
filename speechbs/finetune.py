"""``speechbs finetune RECIPE --set finetune.init=...``: CTC fine-tuning on letters, alone or under torchrun.

The command resolves ``finetune.init`` into the config and starts the shared loop;
what fine-tuning means (the CTC loss, freezing, validation WER) is :mod:`speechbs.tasks.ctc`.
"""

from __future__ import annotations

import argparse
import functools

from speechbs.train.command import add_training_arguments, run_training


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, recipe_help="TOML recipe (see recipes/finetune/)",
                           set_example="finetune.init=runs/w2v2-tiny-builtin")


def main(args: argparse.Namespace) -> int:
    from speechbs.configio import load_config
    from speechbs.tasks.ctc import CTCTask, prepare_finetune

    cfg, init_state = prepare_finetune(load_config(args.recipe, args.overrides))
    return run_training("finetune", args, cfg, functools.partial(CTCTask, init_state=init_state))
