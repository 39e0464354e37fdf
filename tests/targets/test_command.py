"""``speechbs targets fit`` + ``label`` end to end on small manifests (MFCC and a tiny model's layer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbs.cli import main
from speechbs.data.manifest import Manifest, read_manifest, write_manifest
from speechbs.targets import mfcc
from speechbs.targets.kmeans import KMeansModel
from speechbs.targets.labels import read_cluster_labels

pytest.importorskip("faiss")
RATE = 16_000
FAST = ["--num-workers", "0", "--device", "cpu"]


def corpus(tmp_path: Path, seconds=(1.0, 0.7, 1.3, 0.9, 1.1, 0.6)) -> tuple[Path, Path]:
    """Tones and noise bursts as WAVs; train.tsv and valid.tsv over them."""
    rng = np.random.default_rng(0)
    names, lengths = [], []
    for i, s in enumerate(seconds):
        t = np.arange(int(s * RATE)) / RATE
        wav = 0.3 * np.sin(2 * np.pi * (200 + 300 * i) * t) + 0.05 * rng.normal(size=t.shape)
        wav[len(wav) // 2:] *= 0.1
        sf.write(tmp_path / f"u{i}.wav", wav.astype(np.float32), RATE)
        names.append(f"u{i}.wav")
        lengths.append(len(wav))
    train = write_manifest(Manifest(tmp_path, names[:4], np.array(lengths[:4])), tmp_path / "train.tsv")
    valid = write_manifest(Manifest(tmp_path, names[4:], np.array(lengths[4:])), tmp_path / "valid.tsv")
    return train, valid


def test_fit_and_label_mfcc_end_to_end(tmp_path, capsys) -> None:
    train, valid = corpus(tmp_path)
    km = tmp_path / "it1" / "kmeans.pt"
    assert main(["targets", "fit", "--manifest", str(train), "--k", "8", "--max-frames", "5000",
                 "--frame-fraction", "0.5", "--threads", "1", "--out", str(km), *FAST]) == 0
    model = KMeansModel.load(km)
    assert model.num_clusters == 8 and model.features["kind"] == "mfcc" and model.features["dim"] == 39
    assert 0 < model.num_train_frames <= 5000
    label_dir = tmp_path / "labels"
    args = ["targets", "label", "--kmeans", str(km), "--manifest", str(train), "--manifest", str(valid),
            "--label-dir", str(label_dir), *FAST]
    assert main(args) == 0
    first = (label_dir / "train.km").read_text()
    assert main(args) == 0 and (label_dir / "train.km").read_text() == first  # deterministic
    for tsv in (train, valid):
        manifest = read_manifest(tsv)
        labels = read_cluster_labels(manifest, tsv, "km", label_dir=label_dir)
        assert labels.label_rate_hz == 100.0 and labels.kmeans_hash == model.hash
        for row in range(len(manifest)):
            assert len(labels.row(row)) == mfcc.num_frames(int(manifest.num_samples[row]), RATE)
    out = capsys.readouterr()
    assert "wrote" in out.out and "clusters used" in out.out


@pytest.mark.slow
def test_fit_and_label_layer_features_of_a_checkpoint(tmp_path) -> None:
    from speechbs.configio import dump_toml, load_config
    from speechbs.models.registry import MODELS

    train, _ = corpus(tmp_path)
    cfg = load_config(None, ["model.size=tiny"])
    torch.manual_seed(0)
    model = MODELS[cfg.model.name].model_cls(cfg.model.arch)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"config_toml": dump_toml(cfg), "model": model.state_dict()}, ckpt)
    km = tmp_path / "it2.pt"
    assert main(["targets", "fit", "--manifest", str(train), "--features", "layer", "--checkpoint", str(ckpt),
                 "--layer", "2", "--k", "4", "--frame-fraction", "1.0", "--max-frames", "1000",
                 "--threads", "1", "--out", str(km), *FAST]) == 0
    fitted = KMeansModel.load(km)
    assert fitted.features["frame_rate_hz"] == 50.0 and fitted.features["dim"] == cfg.model.arch.embed_dim
    assert main(["targets", "label", "--kmeans", str(km), "--manifest", str(train), "--ext", "km2", *FAST]) == 0
    manifest = read_manifest(train)
    labels = read_cluster_labels(manifest, train, "km2")
    # The labels are the nearest centroids of layer 2's output (1-based, as fairseq counts).
    wav = torch.from_numpy(sf.read(tmp_path / "u0.wav", dtype="float32")[0]).unsqueeze(0)
    with torch.no_grad():
        out = model.eval().encode(wav, torch.tensor([wav.shape[1]]), return_layers=True)
    assert np.array_equal(labels.row(0), fitted.assign(out.layer_outputs[1][0]).numpy())
    # A moved or different checkpoint is refused rather than silently giving other labels.
    torch.save({"config_toml": dump_toml(cfg), "model": {k: v + 1 for k, v in model.state_dict().items()}}, ckpt)
    assert main(["targets", "label", "--kmeans", str(km), "--manifest", str(train), *FAST]) == 2


def test_bad_input_is_a_clear_error(tmp_path, capsys) -> None:
    train, _ = corpus(tmp_path, seconds=(0.5, 0.5))
    assert main(["targets", "fit", "--manifest", str(train), "--features", "layer", "--out", "x.pt", *FAST]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err
    assert main(["targets", "fit", "--manifest", str(tmp_path / "nope.tsv"), "--out", "x.pt", *FAST]) == 2
    assert "nope.tsv does not exist" in capsys.readouterr().err
    assert main(["targets", "label", "--kmeans", str(tmp_path / "none.pt"), "--manifest", str(train), *FAST]) == 2
    assert "none.pt does not exist" in capsys.readouterr().err


def test_real_recordings_label_lengths(yesno_dir, tmp_path) -> None:
    """8 kHz yesno files are resampled to 16 kHz; every row's label count fits its duration."""
    paths = sorted((yesno_dir / "waves_yesno").glob("*.wav"))[:4]
    infos = [sf.info(p) for p in paths]
    manifest = Manifest(yesno_dir / "waves_yesno", [p.name for p in paths], np.array([i.frames for i in infos]),
                        np.array([i.samplerate for i in infos]))
    tsv = write_manifest(manifest, tmp_path / "yesno.tsv")
    km = tmp_path / "km.pt"
    assert main(["targets", "fit", "--manifest", str(tsv), "--k", "10", "--threads", "1", "--out", str(km), *FAST]) == 0
    assert main(["targets", "label", "--kmeans", str(km), "--manifest", str(tsv), *FAST]) == 0
    labels = read_cluster_labels(read_manifest(tsv), tsv, "km")
    assert len(np.unique(labels.labels_N)) >= 5  # speech and silence do not collapse to one cluster
