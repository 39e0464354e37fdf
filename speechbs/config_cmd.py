"""``speechbs config``: print a resolved config, its hash, and what each field means."""

from __future__ import annotations

import argparse

from speechbs.configio import config_hash, describe, dump_toml, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="TOML recipe (defaults only when omitted)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field, e.g. --set batch.seconds=600 (repeatable)")
    parser.add_argument("--help-fields", action="store_true",
                        help="list every field with its value and documentation instead of TOML")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe, args.overrides)
    if args.help_fields:
        for key, value, doc in describe(cfg):
            print(f"{key} = {value!r}\n    {doc}")
    else:
        print(f"# hash {config_hash(cfg)}")
        print(dump_toml(cfg), end="")
    return 0
