"""Building blocks: conv arithmetic, padding-aware group norm, masking, distractors, quantizer, layer drop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechbs.models.blocks import counter_rng
from speechbs.models.blocks.contrastive import contrastive_logits, contrastive_sum, diversity_fraction, diversity_share
from speechbs.models.blocks.feature_encoder import (ConvFeatureEncoder, GradMultiply, channel_norm, masked_channel_norm,
                                                    no_row_padded)
from speechbs.models.blocks.masking import sample_negatives, span_mask
from speechbs.models.blocks.quantizer import GumbelQuantizer, perplexity
from speechbs.models.blocks.transformer import TransformerEncoder, TransformerShape
from speechbs.models.frames import frame_rate_hz, hop_samples, num_frames, receptive_field_samples

STACK = ((4, 10, 5),) + ((4, 3, 2),) * 4 + ((4, 2, 2),) * 2


def test_conv_frame_arithmetic_equals_actual_output_length() -> None:
    enc = ConvFeatureEncoder(STACK, "layer", bias=False)
    lengths = [400, 401, 719, 720, 721, 1000, 3333, 16_000, 16_319, 16_320, 32_000, 45_678]
    for num_samples in lengths:
        out_BCT, frames_B = enc(torch.randn(1, num_samples), torch.tensor([num_samples]))
        assert out_BCT.shape[2] == frames_B.item() == (num_samples - 400) // 320 + 1, num_samples
    assert num_frames(torch.tensor([399, 0]), STACK).tolist() == [0, 0]
    assert receptive_field_samples(STACK) == 400 and hop_samples(STACK) == 320 and frame_rate_hz(STACK, 16_000) == 50
    # ints and numpy arrays give what tensors give
    assert [num_frames(n, STACK) for n in lengths] == num_frames(torch.tensor(lengths), STACK).tolist()
    assert num_frames(np.asarray(lengths + [0, 399]), STACK).tolist() == [(n - 400) // 320 + 1 for n in lengths] + [0, 0]


def test_masked_group_norm_is_group_norm_without_padding_and_ignores_padding() -> None:
    norm = torch.nn.GroupNorm(6, 6).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x_BCT = torch.randn(2, 6, 50, dtype=torch.float64) * 3 + 1
    full = masked_channel_norm(x_BCT, torch.tensor([50, 50]), norm)
    torch.testing.assert_close(full, norm(x_BCT), rtol=1e-12, atol=1e-12)
    # Row 1 is only 30 frames long: garbage after frame 30 must not change frames < 30.
    garbage_BCT = x_BCT.clone()
    garbage_BCT[1, :, 30:] = 1e3
    padded = masked_channel_norm(garbage_BCT, torch.tensor([50, 30]), norm)
    alone = norm(x_BCT[1:, :, :30])
    torch.testing.assert_close(padded[1:, :, :30], alone, rtol=1e-12, atol=1e-12)


def test_the_fused_norm_runs_only_when_no_row_is_padded_and_equals_the_masked_one() -> None:
    """The fast path (fused F.group_norm) is the masked norm, values and gradients, where it runs."""
    norm = torch.nn.GroupNorm(6, 6).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    assert no_row_padded(torch.tensor([50, 50]), 50) and not no_row_padded(torch.tensor([50, 49]), 50)
    assert not no_row_padded(torch.tensor([50, 50], device="meta"), 50)  # would read a device: never asked
    x_BCT = (torch.randn(2, 6, 50, dtype=torch.float64) * 3 + 1).requires_grad_()
    lengths_B = torch.tensor([50, 50])
    fused, masked = channel_norm(x_BCT, lengths_B, norm), masked_channel_norm(x_BCT, lengths_B, norm)
    torch.testing.assert_close(fused, masked, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(fused)
    want = torch.autograd.grad(masked, [x_BCT, norm.weight], upstream)
    got = torch.autograd.grad(fused, [x_BCT, norm.weight], upstream)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    # A padded batch takes the masked path: frames past a row's length do not matter.
    garbage_BCT = x_BCT.detach().clone()
    garbage_BCT[1, :, 30:] = 1e3
    torch.testing.assert_close(channel_norm(garbage_BCT, torch.tensor([50, 30]), norm)[1, :, :30],
                               channel_norm(x_BCT.detach()[1:, :, :30], torch.tensor([30]), norm)[0],
                               rtol=1e-12, atol=1e-12)


def test_grad_multiply_scales_gradient_only() -> None:
    x = torch.randn(5, requires_grad=True)
    y = GradMultiply.apply(x, 0.1)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((5,), 0.1))


def test_counter_rng_is_uniform_and_keyed_by_seed_and_counter() -> None:
    counters = torch.arange(200_000)
    u = counter_rng.uniform_open(torch.tensor(7), 1, counters)
    assert 0.0 < u.min() and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    hist = torch.histc(u.float(), bins=10, min=0, max=1) / len(u)
    assert (hist - 0.1).abs().max() < 0.005
    assert torch.equal(u, counter_rng.uniform_open(torch.tensor(7), 1, counters))
    other_seed = counter_rng.uniform_open(torch.tensor(8), 1, counters)
    other_stream = counter_rng.uniform_open(torch.tensor(7), 2, counters)
    assert (u == other_seed).float().mean() < 1e-3 and (u == other_stream).float().mean() < 1e-3
    # Negative and 64-bit seeds are fine.
    big = counter_rng.hash32(torch.tensor([-1, 2**62 + 5]).view(-1, 1), 3, torch.arange(4).view(1, -1))
    assert big.min() >= 0 and big.max() < 2**32


def _runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each maximal run of True."""
    runs, start = [], None
    for t, v in enumerate(row.tolist() + [False]):
        if v and start is None:
            start = t
        elif not v and start is not None:
            runs.append((start, t - start))
            start = None
    return runs


