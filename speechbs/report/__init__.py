"""Tables and plots of batch-size sweeps, read from run directories (see docs/report.md)."""

from speechbs.report.collect import Collected, RunRow, Score, collect
from speechbs.report.command import write_report
from speechbs.report.plots import PLOT_NAMES, write_plots
from speechbs.report.table import markdown, table_rows, to_csv

__all__ = ["PLOT_NAMES", "Collected", "RunRow", "Score", "collect", "markdown", "table_rows", "to_csv",
           "write_plots", "write_report"]
