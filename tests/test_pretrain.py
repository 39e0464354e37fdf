"""End to end: `speechbs pretrain` on real audio, alone and under torchrun (gloo).

These are the batch contract's promises as a user sees them: the same global
batches and the same parameters on 1 or 2 processes, a resume with another
number of processes that ends where an uninterrupted run ends, and a
preempted run that leaves a checkpoint and asks to be requeued.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbs.data.manifest import Manifest, write_manifest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "wav2vec2" / "tiny_builtin.toml"
WAVLM_RECIPE = REPO / "recipes" / "wavlm" / "tiny_builtin.toml"

# Deterministic, comparable runs: no dropout drawn from the global RNG (it is drawn per rank). The
# recipe's codebook diversity term stays on (diversity_weight 0.1, taken over the whole global batch),
# and so does the quantizer's input dropout, which is keyed by utterance seed.
EXACT = ["model.dropout=0", "model.attention_dropout=0", "model.dropout_input=0", "data.num_workers=0"]


@pytest.fixture(scope="module")
def digits_manifests(tmp_path_factory) -> tuple[Path, Path]:
    """160 train + 40 valid spoken digits (real 8 kHz audio of 0.2-1.5 s, resampled on load)."""
    from conftest import shared_dataset

    root = shared_dataset("free_spoken_digit") / "recordings"
    files = sorted(p.name for p in root.glob("*.wav"))[::15][:200]
    infos = [sf.info(str(root / f)) for f in files]
    out = tmp_path_factory.mktemp("manifests")
    for name, part in (("train", slice(0, 160)), ("valid", slice(160, 200))):
        write_manifest(Manifest(root, files[part], [i.frames for i in infos[part]],
                                [i.samplerate for i in infos[part]]), out / f"{name}.tsv")
    return out / "train.tsv", out / "valid.tsv"


def _settings(train: Path, valid: Path, out: Path, name: str, steps: int, *extra: str) -> list[str]:
    sets = [f"data.train_manifest={train}", f"data.valid_manifest={valid}", f"run.output_dir={out}",
            f"run.name={name}", f"train.num_steps={steps}", "batch.seconds=12", "batch.max_device_seconds=4",
            "train.valid_every=0", "train.checkpoint_every=2", "train.keep_last=5", *EXACT, *extra]
    return [arg for s in sets for arg in ("--set", s)]


def _run(args: list[str], nproc: int = 1, timeout: float = 240, recipe: Path = RECIPE,
         **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if nproc == 1:
        cmd = [sys.executable, "-m", "speechbs", "pretrain", str(recipe), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "speechbs", "pretrain", str(recipe), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, **popen)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(run_dir: Path) -> dict[int, dict]:
    """Last record per step (a resumed run may log a step twice)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if r["kind"] == "train"}


