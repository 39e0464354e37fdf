"""``speechbs pretrain RECIPE [--set ...]``: self-supervised pretraining, alone or under torchrun.

The command only loads the config and starts the shared loop; what pretraining
means (the loss, the seeds, the labels, validation) is :mod:`speechbs.tasks.ssl`.
"""

from __future__ import annotations

import argparse

from speechbs.train.command import add_training_arguments, run_training


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, recipe_help="TOML recipe (see recipes/README.md)", set_example="batch.seconds=600")


def main(args: argparse.Namespace) -> int:
    from speechbs.configio import load_config
    from speechbs.tasks.ssl import SSLTask

    return run_training("pretrain", args, load_config(args.recipe, args.overrides), SSLTask)
