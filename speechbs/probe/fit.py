"""Train a probe head on cached features and score it: accuracy, per-class counts, layer weights.

Every layer's features are standardized with the training set's mean and std per channel
(fixed, not learned), so a layer's weight says how much the head uses it, not how large its
activations are. Training is minibatch AdamW with a fixed seed; with a
validation set the epoch with the best validation accuracy is kept (ties: the earlier one),
without one the last epoch is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from speechbs.probe.heads import HeadKind, ProbeHead


@dataclass
class FitConfig:
    kind: HeadKind = "linear"
    """``linear`` or ``mlp`` on the weighted sum of all layers; ``logreg``: linear on the last layer only."""
    epochs: int = 50
    """Passes over the training examples."""
    batch_size: int = 256
    """Examples per AdamW step."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay (the L2 penalty of ``logreg``)."""
    hidden_dim: int = 256
    """Hidden units of the ``mlp`` head."""
    seed: int = 0
    """Seed of the head's initialization and of the example order."""


@dataclass
class Split:
    """One split's features (N, L, C) float32 and class indices (N,) int64."""

    feats_NLC: torch.Tensor
    labels_N: torch.Tensor


@dataclass
class ProbeResult:
    accuracy: float
    """Test accuracy in [0, 1]."""
    correct_K: list[int]
    total_K: list[int]
    layer_weights_L: list[float]
    """The learned weight of each layer (sums to 1), or one-hot for a single-layer head."""
    best_epoch: int
    valid_accuracy: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def standardizer(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per layer and channel of the training features; a constant channel gets std 1."""
    mean_LC = train.mean(dim=0)
    std_LC = train.std(dim=0, unbiased=False)
    return mean_LC, torch.where(std_LC > 1e-8, std_LC, torch.ones_like(std_LC))


def fit_probe(train: Split, test: Split, num_classes: int, cfg: FitConfig, *, valid: Split | None = None,
              layer: int | None = None) -> ProbeResult:
    """Train a head on ``train`` and score it on ``test`` (``layer``: a single fixed layer)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    mean_LC, std_LC = standardizer(train.feats_NLC)

    def norm(split: Split) -> torch.Tensor:
        return (split.feats_NLC - mean_LC) / std_LC

    x_train, x_test = norm(train), norm(test)
    x_valid = norm(valid) if valid is not None else None
    num_layers, dim = x_train.shape[1], x_train.shape[2]
    if cfg.kind == "logreg" and layer is None:
        layer = num_layers - 1
    torch.manual_seed(cfg.seed)
    head = ProbeHead(num_layers, dim, num_classes, kind="mlp" if cfg.kind == "mlp" else "linear",
                     hidden_dim=cfg.hidden_dim, layer=layer)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = (-1.0, 0, {k: v.clone() for k, v in head.state_dict().items()})
    history = []
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            pick = order[start:start + cfg.batch_size]
            loss = F.cross_entropy(head(x_train[pick]), train.labels_N[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(pick)
        row = {"epoch": epoch, "train_loss": total / len(order)}
        if x_valid is not None:
            row["valid_accuracy"] = _accuracy(head, x_valid, valid.labels_N)
            if row["valid_accuracy"] > best[0]:
                best = (row["valid_accuracy"], epoch, {k: v.clone() for k, v in head.state_dict().items()})
        history.append(row)
    if x_valid is not None:
        head.load_state_dict(best[2])
        best_epoch, valid_accuracy = best[1], best[0]
    else:
        best_epoch, valid_accuracy = cfg.epochs, None
    head.eval()
    with torch.no_grad():
        predicted_N = head(x_test).argmax(dim=1)
    hits_N = predicted_N == test.labels_N
    correct_K = torch.bincount(test.labels_N[hits_N], minlength=num_classes)
    total_K = torch.bincount(test.labels_N, minlength=num_classes)
    return ProbeResult(accuracy=float(hits_N.float().mean()) if len(hits_N) else float("nan"),
                       correct_K=correct_K.tolist(), total_K=total_K.tolist(),
                       layer_weights_L=head.layer_weights(num_layers).tolist(), best_epoch=best_epoch,
                       valid_accuracy=valid_accuracy, history=history)


def _accuracy(head: ProbeHead, x_NLC: torch.Tensor, labels_N: torch.Tensor) -> float:
    head.eval()
    with torch.no_grad():
        return float((head(x_NLC).argmax(dim=1) == labels_N).float().mean())
