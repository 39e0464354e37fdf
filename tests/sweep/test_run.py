"""Running a miniature sweep end to end with stub stages, resuming it, milestones, launch scripts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from speechbs.cli import main as cli_main
from speechbs.sweep import plan_sweep, run_sweep, write_launch_scripts
from tests.sweep.conftest import StubRunner, write_sweep


def _calls(path: Path) -> list[str]:
    return [line.split()[0] + " " + "/".join(Path(line.split()[1]).parts[-3:]) for line in path.read_text().splitlines()]


def _statuses(root: Path) -> dict[str, str]:
    data = json.loads((root / "sweep.json").read_text())
    return {f"{p['name']}:{s['key']}": s["status"] for p in data["points"] for s in p["stages"]}


def test_two_point_sweep_runs_every_stage_once(tmp_path, calls):
    plan = plan_sweep(write_sweep(tmp_path))
    status = run_sweep(plan, StubRunner(), say=lambda m: None)
    assert status.counts() == {"ran": 8}
    assert len(calls.read_text().splitlines()) == 8
    for point in ("bs15s", "bs60s"):
        score = json.loads((plan.root / "points" / point / "decode" / "train" / "test" / "score.json").read_text())
        assert score["wer"] > 0
        decode = json.loads((plan.root / "points" / point / "decode" / "train" / "test" / "decode.json").read_text())
        # decoding used the fine-tuned run's best.pt, and fine-tuning started from this point's pretraining
        assert decode["checkpoint"].endswith(f"{point}/finetune/train/checkpoints/best.pt")
        assert decode["init"].endswith(f"{point}/pretrain")
    assert set(_statuses(plan.root).values()) == {"ran"}
    # the hours budget: 0.5 h at 15 s is 120 steps, at 60 s 30 steps
    index = json.loads((plan.root / "points" / "bs15s" / "pretrain" / "checkpoints" / "index.json").read_text())
    assert index["latest"] == "step_00000120.pt"


def test_killed_sweep_resumes_without_redoing_finished_stages(tmp_path, calls, monkeypatch):
    plan = plan_sweep(write_sweep(tmp_path))
    # First run "dies" at fine-tuning: both pretrainings finish, nothing after them does.
    monkeypatch.setenv("STUB_FAIL", "finetune")
    first = run_sweep(plan, StubRunner(), say=lambda m: None)
    assert first.counts() == {"ran": 2, "failed": 2, "blocked": 4}
    statuses = _statuses(plan.root)
    assert statuses["bs15s:pretrain"] == "ran" and statuses["bs15s:finetune/train"] == "failed"
    assert statuses["bs15s:decode/train/test"] == "blocked"
    pretrain_files = sorted((plan.root / "points").glob("*/pretrain/**/*"))
    mtimes = {p: p.stat().st_mtime_ns for p in pretrain_files}
    assert _calls(calls) == ["pretrain points/bs15s/pretrain", "pretrain points/bs60s/pretrain"]

    monkeypatch.delenv("STUB_FAIL")
    calls.write_text("")
    second = run_sweep(plan, StubRunner(), say=lambda m: None)
    assert second.counts() == {"done": 2, "ran": 6}
    assert not any(c.startswith("pretrain") for c in _calls(calls))
    assert {p: p.stat().st_mtime_ns for p in pretrain_files} == mtimes  # untouched

    calls.write_text("")
    third = run_sweep(plan, StubRunner(), say=lambda m: None)
    assert third.counts() == {"done": 8} and calls.read_text() == ""


def test_half_finished_pretraining_is_not_done(tmp_path, calls):
    plan = plan_sweep(write_sweep(tmp_path, grid="batch_seconds = [60.0]"))
    run_sweep(plan, StubRunner(), say=lambda m: None)
    index_path = plan.root / "points" / "bs60s" / "pretrain" / "checkpoints" / "index.json"
    index_path.write_text(json.dumps({"latest": None, "milestones": []}))  # as if killed before the last save
    (index_path.parent / "step_00000030.pt").unlink()
    calls.write_text("")
    run_sweep(plan, StubRunner(), say=lambda m: None)
    assert _calls(calls) == ["pretrain points/bs60s/pretrain"]


def test_milestone_checkpoints_are_fine_tuned_and_scored(tmp_path, calls):
    sweep = 'budget = "steps_with_milestones"\nsteps = 40\nmilestone_hours = [0.25, 0.5]\nfinetune_milestones = true'
    plan = plan_sweep(write_sweep(tmp_path, grid="batch_seconds = [60.0]", sweep=sweep))
    status = run_sweep(plan, StubRunner(), say=lambda m: None)
    assert status.counts() == {"ran": 1 + 3 * 3}
    decode = plan.root / "points" / "bs60s" / "decode"
    assert sorted(p.name for p in decode.iterdir()) == ["train", "train@0.25h", "train@0.5h"]
    init = json.loads((decode / "train@0.25h" / "test" / "decode.json").read_text())["init"]
    assert init.endswith("pretrain/checkpoints/step_00000015.pt")  # first step with >= 0.25 h at 60 s


def test_unavailable_commands_are_reported_not_run(tmp_path, calls):
    plan = plan_sweep(write_sweep(tmp_path, grid="batch_seconds = [60.0]"))
    status = run_sweep(plan, StubRunner(unavailable=("finetune",)), say=lambda m: None)
    assert status.counts() == {"ran": 1, "unavailable": 1, "blocked": 2}


def test_launch_scripts_same_batches_for_any_gpu_count(tmp_path, calls):
    plan = plan_sweep(write_sweep(tmp_path))
    one = [p.read_text() for p in write_launch_scripts(plan, "torchrun", 1)]
    four = [p.read_text() for p in write_launch_scripts(plan, "slurm", 4)]
    assert len(one) == 2 and len(four) == 3
    for a, b in zip(one, four):
        assert a.replace("NPROC:-1", "NPROC:-4") == b  # only the default process count differs
    assert "--nproc-per-node \"$NPROC\"" in one[0] and "batch.seconds=15.0" in one[0]
    # torchrun passes SIGUSR1 (SLURM's time-limit signal) on to the ranks only when told to
    # (tests/test_preemption.py runs the shipped templates that pass the same option).
    from speechbs.train.preempt import TORCHRUN_SIGNALS

    assert f"--signals-to-handle {TORCHRUN_SIGNALS} -m speechbs" in one[0]
    assert "TORCHELASTIC_SIGNALS_TO_HANDLE" not in four[2]  # torchrun overwrites it from its option
    sbatch = four[2]
    assert "#SBATCH --array=0-1" in sbatch and "scontrol requeue" in sbatch and "EX_TEMPFAIL=75" in sbatch
    for path in (plan.root / "launch").rglob("*.s*"):
        subprocess.run(["bash", "-n", str(path)], check=True)
    assert not (plan.root / "points").exists()  # writing scripts runs nothing
    assert (plan.root / "logs").is_dir()  # the array's --output folder


def test_cli_dry_run_writes_nothing(tmp_path, calls, capsys):
    recipe = write_sweep(tmp_path)
    assert cli_main(["sweep", str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "bs15s" in out and "8 pending" in out
    assert not (tmp_path / "runs").exists()
    assert cli_main(["sweep", str(recipe), "--point", "bs1s"]) == 2
    assert "not in this sweep" in capsys.readouterr().err


PROBE = ('[[probe]]\nname = "speaker"\nlabel = "spk"\ntrain_manifest = "train.tsv"\n'
         'test_manifest = "test.tsv"\nvalid_manifest = "dev.tsv"\n')


def test_a_probe_stage_runs_per_point_and_resumes(tmp_path, calls, monkeypatch):
    plan = plan_sweep(write_sweep(tmp_path, extra=PROBE))
    monkeypatch.setenv("STUB_FAIL", "probe")
    first = run_sweep(plan, StubRunner(), say=lambda m: None)
    assert first.counts() == {"ran": 8, "failed": 2}
    monkeypatch.delenv("STUB_FAIL")
    calls.write_text("")
    second = run_sweep(plan, StubRunner(), say=lambda m: None)
    assert second.counts() == {"done": 8, "ran": 2}
    assert sorted(_calls(calls)) == ["probe bs15s/probe/speaker", "probe bs60s/probe/speaker"]
    stage = next(s for s in json.loads((plan.root / "sweep.json").read_text())["points"][0]["stages"]
                 if s["kind"] == "probe")
    argv = stage["argv"]
    assert argv[:2] == ["probe", str(plan.root / "points" / "bs15s" / "pretrain")]
    assert argv[argv.index("--valid") + 1] == "dev.tsv" and argv[argv.index("--label") + 1] == "spk"
    assert json.loads((plan.root / "points" / "bs60s" / "probe" / "speaker" / "probe.json").read_text())["accuracy"] > 0.5
    calls.write_text("")
    assert run_sweep(plan, StubRunner(), say=lambda m: None).counts() == {"done": 10} and calls.read_text() == ""


def test_the_report_gains_a_column_and_a_plot_per_probe(tmp_path, calls):
    from speechbs.report.collect import collect
    from speechbs.report.plots import write_plots
    from speechbs.report.table import markdown, table_rows

    plan = plan_sweep(write_sweep(tmp_path, extra=PROBE))
    run_sweep(plan, StubRunner(), say=lambda m: None)
    collected = collect([plan.root])
    columns, values = table_rows(collected)
    assert columns[-1] == "probe speaker acc %"
    assert [line[-1][0] for line in values] == pytest.approx([51.5, 56.0])  # the stub's 0.5 + batch / 1000
    assert "probe speaker acc %" in markdown(collected)
    pytest.importorskip("matplotlib")
    names = {p.name for p in write_plots(collected, tmp_path / "report")}
    assert "probe_vs_batch.png" in names
