"""HuBERT (Hsu et al. 2021): masked prediction of cluster labels, on wav2vec 2.0's encoder.

Legend: B utterances, T samples (wav) or frames, L label frames, C channels,
N labelled frames scored, K clusters.

The feature encoder, masking and transformer are the shared encoder's
(``encoder.py``: ``HubertModel`` is a ``SpeechEncoder`` with two heads). The task (fairseq
``hubert.py`` + ``hubert_criterion.py``): the transformer output of each frame
is projected (``final_proj``) and scored against one learned embedding per
cluster by cosine similarity / temperature; cross-entropy against the frame's
cluster label, summed over masked frames (weight ``pred_masked_weight``) and
unmasked frames (``pred_nomask_weight``, 0 for BASE), plus the feature L2
penalty. fairseq writes the logits as [positive, all K] with the duplicate
masked out; a softmax over the K clusters is the same thing.

Label alignment (fairseq ``forward_targets``): with ``ratio`` label frames per
model frame (1 for 50 Hz labels, 2 for 100 Hz), model frame t takes label
``floor(t * ratio)`` and an utterance keeps ``min(frames, floor(labels / ratio))``
frames; fairseq crops the whole batch to that, speechbs crops each row (the
rest is padding), so a row is treated the same in any micro-batch.
Random draws come from ``seeds_B`` exactly as in ``wav2vec2.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from speechbs.errors import ConfigError
from speechbs.models.blocks import contrastive
from speechbs.models.encoder import EncoderOutput, RelativePositionBuckets, SpeechEncoder
from speechbs.models.hubert_config import HubertConfig


@dataclass
class ClusterTargets:
    """The cluster labels of one micro-batch, cropped to the segments the planner chose.

    Made by ``speechbs.targets.labels`` (the label files and their checks); defined here, with
    the model that consumes it, so that models/ needs nothing from the data side.
    """

    labels_BL: torch.Tensor
    """int64 cluster ids, padded with -1 after each row's length."""
    lengths_B: torch.Tensor
    """int64 label frames per row."""
    label_rate_hz: float
    """Label frames per second of audio (50 or 100 in HuBERT)."""
    num_clusters: int
    """K: ids are in [0, K)."""

    def to(self, device: torch.device | str) -> ClusterTargets:
        return ClusterTargets(self.labels_BL.to(device, non_blocking=True),
                              self.lengths_B.to(device, non_blocking=True),
                              self.label_rate_hz, self.num_clusters)


@dataclass
class HubertLoss:
    """One micro-batch's loss as sums, for one global normalization (DESIGN section 2).

    ``num_targets`` is fairseq's ``sample_size``: the scored masked frames (when
    ``pred_masked_weight > 0``) plus the scored unmasked frames (when
    ``pred_nomask_weight > 0``); with BASE weights, the masked frames with a label.
    """

    loss_sum: torch.Tensor
    """masked_weight * masked_loss_sum + nomask_weight * unmasked_loss_sum + penalty_weight * penalty_sum."""
    num_targets: torch.Tensor
    """Frames the loss is normalized by (int64)."""
    masked_loss_sum: torch.Tensor
    """Cross-entropy summed over masked labelled frames, nats."""
    unmasked_loss_sum: torch.Tensor
    """Cross-entropy summed over unmasked labelled frames, nats (a log when its weight is 0)."""
    num_correct: torch.Tensor
    """Masked labelled frames whose label scored highest."""
    num_correct_unmasked: torch.Tensor
    """Unmasked labelled frames whose label scored highest."""
    num_unmasked: torch.Tensor
    """Unmasked labelled frames (int64)."""
    num_masked: torch.Tensor
    """Masked labelled frames (int64)."""
    penalty_sum: torch.Tensor
    """Sum over utterances of (mean squared encoder feature) x (its targets): a per-target sum."""

    def logs(self) -> dict[str, torch.Tensor]:
        """Detached sums for logging; divide by the summed ``num_targets`` (accuracy = num_correct / num_targets)."""
        names = ("masked_loss_sum", "unmasked_loss_sum", "num_correct", "num_correct_unmasked",
                 "num_unmasked", "penalty_sum", "num_targets")
        return {name: getattr(self, name).detach() for name in names}


