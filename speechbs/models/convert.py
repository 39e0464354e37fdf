"""Weight conversion from Hugging Face transformers' wav2vec 2.0, HuBERT and WavLM into speechbs.

``from_hf_wav2vec2(model_or_state_dict, hf_config)`` returns a
:class:`~speechbs.models.wav2vec2_config.Wav2Vec2Config` and a state dict that loads
strictly into :class:`~speechbs.models.wav2vec2.Wav2Vec2Model`. It accepts a
``Wav2Vec2ForPreTraining`` (all weights), or a ``Wav2Vec2Model`` /
``Wav2Vec2ForCTC`` state dict (encoder only; the quantizer and heads are then
missing, load with ``strict=False`` and use :meth:`Wav2Vec2Model.encode`).
Released checkpoints (e.g. ``facebook/wav2vec2-base``) go through the same
function after ``Wav2Vec2ForPreTraining.from_pretrained``; transformers itself
converts fairseq checkpoints.

``from_hf_hubert`` and ``from_hf_wavlm`` do the same for ``HubertModel`` /
``WavLMModel`` (or their ``...ForCTC`` state dicts): transformers has no
HuBERT/WavLM pretraining heads, so ``final_proj`` and ``label_embs`` are
missing (load with ``strict=False``); the encoder names are wav2vec 2.0's,
plus WavLM's position-bias table and gates.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from speechbs.models.hubert_config import HubertConfig
from speechbs.models.wav2vec2_config import Wav2Vec2Config
from speechbs.models.wavlm_config import WavLMConfig

# (HF pattern, speechbs replacement), applied to names without the "wav2vec2." prefix.
_RENAMES: list[tuple[str, str]] = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_encoder.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_encoder.conv_layers.\1.norm."),
    (r"^feature_projection\.layer_norm\.", "layer_norm."),
    (r"^feature_projection\.projection\.", "post_extract_proj."),
    (r"^masked_spec_embed$", "mask_emb"),
    (r"^encoder\.pos_conv_embed\.conv\.weight_g$", "encoder.pos_conv.conv.parametrizations.weight.original0"),
    (r"^encoder\.pos_conv_embed\.conv\.weight_v$", "encoder.pos_conv.conv.parametrizations.weight.original1"),
    (r"^encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.conv."),
    (r"^encoder\.layer_norm\.", "encoder.layer_norm."),
    (r"^encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.attn."),
    (r"^encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.attn_norm."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.ffn_norm."),
    (r"^quantizer\.", "quantizer."),
    (r"^project_q\.", "project_q."),
    (r"^project_hid\.", "final_proj."),
]


# WavLM's extra names, tried before the shared table (its generic "attention." rule would catch them).
_WAVLM_RENAMES: list[tuple[str, str]] = [
    (r"^encoder\.layers\.0\.attention\.rel_attn_embed\.", "encoder.attention_bias.embed."),
    (r"^encoder\.layers\.(\d+)\.attention\.gru_rel_pos_linear\.", r"encoder.attention_bias.gates.\1.linear."),
    (r"^encoder\.layers\.(\d+)\.attention\.gru_rel_pos_const$", r"encoder.attention_bias.gates.\1.const"),
]


def _check_hf_common(hf_config: Any) -> None:
    for name, want in (("hidden_act", "gelu"), ("feat_extract_activation", "gelu")):
        if getattr(hf_config, name, want) != want:
            raise ValueError(f"hf config {name}={getattr(hf_config, name)!r}: speechbs implements {want!r} only")
    if getattr(hf_config, "adapter_attn_dim", None) or getattr(hf_config, "add_adapter", False):
        raise ValueError("hf config uses adapters, which speechbs does not implement")
    if not getattr(hf_config, "feat_proj_layer_norm", True) or getattr(hf_config, "conv_pos_batch_norm", False):
        raise ValueError("hf config has feat_proj_layer_norm=False or conv_pos_batch_norm=True, "
                         "which speechbs does not implement")


def _encoder_fields(hf_config: Any) -> dict[str, Any]:
    """The fields wav2vec 2.0, HuBERT and WavLM configs share, from any of the three HF configs."""
    _check_hf_common(hf_config)
    return dict(
        conv_layers=tuple(zip(hf_config.conv_dim, hf_config.conv_kernel, hf_config.conv_stride)),
        conv_norm=hf_config.feat_extract_norm, conv_bias=hf_config.conv_bias,
        embed_dim=hf_config.hidden_size, num_layers=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads, ffn_dim=hf_config.intermediate_size,
        layer_norm_first=hf_config.do_stable_layer_norm, pos_conv_kernel=hf_config.num_conv_pos_embeddings,
        pos_conv_groups=hf_config.num_conv_pos_embedding_groups, dropout=hf_config.hidden_dropout,
        attention_dropout=hf_config.attention_dropout, activation_dropout=hf_config.activation_dropout,
        dropout_input=hf_config.feat_proj_dropout, layerdrop=hf_config.layerdrop,
        layer_norm_eps=hf_config.layer_norm_eps, mask_prob=hf_config.mask_time_prob,
        mask_length=hf_config.mask_time_length, mask_min_spans=hf_config.mask_time_min_masks,
        mask_channel_prob=hf_config.mask_feature_prob, mask_channel_length=hf_config.mask_feature_length,
        mask_channel_min_spans=getattr(hf_config, "mask_feature_min_masks", 0))


def config_from_hf(hf_config: Any) -> Wav2Vec2Config:
    """Map a ``transformers.Wav2Vec2Config`` onto :class:`Wav2Vec2Config`."""
    return Wav2Vec2Config(
        **_encoder_fields(hf_config),
        dropout_features=hf_config.feat_quantizer_dropout, final_dim=hf_config.proj_codevector_dim,
        num_codebooks=hf_config.num_codevector_groups,
        codebook_size=hf_config.num_codevectors_per_group, codevector_dim=hf_config.codevector_dim,
        num_negatives=hf_config.num_negatives,
        logit_temperature=hf_config.contrastive_logits_temperature,
        diversity_weight=hf_config.diversity_loss_weight,
        # HF's pretraining loss has no feature penalty; keep fairseq BASE's weight (a loss setting, not a weight).
    )


def hubert_config_from_hf(hf_config: Any, **overrides: Any) -> HubertConfig:
    """Map a ``transformers.HubertConfig`` onto :class:`HubertConfig` (loss settings stay speechbs' BASE ones)."""
    return HubertConfig(**{**_encoder_fields(hf_config), **overrides})


def wavlm_config_from_hf(hf_config: Any, **overrides: Any) -> WavLMConfig:
    """Map a ``transformers.WavLMConfig`` onto :class:`WavLMConfig` (mixing settings stay speechbs' BASE ones)."""
    return WavLMConfig(**{**_encoder_fields(hf_config), "num_buckets": hf_config.num_buckets,
                          "max_distance": hf_config.max_bucket_distance, **overrides})


def rename_hf_key(name: str, prefix: str = "wav2vec2.",
                  extra: list[tuple[str, str]] | None = None) -> str | None:
    """speechbs name of an HF parameter, or None for heads speechbs does not have (e.g. ``lm_head``)."""
    name = name.removeprefix(prefix)
    for pattern, replacement in (extra or []) + _RENAMES:
        if re.search(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def _hf_state(hf_model_or_state_dict: Any, hf_config: Any | None, prefix: str,
              extra: list[tuple[str, str]] | None = None) -> tuple[Any, dict[str, torch.Tensor]]:
    """(hf config, renamed state dict) from an HF model or its state dict and config."""
    if isinstance(hf_model_or_state_dict, dict):
        if hf_config is None:
            raise ValueError("a bare state dict needs its hf_config")
        hf_state = hf_model_or_state_dict
    else:
        hf_state = hf_model_or_state_dict.state_dict()
        hf_config = hf_config if hf_config is not None else hf_model_or_state_dict.config
    state: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        new_name = rename_hf_key(name, prefix, extra)
        if new_name is not None:
            state[new_name] = tensor.detach().clone()
    return hf_config, state


def from_hf_wav2vec2(hf_model_or_state_dict: Any, hf_config: Any | None = None,
                     ) -> tuple[Wav2Vec2Config, dict[str, torch.Tensor]]:
    """(speechbs config, speechbs state dict) from an HF model or its state dict and config."""
    hf_config, state = _hf_state(hf_model_or_state_dict, hf_config, "wav2vec2.")
    return config_from_hf(hf_config), state


def from_hf_hubert(hf_model_or_state_dict: Any, hf_config: Any | None = None,
                   ) -> tuple[HubertConfig, dict[str, torch.Tensor]]:
    """(speechbs config, encoder state dict) from an HF ``HubertModel`` (or ``HubertForCTC`` state dict)."""
    hf_config, state = _hf_state(hf_model_or_state_dict, hf_config, "hubert.")
    return hubert_config_from_hf(hf_config), state


def from_hf_wavlm(hf_model_or_state_dict: Any, hf_config: Any | None = None,
                  ) -> tuple[WavLMConfig, dict[str, torch.Tensor]]:
    """(speechbs config, encoder state dict) from an HF ``WavLMModel`` (or ``WavLMForCTC`` state dict)."""
    hf_config, state = _hf_state(hf_model_or_state_dict, hf_config, "wavlm.", _WAVLM_RENAMES)
    return wavlm_config_from_hf(hf_config), state
