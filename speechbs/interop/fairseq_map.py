"""The fairseq <-> speechbs mapping: weight names and configs, both directions, from one table each.

Pure (no file I/O): :mod:`speechbs.interop.fairseq` reads and writes the files around it.

**Names.** :data:`RENAMES` pairs a fairseq name prefix with a speechbs one; ``{i}`` stands for a
layer index. The same pair renames in both directions (:func:`to_speechbs_names`,
:func:`to_fairseq_names`), so a rule added for import is used by export too, and a name no rule
covers is an error in either direction, never a weight left behind. The conv stack's norm sits
at ``.2.`` in fairseq's group-norm stack and at ``.2.1.`` in its layer-norm stack (a
TransposeLast / LayerNorm / TransposeLast block), so the table depends on ``conv_norm``. WavLM's
names (the WavLM repository's ``WavLM.py``) are fairseq's plus its position bias, which lives
in layer 0's attention there and beside the layers in speechbs.

**Configs.** :func:`arch_from_fairseq` reads fairseq's model config (``cfg.model``, or the
flat ``args`` of older checkpoints) into a speechbs architecture; :func:`fairseq_model_cfg` is
its inverse and is checked by going back, as the Hugging Face export is: a field that does not
read back equal is refused with its name, except the training settings of :data:`NOT_IN_FAIRSEQ`.
A fairseq setting speechbs does not implement is refused by name (:data:`UNSUPPORTED`).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import Any

from speechbs.errors import ConfigError
from speechbs.models.frames import ConvSpec
from speechbs.models.sizes import SIZES

_COMMON = [
    ("feature_extractor.conv_layers.{i}.0.", "feature_encoder.conv_layers.{i}.conv."),
    ("layer_norm.", "layer_norm."),
    ("post_extract_proj.", "post_extract_proj."),
    ("mask_emb", "mask_emb"),
    ("encoder.pos_conv.0.weight_g", "encoder.pos_conv.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv.0.weight_v", "encoder.pos_conv.conv.parametrizations.weight.original1"),
    ("encoder.pos_conv.0.bias", "encoder.pos_conv.conv.bias"),
    ("encoder.layer_norm.", "encoder.layer_norm."),
    ("encoder.layers.{i}.self_attn_layer_norm.", "encoder.layers.{i}.attn_norm."),
    ("encoder.layers.{i}.self_attn.", "encoder.layers.{i}.attn."),
    ("encoder.layers.{i}.fc1.", "encoder.layers.{i}.fc1."),
    ("encoder.layers.{i}.fc2.", "encoder.layers.{i}.fc2."),
    ("encoder.layers.{i}.final_layer_norm.", "encoder.layers.{i}.ffn_norm."),
]
_CONV_NORM = {
    "group": [("feature_extractor.conv_layers.{i}.2.", "feature_encoder.conv_layers.{i}.norm.")],
    "layer": [("feature_extractor.conv_layers.{i}.2.1.", "feature_encoder.conv_layers.{i}.norm.")],
}
_HEADS = {
    "wav2vec2": [("quantizer.vars", "quantizer.codevectors"), ("quantizer.weight_proj.", "quantizer.weight_proj."),
                 ("project_q.", "project_q."), ("final_proj.", "final_proj.")],
    "hubert": [("final_proj.", "final_proj.")],  # label_embs_concat <-> label_embs: rows, not a rename
    "wavlm": [],  # WavLM.py has no pretraining heads
}
_WAVLM = [  # before the shared table, whose "self_attn." rule would take them
    ("encoder.layers.0.self_attn.relative_attention_bias.", "encoder.attention_bias.embed."),
    ("encoder.layers.{i}.self_attn.grep_linear.", "encoder.attention_bias.gates.{i}.linear."),
    ("encoder.layers.{i}.self_attn.grep_a", "encoder.attention_bias.gates.{i}.const"),
]
CTC_MODELS = {"wav2vec_ctc": "wav2vec2", "hubert_ctc": "hubert"}
"""fairseq's fine-tuned CTC models (``Wav2VecCtc``, ``HubertCtc``) and the speechbs family of their encoder."""
CTC_PREFIX = ("w2v_encoder.w2v_model.", "encoder.")
"""fairseq ``Wav2VecCtc``'s / ``HubertCtc``'s encoder prefix and speechbs ``CTCModel``'s."""
CTC_HEAD = ("w2v_encoder.proj.", "head.")
"""fairseq ``Wav2VecCtc``'s / ``HubertCtc``'s letter projection and speechbs ``CTCModel``'s."""
CTC_OVERRIDES = {"dropout": "dropout", "attention_dropout": "attention_dropout",
                 "activation_dropout": "activation_dropout", "dropout_input": "dropout_input",
                 "mask_prob": "mask_prob", "mask_length": "mask_length", "mask_channel_prob": "mask_channel_prob",
                 "mask_channel_length": "mask_channel_length", "layerdrop": "encoder_layerdrop",
                 "feature_grad_mult": "feature_grad_mult"}
