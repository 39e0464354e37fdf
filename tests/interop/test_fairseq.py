"""fairseq in and out: round trips, checkpoints written by real fairseq, and fairseq itself on the exports.

- speechbs -> fairseq -> speechbs gives the same weights and outputs, per family (no fairseq needed);
- tests/fixtures/fairseq/ holds tiny checkpoints written once by fairseq-fixed 0.12.3.1 (and WavLM's
  WavLM.py) with fairseq's outputs on a fixed input (scripts/make_fairseq_fixtures.py); speechbs
  imports them WITHOUT fairseq and computes the same, heads included;
- when fairseq imports, its own loader reads speechbs's exports and computes what speechbs does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechbs.asr.ctc import ctc_model_of, greedy_ids
from speechbs.errors import ConfigError, DataError
from speechbs.interop import fairseq_map as fm
from speechbs.interop.fairseq import export_fairseq
from speechbs.interop.fairseq_read import read_foreign
from speechbs.interop.pickles import load_foreign, plain, resolve_interpolations
from speechbs.models.hubert import cluster_logits
from speechbs.pretrained import encoder_of, read_checkpoint
from tests.interop.tiny import FAMILIES, STABLE, ctc_checkpoint, encode, pretrained, wav

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "fairseq"
TOL = 1e-5


@pytest.fixture(scope="module")
def outputs() -> dict:
    return torch.load(FIXTURES / "outputs.pt", weights_only=True)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ---- speechbs -> fairseq -> speechbs ---------------------------------------------------------------

@pytest.mark.parametrize("family, layout", [(f, layout) for f in FAMILIES for layout in ("base", "large")])
def test_round_trip_speechbs_fairseq_speechbs(tmp_path, family, layout):
    run, model, cfg = pretrained(tmp_path, family, *(STABLE if layout == "large" else ()))
    done = export_fairseq(read_checkpoint(run), tmp_path / "out.pt")
    assert torch.load(done.out, weights_only=True)  # plain containers: fairseq's default torch.load reads it
    back = read_checkpoint(done.out)
    assert back.config.model.name == family and back.checkpoint["seeded_heads"] == []
    original = model.state_dict()
    assert set(back.checkpoint["model"]) == set(original)
    for key, tensor in back.checkpoint["model"].items():
        assert torch.equal(tensor, original[key]), key
    for key in ("embed_dim", "num_layers", "conv_layers", "conv_norm", "conv_bias", "layer_norm_first", "mask_prob",
                "final_dim", "feature_grad_mult", "dropout", "layerdrop"):
        assert getattr(back.config.model.arch, key) == getattr(cfg.model.arch, key), key
    wav_BT = wav(12_000, rows=2)
    assert _max_diff(encode(encoder_of(back), wav_BT), encode(model, wav_BT)) <= TOL
    if family == "hubert":
        assert (tmp_path / "dict.km.txt").read_text().splitlines()[0] == "0 1"
        assert back.config.model.arch.num_clusters == 10 and back.config.model.arch.label_rate_hz == 100.0


@pytest.mark.parametrize("family, model_class", [("wav2vec2", "Wav2VecCtc"), ("hubert", "HubertCtc")])
def test_ctc_round_trip_keeps_head_vocabulary_and_transcripts(tmp_path, family, model_class):
    run, model = ctc_checkpoint(tmp_path, family)
    done = export_fairseq(read_checkpoint(run), tmp_path / "ctc.pt")
    assert done.model_class == f"fairseq {model_class}" and done.extra_files == [tmp_path / "dict.ltr.txt"]
    contents = torch.load(done.out, weights_only=True)
    state = contents["model"]
    assert fm.CTC_MODELS[contents["cfg"]["model"]["_name"]] == family
    assert "w2v_encoder.proj.weight" in state and not any(k.split(".")[2] in ("quantizer", "final_proj")
                                                          for k in state if k.startswith("w2v_encoder.w2v_model."))
    assert ("w2v_encoder.w2v_model.label_embs_concat" in state) == (family == "hubert")  # HubertCtc keeps it
    back_saved = read_checkpoint(done.out)
    assert back_saved.config.model.name == family
    encoder = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.final_proj.")}
    assert all(torch.equal(back_saved.checkpoint["model"][k], v) for k, v in encoder.items()
               if not k.startswith(("encoder.quantizer.", "encoder.project_q.")))
    back = ctc_model_of(back_saved)
    assert back.vocab == model.vocab
    wav_BT = wav(20_000, seed=3)
    with torch.no_grad():
        ours, frames = model(wav_BT, torch.tensor([wav_BT.shape[1]]))
        theirs, _ = back(wav_BT, torch.tensor([wav_BT.shape[1]]))
    assert _max_diff(theirs, ours) <= TOL
    assert model.vocab.to_words(greedy_ids(theirs, frames)[0]) == model.vocab.to_words(greedy_ids(ours, frames)[0])


# ---- fixtures written by real fairseq ------------------------------------------------------------

def test_w2v2_fixture_matches_fairseq_with_its_heads(outputs):
    saved = read_checkpoint(FIXTURES / "w2v2_pretrained.pt")
    assert saved.checkpoint["source_format"] == "fairseq" and saved.checkpoint["step"] == 10
    arch = saved.config.model.arch
    assert (arch.embed_dim, arch.num_codebooks, arch.codebook_size, arch.codevector_dim) == (48, 2, 8, 16)
    assert (arch.diversity_weight, arch.feature_penalty_weight, arch.feature_grad_mult) == (0.1, 10.0, 0.1)
    model, out = encoder_of(saved), outputs["w2v2_pretrained"]
    features_BTC = encode(model, out["wav_BT"])
    assert _max_diff(features_BTC, out["features_BTC"]) <= TOL
    with torch.no_grad():
        assert _max_diff(model.final_proj(features_BTC), out["final_proj_BTC"]) <= TOL
        conv_BCT, _ = model.feature_encoder(out["wav_BT"], torch.full((2,), out["wav_BT"].shape[1]))
        x_NC = model.local_features(conv_BCT).flatten(0, 1)
        quant = model.quantizer(x_NC, temperature=2.0)  # eval: the argmax, as fairseq's
        assert torch.equal(quant.codes_NG, out["codes_BTG"].flatten(0, 1))
        assert _max_diff(quant.codevectors_NE, out["codevectors_BTE"].flatten(0, 1)) <= TOL
        assert _max_diff(model.project_q(quant.codevectors_NE), out["project_q_BTC"].flatten(0, 1)) <= TOL


def test_hubert_fixture_matches_fairseq_with_its_heads(outputs):
    saved = read_checkpoint(FIXTURES / "hubert_pretrained.pt")  # task_state holds fairseq Dictionary objects
    arch = saved.config.model.arch
    assert (arch.conv_norm, arch.conv_bias, arch.layer_norm_first) == ("layer", True, True)
    assert (arch.num_clusters, arch.label_rate_hz, saved.config.audio.normalize) == (10, 50.0, True)
    model, out = encoder_of(saved), outputs["hubert_pretrained"]
    features_BTC = encode(model, out["normalized_BT"])
    assert _max_diff(features_BTC, out["features_BTC"]) <= TOL
    with torch.no_grad():
        proj_BTC = model.final_proj(features_BTC)
        assert _max_diff(proj_BTC, out["final_proj_BTC"]) <= TOL
        logits_NK = cluster_logits(proj_BTC.flatten(0, 1), model.label_embs, arch.logit_temperature)
    assert _max_diff(logits_NK, out["cluster_logits_NK"]) <= TOL


def test_wavlm_fixture_of_the_wavlm_repository_matches(outputs):
    saved = read_checkpoint(FIXTURES / "wavlm_unilm.pt")
    arch = saved.config.model.arch
    assert saved.checkpoint["source_format"] == "wavlm" and saved.checkpoint["seeded_heads"] == ["final_proj",
                                                                                                 "label_embs"]
    assert (arch.num_buckets, arch.max_distance, arch.feature_grad_mult, arch.layerdrop) == (16, 40, 0.1, 0.05)
    out = outputs["wavlm_unilm"]
    assert _max_diff(encode(encoder_of(saved), out["wav_BT"]), out["features_BTC"]) <= TOL


def test_ctc_fixture_gives_fairseq_logits_and_transcripts(outputs):
    saved = read_checkpoint(FIXTURES / "w2v2_ctc.pt")  # dict.ltr.txt lies beside it
    assert saved.checkpoint["seeded_heads"] == ["final_proj", "project_q", "quantizer"]  # Wav2VecCtc has none
    assert saved.config.finetune.final_dropout == 0.1 and saved.config.model.arch.mask_prob == 0.3
    model, out = ctc_model_of(saved), outputs["w2v2_ctc"]
    assert model.vocab.letters == ("|", "A", "B", "C", "D", "E")
    for i in (0, 3):
        wav_BT = out[f"wav{i}_BT"]
        with torch.no_grad():
            logits_BTV, frames_B = model(wav_BT, torch.tensor([wav_BT.shape[1]]))
        assert _max_diff(logits_BTV, out[f"logits{i}_BTV"]) <= TOL
        assert model.vocab.to_words(greedy_ids(logits_BTV, frames_B)[0]) == out[f"text{i}"]
    assert any(out[f"text{i}"] for i in (0, 3)), "fairseq wrote no letters: the text check would see nothing"


def test_hubert_ctc_fixture_gives_fairseq_logits_and_transcripts(outputs):
    saved = read_checkpoint(FIXTURES / "hubert_ctc.pt")  # fairseq's HubertCtc; dict.ltr.txt lies beside it
    assert saved.config.model.name == "hubert" and saved.checkpoint["source_format"] == "fairseq"
    assert saved.checkpoint["seeded_heads"] == ["final_proj"]  # HubertCtc keeps label_embs_concat, not final_proj
    arch = saved.config.model.arch
    assert (arch.conv_norm, arch.layer_norm_first, arch.num_clusters, saved.config.audio.normalize) == (
        "layer", True, 10, True)
    assert saved.config.finetune.final_dropout == 0.1 and arch.mask_prob == 0.3 and arch.feature_grad_mult == 0.0
    model, out = ctc_model_of(saved), outputs["hubert_ctc"]
    assert model.vocab.letters == ("|", "A", "B", "C", "D", "E")
    for i in (0, 3):
        wav_BT = out[f"wav{i}_BT"]  # already normalized, as fairseq's task hands it to the model
        with torch.no_grad():
            logits_BTV, frames_B = model(wav_BT, torch.tensor([wav_BT.shape[1]]))
        assert _max_diff(logits_BTV, out[f"logits{i}_BTV"]) <= TOL
        assert model.vocab.to_words(greedy_ids(logits_BTV, frames_B)[0]) == out[f"text{i}"]
    assert any(out[f"text{i}"] for i in (0, 3)), "fairseq wrote no letters: the text check would see nothing"


def test_cli_decodes_the_hubert_ctc_fixture_as_fairseq_did(tmp_path, outputs):
    """``speechbs decode`` on fairseq's HubertCtc: the checkpoint's normalize applies, the letters are fairseq's."""
    import soundfile as sf

    from speechbs.data.manifest import Manifest, write_manifest

    out = outputs["hubert_ctc"]
    files = [f"u{i}.wav" for i in (0, 3)]
    for name, i in zip(files, (0, 3)):  # fairseq's normalized input: normalizing it again changes < 1e-6
        sf.write(tmp_path / name, out[f"wav{i}_BT"][0].numpy(), 16_000, subtype="FLOAT")
    counts = [out[f"wav{i}_BT"].shape[1] for i in (0, 3)]
    write_manifest(Manifest(tmp_path, files, counts, [16_000] * 2), tmp_path / "test.tsv")
    (tmp_path / "test.ltr").write_text("".join(" ".join(out[f"text{i}"]) + " |\n" for i in (0, 3)))
    proc = _cli(tmp_path, "decode", str(FIXTURES / "hubert_ctc.pt"), "--manifest", "test.tsv", "--out", "dec")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "dec" / "hyp.wrd").read_text().splitlines() == [out["text0"], out["text3"]]


