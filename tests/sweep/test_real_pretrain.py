"""A two-point sweep whose pretraining stage is the real `speechbs pretrain` (the rest stubbed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from speechbs.data.manifest import Manifest, write_manifest
from speechbs.sweep import plan_sweep, run_sweep
from tests.sweep.conftest import StubRunner


@pytest.mark.slow
def test_real_pretraining_stage_is_resumed_not_redone(tmp_path, calls):
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i in range(12):
        names.append(f"u{i}.wav")
        sf.write(audio / names[-1], 0.1 * rng.standard_normal(16000 * (1 + i % 3)).astype(np.float32), 16000)
    write_manifest(Manifest(audio, names, np.array([16000 * (1 + i % 3) for i in range(12)])), tmp_path / "train.tsv")
    (tmp_path / "pre.toml").write_text(
        f'[data]\ntrain_manifest = "{tmp_path / "train.tsv"}"\nvalid_manifest = ""\nnum_workers = 0\n'
        '[model]\nsize = "tiny"\n[batch]\nseconds = 4\nmax_device_seconds = 4\n'
        '[train]\nlog_every = 1\nvalid_every = 0\ncheckpoint_every = 100\n[schedule]\nwarmup_steps = 1\n')
    (tmp_path / "ft.toml").write_text('[model]\nsize = "tiny"\n')
    recipe = tmp_path / "sweep.toml"
    recipe.write_text(f'[sweep]\nname = "real"\noutput_dir = "{tmp_path / "runs"}"\npretrain_recipe = "pre.toml"\n'
                      'budget = "steps"\nsteps = 2\n[grid]\nbatch_seconds = [3.0, 6.0]\n'
                      '[[finetune]]\nname = "train"\nrecipe = "ft.toml"\n[[test]]\nname = "test"\nmanifest = "t.tsv"\n')
    plan = plan_sweep(recipe)
    status = run_sweep(plan, StubRunner(real=("pretrain",)), say=lambda m: None)
    assert status.counts() == {"ran": 8}, (plan.root / "logs").rglob("*.log")
    for point, batch_s in (("bs3s", 3.0), ("bs6s", 6.0)):
        run = plan.root / "points" / point / "pretrain"
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if r.get("kind") == "train"] == [1, 2]
        assert "batch.seconds=" + repr(batch_s) in (run / "env.json").read_text()
    again = run_sweep(plan, StubRunner(real=("pretrain",)), say=lambda m: None)
    assert again.counts() == {"done": 8}
