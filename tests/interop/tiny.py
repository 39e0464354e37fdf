"""Tiny random speechbs checkpoints of each family for the interop tests (no download, no other toolkit)."""

from __future__ import annotations

from pathlib import Path

import torch

from speechbs.asr.ctc import CTCModel
from speechbs.asr.vocab import build_vocab
from speechbs.checkpoint import save_checkpoint
from speechbs.configio import dump_toml, load_config
from speechbs.pretrained import build_model

FAMILIES = ("wav2vec2", "hubert", "wavlm")
SMALL = ["model.size=tiny", "model.num_layers=2", "model.embed_dim=32", "model.num_heads=2", "model.ffn_dim=64",
         "model.final_dim=16", "model.pos_conv_kernel=8", "model.pos_conv_groups=2"]
EXTRA = {"wav2vec2": ["model.codebook_size=8", "model.codevector_dim=16"],
         "hubert": ["model.num_clusters=10"],
         "wavlm": ["model.num_clusters=10", "model.num_buckets=16", "model.max_distance=20"]}
STABLE = ["model.conv_norm=layer", "model.conv_bias=true", "model.layer_norm_first=true"]
"""LARGE's layout (layer-norm conv stack with bias, pre-norm transformer)."""


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Random norms, biases and gates, so a mapping mistake cannot hide behind ones and zeros."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "gates" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            if "attention_bias.embed" in name:
                p.normal_(0.0, 1.0, generator=gen)


def pretrained(tmp: Path, family: str, *extra: str) -> tuple[Path, torch.nn.Module, object]:
    """A run directory with one checkpoint of a tiny random ``family`` model."""
    cfg = load_config(None, [f"model.name={family}", *SMALL, *EXTRA[family], *extra])
    torch.manual_seed(1)
    model = build_model(cfg.model)
    perturb(model)
    run = tmp / f"run-{family}"
    save_checkpoint(run / "checkpoints", 5, {"model": model.state_dict(), "config_toml": dump_toml(cfg)}, keep_last=1)
    return run, model.eval(), cfg


def ctc_checkpoint(tmp: Path, family: str = "wav2vec2") -> tuple[Path, CTCModel]:
    """A fine-tuned-looking CTC checkpoint: tiny encoder, letters A-D, a head that writes letters."""
    from speechbs.tasks.ctc import finetune_arch

    cfg = load_config(None, [f"model.name={family}", *SMALL, *EXTRA[family], "batch.crop=none"])
    cfg.model.arch = finetune_arch(cfg.model.arch, cfg.finetune)
    vocab = build_vocab(["A B |", "C D | A", "B C D"])[0]
    torch.manual_seed(2)
    model = CTCModel(build_model(cfg.model), cfg.model.arch.embed_dim, vocab)
    perturb(model.encoder)
    with torch.no_grad():
        model.head.weight.mul_(30.0)  # varied argmax over frames, not all blank
        model.head.bias[1:4] = -1e4  # no special but the blank wins a frame
    save_checkpoint(tmp / f"ft-{family}" / "checkpoints", 9,
                    {"model": model.state_dict(), "config_toml": dump_toml(cfg)}, keep_last=1)
    return tmp / f"ft-{family}", model.eval()


def wav(num: int = 16_000, seed: int = 0, rows: int = 1) -> torch.Tensor:
    return torch.randn(rows, num, generator=torch.Generator().manual_seed(seed))


def encode(model: torch.nn.Module, wav_BT: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.encode(wav_BT, torch.full((wav_BT.shape[0],), wav_BT.shape[1])).features_BTC
