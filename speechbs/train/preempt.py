"""Preemption: SIGTERM or SIGUSR1 saves the step in flight and exits with status 75.

Clusters stop jobs with a signal and a grace period: SLURM sends SIGUSR1 before the
time limit (``--signal``) and SIGTERM on ``scancel`` or preemption, docker and
Kubernetes send SIGTERM, torchrun passes the signals it handles on to the ranks. The
handler only records the signal. :func:`~speechbs.train.step.train_step` reads the flag
when it packs the step's one all-reduce (``stop_requested=flag``, a callable), so every
rank learns of a signal that reached any rank in the same reduction, and a signal that
arrives while step k computes stops the run after step k. Rank 0 then writes the
checkpoint of step k, and every rank exits with :data:`EXIT_REQUEUE`.

Only the main process of each rank acts: DataLoader workers ignore these signals
(speechbs.data.loader) and are shut down by their rank.
"""

from __future__ import annotations

import os
import signal
from types import FrameType, TracebackType

EXIT_REQUEUE = 75
"""EX_TEMPFAIL (sysexits.h): preempted, checkpoint saved, run the same command again to resume."""

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""What asks a run to save and stop. SIGINT (Ctrl-C) still stops at once, without a checkpoint."""

TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
"""The ``torchrun --signals-to-handle`` value the launch templates pass: torchrun's default set plus SIGUSR1."""


class StopFlag:
    """Records the first preemption signal; call it to ask whether one came. Restores the old handlers on exit."""

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPT_SIGNALS) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. under a test runner thread)
                pass

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> StopFlag:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def torchrun_signal_warning(environ: dict[str, str] | os._Environ = os.environ) -> str:
    """A warning when this rank runs under a torchrun in a SLURM job that does not pass SIGUSR1 on; else ''.

    SLURM's time-limit signal (``--signal=B:USR1@...``) then kills torchrun itself (exit 138) and the
    ranks train on, orphaned, until SLURM kills them without a checkpoint. torchrun (torch >= 2.9)
    tells its workers what it forwards in TORCHELASTIC_SIGNALS_TO_HANDLE; older ones forward only
    SIGTERM, SIGINT, SIGHUP and SIGQUIT and set nothing.
    """
    if "TORCHELASTIC_RUN_ID" not in environ or "SLURM_JOB_ID" not in environ:
        return ""
    handled = {name.strip() for name in environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE", "").split(",")}
    if "SIGUSR1" in handled:
        return ""
    return ("warning: torchrun does not pass SIGUSR1 on to the ranks, so SLURM's time-limit signal would kill "
            "it and leave no checkpoint; launch it with --signals-to-handle="
            f"{TORCHRUN_SIGNALS} (torch >= 2.9), as recipes/launch/slurm.sbatch does")
