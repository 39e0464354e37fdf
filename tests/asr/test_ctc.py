"""CTC pieces: greedy best path, feasibility (frames vs labels + repeats), the per-row loss."""

from __future__ import annotations

import numpy as np
import torch

from speechbs.asr.ctc import LetterTargets, ctc_loss_per_row, greedy_ids, min_ctc_frames
from speechbs.asr.vocab import build_vocab
from speechbs.data.batching import Segment


def _one_hot_logits(paths: list[list[int]], num_classes: int) -> torch.Tensor:
    logits_BTV = torch.full((len(paths), max(map(len, paths)), num_classes), -10.0)
    for b, path in enumerate(paths):
        for t, c in enumerate(path):
            logits_BTV[b, t, c] = 10.0
    return logits_BTV


def test_greedy_merges_repeats_drops_blanks_and_respects_lengths():
    logits_BTV = _one_hot_logits([[5, 5, 0, 5, 6, 6, 7], [4, 0, 4, 4, 9, 9, 9]], 10)
    ids = greedy_ids(logits_BTV, torch.tensor([7, 4]))
    assert ids == [[5, 5, 6, 7], [4, 4]]


def test_min_frames_counts_repeats():
    assert min_ctc_frames(np.array([1, 1, 2, 2, 2])) == 5 + 3
    assert min_ctc_frames(np.array([], dtype=np.int64)) == 0


def test_infeasible_rows_are_left_out_of_the_loss():
    vocab, _ = build_vocab(["L L |", "A |"])
    hook = LetterTargets(["L L |", "A |", ""], vocab)
    targets = hook([Segment(index=i, offset_samples=0, num_samples=100) for i in range(3)])
    assert targets.min_frames_B.tolist() == [4, 2, 0]
    logits_BTV = torch.randn(3, 6, len(vocab), requires_grad=True)
    loss_B, feasible_B = ctc_loss_per_row(logits_BTV, torch.tensor([3, 6, 6]), targets)
    assert feasible_B.tolist() == [False, True, True]  # 3 frames cannot hold L <blank> L |
    assert loss_B[0] == 0 and torch.isfinite(loss_B).all() and loss_B[1] > 0 and loss_B[2] > 0
    loss_B.sum().backward()
    assert logits_BTV.grad[0].abs().sum() == 0  # no gradient from the infeasible row


def test_targets_hook_counts_oov_and_pads():
    vocab, _ = build_vocab(["A B |"])
    hook = LetterTargets(["A Q |", "B |"], vocab)
    targets = hook([Segment(index=1, offset_samples=0, num_samples=10), Segment(index=0, offset_samples=0, num_samples=10)])
    assert targets.num_oov_B.tolist() == [0, 1]
    assert targets.lengths_B.tolist() == [2, 3]
    assert targets.labels_BL[0, 2].item() == -1
