"""``speechbs export --to s3prl``: the file s3prl's local upstreams load, and (when s3prl is here) s3prl itself.

The format is checked without s3prl: the keys s3prl's ``load_converted_model`` requires, plain
contents that ``torch.load(weights_only=True)`` reads (s3prl's default on torch >= 2.6), and weights
equal to the fairseq export's (which tests/interop/test_fairseq.py checks against fairseq). When
s3prl's expert modules import (``pip install --no-deps s3prl``; ``import s3prl.upstream.*`` needs
torchaudio only for a pseudo-data helper, stubbed here), its upstreams load the export and give
the hidden states speechbs computes.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch

from speechbs.interop.fairseq import export_fairseq
from speechbs.interop.s3prl import export_s3prl
from speechbs.pretrained import read_checkpoint
from tests.interop.tiny import FAMILIES, STABLE, ctc_checkpoint, encode, pretrained, wav

TOL = 1e-5
KEYS = {"wav2vec2": {"task_cfg", "model_cfg", "model_weight"},
        "hubert": {"task_cfg", "model_cfg", "model_weight", "dictionaries_symbols"},
        "wavlm": {"cfg", "model"}}
UPSTREAM = {"wav2vec2": "s3prl.upstream.wav2vec2.expert", "hubert": "s3prl.upstream.hubert.expert",
            "wavlm": "s3prl.upstream.wavlm.expert"}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_export_has_the_format_s3prl_loads(tmp_path, family):
    run, model, _cfg = pretrained(tmp_path, family)
    saved = read_checkpoint(run)
    done = export_s3prl(saved, tmp_path / "s3prl.pt")
    contents = torch.load(done.out, weights_only=True)
    assert KEYS[family] <= set(contents)
    fairseq = torch.load(export_fairseq(saved, tmp_path / "fairseq.pt").out, weights_only=True)
    weights = contents["model"] if family == "wavlm" else contents["model_weight"]
    assert set(weights) == set(fairseq["model"])
    assert all(torch.equal(v, fairseq["model"][k]) for k, v in weights.items())
    if family == "hubert":
        assert contents["dictionaries_symbols"] == [["<s>", "<pad>", "</s>", "<unk>"] + [str(c) for c in range(10)]]
        assert weights["label_embs_concat"].shape[0] == 14
    if family != "wavlm":
        assert contents["task_cfg"]["sample_rate"] == 16_000 and "conv_feature_layers" in contents["model_cfg"]
    back = read_checkpoint(done.out)  # speechbs reads s3prl's format back
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in back.checkpoint["model"].items())


def test_a_ctc_checkpoint_exports_its_encoder(tmp_path):
    run, model = ctc_checkpoint(tmp_path)
    done = export_s3prl(read_checkpoint(run), tmp_path / "enc.pt")
    assert any("encoder is written" in note for note in done.notes)
    back = read_checkpoint(done.out)
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in back.checkpoint["model"].items())


def _expert(family: str):
    if "s3prl.util.pseudo_data" not in sys.modules:  # s3prl.upstream.utils imports it; it imports torchaudio
        stub = types.ModuleType("s3prl.util.pseudo_data")
        stub.get_pseudo_wavs = None
        sys.modules["s3prl.util.pseudo_data"] = stub
    try:
        return importlib.import_module(UPSTREAM[family]).UpstreamExpert
    except Exception as exc:  # noqa: BLE001 - not installed or not importable here: skip, saying which
        pytest.skip(f"s3prl's {UPSTREAM[family]} does not import ({type(exc).__name__}: {exc}); the format test "
                    f"checks the file without it (pip install --no-deps s3prl)")


@pytest.mark.parametrize("family, layout", [("wav2vec2", "base"), ("wav2vec2", "large"), ("hubert", "base"),
                                            ("hubert", "large"), ("wavlm", "base"), ("wavlm", "large")])
def test_s3prl_upstream_loads_the_export_and_gives_the_same_hidden_states(tmp_path, family, layout):
    expert = _expert(family)
    run, model, _cfg = pretrained(tmp_path, family, *(STABLE if layout == "large" else ()))
    done = export_s3prl(read_checkpoint(run), tmp_path / "s3prl.pt")
    upstream = expert(str(done.out)).eval()
    wav_BT = wav(15_000, seed=4, rows=2)
    with torch.no_grad():
        hidden = upstream([wav_BT[0], wav_BT[1]])["hidden_states"]
        out = model.encode(wav_BT, torch.full((2,), 15_000))
    assert len(hidden) == model.cfg.num_layers + 1
    assert (hidden[-1] - encode(model, wav_BT)).abs().max() <= TOL
    if not model.cfg.layer_norm_first:  # post-norm: layer k's input is layer k-1's output
        assert (hidden[1] - out.layer_outputs[0]).abs().max() <= TOL
