"""The ready tasks on the shared recordings run end to end: label files from `speechbs manifest`, then a probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechbs.cli import main as cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "old_checkpoints"


def test_the_yesno_task_runs_from_its_label_files(yesno_dir: Path, tmp_path: Path) -> None:
    """docs/probes.md's yes/no task: which word is said more, on the corpus's own 30/30 split."""
    out = tmp_path / "yesno"
    assert cli(["manifest", str(yesno_dir / "waves_yesno"), "--transcripts", str(yesno_dir / "transcripts.txt"),
                "--split-file", str(yesno_dir / "manifest.tsv"), "--label-from-text", "most=YES,NO:most",
                "--out", str(out)]) == 0
    assert cli(["probe", str(FIXTURES / "wav2vec2.pt"), "--task", "yesno-most", "--label", "most",
                "--train", str(out / "train.tsv"), "--test", str(out / "test.tsv"), "--epochs", "5",
                "--workers", "0", "--out", str(tmp_path / "probe")]) == 0
    record = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert record["classes"] == ["NO", "YES", "tie"] and (record["num_train"], record["num_test"]) == (30, 30)
    assert record["chance_accuracy"] == pytest.approx(14 / 30)  # train's majority (YES) is 14 of test's 30
    assert 0.0 <= record["accuracy"] <= 1.0
