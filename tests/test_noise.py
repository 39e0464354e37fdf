"""`speechbs noise`: the fixed-state instrument on a real checkpoint, in one process and under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from speechbs import cli

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "wav2vec2" / "tiny_builtin.toml"
# No dropout: the gradients of 1 and 2 processes are then equal to rounding (the diversity term is
# taken over the global batch, so it stays on).
EXACT = ["model.dropout=0", "model.attention_dropout=0", "model.dropout_input=0", "model.dropout_features=0",
         "data.num_workers=0"]
CROP = ["batch.crop=max", "batch.crop_max_seconds=4", "batch.max_device_seconds=8"]


@pytest.fixture(scope="module")
def checkpoint(builtin_corpus_2min, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("noise_runs")
    sets = [f"data.train_manifest={builtin_corpus_2min['train']}", "data.valid_manifest=", f"run.output_dir={out}",
            "run.name=w2v", "train.num_steps=3", "batch.seconds=10", "train.valid_every=0", *CROP, *EXACT]
    assert cli.main(["pretrain", str(RECIPE), *[a for s in sets for a in ("--set", s)]]) == 0
    return out / "w2v"


def _noise_args(checkpoint: Path, manifest: Path, out: Path) -> list[str]:
    sets = [a for s in CROP + EXACT for a in ("--set", s)]
    return [str(checkpoint), "--manifest", str(manifest), "--batch-seconds", "4,8,16", "--repeats", "3",
            "--bootstrap", "200", "--out", str(out), *sets]


@pytest.mark.slow
def test_noise_writes_strict_json_and_a_plot(checkpoint, builtin_corpus_2min, tmp_path):
    out = tmp_path / "noise"
    assert cli.main(["noise", *_noise_args(checkpoint, builtin_corpus_2min["train"], out)]) == 0
    text = (out / "noise.json").read_text()
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert record["step"] == 3 and record["model"] == "wav2vec2" and record["repeats"] == 3
    assert [b["batch_s"] for b in record["batches"]] == [4.0, 8.0, 16.0]
    for entry in record["batches"]:
        for key in ("grad_std", "tr_sigma_1s", "g_sq", "mu_sq", "b_simple_s", "grad_rms"):
            assert key in entry and f"{key}_ci" in entry
        assert entry["grad_std"] > 0 and entry["tr_sigma_1s"] > 0 and entry["num_skipped"] == 0
        assert abs(entry["real_s_mean"] - entry["batch_s"]) < 4  # within one (cropped) utterance
    # tr_sigma_1s is a property of the state, not of the batch: the same within its noise at every size.
    trs = [e["tr_sigma_1s"] for e in record["batches"]]
    assert max(trs) / min(trs) < 4
    assert 0.3 < record["std_per_doubling"] < 1.2 and len(record["std_per_doubling_ci"]) == 2
    assert (out / "noise.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.dist
def test_noise_under_torchrun_equals_one_process(checkpoint, builtin_corpus_2min, tmp_path):
    """The same global batches split over 2 ranks give the same gradients, so the same numbers."""
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"noise{nproc}"
        args = _noise_args(checkpoint, builtin_corpus_2min["train"], out)
        launcher = ([sys.executable, "-m", "speechbs"] if nproc == 1 else
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                     "-m", "speechbs"])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        done = subprocess.run([*launcher, "noise", *args], capture_output=True, text=True, timeout=300, env=env,
                              cwd=REPO)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        results[nproc] = json.loads((out / "noise.json").read_text())
    assert results[2]["world_size"] == 2
    for one, two in zip(results[1]["batches"], results[2]["batches"]):
        for key in ("grad_std", "tr_sigma_1s", "g_sq", "mu_sq", "real_s_mean"):
            assert two[key] == pytest.approx(one[key], rel=1e-4), key


@pytest.mark.parametrize("args, message", [
    (["--batch-seconds", "10,x"], "--batch-seconds '10,x'"),
    (["--batch-seconds", "10,-5"], "positive number"),
    (["--repeats", "1"], "--repeats 1"),
])
def test_noise_refuses_bad_arguments_in_one_line(checkpoint, builtin_corpus_2min, tmp_path, capsys, args, message):
    base = ["noise", str(checkpoint), "--manifest", str(builtin_corpus_2min["train"]), "--out", str(tmp_path / "o")]
    assert cli.main([*base, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_noise_needs_independent_batches(checkpoint, builtin_corpus_2min, tmp_path, capsys):
    sets = [a for s in CROP for a in ("--set", s)]
    assert cli.main(["noise", str(checkpoint), "--manifest", str(builtin_corpus_2min["train"]), "--out",
                     str(tmp_path / "o"), "--batch-seconds", "60", "--repeats", "10", *sets]) == 2
    assert "disjoint batches" in capsys.readouterr().err
