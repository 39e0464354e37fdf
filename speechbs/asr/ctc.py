"""The CTC model (encoder + dropout + letter classifier), its targets, loss and greedy decoding.

Legend: B utterances, T frames, C encoder channels, V vocabulary classes,
L label positions (padded with -1).

The encoder is any speechbs SSL model through its ``encode`` interface
(``speechbs.models.encoder``), so wav2vec 2.0, HuBERT and WavLM fine-tune alike.
CTC (Graves et al. 2006) needs at least one frame per label plus one blank
between each pair of equal neighbours; an utterance with fewer frames has no
alignment. It is left out of the loss and counted (fairseq only zeroes its
infinite loss with ``zero_infinity``, which hides it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from speechbs.asr.vocab import BLANK, Vocab


class CTCModel(nn.Module):
    """``encoder.encode`` -> dropout -> linear over the vocabulary (fairseq ``Wav2VecCtc``)."""

    def __init__(self, encoder: nn.Module, embed_dim: int, vocab: Vocab, final_dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.final_dropout = nn.Dropout(final_dropout)
        self.head = nn.Linear(embed_dim, len(vocab))
        # The alphabet travels in the state dict: a checkpoint decodes without any side file.
        self.register_buffer("vocab_utf8", vocab.to_tensor())

    @property
    def vocab(self) -> Vocab:
        return Vocab.from_tensor(self.vocab_utf8)

    def forward(self, wav_BT: torch.Tensor, lengths_B: torch.Tensor, *, seeds_B: torch.Tensor | None = None,
                layerdrop_seed: int | None = None, freeze_encoder: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_BTV, frame_lengths_B). ``seeds_B`` turns on the fine-tuning masks.

        ``freeze_encoder`` runs the encoder without a graph (fairseq's first
        ``freeze_finetune_updates``: only the classifier learns).
        """
        with torch.no_grad() if freeze_encoder else contextlib.nullcontext():
            out = self.encoder.encode(wav_BT, lengths_B, seeds_B=seeds_B, layerdrop_seed=layerdrop_seed,
                                      return_layers=False)
        logits_BTV = self.head(self.final_dropout(out.features_BTC))
        return logits_BTV, out.frame_lengths_B


@dataclass
class CTCTargets:
    """Letter targets of one micro-batch (what the loader's targets hook returns)."""

    labels_BL: torch.Tensor
    """int64 class ids, padded with -1."""
    lengths_B: torch.Tensor
    """int64 labels per row."""
    min_frames_B: torch.Tensor
    """int64 frames CTC needs: labels + repeated neighbours (a blank must separate them)."""
    num_oov_B: torch.Tensor
    """int64 symbols of each row that were not in the vocabulary (mapped to ``<unk>``)."""


def min_ctc_frames(ids: np.ndarray) -> int:
    """Shortest input a CTC alignment of ``ids`` fits in: one frame per label, one blank per repeat."""
    return int(len(ids) + np.count_nonzero(ids[1:] == ids[:-1])) if len(ids) else 0


class LetterTargets:
    """Loader hook: manifest rows -> :class:`CTCTargets`. Picklable; runs in data workers.

    Segments must be whole utterances (``batch.crop = "none"``): a cropped span
    has no transcript of its own.
    """

    def __init__(self, ltr_lines: Sequence[str], vocab: Vocab) -> None:
        encoded = [vocab.encode(line) for line in ltr_lines]
        self.ids = [ids for ids, _ in encoded]
        self.num_oov = np.asarray([n for _, n in encoded], dtype=np.int64)
        self.min_frames = np.asarray([min_ctc_frames(ids) for ids in self.ids], dtype=np.int64)

    def __call__(self, segments: Sequence) -> CTCTargets:
        rows = [seg.index for seg in segments]
        lengths = [len(self.ids[r]) for r in rows]
        labels_BL = torch.full((len(rows), max(lengths + [1])), -1, dtype=torch.int64)
        for b, r in enumerate(rows):
            labels_BL[b, : lengths[b]] = torch.from_numpy(self.ids[r])
        return CTCTargets(labels_BL, torch.tensor(lengths, dtype=torch.int64),
                          torch.from_numpy(self.min_frames[rows]), torch.from_numpy(self.num_oov[rows]))


def ctc_loss_per_row(logits_BTV: torch.Tensor, frame_lengths_B: torch.Tensor,
                     targets: CTCTargets) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_B, feasible_B): CTC negative log-likelihood per utterance (nats), 0 where infeasible.

    Computed in float32 whatever the autocast dtype; ``zero_infinity`` as a
    second guard (fairseq's fine-tuning setting).
    """
    device = logits_BTV.device
    lprobs_TBV = F.log_softmax(logits_BTV.float(), dim=-1).transpose(0, 1)
    lengths_B = targets.lengths_B.to(device)
    feasible_B = frame_lengths_B >= targets.min_frames_B.to(device)
    loss_B = F.ctc_loss(lprobs_TBV, targets.labels_BL.to(device).clamp(min=0), frame_lengths_B, lengths_B,
                        blank=BLANK, reduction="none", zero_infinity=True)
    return torch.where(feasible_B, loss_B, torch.zeros_like(loss_B)), feasible_B


def greedy_ids(logits_BTV: torch.Tensor, frame_lengths_B: torch.Tensor) -> list[list[int]]:
    """Best path per row: argmax per frame, merge repeats, drop blanks."""
    best_BT = logits_BTV.argmax(dim=-1).cpu()
    result = []
    for row, length in zip(best_BT, frame_lengths_B.cpu().tolist()):
        path = torch.unique_consecutive(row[:length])
        result.append([int(i) for i in path.tolist() if i != BLANK])
    return result


def build_ctc_model(cfg, vocab: Vocab) -> CTCModel:
    """A CTC model for ``cfg`` (its ``model`` section is the encoder), randomly initialized."""
    from speechbs.pretrained import build_model

    encoder = build_model(cfg.model)
    return CTCModel(encoder, cfg.model.arch.embed_dim, vocab, cfg.finetune.final_dropout)


def load_ctc_checkpoint(path) -> tuple[CTCModel, object, dict]:
    """(model in eval mode on the CPU, config, checkpoint dict) of a fine-tuning checkpoint or run dir.

    A run directory means its ``checkpoints/best.pt`` (lowest validation WER) when its index
    records one, else its latest checkpoint (:func:`speechbs.pretrained.resolve_checkpoint`).
    """
    from speechbs.errors import DataError
    from speechbs.pretrained import read_checkpoint

    saved = read_checkpoint(path)
    if not is_ctc_state(saved.checkpoint["model"]):
        raise DataError(f"{saved.path} is not a fine-tuned CTC checkpoint (no vocabulary in its weights); "
                        f"fine-tune it first with `speechbs finetune RECIPE --set finetune.init={path}`")
    saved.checkpoint["path"] = str(saved.path)
    return ctc_model_of(saved), saved.config, saved.checkpoint


def is_ctc_state(state: dict) -> bool:
    """Whether a checkpoint's model state is a fine-tuned CTC model (its alphabet travels in the weights)."""
    return "vocab_utf8" in state


def ctc_model_of(saved) -> CTCModel:
    """The CTC model held by an already-read fine-tuning checkpoint (CPU, eval mode; strict load)."""
    state = saved.checkpoint["model"]
    model = build_ctc_model(saved.config, Vocab.from_tensor(state["vocab_utf8"]))
    model.load_state_dict(state)
    return model.eval()
