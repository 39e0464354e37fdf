"""Where numbers go: ``metrics.jsonl`` (every step), TensorBoard, the console and ``log.txt``.

Only rank 0 writes. Each JSON line holds ``step``, ``kind`` (``train``,
``valid``, or ``resume``: see :mod:`speechbs.train.resume`) and a flat dict of
floats; the same keys become TensorBoard scalars (``/`` groups them). The console gets
a progress line with ETA every ``log_every`` steps: rewritten in place when the
output is a terminal, plain appended lines otherwise (cluster logs).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class MetricsLogger:
    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int, log_every: int,
                 tensorboard: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self.log_every = max(log_every, 1)
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty()
        self._jsonl = None
        self._log = None
        self._tb = None
        self._start_time = time.monotonic()
        self._start_step: int | None = None
        self._bar_open = False  # a progress bar is drawn and the cursor sits at its end
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._log = open(run_dir / "log.txt", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log_step(self, step: int, values: dict[str, float], *, kind: str = "train") -> None:
        """Record ``values`` for ``step`` (the number of optimizer steps taken so far)."""
        if not self.enabled:
            return
        if self._start_step is None:
            self._start_step, self._start_time = step - 1, time.monotonic()
        record = {"step": step, "kind": kind, **{k: _plain(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
        # On a terminal the progress bar redraws every step; logs get a line every log_every steps.
        if kind != "train" or self.interactive or step % self.log_every == 0 or step == self.total_steps:
            self._console(step, values, kind)

    def event(self, step: int, kind: str, values: dict[str, Any]) -> None:
        """A metrics.jsonl row that is not a measurement, e.g. ``kind="resume"`` (no console, no TensorBoard)."""
        if self.enabled:
            self._jsonl.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
            self._jsonl.flush()

    def message(self, text: str) -> None:
        """A line for the console and log.txt (rank 0 only)."""
        if not self.enabled:
            return
        if self._bar_open:
            self.stream.write("\r\033[K")
            self._bar_open = False
        print(text, file=self.stream, flush=True)
        self._log.write(text + "\n")
        self._log.flush()

    def _console(self, step: int, values: dict[str, float], kind: str) -> None:
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in values.items() if k in CONSOLE_KEYS)
        if kind != "train":
            self.message(f"[{kind}] step {step}: {shown}")
            return
        elapsed = time.monotonic() - self._start_time
        done = step - (self._start_step or 0)
        eta = elapsed / max(done, 1) * (self.total_steps - step)
        line = f"step {step}/{self.total_steps} | {shown} | eta {_duration(eta)}"
        if step % self.log_every == 0 or step == self.total_steps:
            self._log.write(line + "\n")
            self._log.flush()
        if self.interactive:
            self.stream.write("\r\033[K" + _bar(step, self.total_steps) + " " + line)
            self.stream.flush()
            self._bar_open = True
        elif step % self.log_every == 0 or step == self.total_steps:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
        for handle in (self._jsonl, self._log):
            if handle is not None:
                handle.close()
        if self._tb is not None:
            self._tb.close()


# The keys worth a glance on the console; everything goes to metrics.jsonl and TensorBoard.
CONSOLE_KEYS = ("loss", "accuracy", "wer", "lr", "grad_norm", "batch_s", "packing", "hours_seen",
                "audio_s_per_s", "noise_b_simple_s")


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _bar(step: int, total: int, width: int = 20) -> str:
    """``[#######.............]  35%``"""
    fraction = min(max(step / max(total, 1), 0.0), 1.0)
    filled = int(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