def test_fixtures_import_without_fairseq_or_omegaconf(tmp_path):
    """In a process where fairseq, omegaconf and hydra cannot be imported (as in CI)."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('fairseq', 'omegaconf', 'hydra'): raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from speechbs.pretrained import read_checkpoint\n"
            f"for name in ('w2v2_pretrained', 'hubert_pretrained', 'w2v2_ctc', 'hubert_ctc', 'wavlm_unilm'):\n"
            f"    read_checkpoint('{FIXTURES}/' + name + '.pt')\n"
            "print('fairseq' in sys.modules, 'omegaconf' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False"


def test_pickled_omegaconf_and_namespace_configs_read_as_plain_dicts():
    raw = load_foreign(FIXTURES / "pickled_configs.pt")
    assert plain(raw["cfg_omegaconf"]) == raw["cfg_plain"]
    assert plain(raw["args_namespace"]) == raw["args_plain"]


class _RunsCode:
    """What a malicious pickle does: ask the unpickler to call ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_reads_as_inert_records(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {"w": torch.ones(2)}, "cfg": {"hook": _RunsCode(marker)}}, tmp_path / "evil.pt")
    raw = load_foreign(tmp_path / "evil.pt")
    assert not marker.exists() and torch.equal(raw["model"]["w"], torch.ones(2))
    assert raw["cfg"]["hook"].global_name in ("posix.system", "nt.system", "os.system")
    assert read_foreign(tmp_path / "evil.pt") is None and not marker.exists()  # no checkpoint it knows


