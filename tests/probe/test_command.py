"""``speechbs probe`` end to end on a tiny checkpoint: probe.json, the feature cache, and user mistakes."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbs.data.manifest import Manifest, write_manifest
from speechbs.errors import DataError
from speechbs.probe import command
from speechbs.probe.features import layer_features

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "old_checkpoints"
RATE = 16_000


def _corpus(root: Path, name: str, n: int, seed: int) -> Path:
    """Tones whose pitch is the label ("low" / "high"), with noise: a label the conv features carry."""
    rng = np.random.default_rng(seed)
    paths, lengths, labels = [], [], []
    for i in range(n):
        label = ["low", "high"][i % 2]
        num = int(RATE * rng.uniform(0.4, 0.7))
        t = np.arange(num) / RATE
        wav = 0.3 * np.sin(2 * np.pi * (200 if label == "low" else 2000) * t) + 0.05 * rng.standard_normal(num)
        rel = f"{name}/{i}.wav"
        (root / name).mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, wav.astype(np.float32), RATE, subtype="PCM_16")
        paths.append(rel), lengths.append(num), labels.append(label)
    tsv = write_manifest(Manifest(root, paths, np.array(lengths)), root / f"{name}.tsv")
    tsv.with_suffix(".pitch").write_text("".join(f"{label}\n" for label in labels))
    return tsv


def _args(tmp_path: Path, checkpoint: Path, **extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    argv = [str(checkpoint), "--task", "pitch", "--label", "pitch", "--train", str(tmp_path / "train.tsv"),
            "--valid", str(tmp_path / "valid.tsv"), "--test", str(tmp_path / "test.tsv"),
            "--out", str(tmp_path / "out" / "pitch"), "--epochs", "20", "--workers", "0"]
    for key, value in extra.items():
        argv += [f"--{key}", str(value)]
    return parser.parse_args(argv)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    for name, n, seed in (("train", 24, 0), ("valid", 8, 1), ("test", 12, 2)):
        _corpus(tmp_path, name, n, seed)
    return tmp_path


def test_probe_writes_its_record_and_finds_a_label_in_the_features(corpus: Path, capsys) -> None:
    assert command.main(_args(corpus, FIXTURES / "wav2vec2.pt")) == 0
    record = json.loads((corpus / "out" / "pitch" / "probe.json").read_text())
    assert record["classes"] == ["high", "low"] and record["num_test"] == 12
    assert record["accuracy"] >= 0.9  # chance 0.5: the pitch is in every layer of even a random encoder
    assert sum(record["layer_weights"]) == pytest.approx(1.0, abs=1e-6)
    assert len(record["layer_weights"]) == len(record["per_layer_accuracy"]) == 3  # conv + 2 layers (tiny)
    assert record["per_class"]["low"]["total"] == 6 and record["chance_accuracy"] == 0.5
    assert (corpus / "out" / "pitch" / "layer_weights.png").is_file()
    assert "test accuracy" in capsys.readouterr().out


def test_the_feature_cache_is_reused_and_invalidated_when_the_checkpoint_changes(corpus: Path) -> None:
    ckpt = corpus / "model.pt"
    shutil.copy(FIXTURES / "wav2vec2.pt", ckpt)
    first = layer_features(ckpt, corpus / "test.tsv", "utterance", corpus / "cache", num_workers=0)
    again = layer_features(ckpt, corpus / "test.tsv", "utterance", corpus / "cache", num_workers=0)
    assert not first.from_cache and again.from_cache and again.key == first.key
    assert all(torch.equal(a, b) for a, b in zip(first.per_row, again.per_row))
    state = torch.load(ckpt, weights_only=True)
    state["model"]["post_extract_proj.bias"] += 1.0  # a retrained checkpoint at the same path
    torch.save(state, ckpt)
    changed = layer_features(ckpt, corpus / "test.tsv", "utterance", corpus / "cache", num_workers=0)
    assert not changed.from_cache and changed.key != first.key
    assert not torch.equal(changed.per_row[0], first.per_row[0])


def test_frame_level_features_keep_every_frame(corpus: Path) -> None:
    feats = layer_features(FIXTURES / "hubert.pt", corpus / "valid.tsv", "frame", corpus / "cache", num_workers=0)
    assert feats.num_layers == 3 and all(f.dim() == 3 and f.shape[1:] == (3, feats.dim) for f in feats.per_row)


def test_a_missing_or_short_label_file_names_the_file(corpus: Path) -> None:
    (corpus / "test.pitch").unlink()
    with pytest.raises(DataError, match=r"test\.pitch does not exist"):
        command.main(_args(corpus, FIXTURES / "wav2vec2.pt"))
    (corpus / "test.pitch").write_text("low\n")
    with pytest.raises(DataError, match=r"test\.pitch has 1 lines but .*test\.tsv has 12 utterances"):
        command.main(_args(corpus, FIXTURES / "wav2vec2.pt"))
    (corpus / "test.pitch").write_text("mid\n" * 12)
    with pytest.raises(DataError, match="labels the training set does not: mid"):
        command.main(_args(corpus, FIXTURES / "wav2vec2.pt"))


def test_random_init_features_are_the_runs_starting_weights_and_cached_apart(corpus: Path) -> None:
    from speechbs.pretrained import build_model, read_checkpoint

    trained = layer_features(FIXTURES / "wav2vec2.pt", corpus / "valid.tsv", "utterance", corpus / "cache", num_workers=0)
    start = layer_features(FIXTURES / "wav2vec2.pt", corpus / "valid.tsv", "utterance", corpus / "cache", num_workers=0,
                           random_init=True)
    assert start.key != trained.key and not start.from_cache
    assert not torch.equal(start.per_row[0], trained.per_row[0])
    cfg = read_checkpoint(FIXTURES / "wav2vec2.pt").config
    torch.manual_seed(cfg.run.seed)
    reference = build_model(cfg.model)
    again = layer_features(FIXTURES / "wav2vec2.pt", corpus / "valid.tsv", "utterance", corpus / "cache2",
                           num_workers=0, random_init=True)
    assert all(torch.equal(a, b) for a, b in zip(start.per_row, again.per_row))  # deterministic
    assert reference.post_extract_proj.weight.shape[0] == start.dim


def test_cli_mistakes_are_one_line_naming_the_file(corpus: Path, capsys) -> None:
    from speechbs.cli import main as cli

    base = ["probe", str(FIXTURES / "wav2vec2.pt"), "--task", "t", "--label", "pitch", "--test",
            str(corpus / "test.tsv"), "--out", str(corpus / "o")]
    assert cli([*base, "--train", str(corpus / "missing.tsv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.tsv does not exist" in err and len(err.splitlines()) == 1
    assert cli([*base[:2], *base[2:4], "--label", "nope", *base[6:], "--train", str(corpus / "train.tsv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.nope does not exist" in err and len(err.splitlines()) == 1
    assert not (corpus / "o").exists()  # nothing written


def test_one_probe_loads_its_checkpoint_once_and_not_at_all_when_cached(corpus: Path, monkeypatch) -> None:
    from speechbs.probe import features as probe_features
    from speechbs.targets import features as target_features

    loads = []
    real = target_features.all_layers_extractor
    monkeypatch.setattr(target_features, "all_layers_extractor", lambda *a, **k: loads.append(1) or real(*a, **k))
    manifests = [corpus / f"{name}.tsv" for name in ("train", "valid", "test")]
    cache = probe_features.FeatureCache(FIXTURES / "wav2vec2.pt", "utterance", corpus / "cache", num_workers=0)
    assert [cache.features(m).from_cache for m in manifests] == [False, False, False] and len(loads) == 1
    again = probe_features.FeatureCache(FIXTURES / "wav2vec2.pt", "utterance", corpus / "cache", num_workers=0)
    assert [again.features(m).from_cache for m in manifests] == [True, True, True] and len(loads) == 1


def test_rows_get_their_own_features_in_length_sorted_batches(corpus: Path) -> None:
    """Batches are cut from the rows sorted by length; each row's features are what it gets alone."""
    from speechbs.data.manifest import read_manifest
    from speechbs.targets.features import all_layers_extractor, iter_features

    batched = layer_features(FIXTURES / "wav2vec2.pt", corpus / "train.tsv", "utterance", corpus / "cache",
                             num_workers=0)
    extractor, manifest = all_layers_extractor(FIXTURES / "wav2vec2.pt"), read_manifest(corpus / "train.tsv")
    for row in (0, 5, 23):
        [(_, feats_TX)] = list(iter_features(manifest, extractor, rows=[row], num_workers=0))
        alone_LC = feats_TX.view(len(feats_TX), batched.num_layers, batched.dim).mean(dim=0)
        assert torch.allclose(batched.per_row[row], alone_LC, atol=1e-5)
