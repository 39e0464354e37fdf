"""A two-point sweep with every stage real: pretrain -> fine-tune -> decode -> score -> report.

The other sweep tests stub the stages to check the bookkeeping; this one runs the commands a user
runs, on two minutes of the built-in corpus, with a few steps per stage, so the plumbing between
them (checkpoints, label files, decode directories, score files, the report) is exercised for real.
"""

from __future__ import annotations

import pytest

from speechbs.report import PLOT_NAMES, collect, write_report
from speechbs.report.table import table_rows
from speechbs.sweep import SubprocessRunner, plan_sweep, run_sweep


@pytest.mark.slow
def test_two_point_sweep_end_to_end_with_real_stages(builtin_corpus_2min, tmp_path):
    pytest.importorskip("jiwer", reason="speechbs score needs jiwer")
    pytest.importorskip("matplotlib", reason="the report's plots need matplotlib")
    m = builtin_corpus_2min
    (tmp_path / "pre.toml").write_text(
        f'[data]\ntrain_manifest = "{m["train"]}"\nvalid_manifest = ""\nnum_workers = 0\n'
        '[model]\nsize = "tiny"\nmask_length = 1\n[batch]\nseconds = 16\nmax_device_seconds = 16\n'
        '[train]\nlog_every = 1\nvalid_every = 0\ncheckpoint_every = 100\ngrad_noise_every = 1\n'
        '[schedule]\nwarmup_steps = 1\n')
    (tmp_path / "ft.toml").write_text(
        f'[data]\ntrain_manifest = "{m["train"]}"\nvalid_manifest = "{m["valid"]}"\nlabels = "ltr"\n'
        'num_workers = 0\n[model]\nsize = "tiny"\n[batch]\nseconds = 16\nmax_device_seconds = 16\n'
        '[train]\nnum_steps = 3\nvalid_every = 3\ncheckpoint_every = 100\n'
        '[schedule]\nkind = "tri_stage"\nwarmup_steps = 1\nhold_steps = 1\nend_lr_scale = 0.05\n'
        '[finetune]\nfreeze_steps = 1\nbest_metric = "cer"\nmask_prob = 0.3\nmask_length = 5\n'
        'mask_channel_prob = 0.1\nmask_channel_length = 16\nlayerdrop = 0.0\n')
    recipe = tmp_path / "sweep.toml"
    recipe.write_text(f'[sweep]\nname = "real"\noutput_dir = "{tmp_path / "runs"}"\npretrain_recipe = "pre.toml"\n'
                      'budget = "steps"\nsteps = 3\n[grid]\nbatch_seconds = [16.0, 32.0]\n'
                      '[[finetune]]\nname = "train"\nrecipe = "ft.toml"\n'
                      f'[[test]]\nname = "test"\nmanifest = "{m["test"]}"\n')
    plan = plan_sweep(recipe)
    status = run_sweep(plan, SubprocessRunner(), say=lambda message: None)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((plan.root / "logs").rglob("*.log")))
    assert status.counts() == {"ran": 8}, logs

    collected = collect([plan.root])
    columns, values = table_rows(collected)
    table = {row[0]: dict(zip(columns, row)) for row in values}
    assert sorted(table) == ["bs16s", "bs32s"]
    for row in table.values():
        assert row["steps"][0] == 3 and row["hours_seen"][0] > 0 and row["train_loss"][0] > 0
        assert 0 <= row["CER train/test"][0] and 0 <= row["WER train/test"][0]  # scored, whatever the value
        assert row["grad_std"][0] > 0
    assert {p.name for p in write_report(collected, tmp_path / "report")} >= set(PLOT_NAMES)
    # Started again, it finds every stage finished and runs nothing.
    assert run_sweep(plan, SubprocessRunner(), say=lambda message: None).counts() == {"done": 8}