def test_omegaconf_interpolations_resolve_against_the_whole_config():
    cfg = {"task": {"label_rate": 50.0}, "model": {"label_rate": "${task.label_rate}", "x": "${nope.y}"}}
    out = resolve_interpolations(cfg)
    assert out["model"] == {"label_rate": 50.0, "x": "${nope.y}"}


def test_an_args_only_checkpoint_reads_like_its_cfg_twin(tmp_path):
    """fairseq before hydra kept one flat argparse.Namespace (``args``) instead of ``cfg``."""
    raw = load_foreign(FIXTURES / "pickled_configs.pt")
    state = torch.load(FIXTURES / "w2v2_pretrained.pt", weights_only=True)
    torch.save({"args": argparse.Namespace(**raw["args_plain"]), "cfg": None, "model": state["model"],
                "optimizer_history": state["optimizer_history"], "extra_state": {}}, tmp_path / "old.pt")
    old, new = read_checkpoint(tmp_path / "old.pt"), read_checkpoint(FIXTURES / "w2v2_pretrained.pt")
    assert old.config.model == new.config.model
    assert all(torch.equal(v, new.checkpoint["model"][k]) for k, v in old.checkpoint["model"].items())


# ---- continuing pretraining and fine-tuning from fairseq ----------------------------------------------