def _params(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / f"step_{step:08d}.pt", weights_only=True)
    return ckpt["model"]


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest difference relative to each tensor's scale, floored at 1e-3.

    Attention key biases are held to an absolute bound instead: their true gradient is zero
    (softmax ignores a constant added to every key), so they hold ~1e-8 of rounding noise that
    Adam amplifies, and a relative measure of that noise says nothing about the training.
    """
    keys = [k for k in a if not k.endswith("k_proj.bias")]
    assert keys and all((a[k] - b[k]).abs().max() < 1e-6 for k in a if k not in keys)
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-3)).item() for k in keys)


@pytest.mark.dist
@pytest.mark.slow
def test_two_processes_equal_one_and_resume_with_fewer(digits_manifests, tmp_path):
    train, valid = digits_manifests
    # A smaller per-device cap on one process: other micro-batches (5 per step, against 2 x 2), which a
    # term pooled per micro-batch (the diversity term with diversity_scope micro_batch) would show.
    _run(_settings(train, valid, tmp_path, "one", 4, "batch.max_device_seconds=3"))
    _run(_settings(train, valid, tmp_path, "two", 4), nproc=2)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    # The same global batches, step by step, whatever the number of processes ...
    assert [one[k]["batch_fingerprint"] for k in range(1, 5)] == [two[k]["batch_fingerprint"] for k in range(1, 5)]
    assert [one[k]["batch_s"] for k in range(1, 5)] == [two[k]["batch_s"] for k in range(1, 5)]
    # ... split differently (more micro-batches in all on one process) ...
    assert all(one[k]["num_micro_batches"] > 2 * two[k]["num_micro_batches"] for k in one)
    # ... and the same training, up to float summation order.
    assert _max_rel_diff(_params(tmp_path / "two", 4), _params(tmp_path / "one", 4)) < 1e-5
    for k in range(1, 5):
        assert one[k]["loss"] == pytest.approx(two[k]["loss"], rel=1e-5)
        # The diversity term and the perplexities are the global batch's, so they agree too.
        for name in ("diversity", "perplexity", "code_perplexity"):
            assert one[k][name] == pytest.approx(two[k][name], rel=1e-5), name

    # Interrupted after step 2 on 2 processes, resumed on 1: ends where the uninterrupted run ends.
    # (The run is stopped by removing what came after step 2; stopping it early by asking for fewer
    # steps would change the LR schedule, which is a function of the total number of steps.)
    _run(_settings(train, valid, tmp_path, "resumed", 4), nproc=2)
    for later in (3, 4):
        (tmp_path / "resumed" / "checkpoints" / f"step_{later:08d}.pt").unlink(missing_ok=True)
    result = _run(_settings(train, valid, tmp_path, "resumed", 4))
    assert "resumed from" in result.stdout and "at step 2" in result.stdout
    resumed = _metrics(tmp_path / "resumed")
    assert [resumed[k]["batch_fingerprint"] for k in (3, 4)] == [two[k]["batch_fingerprint"] for k in (3, 4)]
    assert _max_rel_diff(_params(tmp_path / "resumed", 4), _params(tmp_path / "two", 4)) < 1e-5


def _write_random_labels(manifest_path: Path, label_dir: Path) -> None:
    """50 Hz cluster labels (K = 100) that are a fixed random function of the manifest row."""
    from speechbs.data.manifest import read_manifest
    from speechbs.targets.labels import LabelMeta, label_path, manifest_hash, write_cluster_labels

    manifest = read_manifest(manifest_path)
    counts = (manifest.seconds(16_000) * 50).astype(int)
    rows = [np.random.default_rng(row).integers(0, 100, n) for row, n in enumerate(counts)]
    meta = LabelMeta(label_rate_hz=50.0, num_clusters=100, kmeans_hash="random", features="random (test)",
                     manifest_rows=len(manifest), manifest_hash=manifest_hash(manifest))
    write_cluster_labels(label_path(manifest_path, "km", label_dir), rows, meta)


@pytest.mark.dist
@pytest.mark.slow
def test_wavlm_mixing_is_the_same_on_one_or_two_processes(digits_manifests, tmp_path):
    """Partners come from the global batch: mixing half the utterances, 1 and 2 processes train alike."""
    train, valid = digits_manifests
    _write_random_labels(train, tmp_path / "labels")
    wavlm = ["data.valid_manifest=\"\"", f"data.label_dir={tmp_path / 'labels'}", "model.mix_prob=0.5",
             "train.grad_noise_every=0"]
    _run(_settings(train, valid, tmp_path, "one", 3, *wavlm, "batch.max_device_seconds=3"), recipe=WAVLM_RECIPE)
    _run(_settings(train, valid, tmp_path, "two", 3, *wavlm), nproc=2, recipe=WAVLM_RECIPE)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert all(one[k]["num_micro_batches"] > 2 * two[k]["num_micro_batches"] for k in one)
    assert [one[k]["batch_fingerprint"] for k in (1, 2, 3)] == [two[k]["batch_fingerprint"] for k in (1, 2, 3)]
    assert _max_rel_diff(_params(tmp_path / "two", 3), _params(tmp_path / "one", 3)) < 1e-5
    for k in (1, 2, 3):
        assert one[k]["loss"] == pytest.approx(two[k]["loss"], rel=1e-5)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_for_requeue(digits_manifests, tmp_path):
    train, valid = digits_manifests
    args = _settings(train, valid, tmp_path, "preempted", 10_000, "train.checkpoint_every=100000")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "speechbs", "pretrain", str(RECIPE), *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "preempted" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, output[-2000:]
    ckpts = sorted((tmp_path / "preempted" / "checkpoints").glob("step_*.pt"))
    assert ckpts, output[-2000:]
    saved_step = torch.load(ckpts[-1], weights_only=True)["step"]
    assert saved_step >= 2
    # The checkpoint is usable: a resume starts right after it.
    result = _run(_settings(train, valid, tmp_path, "preempted", saved_step + 1, "train.checkpoint_every=100000"))
    assert f"at step {saved_step}" in result.stdout


@pytest.mark.slow
def test_pretrain_runs_end_to_end_on_the_builtin_corpus(builtin_corpus_2min, tmp_path):
    """A full run on synthetic speech: validation, TensorBoard and accounting are written.

    It asserts that the total loss falls, not that contrastive accuracy rises: the tiny model
    stays near chance (ln 101) on its contrastive term for its first ~50 steps, as wav2vec 2.0
    does early in training, and this test is only 30 steps long (the plateau test below runs 80).
    """
    manifests = builtin_corpus_2min
    sets = [f"data.train_manifest={manifests['train']}", f"data.valid_manifest={manifests['valid']}",
            f"run.output_dir={tmp_path}", "run.name=learn", "train.num_steps=30", "batch.seconds=20",
            "batch.max_device_seconds=5", "batch.crop=max", "batch.crop_max_seconds=5", "train.valid_every=15", "schedule.warmup_steps=8", "data.num_workers=0",
            "train.grad_noise_every=10"]
    _run([arg for s in sets for arg in ("--set", s)])
    run_dir = tmp_path / "learn"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in train] == list(range(1, 31))
    assert np.mean([r["loss"] for r in train[-4:]]) < np.mean([r["loss"] for r in train[:4]]) - 1.0
    assert [r["step"] for r in valid] == [15, 30] and all(np.isfinite(r["loss"]) for r in valid)
    hours = sum(r["batch_s"] for r in train) / 3600
    assert train[-1]["hours_seen"] == pytest.approx(hours, rel=1e-9)
    assert all(0.5 < r["packing"] <= 1.0 for r in train)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # The gradient noise is measured every 10 steps from the step's own micro-batches, in seconds of audio.
    noisy = [r for r in train if "noise_tr_sigma_1s" in r]
    assert [r["step"] for r in noisy] == [10, 20, 30]
    assert all(r["noise_micro_batches"] >= 4 and r["noise_tr_sigma_1s"] > 0 and r["noise_grad_std_at_batch"] > 0
               and r["noise_batch_s"] == r["batch_s"] for r in noisy)
    assert [r["noise_window"] for r in noisy] == [1, 2, 3]
    assert (run_dir / "config.toml").is_file() and (run_dir / "env.json").is_file()


def test_bf16_training_validates_in_bf16_too(builtin_corpus_2min, tmp_path, monkeypatch):
    """train.precision = bf16 (a GPU's default) trains and validates under the same autocast, in process."""
    from speechbs.cli import main as cli_main

    manifests = builtin_corpus_2min
    sets = [f"data.train_manifest={manifests['train']}", f"data.valid_manifest={manifests['valid']}",
            f"run.output_dir={tmp_path}", "run.name=bf16", "train.num_steps=4", "batch.seconds=10",
            "batch.max_device_seconds=5", "batch.crop=max", "batch.crop_max_seconds=5", "train.valid_every=2",
            "data.num_workers=0", "train.precision=\"bf16\"", "train.grad_noise_every=0"]
    seen: list[torch.dtype] = []
    from speechbs.models.blocks import contrastive

    real = contrastive.contrastive_sum

    def spy(logits_NK):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return real(logits_NK)

    monkeypatch.setattr(contrastive, "contrastive_sum", spy)
    assert cli_main(["pretrain", "recipes/wav2vec2/tiny_builtin.toml", *[a for s in sets for a in ("--set", s)]]) == 0
    records = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in valid] == [2, 4] and all(np.isfinite(r["loss"]) for r in valid)
    assert seen and set(seen) == {torch.bfloat16}  # training and validation forwards alike