@dataclass
class HubertOutput:
    """Pretraining forward: the loss terms, the encoder outputs and what was scored."""

    loss: HubertLoss
    encoder: EncoderOutput
    """Frame lengths are those kept by the label alignment."""
    mask_BT: torch.Tensor
    """Time mask used (True = masked; never in padding)."""
    labels_BT: torch.Tensor
    """Cluster label of each model frame, -1 where there is none."""
    labelled_logits_NK: torch.Tensor = field(repr=False)
    """Every labelled frame's logits over the K clusters, in (row, frame) order."""
    labelled_masked_N: torch.Tensor = field(repr=False)
    """Which of those frames were masked."""

    @property
    def logits_NK(self) -> torch.Tensor:
        """Masked labelled frames' logits (a boolean index: a host sync on a GPU, so only when asked)."""
        return self.labelled_logits_NK[self.labelled_masked_N]


def align_labels(targets: ClusterTargets, frame_lengths_B: torch.Tensor, num_frames: int,
                 frame_rate_hz: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels per model frame (B, T) with -1 where none, frame lengths cropped to the labels) as fairseq."""
    ratio = targets.label_rate_hz / frame_rate_hz
    labels_BL = targets.labels_BL.to(frame_lengths_B.device)
    label_lengths_B = targets.lengths_B.to(frame_lengths_B.device)
    kept_B = torch.minimum(frame_lengths_B, torch.floor(label_lengths_B.double() / ratio).long())
    index_T = (torch.arange(num_frames, device=labels_BL.device).double() * ratio).long()
    index_BT = index_T.view(1, -1).expand(labels_BL.shape[0], -1)
    if labels_BL.shape[1] == 0:
        labels_BT = torch.full_like(index_BT, -1)
    else:
        labels_BT = labels_BL.gather(1, index_BT.clamp(max=labels_BL.shape[1] - 1))
    valid_BT = torch.arange(num_frames, device=labels_BL.device).view(1, -1) < kept_B.view(-1, 1)
    return torch.where(valid_BT, labels_BT, torch.full_like(labels_BT, -1)), kept_B


def cluster_logits(proj_NC: torch.Tensor, embs_KC: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarity of each projection with every cluster embedding / temperature, (N, K), in >= fp32."""
    dtype = torch.promote_types(proj_NC.dtype, torch.float32)
    # Normalize then multiply: F.cosine_similarity would build an (N, K, C) tensor.
    with torch.autocast(proj_NC.device.type, enabled=False):  # autocast would run the matmul in bf16/fp16
        return (F.normalize(proj_NC.to(dtype), dim=-1, eps=1e-8)
                @ F.normalize(embs_KC.to(dtype), dim=-1, eps=1e-8).T) / temperature


