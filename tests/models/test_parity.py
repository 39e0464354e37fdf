"""Parity with Hugging Face transformers' wav2vec 2.0 (random weights from configs, no download)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install speechbs[hf])")

from speechbs.models.convert import from_hf_wav2vec2  # noqa: E402
from speechbs.models.wav2vec2 import Wav2Vec2Model  # noqa: E402

TOL = 1e-4


def _hf_pair(stable: bool):
    """A small HF Wav2Vec2ForPreTraining and its speechbs conversion, both in eval mode."""
    torch.manual_seed(0)
    hf_cfg = transformers.Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        conv_dim=(32,) * 7, conv_bias=stable, feat_extract_norm="layer" if stable else "group",
        do_stable_layer_norm=stable, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        codevector_dim=64, proj_codevector_dim=32, num_codevectors_per_group=16, num_negatives=10,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        feat_quantizer_dropout=0.0, layerdrop=0.0, mask_time_prob=0.65, mask_time_length=3)
    hf = transformers.Wav2Vec2ForPreTraining(hf_cfg).eval()
    # Random non-trivial norms and biases, so a mapping mistake cannot hide behind ones and zeros.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    cfg, state = from_hf_wav2vec2(hf)
    ours = Wav2Vec2Model(cfg).eval()
    ours.load_state_dict(state, strict=True)
    return hf, ours


def test_group_norm_post_norm_encoder_matches_unpadded() -> None:
    hf, ours = _hf_pair(stable=False)
    wav_BT = torch.randn(2, 12_000)
    with torch.no_grad():
        want_BTC = hf.wav2vec2(wav_BT).last_hidden_state
        got = ours.encode(wav_BT, torch.tensor([12_000, 12_000]))
    assert got.features_BTC.shape == want_BTC.shape
    assert (got.features_BTC - want_BTC).abs().max() <= TOL


def test_layer_norm_pre_norm_encoder_matches_with_padding() -> None:
    hf, ours = _hf_pair(stable=True)
    lengths_B = torch.tensor([12_000, 7_000, 9_500])
    wav_BT = torch.randn(3, 12_000)
    valid_BT = torch.arange(12_000).view(1, -1) < lengths_B.view(-1, 1)
    wav_BT = wav_BT * valid_BT
    with torch.no_grad():
        want_BTC = hf.wav2vec2(wav_BT, attention_mask=valid_BT.long()).last_hidden_state
        got = ours.encode(wav_BT, lengths_B)
    keep_BT = ~got.padding_BT
    assert keep_BT.sum(dim=1).tolist() == hf.wav2vec2._get_feat_extract_output_lengths(lengths_B).tolist()
    assert (got.features_BTC[keep_BT] - want_BTC[keep_BT]).abs().max() <= TOL


@pytest.mark.parametrize("stable", [False, True])
def test_quantizer_and_contrastive_loss_match_in_eval(stable: bool) -> None:
    """Same masks and distractors -> same argmax codevectors, code perplexity and contrastive loss sum."""
    hf, ours = _hf_pair(stable=stable)
    wav_BT = torch.randn(2, 16_000)
    lengths_B = torch.tensor([16_000, 16_000])
    seeds_B = torch.tensor([11, 12])
    with torch.no_grad():
        out = ours(wav_BT, lengths_B, seeds_B=seeds_B, gumbel_temperature=2.0)
        mask_BT = out.mask_BT
        B, T = mask_BT.shape
        # Our distractor indices point into the masked frames; HF's into the flattened (B*T) frames.
        from speechbs.models.blocks.masking import sample_negatives
        flat_N = mask_BT.view(-1).nonzero().view(-1)
        neg_NK = flat_N[sample_negatives(mask_BT, ours.cfg.num_negatives, seeds_B)]
        hf_neg_BTK = torch.zeros(B * T, neg_NK.shape[1], dtype=torch.long)
        hf_neg_BTK[flat_N] = neg_NK
        hf_out = hf(wav_BT, mask_time_indices=mask_BT, sampled_negative_indices=hf_neg_BTK.view(B, T, -1))
        feats_BTC = hf.wav2vec2(wav_BT).extract_features
        hf_q_BTE, hf_ppl = hf.quantizer(feats_BTC, mask_time_indices=mask_BT)
        q = ours.quantizer(ours.layer_norm(ours.feature_encoder(wav_BT, lengths_B)[0].transpose(1, 2))[mask_BT],
                           temperature=2.0)
    assert (q.codevectors_NE - hf_q_BTE[mask_BT]).abs().max() <= TOL
    assert torch.allclose(q.code_perplexity, hf_ppl, atol=TOL)
    assert torch.allclose(out.loss.contrastive_sum, hf_out.contrastive_loss, rtol=1e-5, atol=1e-3)


# HuBERT and WavLM: transformers has encoders only (no pretraining heads), so encode() is compared.

from speechbs.models.convert import from_hf_hubert, from_hf_wavlm  # noqa: E402
from speechbs.models.hubert import HubertModel  # noqa: E402
from speechbs.models.wavlm import WavLMModel  # noqa: E402


def _hf_encoder_pair(kind: str, stable: bool):
    """A small HF HubertModel / WavLMModel with perturbed norms and biases, and its speechbs conversion."""
    torch.manual_seed(0)
    common = dict(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, conv_dim=(32,) * 7,
        conv_bias=stable, feat_extract_norm="layer" if stable else "group", do_stable_layer_norm=stable,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, hidden_dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0)
    if kind == "hubert":
        hf, convert, ours_cls = transformers.HubertModel(transformers.HubertConfig(**common)), from_hf_hubert, HubertModel
    else:
        # Few buckets and a short max distance, so 40-frame inputs reach the log-spaced and clipped buckets.
        hf_cfg = transformers.WavLMConfig(num_buckets=32, max_bucket_distance=24, **common)
        hf, convert, ours_cls = transformers.WavLMModel(hf_cfg), from_hf_wavlm, WavLMModel
    hf.eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "layer_norm" in name or name.endswith("bias") or "gru_rel_pos" in name:
                p.add_(0.1 * torch.randn_like(p))
            if "rel_attn_embed" in name:  # a bias of the size of the scores, not BERT-init small
                p.normal_(0.0, 1.0)
    cfg, state = convert(hf)
    ours = ours_cls(cfg).eval()
    missing = ours.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == ["final_proj.bias", "final_proj.weight", "label_embs"]
    return hf, ours


@pytest.mark.parametrize("kind", ["hubert", "wavlm"])
@pytest.mark.parametrize("stable", [False, True])
def test_hubert_and_wavlm_encoders_match_with_padding(kind: str, stable: bool) -> None:
    """A padded batch through encode() == each utterance alone through transformers (and batched, for layer norm).

    transformers' group-norm feature encoder takes its statistics over padding too, so its
    padded batch is not a reference; each row alone is.
    """
    hf, ours = _hf_encoder_pair(kind, stable)
    lengths_B = torch.tensor([13_000, 7_000, 9_500])
    valid_BT = torch.arange(13_000).view(1, -1) < lengths_B.view(-1, 1)
    wav_BT = torch.randn(3, 13_000) * valid_BT
    with torch.no_grad():
        got = ours.encode(wav_BT, lengths_B)
        for b, n in enumerate(lengths_B.tolist()):
            want_TC = hf(wav_BT[b:b + 1, :n]).last_hidden_state[0]
            assert int(got.frame_lengths_B[b]) == want_TC.shape[0]
            assert (got.features_BTC[b, : want_TC.shape[0]] - want_TC).abs().max() <= TOL
        if stable:
            want_BTC = hf(wav_BT, attention_mask=valid_BT.long()).last_hidden_state
            keep_BT = ~got.padding_BT
            assert (got.features_BTC[keep_BT] - want_BTC[keep_BT]).abs().max() <= TOL


def test_wavlm_buckets_match_transformers_at_full_size() -> None:
    """320 buckets up to 800 frames over 1,000 frames (20 s): every offset maps to the same bucket."""
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    from speechbs.models.blocks.relpos import relative_position_buckets
    hf_attn = WavLMAttention(64, 4, num_buckets=320, max_distance=800)
    pos_T = torch.arange(1_000)
    want_TT = hf_attn._relative_positions_bucket(pos_T.view(1, -1) - pos_T.view(-1, 1))
    assert torch.equal(relative_position_buckets(1_000, 320, 800), want_TT)