def test_span_mask_fraction_spans_and_padding() -> None:
    lengths_B = torch.randint(200, 800, (400,))
    mask_BT = span_mask(lengths_B, 800, mask_prob=0.65, span=10, min_spans=2,
                        seeds_B=torch.arange(400), stream=1)
    # Nothing masked in padding.
    pos_T = torch.arange(800)
    assert not (mask_BT & (pos_T.view(1, -1) >= lengths_B.view(-1, 1))).any()
    # ~49% of frames masked (paper section 4.2, p = 0.065 starts x 10 frames, with overlap).
    fraction = mask_BT.sum() / lengths_B.sum()
    assert 0.46 < fraction < 0.52, fraction
    # Each run is a union of whole spans of 10 frames.
    for row in mask_BT[:20]:
        assert all(length >= 10 for _, length in _runs(row))


def test_span_mask_min_spans_and_exact_span_length() -> None:
    lengths_B = torch.full((50,), 300)
    mask_BT = span_mask(lengths_B, 300, mask_prob=1e-4, span=10, min_spans=2,
                        seeds_B=torch.arange(50), stream=1)
    for row in mask_BT:
        runs = _runs(row)
        assert sum(length for _, length in runs) in (10, 20) or len(runs) == 1
        assert sum(length for _, length in runs) <= 20
    assert (mask_BT.sum(dim=1) == 20).float().mean() > 0.8  # two separate spans of exactly 10


def test_span_mask_per_row_independent_of_batch_and_padding() -> None:
    lengths_B = torch.tensor([120, 57, 300])
    seeds_B = torch.tensor([5, 6, 7])
    batch_BT = span_mask(lengths_B, 300, mask_prob=0.65, span=10, min_spans=2, seeds_B=seeds_B, stream=1)
    for b in range(3):
        alone = span_mask(lengths_B[b:b + 1], int(lengths_B[b]), mask_prob=0.65, span=10, min_spans=2,
                          seeds_B=seeds_B[b:b + 1], stream=1)
        assert torch.equal(batch_BT[b, : lengths_B[b]], alone[0])