"""fairseq ``Wav2Vec2AsrConfig`` / ``HubertAsrConfig`` field -> the encoder field it replaces when fine-tuning
(``Wav2VecEncoder``, ``HubertEncoder``)."""
FINETUNE_FIELDS = {"final_dropout": "final_dropout", "mask_prob": "mask_prob", "mask_length": "mask_length",
                   "mask_channel_prob": "mask_channel_prob", "mask_channel_length": "mask_channel_length",
                   "layerdrop": "layerdrop", "dropout": "dropout", "attention_dropout": "attention_dropout",
                   "activation_dropout": "activation_dropout", "dropout_input": "dropout_input",
                   "freeze_finetune_updates": "freeze_steps"}
"""fairseq ``Wav2Vec2AsrConfig`` / ``HubertAsrConfig`` field -> speechbs ``[finetune]`` field."""
HEAD_NAMES = {"wav2vec2": ("quantizer", "project_q", "final_proj"), "hubert": ("final_proj", "label_embs"),
              "wavlm": ("final_proj", "label_embs")}
"""speechbs's pretraining heads per family (top-level names)."""


def renames(family: str, conv_norm: str) -> list[tuple[str, str]]:
    """The (fairseq prefix, speechbs prefix) rules of a family and conv stack, in the order they are tried."""
    return (_WAVLM if family == "wavlm" else []) + _CONV_NORM[conv_norm] + _COMMON + _HEADS[family]


def _pattern(prefix: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(prefix).replace(re.escape("{i}"), r"(?P<i>\d+)"))


def _rename(name: str, rules: list[tuple[str, str]], forward: bool) -> str | None:
    for fairseq, speechbs in rules:
        source, target = (fairseq, speechbs) if forward else (speechbs, fairseq)
        match = _pattern(source).match(name)
        if match:
            index = match.groupdict().get("i")
            head = target.replace("{i}", index) if index is not None else target
            return head + name[match.end():]
    return None


def to_speechbs_names(family: str, conv_norm: str, state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(state under speechbs names, fairseq names no rule covers)."""
    rules = renames(family, conv_norm)
    out, unknown = {}, []
    for name, tensor in state.items():
        new = _rename(name, rules, forward=True)
        if new is None:
            unknown.append(name)
        else:
            out[new] = tensor
    return out, unknown


def to_fairseq_names(family: str, conv_norm: str, state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(state under fairseq names, speechbs names no rule covers)."""
    rules = renames(family, conv_norm)
    out, unknown = {}, []
    for name, tensor in state.items():
        new = _rename(name, rules, forward=False)
        if new is None:
            unknown.append(name)
        else:
            out[new] = tensor
    return out, unknown


# ---- configs -------------------------------------------------------------------------------------

FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_type": "transformer", "dropout": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0,
    "dropout_features": 0.0, "final_dim": 0, "layer_norm_first": False,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]", "conv_bias": False,
    "logit_temp": 0.1, "quantize_targets": False, "quantize_input": False, "target_glu": False,
    "feature_grad_mult": 1.0, "quantizer_depth": 1, "latent_vars": 320, "latent_groups": 2, "latent_dim": 0,
    "mask_length": 10, "mask_prob": 0.65, "mask_channel_length": 10, "mask_channel_prob": 0.0,
    "num_negatives": 100, "conv_pos": 128, "conv_pos_groups": 16, "pos_conv_depth": 1, "conv_pos_batch_norm": False,
    "crop_seq_to_multiple": 1, "untie_final_proj": False, "relative_position_embedding": False,
    "gru_rel_pos": False, "num_buckets": 320, "max_distance": 1280,
}
"""fairseq's (and WavLM.py's) defaults for the fields read here, for checkpoints whose config lacks one."""

UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "activation_fn": ("gelu", "speechbs's transformer uses GELU only"),
    "layer_type": ("transformer", "speechbs has no conformer or adapter layers"),
    "pos_conv_depth": (1, "speechbs has one positional conv layer"),
    "conv_pos_batch_norm": (False, "speechbs's positional conv is weight-normalized, not batch-normalized"),
    "quantize_input": (False, "speechbs does not quantize the transformer's input"),
    "target_glu": (False, "speechbs has no GLU on the targets"),
    "quantizer_depth": (1, "speechbs's quantizer scores codewords with one linear layer"),
    "crop_seq_to_multiple": (1, "speechbs does not crop frames to a multiple"),
    "untie_final_proj": (False, "speechbs has one label set and one projection"),
}
"""fairseq model settings speechbs does not implement: (the one value it does, why)."""

NOT_IN_FAIRSEQ: dict[str, tuple[str, ...]] = {
    "wav2vec2": ("mask_min_spans", "mask_channel_min_spans", "diversity_scope"),
    "hubert": ("mask_min_spans", "mask_channel_min_spans"),
}
"""speechbs training settings fairseq has no field for (it fixes the mask minimums at 2 and 0): an
export drops them (the command says so) and an import gives fairseq's fixed values."""
NOT_IN_FAIRSEQ["wavlm"] = NOT_IN_FAIRSEQ["hubert"] + (  # WavLM.py has neither pretraining heads nor a loss
    "feature_penalty_weight", "final_dim", "label_rate_hz", "num_clusters", "logit_temperature",
    "pred_masked_weight", "pred_nomask_weight", "sample_rate_hz", "mix_prob", "mix_scope", "mix_max_fraction",
    "mix_ratio_min_db", "mix_ratio_max_db")
FIXED = {"mask_min_spans": 2, "mask_channel_min_spans": 0, "layer_norm_eps": 1e-5}
"""What fairseq hard-codes: its mask minimums and every LayerNorm's epsilon (which changes the forward,
so an export refuses another one)."""


