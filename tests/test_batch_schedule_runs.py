"""Batch-size schedules end to end: an adaptive run decides the same on one process and two, and a
resume in the middle of a ramp or after an adaptive decision continues the uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechbs.configio import load_config
from speechbs.train.schedule import lr_scale, peak_lr
from test_pretrain import RECIPE, _max_rel_diff, _metrics, _params, _run, _settings, digits_manifests  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

# 4 s units on a cap of 8 s: every batch up to 16 s fits two forward passes, so a measuring step
# (two micro-batches in all) measures the same two micro-batches on one process and on two.
ADAPTIVE = ["batch.seconds=4", "batch.max_device_seconds=8", 'batch.schedule="adaptive"',
            "batch.adaptive.every_steps=2", "batch.adaptive.factor=20", "batch.adaptive.max_seconds=16",
            "train.grad_noise_every=1", "train.grad_noise_window=2", "optim.lr_rule=\"sqrt\""]
RAMP = ["batch.seconds=12", "batch.max_device_seconds=4", 'batch.schedule="ramp"', "batch.ramp.start_seconds=4",
        "batch.ramp.steps=6", "optim.lr_rule=\"sqrt\""]


def _decisions(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "batch_decision"]


def _stop_after(run_dir: Path, step: int) -> None:
    """The run as if stopped after ``step``: its later checkpoints removed (a resume starts there)."""
    for ckpt in (run_dir / "checkpoints").glob("step_*.pt"):
        if int(ckpt.stem.split("_")[1]) > step:
            ckpt.unlink()


def test_adaptive_decisions_are_the_same_on_one_and_two_processes_and_survive_a_resume(digits_manifests, tmp_path):
    train, valid = digits_manifests
    _run(_settings(train, valid, tmp_path, "one", 10, *ADAPTIVE))
    _run(_settings(train, valid, tmp_path, "two", 10, *ADAPTIVE), nproc=2)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    decided_one, decided_two = _decisions(tmp_path / "one"), _decisions(tmp_path / "two")
    assert [d["step"] for d in decided_one] == [2, 4, 6, 8]
    assert [d["batch_target_s"] for d in decided_one] == [d["batch_target_s"] for d in decided_two]
    assert len({d["batch_target_s"] for d in decided_one}) > 1, "no decision changed the batch: the test shows nothing"
    for a, b in zip(decided_one, decided_two):
        assert a["b_simple_s"] == pytest.approx(b["b_simple_s"], rel=1e-4)
    assert [one[k]["batch_fingerprint"] for k in one] == [two[k]["batch_fingerprint"] for k in two]
    assert [one[k]["batch_target_s"] for k in one] == [two[k]["batch_target_s"] for k in two]
    assert _max_rel_diff(_params(tmp_path / "two", 10), _params(tmp_path / "one", 10)) < 1e-5
    # The LR follows the batch each step was set to, through the sqrt rule.
    cfg = load_config(RECIPE, ["batch.seconds=4", "train.num_steps=10", 'optim.lr_rule="sqrt"'])
    for k, row in one.items():
        expected = peak_lr(cfg.optim, row["batch_target_s"]) * lr_scale(k - 1, cfg.schedule, 10)
        assert row["lr"] == pytest.approx(expected, rel=1e-9)

    # Stopped after the decision of step 6, resumed on two processes: the same decisions and weights.
    final = _params(tmp_path / "one", 10)
    _stop_after(tmp_path / "one", 6)
    result = _run(_settings(train, valid, tmp_path, "one", 10, *ADAPTIVE), nproc=2)
    assert "resumed from" in result.stdout and "at step 6" in result.stdout
    resumed = _metrics(tmp_path / "one")  # the last record of each step: the resumed run's from step 7
    assert [resumed[k]["batch_fingerprint"] for k in range(7, 11)] == [one[k]["batch_fingerprint"] for k in range(7, 11)]
    assert _decisions(tmp_path / "one")[-1]["batch_target_s"] == decided_one[-1]["batch_target_s"]
    assert _max_rel_diff(_params(tmp_path / "one", 10), final) < 1e-5


def test_a_resume_in_the_middle_of_a_ramp_equals_the_uninterrupted_run(digits_manifests, tmp_path):
    train, valid = digits_manifests
    _run(_settings(train, valid, tmp_path, "ramp", 8, *RAMP))
    whole = _metrics(tmp_path / "ramp")
    # 4 -> 12 s over 6 steps in 4 s units, halves rounded up: 1, 1, 2, 2, 2, 3, then 3 units.
    assert [whole[k]["batch_target_s"] for k in range(1, 9)] == [4, 4, 8, 8, 8, 12, 12, 12]
    final = _params(tmp_path / "ramp", 8)
    _stop_after(tmp_path / "ramp", 4)
    result = _run(_settings(train, valid, tmp_path, "ramp", 8, *RAMP))
    assert "at step 4" in result.stdout
    resumed = _metrics(tmp_path / "ramp")
    assert [resumed[k]["batch_fingerprint"] for k in range(5, 9)] == [whole[k]["batch_fingerprint"] for k in range(5, 9)]
    assert _max_rel_diff(_params(tmp_path / "ramp", 8), final) < 1e-6