def test_negatives_same_utterance_masked_never_self() -> None:
    lengths_B = torch.tensor([200, 90, 150])
    mask_BT = span_mask(lengths_B, 200, mask_prob=0.65, span=10, min_spans=2,
                        seeds_B=torch.tensor([1, 2, 3]), stream=1)
    neg_NK = sample_negatives(mask_BT, 100, torch.tensor([1, 2, 3]))
    b_N, t_N = mask_BT.nonzero(as_tuple=True)
    assert neg_NK.shape == (len(b_N), 100)
    assert not (neg_NK == torch.arange(len(b_N)).view(-1, 1)).any()
    assert torch.equal(b_N[neg_NK], b_N.view(-1, 1).expand_as(neg_NK))
    assert mask_BT[b_N[neg_NK], t_N[neg_NK]].all()  # masked frames, hence never padding
    # Uniform over the other masked frames of the row: every one of them gets picked.
    row0 = b_N == 0
    picked = torch.unique(neg_NK[row0])
    assert len(picked) == int(row0.sum())


def _gathered_logits(pred_NC, target_NC, negatives_NK, codes_NG, temperature):
    """fairseq's way: gather (N, K, C) distractor vectors, cosine against [positive, distractors]."""
    candidates_NKC = torch.cat([target_NC.unsqueeze(1), target_NC[negatives_NK]], dim=1)
    logits_NK = torch.cosine_similarity(pred_NC.unsqueeze(1), candidates_NKC, dim=-1) / temperature
    same_NK = torch.nn.functional.pad((codes_NG[negatives_NK] == codes_NG.unsqueeze(1)).all(-1), (1, 0))
    return logits_NK.masked_fill(same_NK, float("-inf"))