def parse_conv_layers(spec: str) -> tuple[ConvSpec, ...]:
    """fairseq's ``conv_feature_layers`` string (a Python list expression) read without ``eval``.

    Only list and tuple literals of integers, ``+`` of lists and ``*`` by an integer are accepted:
    ``"[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"``.
    """
    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.List):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(value(e) for e in node.elts)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return value(node.left) + value(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return value(node.left) * value(node.right)
        raise ValueError(ast.dump(node))

    try:
        layers = value(ast.parse(spec, mode="eval").body)
        if not isinstance(layers, list) or not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
            raise ValueError("not a list of (channels, kernel, stride)")
    except (SyntaxError, ValueError) as exc:
        raise ConfigError(f"conv_feature_layers = {spec!r} is not a list of (channels, kernel, stride) "
                          f"tuples ({exc})") from None
    return tuple((int(c), int(k), int(s)) for c, k, s in layers)


def conv_layers_str(layers: tuple[ConvSpec, ...]) -> str:
    """The inverse of :func:`parse_conv_layers`, with runs of equal layers written as ``[(...)] * n``."""
    runs: list[tuple[ConvSpec, int]] = []
    for spec in layers:
        if runs and runs[-1][0] == spec:
            runs[-1] = (spec, runs[-1][1] + 1)
        else:
            runs.append((spec, 1))
    return " + ".join(f"[{tuple(spec)}]" + (f" * {n}" if n > 1 else "") for spec, n in runs)


def check_supported(model_cfg: dict[str, Any], where: str) -> None:
    """A one-line :class:`ConfigError` naming the first setting of ``model_cfg`` speechbs does not implement."""
    for key, (want, why) in UNSUPPORTED.items():
        have = model_cfg.get(key, FAIRSEQ_DEFAULTS.get(key, want))
        if have != want and not (key == "untie_final_proj" and have and model_cfg.get("_num_label_sets", 1) == 1):
            raise ConfigError(f"{where}: model setting {key} = {have!r} is not supported ({why}; speechbs "
                              f"needs {want!r})")
    if model_cfg.get("extractor_mode", "default") not in ("default", "layer_norm"):
        raise ConfigError(f"{where}: model setting extractor_mode = {model_cfg['extractor_mode']!r} is not supported "
                          f"(speechbs has 'default' and 'layer_norm')")


def _get(cfg: dict[str, Any], key: str) -> Any:
    value = cfg.get(key)
    return FAIRSEQ_DEFAULTS[key] if value is None else value


def arch_from_fairseq(family: str, model: dict[str, Any], task: dict[str, Any], criterion: dict[str, Any],
                      *, num_clusters: int | None = None, where: str = "checkpoint") -> Any:
    """The speechbs architecture of fairseq's (or WavLM.py's) config sections.

    Fields speechbs has and fairseq does not keep their speechbs BASE values (:data:`NOT_IN_FAIRSEQ`).
    """
    check_supported(model, where)
    g = lambda key: _get(model, key)  # noqa: E731
    final_dim = g("final_dim") or g("encoder_embed_dim")
    fields: dict[str, Any] = dict(
        conv_layers=parse_conv_layers(g("conv_feature_layers")),
        conv_norm="layer" if g("extractor_mode") == "layer_norm" else "group", conv_bias=bool(g("conv_bias")),
        feature_grad_mult=float(g("feature_grad_mult")), embed_dim=int(g("encoder_embed_dim")),
        num_layers=int(g("encoder_layers")), num_heads=int(g("encoder_attention_heads")),
        ffn_dim=int(g("encoder_ffn_embed_dim")), layer_norm_first=bool(g("layer_norm_first")),
        pos_conv_kernel=int(g("conv_pos")), pos_conv_groups=int(g("conv_pos_groups")),
        dropout=float(g("dropout")), attention_dropout=float(g("attention_dropout")),
        activation_dropout=float(g("activation_dropout")), dropout_input=float(g("dropout_input")),
        layerdrop=float(g("encoder_layerdrop")), mask_prob=float(g("mask_prob")), mask_length=int(g("mask_length")),
        mask_channel_prob=float(g("mask_channel_prob")), mask_channel_length=int(g("mask_channel_length")),
        **FIXED)
    if family == "wav2vec2":
        if not g("quantize_targets"):
            raise ConfigError(f"{where}: model setting quantize_targets = False is not supported (speechbs's "
                              f"wav2vec 2.0 always quantizes its targets)")
        weights = list(criterion.get("loss_weights") or [0.1, 10.0]) + [0.0, 0.0]
        fields.update(dropout_features=float(g("dropout_features")), final_dim=int(final_dim),
                      num_codebooks=int(g("latent_groups")), codebook_size=int(g("latent_vars")),
                      codevector_dim=int(g("latent_dim") or final_dim), num_negatives=int(g("num_negatives")),
                      logit_temperature=float(g("logit_temp")), diversity_weight=float(weights[0]),
                      feature_penalty_weight=float(weights[1]))
    elif family == "hubert":
        weights = list(criterion.get("loss_weights") or [10.0]) + [0.0]
        fields.update(final_dim=int(final_dim), sample_rate_hz=int(task.get("sample_rate") or 16_000),
                      label_rate_hz=float(model.get("label_rate") or task.get("label_rate")),
                      logit_temperature=float(g("logit_temp")), feature_penalty_weight=float(weights[0]),
                      pred_masked_weight=float(criterion.get("pred_masked_weight", 1.0)),
                      pred_nomask_weight=float(criterion.get("pred_nomask_weight", 0.0)))
        if num_clusters is not None:
            fields["num_clusters"] = num_clusters
    else:  # wavlm: WavLM.py's flat config
        if not (g("relative_position_embedding") and g("gru_rel_pos")):
            raise ConfigError(f"{where}: WavLM settings relative_position_embedding = "
                              f"{g('relative_position_embedding')!r}, gru_rel_pos = {g('gru_rel_pos')!r} are not "
                              f"supported (speechbs's WavLM has the gated relative position bias: both true)")
        fields.update(num_buckets=int(g("num_buckets")), max_distance=int(g("max_distance")))
    try:
        return dataclasses.replace(SIZES[family]["base"](), **fields)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def fairseq_model_cfg(family: str, arch: Any) -> dict[str, Any]:
    """fairseq's ``cfg.model`` (or WavLM.py's config) of a speechbs architecture: the inverse of
    :func:`arch_from_fairseq`, checked by going back. Loss weights are in :func:`fairseq_criterion_cfg`."""
    channels = arch.conv_layers[-1][0]
    if channels == arch.embed_dim:
        raise ConfigError(f"model.embed_dim = {arch.embed_dim} equals the conv channels: fairseq then builds no "
                          f"post_extract_proj, so a trained projection has no place in its checkpoint")
    cfg: dict[str, Any] = dict(
        extractor_mode="layer_norm" if arch.conv_norm == "layer" else "default", encoder_layers=arch.num_layers,
        encoder_embed_dim=arch.embed_dim, encoder_ffn_embed_dim=arch.ffn_dim, encoder_attention_heads=arch.num_heads,
        activation_fn="gelu", layer_type="transformer", dropout=arch.dropout, attention_dropout=arch.attention_dropout,
        activation_dropout=arch.activation_dropout, encoder_layerdrop=arch.layerdrop,
        dropout_input=arch.dropout_input, layer_norm_first=arch.layer_norm_first,
        conv_feature_layers=conv_layers_str(arch.conv_layers), conv_bias=arch.conv_bias,
        feature_grad_mult=arch.feature_grad_mult, mask_length=arch.mask_length, mask_prob=arch.mask_prob,
        mask_selection="static", mask_other=0.0, no_mask_overlap=False, mask_min_space=1,
        mask_channel_length=arch.mask_channel_length, mask_channel_prob=arch.mask_channel_prob,
        mask_channel_selection="static", mask_channel_other=0.0, no_mask_channel_overlap=False,
        mask_channel_min_space=1, conv_pos=arch.pos_conv_kernel, conv_pos_groups=arch.pos_conv_groups)
    criterion: dict[str, Any] = {}
    task: dict[str, Any] = {}
    if family == "wav2vec2":
        cfg.update(_name="wav2vec2", dropout_features=arch.dropout_features, final_dim=arch.final_dim,
                   logit_temp=arch.logit_temperature, quantize_targets=True, quantize_input=False,
                   same_quantizer=False, target_glu=False, quantizer_depth=1, quantizer_factor=3,
                   latent_vars=arch.codebook_size, latent_groups=arch.num_codebooks, latent_dim=arch.codevector_dim,
                   num_negatives=arch.num_negatives, negatives_from_everywhere=False, cross_sample_negatives=0,
                   codebook_negatives=0, pos_conv_depth=1, fp16=False)
        criterion = fairseq_criterion_cfg(family, arch)
    elif family == "hubert":
        cfg.update(_name="hubert", label_rate=arch.label_rate_hz, final_dim=arch.final_dim, untie_final_proj=False,
                   logit_temp=arch.logit_temperature, target_glu=False, skip_masked=False, skip_nomask=False,
                   conv_pos_batch_norm=False)
        task = {"sample_rate": arch.sample_rate_hz, "label_rate": arch.label_rate_hz}
        criterion = fairseq_criterion_cfg(family, arch)
    else:
        cfg.update(relative_position_embedding=True, num_buckets=arch.num_buckets, max_distance=arch.max_distance,
                   gru_rel_pos=True)
    back = arch_from_fairseq(family, cfg, task, criterion, num_clusters=getattr(arch, "num_clusters", None))
    lost = [f"model.{f.name} = {getattr(arch, f.name)!r}" for f in dataclasses.fields(arch)
            if f.name not in NOT_IN_FAIRSEQ[family] and getattr(back, f.name) != getattr(arch, f.name)]
    if lost:
        where = "WavLM's WavLM.py config" if family == "wavlm" else f"a fairseq {family} config"
        raise ConfigError(f"{where} cannot hold {', '.join(lost)}; export a model without these settings")
    return cfg


def fairseq_criterion_cfg(family: str, arch: Any) -> dict[str, Any]:
    """fairseq's ``cfg.criterion`` of a speechbs architecture's loss weights."""
    if family == "wav2vec2":
        return {"_name": "wav2vec", "infonce": True, "log_keys": ["prob_perplexity", "code_perplexity", "temp"],
                "loss_weights": [arch.diversity_weight, arch.feature_penalty_weight]}
    return {"_name": "hubert", "pred_masked_weight": arch.pred_masked_weight,
            "pred_nomask_weight": arch.pred_nomask_weight, "loss_weights": [arch.feature_penalty_weight]}
