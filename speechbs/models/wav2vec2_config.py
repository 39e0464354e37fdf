"""wav2vec 2.0's architecture config and its sizes (tiny, base, large). No torch: see ``encoder_config.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from speechbs.models.encoder_config import BASE_CONV, EncoderConfig


@dataclass(kw_only=True)
class Wav2Vec2Config(EncoderConfig):
    """wav2vec 2.0 architecture and loss weights. Defaults: BASE (fairseq ``wav2vec2_base_librispeech.yaml``)."""

    dropout_features: float = 0.1
    """Dropout on the quantizer's input features, probability."""
    num_codebooks: int = 2
    """Quantizer codebooks (G), count."""
    codebook_size: int = 320
    """Entries per codebook (V), count."""
    codevector_dim: int = 256
    """Concatenated codevector width (G x per-entry width), channels."""
    num_negatives: int = 100
    """Distractors per masked frame (K), count."""
    logit_temperature: float = 0.1
    """Temperature of the cosine-similarity logits (kappa), dimensionless."""
    diversity_weight: float = 0.1
    """Weight of the codebook diversity loss (alpha), dimensionless."""
    diversity_scope: Literal["global", "micro_batch"] = "global"
    """Frames whose mean code distribution the diversity loss and the logged perplexities use: ``global``,
    the whole optimizer step (all micro-batches and ranks; one extra no-grad pass of the feature encoder
    per micro-batch) or ``micro_batch``, each forward's own (fairseq; depends on how the step is split)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.codevector_dim % self.num_codebooks:
            raise ValueError(f"model.codevector_dim ({self.codevector_dim}) must be divisible by "
                             f"model.num_codebooks ({self.num_codebooks})")


def base(**overrides) -> Wav2Vec2Config:
    """BASE, LibriSpeech 960 h (95 M parameters)."""
    return Wav2Vec2Config(**overrides)


def large(**overrides) -> Wav2Vec2Config:
    """LARGE (fairseq ``wav2vec2_large_librivox.yaml``: pre-norm, layer-norm conv, 317 M parameters)."""
    settings = dict(conv_norm="layer", conv_bias=True, feature_grad_mult=1.0, embed_dim=1024,
                    num_layers=24, num_heads=16, ffn_dim=4096, layer_norm_first=True,
                    dropout=0.0, attention_dropout=0.0, dropout_input=0.0, dropout_features=0.0,
                    layerdrop=0.0, final_dim=768,
                    codevector_dim=768, feature_penalty_weight=0.0)
    return Wav2Vec2Config(**{**settings, **overrides})


def tiny(**overrides) -> Wav2Vec2Config:
    """CPU-test size: the BASE conv geometry (50 Hz frames) at 64 channels, 2 x 96-dim layers."""
    settings = dict(conv_layers=tuple((64, k, s) for _, k, s in BASE_CONV), embed_dim=96,
                    num_layers=2, num_heads=4, ffn_dim=192, pos_conv_kernel=16, pos_conv_groups=4,
                    final_dim=64, num_codebooks=2, codebook_size=32, codevector_dim=64,
                    layerdrop=0.0)
    return Wav2Vec2Config(**{**settings, **overrides})
