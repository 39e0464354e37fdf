"""AdamW with decoupled weight decay on weights only.

Biases, normalization parameters, the mask embedding and codebooks are not
decayed (1-D tensors and parameters a model lists in ``no_weight_decay()``),
as is standard for transformers; fairseq applies decay to all parameters,
which matters little at wav2vec 2.0's 0.01.
"""

from __future__ import annotations

import torch
from torch import nn

from speechbs.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    skip = set(getattr(model, "no_weight_decay", lambda: ())())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name in skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write the scheduled LR into every group (the schedule is a pure function of the step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