@pytest.mark.slow
def test_tiny_recipe_leaves_the_contrastive_plateau(tmp_path):
    """The tiny recipe learns its task: contrastive loss falls from chance and accuracy rises.

    Chance is ln 101 = 4.615 nats and 1/101 accuracy (100 distractors). The recipe as shipped
    (1-frame mask spans, docs/pretraining.md) leaves chance after ~50 steps of 60 s; a regression
    in masking, distractors, the quantizer or the loss would keep it at 4.615.
    """
    pytest.importorskip("espeakng_loader", reason="the built-in corpus needs espeakng-loader")
    from speechbs.data.corpus import build_corpus

    manifests = build_corpus(tmp_path / "audio", tmp_path / "manifests", minutes=4, seed=5,
                             num_workers=2).manifests
    sets = [f"data.train_manifest={manifests['train']}", "data.valid_manifest=\"\"",
            f"run.output_dir={tmp_path}", "run.name=plateau", "train.num_steps=80",
            "schedule.kind=\"constant\"", "schedule.warmup_steps=20", "train.valid_every=0",
            "train.log_every=1", "train.checkpoint_every=1000", "data.num_workers=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "speechbs", "pretrain", str(RECIPE), *[a for s in sets for a in ("--set", s)]]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    train = [json.loads(line) for line in (tmp_path / "plateau" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["kind"] == "train"]
    first, last = train[:10], train[-10:]
    chance_loss, chance_acc = np.log(101), 1 / 101
    assert np.mean([r["contrastive"] for r in first]) > chance_loss - 0.05
    assert np.mean([r["contrastive"] for r in last]) < chance_loss - 0.3, [r["contrastive"] for r in last]
    assert np.mean([r["accuracy"] for r in last]) > 5 * chance_acc, [r["accuracy"] for r in last]


def test_a_step_of_one_micro_batch_is_still_measured(builtin_corpus_2min, tmp_path):
    """A 6 s batch under a 12 s cap is one forward pass; its measuring steps run two, and train the same."""
    from speechbs.cli import main as cli_main

    common = [f"data.train_manifest={builtin_corpus_2min['train']}", "data.valid_manifest=\"\"",
              f"run.output_dir={tmp_path}", "train.num_steps=3", "batch.seconds=6", "batch.max_device_seconds=12",
              "batch.crop=max", "batch.crop_max_seconds=3", "train.valid_every=0", *EXACT]
    for name, every in (("measured", 1), ("plain", 0)):
        sets = [*common, f"run.name={name}", f"train.grad_noise_every={every}"]
        assert cli_main(["pretrain", str(RECIPE), *[a for s in sets for a in ("--set", s)]]) == 0
    measured, plain = _metrics(tmp_path / "measured"), _metrics(tmp_path / "plain")
    assert [measured[k]["num_micro_batches"] for k in (1, 2, 3)] == [2, 2, 2]
    assert [plain[k]["num_micro_batches"] for k in (1, 2, 3)] == [1, 1, 1]
    assert all(measured[k]["noise_micro_batches"] == 2 and measured[k]["noise_tr_sigma_1s_step"] > 0 for k in (1, 2, 3))
    assert [measured[k]["batch_fingerprint"] for k in (1, 2, 3)] == [plain[k]["batch_fingerprint"] for k in (1, 2, 3)]
    assert _max_rel_diff(_params(tmp_path / "measured", 3), _params(tmp_path / "plain", 3)) < 1e-4


def test_an_hours_mark_is_kept_at_the_next_lr_minimum_of_a_cyclic_schedule(digits_manifests, tmp_path):
    """A mark reached mid-cycle is kept at the cycle's end, also by a run resumed in between.

    12 s per step: the 0.015 h mark (54 s) is reached at step 5; the cycle of 4 steps has
    its minimum at step 8. The resume is from step 6 (past the mark, before the minimum),
    as after a preemption: it must keep step 8 again, not step 6 or 7.
    """
    from speechbs.checkpoint import milestone_checkpoints, read_index

    train, valid = digits_manifests
    args = _settings(train, valid, tmp_path, "cyc", 10, "schedule.kind=\"cyclic\"", "schedule.cycle_steps=4",
                     "train.milestone_hours=[0.015]")
    run, ckpts = tmp_path / "cyc", tmp_path / "cyc" / "checkpoints"
    _run(args)
    metrics = _metrics(run)
    assert metrics[4]["hours_seen"] < 0.015 <= metrics[5]["hours_seen"]  # the mark really falls mid-cycle
    assert read_index(ckpts)["milestones"] == ["step_00000008.pt"]
    for step in (8, 10):  # back to the state a stop at step 6 leaves
        (ckpts / f"step_{step:08d}.pt").unlink()
    (ckpts / "index.json").write_text(json.dumps({"latest": "step_00000006.pt", "milestones": []}))
    _run(args)
    assert read_index(ckpts)["milestones"] == ["step_00000008.pt"]
    assert milestone_checkpoints(run, [0.015]) == [(0.015, ckpts / "step_00000008.pt")]