def test_train_init_from_fairseq_keeps_the_pretraining_heads():
    from speechbs.configio import load_config
    from speechbs.pretrained import build_model
    from speechbs.tasks.ssl import load_initial_weights

    for name, family in (("w2v2_pretrained", "wav2vec2"), ("hubert_pretrained", "hubert"), ("wavlm_unilm", "wavlm")):
        saved = read_checkpoint(FIXTURES / f"{name}.pt")
        cfg = load_config(None, [f"model.name={family}", f"train.init={FIXTURES / name}.pt"])
        cfg = dataclasses.replace(cfg, model=saved.config.model)  # a recipe describing the same architecture
        torch.manual_seed(3)
        model = build_model(cfg.model)
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        note = load_initial_weights(model, cfg)
        for key, tensor in model.state_dict().items():
            seeded = key.split(".")[0] in saved.checkpoint["seeded_heads"]
            want = fresh[key] if seeded else saved.checkpoint["model"][key]
            assert torch.equal(tensor, want), (name, key)
        assert ("every weight" in note) == (family != "wavlm"), note
        assert (family != "wavlm") or "WavLM repository" in note


@pytest.mark.parametrize("name", ["w2v2_pretrained", "hubert_pretrained", "w2v2_ctc", "hubert_ctc", "wavlm_unilm"])
def test_finetune_init_reads_fairseq_checkpoints_pretrained_and_fine_tuned(name):
    from speechbs.configio import load_config
    from speechbs.tasks.ctc import prepare_finetune

    saved = read_checkpoint(FIXTURES / f"{name}.pt")
    recipe = REPO / "recipes" / "finetune" / "tiny_digits.toml"
    cfg, state = prepare_finetune(load_config(recipe, [f"finetune.init={FIXTURES / name}.pt"]))
    assert cfg.model.arch.embed_dim == 48 and cfg.model.arch.feature_grad_mult == 0.0
    prefix = "encoder." if name.endswith("_ctc") else ""
    for key in ("post_extract_proj.weight", "encoder.layers.1.fc2.weight"):
        assert torch.equal(state[key], saved.checkpoint["model"][prefix + key])


# ---- one-line mistakes -------------------------------------------------------------------------------