def test_contrastive_logits_equal_gathered_distractors_values_and_gradients() -> None:
    """Per-row similarity blocks give fairseq's gathered cosine logits, forward and backward."""
    torch.manual_seed(0)
    lengths_B = torch.tensor([200, 90, 150, 3])
    mask_BT = span_mask(lengths_B, 200, mask_prob=0.65, span=1, min_spans=2,
                        seeds_B=torch.tensor([1, 2, 3, 4]), stream=1)
    b_N = mask_BT.nonzero(as_tuple=True)[0]
    negatives_NK = sample_negatives(mask_BT, 100, torch.tensor([1, 2, 3, 4]))
    N = len(b_N)
    pred_NC = torch.randn(N, 16, dtype=torch.float64, requires_grad=True)
    target_NC = torch.randn(N, 16, dtype=torch.float64, requires_grad=True)
    codes_NG = torch.randint(0, 4, (N, 2))  # few codes: many distractors share the target's
    got = contrastive_logits(pred_NC, target_NC, b_N, 4, negatives_NK, codes_NG, 0.1)
    want = _gathered_logits(pred_NC, target_NC, negatives_NK, codes_NG, 0.1)
    assert got.shape == (N, 101)
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.isinf(got).any()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(contrastive_sum(got)[0], (pred_NC, target_NC))
    wants = torch.autograd.grad(contrastive_sum(want)[0], (pred_NC, target_NC))
    for g, w in zip(grads, wants):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_contrastive_logits_stay_fp32_under_autocast() -> None:
    """fairseq takes the cosine logits in fp32; autocast must not run the similarity matmul in bf16."""
    torch.manual_seed(0)
    b_N = torch.tensor([0] * 40 + [1] * 30)
    mask_BT = torch.zeros(2, 50, dtype=torch.bool)
    mask_BT[0, :40], mask_BT[1, :30] = True, True
    negatives_NK = sample_negatives(mask_BT, 20, torch.tensor([1, 2]))
    pred_NC, target_NC = torch.randn(70, 32), torch.randn(70, 32)
    codes_NG = torch.arange(140).view(70, 2)
    want = contrastive_logits(pred_NC, target_NC, b_N, 2, negatives_NK, codes_NG, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = contrastive_logits(pred_NC.bfloat16(), target_NC.bfloat16(), b_N, 2, negatives_NK, codes_NG, 0.1)
    assert got.dtype == torch.float32
    # Only the inputs' rounding to bf16 remains (~3 significant digits of each vector).
    torch.testing.assert_close(got, want, rtol=0, atol=0.15)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same = contrastive_logits(pred_NC, target_NC, b_N, 2, negatives_NK, codes_NG, 0.1)
    torch.testing.assert_close(same, want, rtol=1e-6, atol=1e-5)


def test_contrastive_logits_mask_distractors_equal_to_positive() -> None:
    target_NC = torch.randn(3, 8)
    codes_NG = torch.tensor([[0, 1], [2, 3], [2, 4]])
    b_N = torch.zeros(3, dtype=torch.long)
    negatives_NK = torch.tensor([[1, 2, 1, 2], [0, 2, 0, 2], [0, 1, 0, 1]])
    codes_NG[2] = codes_NG[1]  # frame 2 quantizes like frame 1: they are each other's positive
    logits_NK = contrastive_logits(target_NC, target_NC, b_N, 1, negatives_NK, codes_NG, 0.1)
    assert logits_NK.shape == (3, 5)
    assert torch.isinf(logits_NK[1, 2]) and torch.isinf(logits_NK[2, 2]) and torch.isfinite(logits_NK[0]).all()
    torch.testing.assert_close(logits_NK[:, 0], torch.full((3,), 10.0))
    loss, correct = contrastive_sum(logits_NK)
    assert correct == 3 and loss > 0


def test_diversity_loss_hand_computed() -> None:
    # Codebook 0: mean distribution uniform over 4 entries -> perplexity 4.
    # Codebook 1: always entry 2 -> perplexity 1. G*V = 8 -> diversity (8 - 5) / 8.
    probs_NGV = torch.zeros(4, 2, 4)
    probs_NGV[torch.arange(4), 0, torch.arange(4)] = 1.0
    probs_NGV[:, 1, 2] = 1.0
    ppl = perplexity(probs_NGV)
    torch.testing.assert_close(ppl, torch.tensor(5.0))
    torch.testing.assert_close(diversity_fraction(ppl, 2, 4), torch.tensor(0.375))
    # A half/half codebook has perplexity 2.
    torch.testing.assert_close(perplexity(torch.full((3, 1, 2), 0.5)), torch.tensor(2.0))


def test_diversity_share_has_the_exact_gradient_of_the_pooled_term() -> None:
    """Shares of a split add up to N * D of the pool, in value and gradient; alone, one is fairseq's term."""
    torch.manual_seed(0)
    logits_NGV = torch.randn(30, 2, 5, dtype=torch.float64, requires_grad=True)
    probs_NGV = logits_NGV.softmax(dim=-1)
    want = diversity_fraction(perplexity(probs_NGV), 2, 5) * 30
    (want_grad,) = torch.autograd.grad(want, logits_NGV, retain_graph=True)
    pool_GV, num = probs_NGV.sum(dim=0).detach(), torch.tensor(30.0, dtype=torch.float64)
    parts = [diversity_share(probs_NGV[a:b].sum(dim=0), torch.tensor(b - a), pool_GV, num)
             for a, b in ((0, 7), (7, 20), (20, 30))]
    (got_grad,) = torch.autograd.grad(sum(parts), logits_NGV)
    torch.testing.assert_close(sum(parts), want, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-14)
    alone = diversity_share(probs_NGV.sum(dim=0), torch.tensor(30), pool_GV, num)
    torch.testing.assert_close(alone, want, rtol=1e-12, atol=0.0)


def test_diversity_share_of_an_unused_entry_has_no_nan_gradient() -> None:
    logits_NGV = torch.randn(6, 1, 4, dtype=torch.float64)
    logits_NGV[:, 0, 3] = -1e4  # the softmax underflows to exactly 0 for this entry in every frame
    logits_NGV.requires_grad_(True)
    probs_NGV = logits_NGV.softmax(dim=-1)
    share = diversity_share(probs_NGV.sum(dim=0), torch.tensor(6), probs_NGV.sum(dim=0).detach(),
                            torch.tensor(6.0))
    (grad_NGV,) = torch.autograd.grad(share, logits_NGV)
    assert torch.isfinite(grad_NGV).all() and (grad_NGV[:, 0, 3] == 0).all() and grad_NGV.abs().sum() > 0


def test_quantizer_straight_through_and_eval_argmax() -> None:
    torch.manual_seed(0)
    quant = GumbelQuantizer(6, num_groups=2, num_entries=5, codevector_dim=8)
    x_ND = torch.randn(7, 6)
    noise_NGV = -torch.log(-torch.log(torch.rand(7, 2, 5)))
    out = quant(x_ND, temperature=2.0, gumbel_NGV=noise_NGV)
    book_GVE = quant.codevectors.view(2, 5, 4)
    chosen_NG = ((quant.weight_proj(x_ND).view(7, 2, 5) + noise_NGV)).argmax(-1)
    want_NE = torch.cat([book_GVE[0, chosen_NG[:, 0]], book_GVE[1, chosen_NG[:, 1]]], dim=1)
    torch.testing.assert_close(out.codevectors_NE, want_NE)
    out.codevectors_NE.sum().backward()
    assert quant.weight_proj.weight.grad.abs().sum() > 0  # gradient of the soft sample
    quant.eval()
    eval_out = quant(x_ND, temperature=2.0)
    argmax_NG = quant.weight_proj(x_ND).view(7, 2, 5).argmax(-1)
    torch.testing.assert_close(eval_out.codevectors_NE[:, :4], book_GVE[0, argmax_NG[:, 0]])
    with pytest.raises(ValueError):
        quant.train()(x_ND, temperature=2.0)


def _shape(**overrides) -> TransformerShape:
    settings = dict(embed_dim=16, num_layers=6, num_heads=2, ffn_dim=32, layer_norm_first=False,
                    pos_conv_kernel=8, pos_conv_groups=2, dropout=0.0, attention_dropout=0.0,
                    activation_dropout=0.0, layerdrop=0.5)
    return TransformerShape(**{**settings, **overrides})


def test_layerdrop_is_a_function_of_the_seed() -> None:
    enc = TransformerEncoder(_shape())
    drops = [enc.dropped_layers(seed) for seed in range(20)]
    assert drops[3] == enc.dropped_layers(3)
    assert len({tuple(d) for d in drops}) > 5
    assert 0.3 < sum(map(sum, drops)) / (20 * 6) < 0.7
    with pytest.raises(ValueError, match="layerdrop_seed"):
        enc(torch.randn(1, 5, 16), None)
    assert enc.eval().dropped_layers(None) == [False] * 6


@pytest.mark.parametrize("pre_norm", [False, True])
def test_transformer_ignores_padding(pre_norm: bool) -> None:
    enc = TransformerEncoder(_shape(layerdrop=0.0, layer_norm_first=pre_norm)).double().eval()
    x_BTC = torch.randn(2, 30, 16, dtype=torch.float64)
    padding_BT = torch.arange(30).view(1, -1) >= torch.tensor([30, 18]).view(-1, 1)
    garbage_BTC = x_BTC.masked_fill(padding_BT.unsqueeze(-1), 5.0)
    out = enc(garbage_BTC, padding_BT, return_layers=True)
    alone = enc(x_BTC[1:, :18], None)
    torch.testing.assert_close(out.x_BTC[1, :18], alone.x_BTC[0], rtol=1e-10, atol=1e-10)
    assert (out.x_BTC[1, 18:] == 0).all() and len(out.layer_outputs) == 6
    # Told that nothing is padded, it drops the all-False mask: the same result (and, compiled, keeps it).
    none_BT = torch.zeros(2, 30, dtype=torch.bool)
    masked = enc(x_BTC, none_BT).x_BTC
    torch.testing.assert_close(enc(x_BTC, none_BT, unpadded=True).x_BTC, masked, rtol=1e-12, atol=1e-12)
    enc.always_mask = True
    torch.testing.assert_close(enc(x_BTC, none_BT, unpadded=True).x_BTC, masked, rtol=0, atol=0)
