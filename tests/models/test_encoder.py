"""The shared encoder's contract: every family is a SpeechEncoder plus named heads, on one encoder path."""

from __future__ import annotations

import pytest
import torch

from speechbs.models.encoder import ENCODER_PATH, SHARED_PARTS, RelativePositionBuckets, SpeechEncoder
from speechbs.models.registry import MODELS


def _tiny(name: str):
    return MODELS[name].sizes["tiny"](dropout=0.0, attention_dropout=0.0, dropout_input=0.0, mask_channel_prob=0.2)


def _top_level_names(model: torch.nn.Module) -> set[str]:
    return {name for name, _ in model.named_children()} | {name for name, _ in model.named_parameters(recurse=False)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_family_is_the_shared_encoder_plus_its_named_heads(name: str) -> None:
    cls = MODELS[name].model_cls
    assert issubclass(cls, SpeechEncoder) and cls.heads
    model = cls(_tiny(name))
    assert _top_level_names(model) == set(SHARED_PARTS) | set(cls.heads)
    assert not any(method in vars(cls) for method in ENCODER_PATH)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_bare_encoder_loads_a_family_and_encodes_alike(name: str) -> None:
    cfg = _tiny(name)
    model = MODELS[name].model_cls(cfg).eval()
    option = RelativePositionBuckets(cfg.num_buckets, cfg.max_distance) if name == "wavlm" else None
    bare = SpeechEncoder(cfg, relative_position=option).eval()
    missing, unexpected = bare.load_state_dict(model.state_dict(), strict=False)
    assert not missing and {key.split(".")[0] for key in unexpected} == set(model.heads)
    wav_BT, lengths_B = torch.randn(2, 8_000), torch.tensor([8_000, 5_000])
    with torch.no_grad():
        for seeds_B in (None, torch.tensor([3, 4])):
            want, got = model.encode(wav_BT, lengths_B, seeds_B=seeds_B), bare.encode(wav_BT, lengths_B, seeds_B=seeds_B)
            assert torch.equal(want.features_BTC, got.features_BTC)
            assert all(torch.equal(a, b) for a, b in zip(want.layer_outputs, got.layer_outputs))
            assert (want.mask_BT is None) == (seeds_B is None)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shared_parts_are_initialized_before_the_heads(name: str) -> None:
    """A seeded family model starts from the same encoder weights as the bare encoder: heads come after."""
    cfg = _tiny(name)
    torch.manual_seed(5)
    model = MODELS[name].model_cls(cfg)
    torch.manual_seed(5)
    option = RelativePositionBuckets(cfg.num_buckets, cfg.max_distance) if name == "wavlm" else None
    bare = SpeechEncoder(cfg, relative_position=option)
    state = model.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in bare.state_dict().items())


def test_encode_returns_every_layer_unless_told_not_to() -> None:
    model = MODELS["wav2vec2"].model_cls(_tiny("wav2vec2")).eval()
    wav_BT, lengths_B = torch.randn(1, 4_000), torch.tensor([4_000])
    with torch.no_grad():
        out = model.encode(wav_BT, lengths_B)
        assert len(out.layer_outputs) == model.cfg.num_layers and out.mask_BT is None
        assert torch.equal(out.layer_outputs[-1], out.features_BTC)  # post-norm: the last layer is the output
        assert model.encode(wav_BT, lengths_B, return_layers=False).layer_outputs is None


def test_a_family_that_redefines_the_encoder_path_is_refused() -> None:
    with pytest.raises(TypeError, match="redefines encode"):
        class Bad(SpeechEncoder):  # noqa: F841 - the class statement is the test
            heads = ("head",)

            def encode(self, *args, **kwargs):
                raise NotImplementedError

    with pytest.raises(TypeError, match="shared parts"):
        class Clash(SpeechEncoder):  # noqa: F841
            heads = ("encoder",)