def test_an_unsupported_fairseq_setting_is_named(tmp_path):
    state = torch.load(FIXTURES / "w2v2_pretrained.pt", weights_only=True)
    state["cfg"]["model"]["activation_fn"] = "relu"
    torch.save(state, tmp_path / "relu.pt")
    with pytest.raises(ConfigError, match=r"activation_fn = 'relu' is not supported"):
        read_checkpoint(tmp_path / "relu.pt")
    state["cfg"]["model"].update(activation_fn="gelu", quantize_targets=False)
    torch.save(state, tmp_path / "noquant.pt")
    with pytest.raises(ConfigError, match="quantize_targets = False"):
        read_checkpoint(tmp_path / "noquant.pt")
    proc = _cli(tmp_path, "export", str(tmp_path / "relu.pt"), "--to", "hf", "out")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "activation_fn" in proc.stderr


def test_ctc_without_its_dictionary_says_where_to_put_it(tmp_path):
    (tmp_path / "ctc.pt").write_bytes((FIXTURES / "w2v2_ctc.pt").read_bytes())  # its task.data is long gone
    with pytest.raises(DataError, match="put its dict.ltr.txt beside it"):
        read_checkpoint(tmp_path / "ctc.pt")


def test_a_hubert_ctc_without_its_pretraining_config_says_so(tmp_path):
    """fairseq 0.12's own HuBERT fine-tuning saves ``model.w2v_args = None``: the encoder's config is then only in
    the pretraining checkpoint at ``w2v_path``, which speechbs does not follow."""
    state = torch.load(FIXTURES / "hubert_ctc.pt", weights_only=False)  # fairseq's Dictionary in task_state
    state["cfg"]["model"]["w2v_args"] = None
    torch.save(state, tmp_path / "hubert_ctc.pt")
    (tmp_path / "dict.ltr.txt").write_text((FIXTURES / "dict.ltr.txt").read_text())
    with pytest.raises(ConfigError, match="w2v_args.*w2v_path"):
        read_checkpoint(tmp_path / "hubert_ctc.pt")


def test_an_export_fairseq_cannot_hold_is_refused(tmp_path):
    run, _model, _cfg = pretrained(tmp_path, "hubert", "model.layer_norm_eps=1e-6")
    with pytest.raises(ConfigError, match=r"cannot hold model.layer_norm_eps = 1e-06"):
        export_fairseq(read_checkpoint(run), tmp_path / "x.pt")
    run, _model = ctc_checkpoint(tmp_path, "wavlm")
    with pytest.raises(ConfigError, match="--to hf"):
        export_fairseq(read_checkpoint(run), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_conv_layers_strings_parse_without_eval():
    spec = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
    layers = fm.parse_conv_layers(spec)
    assert layers == ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    assert fm.conv_layers_str(layers) == "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"
    with pytest.raises(ConfigError, match="conv_feature_layers"):
        fm.parse_conv_layers("__import__('os').system('true')")


def _cli(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speechbs", *argv], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})


def test_cli_export_and_user_mistakes_are_one_line(tmp_path):
    run, _model, _cfg = pretrained(tmp_path, "hubert")
    (tmp_path / "taken.pt").write_bytes(b"keep")
    (tmp_path / "adir").mkdir()
    for argv, says in [((str(run), "--to", "fairseq", "taken.pt"), ("taken.pt", "--force")),
                       ((str(run), "--to", "fairseq", "adir"), ("adir", "directory")),
                       (("missing.pt", "--to", "fairseq", "new.pt"), ("missing.pt", "does not exist"))]:
        proc = _cli(tmp_path, "export", *argv)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert all(s in lines[0] for s in says), lines[0]
    assert (tmp_path / "taken.pt").read_bytes() == b"keep" and not (tmp_path / "new.pt").exists()
    proc = _cli(tmp_path, "export", str(run), "--to", "fairseq", "taken.pt", "--force")
    assert proc.returncode == 0, proc.stderr
    assert "fairseq HubertModel" in proc.stdout and "dict.km.txt" in proc.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".taken")] == []


# ---- fairseq itself ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fairseq_loader():
    try:
        from fairseq import checkpoint_utils
    except Exception as exc:  # noqa: BLE001 - not installed, or installed but broken: skip, saying which
        pytest.skip(f"fairseq does not import ({type(exc).__name__}: {exc}); the fixtures test the format "
                    f"without it (pip install --no-deps --no-build-isolation fairseq-fixed==0.12.3.1)")
    return checkpoint_utils.load_model_ensemble_and_task


