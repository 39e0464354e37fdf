"""The ``speechbs`` command: a thin table from subcommand to the module that runs it.

Each command module exposes ``add_arguments(parser)`` and ``main(args) -> int``.
Modules are imported only when their command runs, so ``speechbs --help`` is
fast (no torch import). A :class:`~speechbs.errors.SpeechbsError`, and an
``OSError`` about a named file or a full disk, is printed as one clear line and
exits with status 2 (:func:`speechbs.errors.user_message` decides which); a
traceback means a bug in speechbs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from speechbs import __version__
from speechbs.errors import SpeechbsError, user_message

# name -> (module, one-line help). The order is the order of `speechbs --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("speechbs.demo", "build the built-in corpus and run the main job on it"),
    "corpus": ("speechbs.data.corpus", "synthesize the built-in labeled English speech corpus"),
    "manifest": ("speechbs.data.manifest_cmd", "build fairseq-style manifests and label files"),
    "validate": ("speechbs.data.validate", "check a manifest's audio and transcripts"),
    "pretrain": ("speechbs.pretrain", "self-supervised pretraining (alone or under torchrun)"),
    "finetune": ("speechbs.finetune", "CTC fine-tuning of a pretrained encoder on transcripts"),
    "decode": ("speechbs.asr.decode", "transcribe a manifest with a fine-tuned model (greedy or LM beam search)"),
    "score": ("speechbs.asr.score", "WER and CER of hypotheses against references"),
    "targets": ("speechbs.targets.command", "MFCC or layer features, k-means and cluster label files for HuBERT/WavLM"),
    "config": ("speechbs.config_cmd", "print a resolved config with units and docs"),
    "sweep": ("speechbs.sweep.command", "pretrain, fine-tune, decode and score a grid of batch sizes"),
    "export": ("speechbs.export", "write a checkpoint for Hugging Face, fairseq or s3prl (--to hf|fairseq|s3prl)"),
    "noise": ("speechbs.noise", "gradient noise of a checkpoint at several batch sizes, at a fixed model state"),
    "probe": ("speechbs.probe.command", "frozen-feature probes (speaker, keyword, ...): layer weights + a small head"),
    "advise": ("speechbs.advise.command", "measure a recipe's early noise scale and recommend a batch for your devices"),
    "report": ("speechbs.report.command", "table and plots of batch size vs WER, hours seen and gradient noise"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechbs",
        description="Self-supervised speech pretraining with the batch size in seconds of audio.",
    )
    parser.add_argument("--version", action="version", version=f"speechbs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # prints help / version / the unknown-command error
        parser.print_help()
        return 0 if args.command is None else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    command_parser = argparse.ArgumentParser(prog=f"speechbs {name}", description=COMMANDS[name][1])
    module.add_arguments(command_parser)
    args = command_parser.parse_args(rest)
    try:
        return int(module.main(args) or 0)
    except (SpeechbsError, OSError) as exc:
        message = user_message(exc)
        if message is None:
            raise  # not about the user's files: a bug, keep the traceback
        print(f"speechbs {name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"speechbs {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
