"""Fixtures for sweep tests: a miniature sweep recipe and a runner that calls the stub stages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from speechbs.sweep.runner import SubprocessRunner

STUB = Path(__file__).with_name("stub_speechbs.py")


def write_sweep(tmp_path: Path, extra: str = "", grid: str = "batch_seconds = [15.0, 60.0]",
                sweep: str = 'budget = "hours"\nhours = 0.5') -> Path:
    (tmp_path / "pre.toml").write_text('[run]\nname = "x"\n[model]\nsize = "tiny"\n'
                                       '[batch]\nseconds = 60\nmax_device_seconds = 30\n')
    (tmp_path / "ft.toml").write_text('[data]\nlabels = "ltr"\n[model]\nsize = "tiny"\n')
    path = tmp_path / "sweep.toml"
    path.write_text(f'[sweep]\nname = "mini"\noutput_dir = "{tmp_path / "runs"}"\npretrain_recipe = "pre.toml"\n'
                    f'pretrain_set = ["optim.lr_rule=\\"sqrt\\"", "optim.reference_seconds=60.0"]\n{sweep}\n'
                    f"[grid]\n{grid}\n"
                    '[[finetune]]\nname = "train"\nrecipe = "ft.toml"\n'
                    '[[test]]\nname = "test"\nmanifest = "test.tsv"\n' + extra)
    return path


class StubRunner(SubprocessRunner):
    """Every stage kind runs the stub script; ``unavailable`` kinds report themselves missing."""

    def __init__(self, unavailable: tuple[str, ...] = (), real: tuple[str, ...] = ()) -> None:
        prefixes = {k: [sys.executable, str(STUB)] for k in ("pretrain", "finetune", "decode", "score", "noise", "probe")
                    if k not in real}
        super().__init__(prefixes=prefixes)
        self.unavailable = unavailable

    def available(self, kind: str) -> bool:
        return kind not in self.unavailable and super().available(kind)


@pytest.fixture
def calls(tmp_path, monkeypatch) -> Path:
    """File the stub appends one line per stage call to."""
    path = tmp_path / "calls.log"
    path.write_text("")
    monkeypatch.setenv("STUB_CALLS", str(path))
    monkeypatch.delenv("STUB_FAIL", raising=False)
    return path
