"""HuBERT's two iterations end to end on the built-in corpus, through the commands a user runs.

MFCC -> k-means -> labels -> iteration 1 -> layer features of that checkpoint -> k-means ->
labels -> iteration 2 (and WavLM on the iteration-2 labels), all tiny.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechbs import cli

REPO = Path(__file__).resolve().parents[1]


def _train_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


@pytest.mark.slow
def test_two_hubert_iterations_and_wavlm_from_the_builtin_corpus(tmp_path, monkeypatch):
    pytest.importorskip("espeakng_loader", reason="the built-in corpus needs espeakng-loader")
    pytest.importorskip("faiss", reason="k-means needs faiss-cpu (the kmeans extra)")
    from speechbs.data.corpus import build_corpus

    monkeypatch.chdir(tmp_path)
    manifests = build_corpus(tmp_path / "audio", tmp_path / "manifests", minutes=1.5, seed=2,
                             num_workers=2).manifests
    splits = ["--manifest", str(manifests["train"]), "--manifest", str(manifests["valid"])]
    common = ["--set", f"data.train_manifest={manifests['train']}", "--set", f"data.valid_manifest={manifests['valid']}",
              "--set", f"run.output_dir={tmp_path / 'runs'}", "--set", "train.num_steps=6", "--set", "batch.seconds=20",
              "--set", "train.valid_every=6", "--set", "train.grad_noise_every=3", "--set", "data.num_workers=0"]

    def iteration(n: int, k: int, features: list[str]) -> Path:
        labels = tmp_path / f"labels-it{n}"
        assert cli.main(["targets", "fit", "--manifest", str(manifests["train"]), *features, "--k", str(k),
                         "--threads", "1", "--out", str(labels / "kmeans.pt")]) == 0
        assert cli.main(["targets", "label", "--kmeans", str(labels / "kmeans.pt"), *splits, "--ext", "km",
                         "--label-dir", str(labels)]) == 0
        recipe = REPO / "recipes" / "hubert" / f"tiny_builtin_iter{n}.toml"
        assert cli.main(["pretrain", str(recipe), *common, "--set", f"data.label_dir={labels}",
                         "--set", f"model.num_clusters={k}"]) == 0
        return labels

    iteration(1, 12, ["--features", "mfcc"])
    it1 = tmp_path / "runs" / "hubert-tiny-it1"
    labels2 = iteration(2, 16, ["--features", "layer", "--checkpoint", str(it1), "--layer", "1"])
    for run in ("hubert-tiny-it1", "hubert-tiny-it2"):
        rows = _train_rows(tmp_path / "runs" / run)
        assert [r["step"] for r in rows] == list(range(1, 7))
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows) and rows[-1]["loss"] < rows[0]["loss"]
        assert "noise_tr_sigma_1s" in rows[2]
    meta = json.loads((labels2 / "train.km.json").read_text())
    assert meta["label_rate_hz"] == 50.0 and meta["num_clusters"] == 16

    wavlm = REPO / "recipes" / "wavlm" / "tiny_builtin.toml"
    assert cli.main(["pretrain", str(wavlm), *common, "--set", f"data.label_dir={labels2}",
                     "--set", "model.num_clusters=16"]) == 0
    assert len(_train_rows(tmp_path / "runs" / "wavlm-tiny")) == 6


def test_labels_of_another_k_are_refused_with_the_settings_to_change(tmp_path, monkeypatch):
    """A HuBERT recipe whose model.num_clusters disagrees with the label files says which fields to set."""
    from speechbs.configio import load_config
    from speechbs.errors import ConfigError
    from speechbs.tasks.ssl import cluster_labels

    cfg = load_config(REPO / "recipes" / "hubert" / "tiny_builtin_iter1.toml", ["data.labels="])
    with pytest.raises(ConfigError, match="data.labels"):
        cluster_labels(cfg, cfg.data.train_manifest)
