"""``speechbs report RUNS... [--out DIR]``: the table and plots of a batch-size sweep.

RUNS are sweep roots, run directories, or directories of run directories. The
report is written to ``--out`` (default: ``<first RUN>/report``): ``table.md``,
``table.csv`` and four PNG plots; the table and the notes are also printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speechbs.atomic import output_dir, write_text
from speechbs.errors import SpeechbsError
from speechbs.report.collect import LAST_ROWS, Collected, collect
from speechbs.report.plots import write_plots
from speechbs.report.table import markdown, to_csv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="sweep root, run directory, or a directory holding run directories")
    parser.add_argument("--out", help="report directory (default: <first RUN>/report)")
    parser.add_argument("--last-rows", type=int, default=LAST_ROWS,
                        help=f"train rows averaged for the final loss, and noise rows for the median "
                             f"(default {LAST_ROWS})")
    parser.add_argument("--no-plots", action="store_true", help="write the table only")


def main(args: argparse.Namespace) -> int:
    missing = [r for r in args.runs if not Path(r).exists()]
    if missing:
        raise SpeechbsError(f"{', '.join(missing)}: no such directory (give sweep roots or run directories)")
    files = [r for r in args.runs if not Path(r).is_dir()]
    if files:
        raise SpeechbsError(f"{', '.join(files)}: a file, not a directory (give sweep roots or run directories)")
    if args.last_rows < 1:
        raise SpeechbsError(f"--last-rows must be >= 1, got {args.last_rows}")
    out_dir = output_dir(Path(args.out) if args.out else Path(args.runs[0]) / "report", create=False)
    collected = collect(args.runs, args.last_rows)
    paths = write_report(collected, out_dir, plots=not args.no_plots)
    print(markdown(collected), end="")
    print(f"report written to {out_dir}: " + ", ".join(p.name for p in paths))
    return 0


def write_report(collected: Collected, out_dir: Path, *, plots: bool = True) -> list[Path]:
    """``table.md``, ``table.csv`` and (with ``plots``) the four PNGs; returns the paths written."""
    output_dir(out_dir)
    paths = [write_text(out_dir / "table.md", markdown(collected)), write_text(out_dir / "table.csv", to_csv(collected))]
    if plots:
        paths += write_plots(collected, out_dir)
    return paths
