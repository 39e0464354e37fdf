"""Probe heads on frozen features: SUPERB's learnable layer weights, then a linear or MLP classifier.

Legend: N = examples (utterances, or frames for a frame-level task), L = layers (the projected
conv features as layer 0, then every transformer layer), C = feature channels, K = classes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

HeadKind = Literal["linear", "mlp", "logreg"]


class LayerWeights(nn.Module):
    """A softmax-weighted sum over layers (s3prl's ``Featurizer``): weights start equal and sum to one."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.logits_L = nn.Parameter(torch.zeros(num_layers))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits_L, dim=0)

    def forward(self, feats_NLC: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nlc,l->nc", feats_NLC, self.weights())


class ProbeHead(nn.Module):
    """Layer weights (or one fixed layer) -> linear classifier, or a one-hidden-layer MLP.

    ``layer`` fixes the input to that layer alone (the per-layer probes and the ``logreg``
    baseline, which is a linear classifier on the last layer: multinomial logistic regression
    with the trainer's weight decay as its L2 penalty).
    """

    def __init__(self, num_layers: int, dim: int, num_classes: int, *, kind: HeadKind = "linear",
                 hidden_dim: int = 256, layer: int | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.mix = LayerWeights(num_layers) if layer is None else None
        if kind == "mlp":
            self.classifier: nn.Module = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(),
                                                       nn.Linear(hidden_dim, num_classes))
        else:
            self.classifier = nn.Linear(dim, num_classes)

    def layer_weights(self, num_layers: int) -> torch.Tensor:
        """The weight of each layer in the input: learned, or one-hot for a fixed layer."""
        if self.mix is not None:
            return self.mix.weights().detach()
        return torch.nn.functional.one_hot(torch.tensor(self.layer % num_layers), num_layers).float()

    def forward(self, feats_NLC: torch.Tensor) -> torch.Tensor:
        x_NC = self.mix(feats_NLC) if self.mix is not None else feats_NLC[:, self.layer]
        return self.classifier(x_NC)
