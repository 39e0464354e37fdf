"""speechbs report: table values, CSV and the plots from run directories written here."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from speechbs.cli import main as cli_main
from speechbs.report import PLOT_NAMES, collect, markdown, to_csv


def write_point(root: Path, name: str, batch_s: float, *, noise: bool = True, wer: float | None = None,
                milestone_wer: float | None = None, seed: int = 1, replay: bool = False) -> Path:
    run = root / "points" / name / "pretrain"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(f"[run]\nname = \"pretrain\"\nseed = {seed}\n[batch]\nseconds = {batch_s}\n"
                                     f"[optim]\nlr = 5e-4\nlr_rule = \"sqrt\"\n"
                                     f"reference_seconds = 6000.0\n[train]\nnum_steps = 20\n")
    rows = []
    for step in range(1, 21):
        row = {"step": step, "kind": "train", "loss": float(step), "hours_seen": step * batch_s / 3600}
        if noise and step % 5 == 0:
            row.update(noise_window=step / 5, noise_b_simple_s=batch_s * step, noise_grad_std_at_batch=step / batch_s)
        rows.append(row)
        if replay and step == 12:  # a resume from step 8 logs steps 9-12 again; the later record counts
            rows += [dict(r, loss=-1.0) for r in rows[8:12]]
    rows.append({"step": 20, "kind": "valid", "loss": 3.25})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 21, "lo')
    for split, value in (("train", wer), ("train@0.1h", milestone_wer)):
        if value is not None:
            out = root / "points" / name / "decode" / split / "test"
            out.mkdir(parents=True)
            (out / "score.json").write_text(json.dumps({"wer": value, "cer": value / 2}))
    return run


@pytest.fixture
def sweep_root(tmp_path) -> Path:
    root = tmp_path / "sweep"
    write_point(root, "bs600s", 600.0, wer=40.0, milestone_wer=50.0)
    write_point(root, "bs87.5s", 87.5, noise=False, wer=55.5)
    write_point(root, "bs6000s", 6000.0)  # pretrained, not yet fine-tuned
    return root


def test_table_values_come_from_the_run_directories(sweep_root):
    collected = collect([sweep_root], last_rows=10)
    rows = {r.label: r for r in collected.rows}
    assert [r.label for r in collected.rows] == ["bs87.5s", "bs600s", "bs6000s"]  # sorted by batch
    row = rows["bs600s"]
    assert row.batch_s == 600.0 and row.steps == 20 and row.hours_seen == pytest.approx(20 * 600 / 3600)
    assert row.train_loss == pytest.approx(sum(range(11, 21)) / 10)  # mean of the last 10 train rows
    assert row.valid_loss == 3.25
    assert row.peak_lr == pytest.approx(5e-4 * (600 / 6000) ** 0.5)
    assert rows["bs87.5s"].grad_noise_s is None and rows["bs87.5s"].grad_std is None
    assert any("unreadable line" in n for n in collected.notes)
    assert any("bs6000s" in n and "not fine-tuned" in n for n in collected.notes)

    table = markdown(collected)
    main_table = table.split("At equal hours")[0]
    lines = {line.split("|")[1].strip(): line for line in main_table.splitlines() if line.startswith("| bs")}
    assert "| 40.0 | 20.0 |" in lines["bs600s"]
    assert lines["bs87.5s"].split("|")[11].strip() == "-"  # no noise measured
    assert lines["bs6000s"].rstrip().endswith("| - | - |")  # no scores
    assert "At equal hours seen" in table and "| 0.1 | bs600s | 1 | train | test | 50.0 | 25.0 |" in table


def test_a_mark_kept_at_the_last_step_lists_the_final_score_at_that_mark(tmp_path):
    """The sweep fine-tunes that checkpoint once (as the final); the equal-hours table still lists it."""

    root = tmp_path / "sweep"
    for seed, wer in ((1, 40.0), (2, 60.0)):
        run = write_point(root, f"bs600s-seed{seed}", 600.0, wer=wer, seed=seed)
        with open(run / "config.toml", "a") as f:
            f.write("milestone_hours = [3.3]\n")
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "step_00000020.pt").write_bytes(b"")
        (run / "checkpoints" / "index.json").write_text(json.dumps({"latest": "step_00000020.pt",
                                                                     "milestones": ["step_00000020.pt"]}))
    collected = collect([root])
    assert "| 3.3 | bs600s | 2 | train | test | 50.0 ± 14.1 | 25.0 ± 7.1 |" in markdown(collected)
    copies = [s for r in collected.rows for s in r.scores if s.milestone_h == 3.3]
    assert len(copies) == 2 and all(s.from_final for s in copies)  # drawn once on the vs-hours plot


def test_online_noise_is_compared_at_matched_hours_seen(sweep_root):
    """bs600s reaches 3.33 h, bs6000s 33.3 h: both are read at their measurement nearest 3.33 h."""
    collected = collect([sweep_root])
    rows = {r.label: r for r in collected.rows}
    assert collected.matched_hours == pytest.approx(20 * 600 / 3600)
    assert rows["bs600s"].grad_noise_s == 600 * 20 and rows["bs600s"].noise_hours == pytest.approx(3.333, rel=1e-3)
    # bs6000s measured at 8.3, 16.7, 25 and 33.3 h: the nearest to 3.33 h is its first, at step 5.
    assert rows["bs6000s"].grad_noise_s == 6000 * 5 and rows["bs6000s"].grad_std == pytest.approx(5 / 6000)
    assert any("compared at 3.33 h seen" in n for n in collected.notes)


def test_seeds_become_mean_and_sd(tmp_path):
    root = tmp_path / "sweep"
    write_point(root, "bs60s-seed1", 60.0, wer=40.0, seed=1)
    write_point(root, "bs60s-seed2", 60.0, wer=44.0, seed=2)
    write_point(root, "bs120s-seed1", 120.0, wer=30.0, seed=1)
    collected = collect([root])
    assert [(g.label, len(g.rows)) for g in collected.groups] == [("bs60s", 2), ("bs120s", 1)]
    table = markdown(collected)
    line = next(line for line in table.splitlines() if line.startswith("| bs60s "))
    assert "| 2 |" in line and "42.0 ± 2.8" in line and "21.0 ± 1.4" in line
    assert "mean ± sample sd" in table
    by_run = {r["run"]: r for r in csv.DictReader(io.StringIO(to_csv(collected)))}
    assert float(by_run["bs60s"]["WER train/test"]) == 42.0
    assert float(by_run["bs60s"]["WER train/test_sd"]) == pytest.approx(2.828, rel=1e-3)
    assert by_run["bs120s"]["WER train/test_sd"] == ""


def test_replayed_steps_after_a_resume_count_once(tmp_path):
    root = tmp_path / "sweep"
    write_point(root, "bs60s", 60.0, replay=True)
    row = collect([root]).rows[0]
    assert [step for step, _, _ in row.curve] == list(range(1, 21))
    assert all(loss == -1.0 for step, _, loss in row.curve if 9 <= step <= 12)  # the later records


def test_csv_has_raw_numbers_and_empty_cells(sweep_root):
    reader = list(csv.DictReader(io.StringIO(to_csv(collect([sweep_root])))))
    by_run = {r["run"]: r for r in reader}
    assert float(by_run["bs600s"]["WER train/test"]) == 40.0
    assert float(by_run["bs600s"]["batch_min"]) == 10.0
    assert by_run["bs6000s"]["WER train/test"] == "" and by_run["bs87.5s"]["grad_noise_s"] == ""


def test_fixed_state_noise_json_is_read_and_plotted(sweep_root, tmp_path):
    record = {"model": "wav2vec2", "step": 20, "hours_seen": 3.3, "repeats": 10, "batches": [
        {"batch_s": b, "real_s_mean": b, "grad_std": 0.1 * (15 / b) ** 0.5, "grad_std_ci": [0.05, 0.2],
         "b_simple_s": 40.0, "b_simple_s_ci": [20.0, None], "grad_rms": 0.2, "grad_rms_ci": [0.1, 0.3]}
        for b in (15.0, 30.0, 60.0)]}
    noise_dir = sweep_root / "points" / "bs600s" / "noise" / "step20"
    noise_dir.mkdir(parents=True)
    (noise_dir / "noise.json").write_text(json.dumps(record))
    collected = collect([sweep_root])
    assert next(r for r in collected.rows if r.label == "bs600s").fixed_noise[0]["step"] == 20
    out = tmp_path / "report"
    assert cli_main(["report", str(sweep_root), "--out", str(out)]) == 0
    assert (out / "grad_noise_fixed_state.png").stat().st_size > 20_000


def test_cli_writes_table_csv_and_the_plots(sweep_root, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli_main(["report", str(sweep_root), "--out", str(out)]) == 0
    for name in ("table.md", "table.csv", *PLOT_NAMES):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bs600s" in capsys.readouterr().out


def test_missing_pieces_never_crash(tmp_path, capsys):
    empty_run = tmp_path / "runs" / "r1"
    empty_run.mkdir(parents=True)
    (empty_run / "config.toml").write_text("not toml [")
    out = tmp_path / "report"
    assert cli_main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert all((out / name).is_file() for name in PLOT_NAMES)
    text = (out / "table.md").read_text()
    assert "| r1 | 1 | - |" in text and "config.toml is missing or unreadable" in text
    assert cli_main(["report", str(tmp_path / "nope")]) == 2


def test_rows_of_a_branch_abandoned_by_a_restart_do_not_count(tmp_path):
    """A restart from step 8's checkpoint that has reached step 15: the old branch's steps 16-20 are gone."""
    run = write_point(tmp_path / "sweep", "bs60s", 60.0)
    with open(run / "metrics.jsonl", "a") as f:  # after the cut last line, as a relaunch appends
        f.write("\n" + json.dumps({"step": 8, "kind": "resume", "restart": True, "changes": {}}) + "\n")
        f.write("".join(json.dumps({"step": k, "kind": "train", "loss": -1.0, "hours_seen": 0.0}) + "\n"
                        for k in range(9, 16)))
    row = collect([tmp_path / "sweep"]).rows[0]
    assert [step for step, _, _ in row.curve] == list(range(1, 16)) and row.steps == 15
    assert all(loss == -1.0 for step, _, loss in row.curve if step > 8)
    assert row.valid_loss is None  # the valid row of step 20 belonged to the abandoned branch


def test_a_schedule_column_says_how_each_batch_moved(tmp_path):
    root = tmp_path / "sweep"
    write_point(root, "bs60s-constant", 60.0, wer=40.0)
    ramp = write_point(root, "bs60s-ramp", 60.0, wer=38.0)
    adaptive = write_point(root, "bs60s-adaptive", 60.0, wer=39.0)
    config = ramp / "config.toml"
    config.write_text(config.read_text().replace("seconds = 60.0\n", 'seconds = 60.0\nschedule = "ramp"\n'
                                                 "[batch.ramp]\nstart_seconds = 15.0\nsteps = 50\n"))
    config = adaptive / "config.toml"
    config.write_text(config.read_text().replace("seconds = 60.0\n", 'seconds = 60.0\nschedule = "adaptive"\n'))
    rows = (adaptive / "metrics.jsonl").read_text().splitlines()
    targets = [60.0] * 10 + [15.0] * 5 + [45.0] * 5
    patched = [json.dumps({**json.loads(line), "batch_target_s": targets[i]}) for i, line in enumerate(rows[:20])]
    (adaptive / "metrics.jsonl").write_text("\n".join(patched + rows[20:]) + "\n")
    table = markdown(collect([root]))
    assert "| batch schedule |" in table.splitlines()[0]
    lines = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| bs60s")}
    assert "| constant |" in lines["bs60s-constant"] and "| ramp 15->60 s / 50 steps |" in lines["bs60s-ramp"]
    assert "| adaptive 60->45 s |" in lines["bs60s-adaptive"]
    by_run = {r["run"]: r for r in csv.DictReader(io.StringIO(to_csv(collect([root]))))}
    assert by_run["bs60s-ramp"]["schedule"] == "ramp 15->60 s / 50 steps" and by_run["bs60s-ramp"]["batch_s"] == "60"
    # Without a moving batch there is no schedule column.
    write_point(tmp_path / "constant", "bs60s", 60.0, wer=40.0)
    assert "batch schedule" not in markdown(collect([tmp_path / "constant"])).splitlines()[0]


def test_seeds_that_keep_other_checkpoints_are_one_group(tmp_path):
    """A [[noise]] stage keeps extra milestones in one seed's run: still the same experiment."""
    root = tmp_path / "sweep"
    write_point(root, "bs60s-seed1", 60.0, wer=40.0, seed=1)
    other = write_point(root, "bs60s-seed2", 60.0, wer=44.0, seed=2)
    config = other / "config.toml"
    config.write_text(config.read_text().replace("num_steps = 20\n", "num_steps = 20\nmilestone_steps = [5]\n"))
    assert [(g.label, len(g.rows)) for g in collect([root]).groups] == [("bs60s", 2)]
    config.write_text(config.read_text().replace("lr = 5e-4", "lr = 1e-3"))  # another experiment
    assert len(collect([root]).groups) == 2
