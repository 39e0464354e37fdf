"""``speechbs advise`` end to end on real audio: a probe run, the table, advice.json, and its mistakes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_pretrain import EXACT, RECIPE, REPO, digits_manifests  # noqa: F401


def _advise(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speechbs", "advise", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                                                          "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_advise_writes_a_recommendation_from_a_probe_run_and_reuses_the_probe(digits_manifests, tmp_path):
    train, valid = digits_manifests
    sets = [f"data.train_manifest={train}", 'data.valid_manifest=""', "batch.seconds=4",
            "batch.max_device_seconds=4", *EXACT]
    args = [str(RECIPE), "--gpus", "2", "--device-memory-gb", "1", "--budget-hours", "0.5", "--probe-steps", "12",
            "--out", str(tmp_path / "advice"), *[a for s in sets for a in ("--set", s)]]
    result = _advise(*args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    advice = json.loads((tmp_path / "advice" / "advice.json").read_text())
    assert (tmp_path / "advice" / "advice.png").is_file() and (tmp_path / "advice" / "probe" / "metrics.jsonl").is_file()
    probe, trade = advice["probe"], advice["tradeoff"]
    assert probe["steps"] == 12 and probe["num_measurements"] == 6  # every step of the second half measured
    assert trade["b_noise_s"] > 0 and probe["b_noise_interval_s"][0] <= trade["b_noise_s"] <= probe["b_noise_interval_s"][1]
    # The table is the trade-off through the probe's point: 12 steps at 4 s.
    at_probe = next(r for r in advice["table"] if r["batch_s"] == 4.0)
    assert at_probe["steps"] == pytest.approx(12.0)
    assert advice["recommended"]["batch_s"] in [r["batch_s"] for r in advice["table"] if "plan_error" not in r]
    assert 0 < advice["memory"]["max_device_seconds"] and "steps_in_budget" in at_probe
    assert "recommended: batch.seconds =" in result.stdout and "extrapolation" in result.stdout
    # Again: the probe is complete and is read back, not run again.
    again = _advise(*args)
    assert again.returncode == 0 and "already complete" in again.stdout
    assert json.loads((tmp_path / "advice" / "advice.json").read_text())["tradeoff"] == trade


@pytest.mark.parametrize("args, words", [
    (["--gpus", "0", "--device-memory-gb", "16"], "--gpus 0"),
    (["--gpus", "2", "--device-memory-gb", "-1"], "--device-memory-gb -1"),
    (["--gpus", "2", "--device-memory-gb", "16", "--probe-steps", "3"], "--probe-steps 3"),
    (["--gpus", "2", "--device-memory-gb", "16", "--budget-hours", "0"], "--budget-hours 0"),
])
def test_advise_mistakes_are_one_line(args, words, tmp_path):
    result = _advise(str(RECIPE), *args, "--out", str(tmp_path / "a"))
    assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()