class HubertModel(SpeechEncoder):
    """The shared encoder (``encoder.py``) with the masked-prediction heads."""

    heads = ("final_proj", "label_embs")
    cfg: HubertConfig

    def __init__(self, cfg: HubertConfig, *, relative_position: RelativePositionBuckets | None = None) -> None:
        """``relative_position``: the encoder option WavLM sets (``wavlm.py``); None for HuBERT."""
        super().__init__(cfg, relative_position=relative_position)
        self.final_proj = nn.Linear(cfg.embed_dim, cfg.final_dim)
        self.label_embs = nn.Parameter(torch.empty(cfg.num_clusters, cfg.final_dim).uniform_())

    def _check_targets(self, targets: ClusterTargets, batch_size: int) -> None:
        cfg = self.cfg
        if targets.label_rate_hz != cfg.label_rate_hz or targets.num_clusters != cfg.num_clusters:
            raise ConfigError(
                f"the cluster labels are {targets.num_clusters} clusters at {targets.label_rate_hz} Hz but the model "
                f"expects model.num_clusters = {cfg.num_clusters} at model.label_rate_hz = {cfg.label_rate_hz}; "
                f"set those two to match the label files' .km.json sidecar")
        if targets.labels_BL.shape[0] != batch_size:
            raise ValueError(f"targets have {targets.labels_BL.shape[0]} rows for a batch of {batch_size}")

    def forward(self, wav_BT: torch.Tensor, lengths_B: torch.Tensor, *, seeds_B: torch.Tensor,
                targets: ClusterTargets, layerdrop_seed: int | None = None, mask_BT: torch.Tensor | None = None,
                return_layers: bool = False) -> HubertOutput:
        """Pretraining forward: mask, contextualize, score every labelled frame against the K clusters.

        ``seeds_B`` (int64, one per utterance) drives every random draw;
        ``mask_BT`` overrides the time mask (intersected with the labelled frames).
        """
        self.check_inputs(wav_BT, lengths_B)
        self._check_targets(targets, wav_BT.shape[0])
        feats_BCT, frame_lengths_B = self.conv_features(wav_BT, lengths_B)
        num_frames = feats_BCT.shape[2]
        labels_BT, frame_lengths_B = align_labels(targets, frame_lengths_B, num_frames, self.cfg.frame_rate_hz())
        penalty_B = contrastive.feature_penalty_per_row(feats_BCT, frame_lengths_B)
        enc = self.contextualize(self.local_features(feats_BCT), frame_lengths_B, seeds_B=seeds_B, mask_BT=mask_BT,
                                 layerdrop_seed=layerdrop_seed, return_layers=return_layers)
        mask_BT = enc.mask_BT
        assert mask_BT is not None  # seeds_B were given: the masks were drawn
        labelled_BT = labels_BT >= 0
        b_N, t_N = labelled_BT.nonzero(as_tuple=True)
        logits_NK = cluster_logits(self.final_proj(enc.features_BTC[b_N, t_N]), self.label_embs,
                                   self.cfg.logit_temperature)
        masked_N = mask_BT[b_N, t_N]
        loss = self._loss(logits_NK, labels_BT[b_N, t_N], masked_N, b_N, penalty_B)
        return HubertOutput(loss=loss, encoder=enc, mask_BT=mask_BT, labels_BT=labels_BT,
                            labelled_logits_NK=logits_NK, labelled_masked_N=masked_N)

    def _loss(self, logits_NK: torch.Tensor, labels_N: torch.Tensor, masked_N: torch.Tensor,
              b_N: torch.Tensor, penalty_B: torch.Tensor) -> HubertLoss:
        cfg = self.cfg
        ce_N = F.cross_entropy(logits_NK, labels_N, reduction="none")
        correct_N = logits_NK.argmax(dim=-1) == labels_N
        masked_loss_sum, unmasked_loss_sum = (ce_N * masked_N).sum(), (ce_N * ~masked_N).sum()
        counted_N = (masked_N & (cfg.pred_masked_weight > 0)) | (~masked_N & (cfg.pred_nomask_weight > 0))
        targets_B = torch.zeros_like(penalty_B).index_add_(0, b_N, counted_N.to(penalty_B.dtype))
        penalty_sum = (penalty_B * targets_B).sum()
        loss_sum = (cfg.pred_masked_weight * masked_loss_sum + cfg.pred_nomask_weight * unmasked_loss_sum
                    + cfg.feature_penalty_weight * penalty_sum)
        return HubertLoss(
            loss_sum=loss_sum, num_targets=counted_N.sum(), masked_loss_sum=masked_loss_sum,
            unmasked_loss_sum=unmasked_loss_sum, num_correct=(correct_N & masked_N).sum(),
            num_correct_unmasked=(correct_N & ~masked_N).sum(), num_unmasked=(~masked_N).sum(),
            num_masked=masked_N.sum(), penalty_sum=penalty_sum)


def num_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
