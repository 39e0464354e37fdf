"""Checkpoints written by earlier code still load, strictly, and compute what they computed then.

The fixtures (``tests/fixtures/old_checkpoints``) were written by
``tests/fixtures/make_old_checkpoints.py`` before the three families shared one encoder
class: a tiny wav2vec 2.0 (group-norm convs, post-norm), HuBERT (layer-norm convs with
bias, pre-norm) and WavLM (relative position bias, utterance mixing) pretraining
checkpoint, and a CTC model fine-tuned from the wav2vec 2.0 one, each with its outputs
on a fixed padded batch. Loading goes through the same functions as fine-tuning's
``finetune.init`` and ``speechbs decode``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speechbs.asr.ctc import load_ctc_checkpoint
from speechbs.configio import load_config
from speechbs.tasks.ctc import prepare_finetune
from speechbs.models.hubert import ClusterTargets
from speechbs.pretrained import load_encoder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "old_checkpoints"
REPO = Path(__file__).resolve().parents[2]
TOL = 1e-6


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    if want.dtype.is_floating_point:
        finite = torch.isfinite(want)  # -inf marks a distractor equal to its positive
        assert torch.equal(finite, torch.isfinite(got)) and torch.equal(got[~finite], want[~finite])
        assert (got[finite] - want[finite]).abs().max().item() <= TOL
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm"])
def test_old_pretraining_checkpoint_loads_strictly_and_reproduces_its_outputs(family: str) -> None:
    want = torch.load(FIXTURES / f"{family}.expected.pt", weights_only=True)
    model, cfg = load_encoder(FIXTURES / f"{family}.pt")  # load_state_dict is strict: same key set
    assert cfg.model.name == family and not model.training
    wav_BT, lengths_B, seeds_B = want["wav_BT"], want["lengths_B"], want["seeds_B"]
    with torch.no_grad():
        plain = model.encode(wav_BT, lengths_B, return_layers=True)
        masked = model.encode(wav_BT, lengths_B, seeds_B=seeds_B)
    _close(plain.features_BTC, want["features_BTC"])
    _close(plain.padding_BT, want["padding_BT"])
    _close(plain.frame_lengths_B, want["frame_lengths_B"])
    assert len(plain.layer_outputs) == len(want["layer_outputs"])
    for got_BTC, want_BTC in zip(plain.layer_outputs, want["layer_outputs"]):
        _close(got_BTC, want_BTC)
    _close(masked.features_BTC, want["masked_features_BTC"])

    model.train()  # every dropout is 0 in the fixture: masks, distractors, Gumbel noise, mixing come from seeds
    with torch.no_grad():
        if family == "wav2vec2":
            out = model(wav_BT, lengths_B, seeds_B=seeds_B, gumbel_temperature=2.0)
        else:
            arch = cfg.model.arch
            targets = ClusterTargets(want["labels_BL"], want["label_lengths_B"], arch.label_rate_hz,
                                     arch.num_clusters)
            out = model(wav_BT, lengths_B, seeds_B=seeds_B, targets=targets)
    _close(out.mask_BT, want["mask_BT"])
    _close(out.logits_NK, want["logits_NK"])
    _close(out.encoder.features_BTC, want["pretrain_features_BTC"])
    _close(out.loss.loss_sum, want["loss_sum"])
    for name, value in out.loss.logs().items():
        _close(value, want["loss_logs"][name])


def test_old_pretraining_checkpoint_initializes_fine_tuning() -> None:
    path = FIXTURES / "wav2vec2.pt"
    cfg, state = prepare_finetune(load_config(REPO / "recipes" / "finetune" / "tiny_digits.toml",
                                              [f"finetune.init={path}"]))
    ckpt = torch.load(path, weights_only=True)
    assert set(state) == set(ckpt["model"])
    assert all(torch.equal(state[k], ckpt["model"][k]) for k in state)
    assert cfg.model.name == "wav2vec2" and cfg.model.arch.embed_dim == 32


def test_old_ctc_checkpoint_decodes_as_before() -> None:
    want = torch.load(FIXTURES / "ctc.expected.pt", weights_only=True)
    model, cfg, ckpt = load_ctc_checkpoint(FIXTURES / "ctc.pt")
    assert cfg.model.name == "wav2vec2" and ckpt["path"].endswith("ctc.pt")
    with torch.no_grad():
        logits_BTV, frame_lengths_B = model(want["wav_BT"], want["lengths_B"])
    _close(logits_BTV, want["logits_BTV"])
    _close(frame_lengths_B, want["frame_lengths_B"])