@pytest.mark.parametrize("family, layout", [("wav2vec2", "base"), ("wav2vec2", "large"), ("hubert", "base"),
                                            ("hubert", "large")])
def test_fairseq_loads_the_export_and_computes_the_same(tmp_path, fairseq_loader, family, layout):
    run, model, _cfg = pretrained(tmp_path, family, *(STABLE if layout == "large" else ()))
    done = export_fairseq(read_checkpoint(run), tmp_path / "out.pt")
    models, _fcfg, _task = fairseq_loader([str(done.out)])  # torch's default weights_only=True load
    theirs = models[0].eval()
    wav_BT = wav(14_000, seed=5, rows=2)
    with torch.no_grad():
        x_BTC, _ = theirs.extract_features(wav_BT, padding_mask=None, mask=False) if family == "hubert" else (
            theirs.extract_features(wav_BT, padding_mask=None, mask=False)["x"], None)
        ours = encode(model, wav_BT)
        assert _max_diff(x_BTC, ours) <= TOL
        assert _max_diff(theirs.final_proj(x_BTC), model.final_proj(ours)) <= TOL
        if family == "wav2vec2":
            conv = model.local_features(model.feature_encoder(wav_BT, torch.full((2,), 14_000))[0])
            quant = theirs.quantizer(theirs.layer_norm(theirs.feature_extractor(wav_BT).transpose(1, 2)),
                                     produce_targets=True)
            assert torch.equal(quant["targets"].flatten(0, 1), model.quantizer(conv.flatten(0, 1), temperature=2.0)
                               .codes_NG)
        else:
            k = model.cfg.num_clusters
            assert torch.equal(theirs.label_embs_concat[-k:], model.label_embs) and theirs.num_classes == [k + 4]


def _fix_fairseq_hubert_ctc(monkeypatch) -> None:
    """fairseq 0.12's HubertEncoder reads ``cfg.autoregressive``, which HubertCtcConfig lacks, so fairseq loads
    no HubertCtc at all, its own released ones included (facebookresearch/fairseq#4916): give it False (CTC)."""
    from fairseq.models.hubert import hubert_asr
    from omegaconf import open_dict

    original = hubert_asr.HubertEncoder.__init__

    def init(self, cfg, task):
        if "autoregressive" not in cfg:
            with open_dict(cfg):
                cfg.autoregressive = False
        original(self, cfg, task)

    monkeypatch.setattr(hubert_asr.HubertEncoder, "__init__", init)


@pytest.mark.parametrize("family", ["wav2vec2", "hubert"])
def test_fairseq_decodes_an_exported_ctc_model_as_speechbs_does(tmp_path, fairseq_loader, monkeypatch, family):
    run, model = ctc_checkpoint(tmp_path, family)
    done = export_fairseq(read_checkpoint(run), tmp_path / "out" / "ctc.pt")
    if family == "hubert":
        _fix_fairseq_hubert_ctc(monkeypatch)
    if family == "wav2vec2":  # finds dict.ltr.txt in task.data, beside it
        models, _fcfg, task = fairseq_loader([str(done.out)])
    else:  # moved from its task.data: fairseq's loader is told where, as for fairseq's own fine-tuned models
        moved = tmp_path / "moved"
        (tmp_path / "out").rename(moved)
        models, _fcfg, task = fairseq_loader([str(moved / "ctc.pt")], arg_overrides={"data": str(moved)})
    theirs = models[0].eval()
    assert type(theirs).__name__ == done.model_class.split()[-1]
    dictionary = task.target_dictionary
    assert dictionary.symbols[:len(model.vocab)] == list(model.vocab.symbols)
    texts = set()
    for seed in range(3):
        wav_BT = wav(12_000 + 4_000 * seed, seed)
        with torch.no_grad():
            ours, frames = model(wav_BT, torch.tensor([wav_BT.shape[1]]))
            logits_BTV = theirs.get_logits(theirs(source=wav_BT, padding_mask=None)).transpose(0, 1)
        assert _max_diff(logits_BTV, ours) <= 1e-4 * ours.abs().max()
        ids = torch.unique_consecutive(logits_BTV[0].argmax(-1))
        text = dictionary.string(ids[ids != dictionary.bos()]).replace(" ", "").replace("|", " ")
        want = model.vocab.to_words(greedy_ids(ours, frames)[0])
        assert " ".join(text.split()) == want
        texts.add(want)
    assert any(texts), "every decode was empty: the test would not see a mapping mistake"
