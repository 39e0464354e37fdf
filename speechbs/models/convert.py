"""Weight conversion between Hugging Face transformers' wav2vec 2.0, HuBERT and WavLM and speechbs.

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

The other direction (``speechbs export --to hf``, :mod:`speechbs.interop.hf`) uses the same
tables: :func:`hf_config_kwargs` is the inverse of the ``*config_from_hf`` functions (and
refuses an architecture the HF config cannot hold), and :func:`to_hf_state` fills each name
of an HF model's state dict from the speechbs tensor :func:`rename_hf_key` maps it to, so
the rename table below is the one source of truth for both directions. Pure: no file I/O,
no transformers import (an HF config is built by the caller from the keyword arguments).
"""

from __future__ import annotations

import re
from dataclasses import fields
from types import SimpleNamespace
from typing import Any

import torch

from speechbs.errors import ConfigError

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


# ---- speechbs -> Hugging Face --------------------------------------------------------------------

HF_PREFIX: dict[str, str] = {"wav2vec2": "wav2vec2.", "hubert": "hubert.", "wavlm": "wavlm."}
"""Family -> the prefix of the encoder's names in HF's ``...ForPreTraining`` / ``...ForCTC`` models."""

NOT_IN_HF: dict[str, tuple[str, ...]] = {
    "wav2vec2": ("feature_grad_mult", "feature_penalty_weight", "diversity_scope"),
    "hubert": ("feature_grad_mult", "feature_penalty_weight", "final_dim", "sample_rate_hz", "label_rate_hz",
               "num_clusters", "logit_temperature", "pred_masked_weight", "pred_nomask_weight"),
}
"""Training settings of each family that no HF config field holds: they shape the loss or the
gradient, not the forward of the exported model, so an export drops them (the speechbs checkpoint
keeps them) and an import gives speechbs' BASE values."""
NOT_IN_HF["wavlm"] = NOT_IN_HF["hubert"] + ("mix_prob", "mix_scope", "mix_max_fraction", "mix_ratio_min_db",
                                            "mix_ratio_max_db")


def _hf_encoder_kwargs(arch: Any) -> dict[str, Any]:
    """The inverse of :func:`_encoder_fields`: HF config keyword arguments of the shared encoder."""
    channels, kernels, strides = (list(v) for v in zip(*arch.conv_layers))
    return dict(
        conv_dim=channels, conv_kernel=kernels, conv_stride=strides, feat_extract_norm=arch.conv_norm,
        conv_bias=arch.conv_bias, hidden_size=arch.embed_dim, num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads, intermediate_size=arch.ffn_dim,
        do_stable_layer_norm=arch.layer_norm_first, num_conv_pos_embeddings=arch.pos_conv_kernel,
        num_conv_pos_embedding_groups=arch.pos_conv_groups, hidden_dropout=arch.dropout,
        attention_dropout=arch.attention_dropout, activation_dropout=arch.activation_dropout,
        feat_proj_dropout=arch.dropout_input, layerdrop=arch.layerdrop, layer_norm_eps=arch.layer_norm_eps,
        mask_time_prob=arch.mask_prob, mask_time_length=arch.mask_length, mask_time_min_masks=arch.mask_min_spans,
        mask_feature_prob=arch.mask_channel_prob, mask_feature_length=arch.mask_channel_length,
        mask_feature_min_masks=arch.mask_channel_min_spans, hidden_act="gelu", feat_extract_activation="gelu",
        feat_proj_layer_norm=True, conv_pos_batch_norm=False, apply_spec_augment=True)


def hf_config_kwargs(family: str, arch: Any) -> dict[str, Any]:
    """Keyword arguments of the ``transformers`` config (``Wav2Vec2Config``, ``HubertConfig``,
    ``WavLMConfig``) of a speechbs architecture: the inverse of :func:`config_from_hf`,
    :func:`hubert_config_from_hf` and :func:`wavlm_config_from_hf`.

    Checked by going back: every field but the training settings of :data:`NOT_IN_HF` must read
    back equal through the import mapping, else a :class:`ConfigError` names the fields.
    """
    if family not in HF_PREFIX:
        raise ConfigError(f"model {family!r} has no Hugging Face counterpart; known: {', '.join(HF_PREFIX)}")
    kwargs = _hf_encoder_kwargs(arch)
    if family == "wav2vec2":
        kwargs.update(feat_quantizer_dropout=arch.dropout_features, proj_codevector_dim=arch.final_dim,
                      num_codevector_groups=arch.num_codebooks, num_codevectors_per_group=arch.codebook_size,
                      codevector_dim=arch.codevector_dim, num_negatives=arch.num_negatives,
                      contrastive_logits_temperature=arch.logit_temperature,
                      diversity_loss_weight=arch.diversity_weight)
    elif family == "wavlm":
        kwargs.update(num_buckets=arch.num_buckets, max_bucket_distance=arch.max_distance)
    back = {"wav2vec2": config_from_hf, "hubert": hubert_config_from_hf,
            "wavlm": wavlm_config_from_hf}[family](SimpleNamespace(**kwargs))
    lost = [f"model.{f.name} = {getattr(arch, f.name)!r}" for f in fields(arch)
            if f.name not in NOT_IN_HF[family] and getattr(back, f.name) != getattr(arch, f.name)]
    if lost:
        raise ConfigError(f"a Hugging Face {family} config cannot hold {', '.join(lost)}; "
                          f"export a model without these settings")
    return kwargs


def hf_renames(family: str) -> list[tuple[str, str]]:
    """The family's extra rename rules, tried before the shared table."""
    return _WAVLM_RENAMES if family == "wavlm" else []


def to_hf_state(family: str, state: dict[str, torch.Tensor], hf_names: list[str],
                ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(HF state dict, HF names speechbs has no tensor for, speechbs names no HF name takes).

    ``hf_names`` are the keys of the target HF model's ``state_dict()``; each takes the speechbs
    tensor :func:`rename_hf_key` maps it to (a name it maps to None, e.g. ``lm_head``, is the
    caller's). The unused speechbs names are the heads HF does not have (HuBERT's ``final_proj``
    and ``label_embs``) or ``mask_emb`` when HF builds no mask embedding (both mask
    probabilities 0).
    """
    hf_state: dict[str, torch.Tensor] = {}
    missing, taken = [], set()
    for hf_name in hf_names:
        name = rename_hf_key(hf_name, HF_PREFIX[family], hf_renames(family))
        if name is None:
            continue
        if name in state:
            hf_state[hf_name] = state[name].detach().clone().contiguous()
            taken.add(name)
        else:
            missing.append(hf_name)
    return hf_state, missing, sorted(set(state) - taken)
