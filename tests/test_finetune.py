"""`speechbs finetune` end to end on tiny synthetic data, init from speechbs and Hugging Face
checkpoints, and the user errors a fine-tuning config can make."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbs.configio import dump_toml, load_config
from speechbs.data.manifest import Manifest, write_manifest
from speechbs.errors import ConfigError
from speechbs.tasks.ctc import prepare_finetune

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "finetune" / "tiny_digits.toml"


def _synthetic(tmp: Path) -> Path:
    """Tones whose pitch says the word; plus a too-short row, an empty transcript and an OOV letter."""
    rng = np.random.default_rng(0)
    words = {"AB": 300.0, "BA": 900.0}
    files, counts, lines = [], [], []
    for i in range(16):
        word = "AB" if i % 2 else "BA"
        num = int(16000 * (0.6 + 0.4 * rng.random()))
        t = np.arange(num) / 16000
        wav = 0.3 * np.sin(2 * np.pi * words[word] * t) + 0.01 * rng.standard_normal(num)
        files.append(f"u{i}.wav")
        counts.append(num)
        lines.append(" ".join(word) + " |")
        sf.write(tmp / files[-1], wav.astype(np.float32), 16000)
    sf.write(tmp / "short.wav", np.zeros(1200, dtype=np.float32), 16000)  # 3 frames for 7 labels
    files.append("short.wav"); counts.append(1200); lines.append("A B A B A B |")
    files.append("u0.wav"); counts.append(counts[0]); lines.append("")  # empty transcript
    files.append("u1.wav"); counts.append(counts[1]); lines.append("A Z |")  # Z is not in dict
    write_manifest(Manifest(tmp, files, counts, [16000] * len(files)), tmp / "train.tsv")
    (tmp / "train.ltr").write_text("".join(f"{line}\n" for line in lines))
    (tmp / "dict.ltr.txt").write_text("| 3\nA 2\nB 2\n")
    return tmp / "train.tsv"


def _sets(tsv: Path, out: Path, *extra: str) -> list[str]:
    sets = [f"data.train_manifest={tsv}", f"data.valid_manifest={tsv}", f"run.output_dir={out}", "run.name=ft",
            "data.num_workers=0", "batch.seconds=6", "batch.max_device_seconds=6", "train.num_steps=16",
            "train.valid_every=8", "train.log_every=4", "train.checkpoint_every=8", "optim.lr=5e-3",
            "schedule.warmup_steps=2", "schedule.hold_steps=8", "finetune.freeze_steps=2",
            f"finetune.vocab={tsv.parent / 'dict.ltr.txt'}", "finetune.mask_channel_length=8", *extra]
    return sets


@pytest.mark.slow
def test_finetune_run_learns_counts_bad_labels_and_decodes(tmp_path):
    tsv = _synthetic(tmp_path)
    sets = _sets(tsv, tmp_path / "runs")
    cmd = [sys.executable, "-m", "speechbs", "finetune", str(RECIPE)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "ft"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    valid = [r for r in rows if r["kind"] == "valid"]
    assert np.mean([r["loss"] for r in train[-4:]]) < 0.6 * np.mean([r["loss"] for r in train[:2]])
    assert valid and all("wer" in r for r in valid)
    assert valid[-1]["num_infeasible"] == 1
    assert sum(r["num_infeasible"] for r in train) > 0 and sum(r["num_empty"] for r in train) > 0
    assert sum(r["num_oov"] for r in train) > 0
    assert [r["encoder_frozen"] for r in train[:3]] == [1.0, 0.0, 0.0]
    report = json.loads((run / "label_report.json").read_text())["train"]
    assert report == {"num_utterances": 19, "num_empty": 1, "num_oov_symbols": 1, "num_oov_utterances": 1,
                      "num_infeasible": 1}
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert (run / "checkpoints" / "best.pt").is_file() and index["best"]["metric"] == "wer"
    assert (run / "dict.ltr.txt").read_text().splitlines() == ["| 1", "A 1", "B 1"]

    out = tmp_path / "decode"
    for command in (["decode", str(run), "--manifest", str(tsv), "--out", str(out)], ["score", str(out)]):
        proc = subprocess.run([sys.executable, "-m", "speechbs", *command], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert len((out / "hyp.wrd").read_text().splitlines()) == 19
    assert json.loads((out / "decode.json").read_text())["checkpoint"].endswith("best.pt")
    assert json.loads((out / "score.json").read_text())["num_utterances"] == 19


def test_crop_must_be_none():
    with pytest.raises(ConfigError, match="batch.crop"):
        prepare_finetune(load_config(RECIPE, ["batch.crop=shortest"]))


def test_missing_init_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="finetune.init"):
        prepare_finetune(load_config(RECIPE, [f"finetune.init={tmp_path / 'nope'}"]))


def test_init_from_speechbs_checkpoint_keeps_weights_and_architecture(tmp_path):
    from speechbs.asr.vocab import build_vocab
    from speechbs.asr.ctc import build_ctc_model
    from speechbs.checkpoint import save_checkpoint
    from speechbs.models.wav2vec2 import Wav2Vec2Model

    pre = load_config(None, ["model.size=tiny", "model.num_layers=1"])
    encoder = Wav2Vec2Model(pre.model.arch)
    save_checkpoint(tmp_path / "checkpoints", 3, {"model": encoder.state_dict(), "config_toml": dump_toml(pre)},
                    keep_last=1)
    cfg, state = prepare_finetune(load_config(RECIPE, [f"finetune.init={tmp_path}"]))
    assert cfg.model.arch.num_layers == 1 and cfg.model.arch.embed_dim == pre.model.arch.embed_dim
    assert cfg.model.arch.feature_grad_mult == 0.0 and cfg.model.arch.mask_prob == cfg.finetune.mask_prob
    # The saved config alone rebuilds the same architecture (what decode relies on).
    from speechbs.configio import config_from_toml
    assert config_from_toml(dump_toml(cfg), "test").model.arch == cfg.model.arch
    model = build_ctc_model(cfg, build_vocab(["A |"])[0])
    model.encoder.load_state_dict(state, strict=False)
    assert torch.equal(model.encoder.post_extract_proj.weight, encoder.post_extract_proj.weight)


def test_init_from_local_hugging_face_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, conv_dim=(16, 16), conv_kernel=(10, 3),
                                         conv_stride=(5, 2), num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=4)
    hf = transformers.Wav2Vec2Model(hf_cfg)
    hf.save_pretrained(tmp_path / "hf")
    cfg, state = prepare_finetune(load_config(RECIPE, [f"finetune.init={tmp_path / 'hf'}"]))
    assert cfg.model.arch.embed_dim == 32 and cfg.model.arch.num_layers == 1
    assert torch.equal(state["post_extract_proj.weight"], hf.feature_projection.projection.weight)


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes" / "finetune").glob("*.toml")), ids=lambda p: p.stem)
def test_finetune_recipes_load(recipe):
    cfg = load_config(recipe)
    assert cfg.batch.crop == "none" and cfg.schedule.kind == "tri_stage" and cfg.data.labels == "ltr"
    assert cfg.schedule.warmup_steps + cfg.schedule.hold_steps < cfg.train.num_steps
