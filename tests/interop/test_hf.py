"""`speechbs export --to hf` and the way back: tiny random models of each family, no download.

speechbs -> HF -> speechbs gives the same weights and outputs; transformers itself loads the
export and computes what speechbs's ``encode`` does; an exported CTC model transcribes in
transformers as speechbs's greedy decoding does; pretraining can start from an export.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install speechbs[hf])")

from speechbs.asr.ctc import greedy_ids, load_ctc_checkpoint  # noqa: E402
from speechbs.asr.hf_import import load_hf_encoder  # noqa: E402
from speechbs.asr.vocab import build_vocab  # noqa: E402
from speechbs.configio import load_config  # noqa: E402
from speechbs.errors import ConfigError  # noqa: E402
from speechbs.interop.hf import export_hf, hf_vocab  # noqa: E402
from speechbs.pretrained import build_model  # noqa: E402
from speechbs.tasks.ctc import prepare_finetune  # noqa: E402
from speechbs.tasks.ssl import load_initial_weights  # noqa: E402
from tests.interop.tiny import EXTRA, FAMILIES, SMALL, STABLE, ctc_checkpoint, encode, pretrained, wav  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-5
@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_speechbs_hf_speechbs(tmp_path, family):
    run, model, cfg = pretrained(tmp_path, family)
    done = export_hf(run, tmp_path / "hf")
    assert done.checkpoint.parent == run / "checkpoints" and done.checkpoint.suffix == ".pt"  # the latest step
    name, arch, state = load_hf_encoder(tmp_path / "hf")
    assert name == family
    back = build_model(cfg.model)  # the original architecture; HF keeps no loss settings
    missing, unexpected = back.load_state_dict(state, strict=False)
    heads = {"wav2vec2": set(), "hubert": {"final_proj", "label_embs"}, "wavlm": {"final_proj", "label_embs"}}
    assert not unexpected and {k.split(".")[0] for k in missing} == heads[family]
    original = model.state_dict()
    assert set(state) == set(original) - set(missing)
    for key, tensor in state.items():
        assert torch.equal(tensor, original[key]), key
    for key in ("embed_dim", "num_layers", "conv_layers", "conv_norm", "layer_norm_first", "mask_prob"):
        assert getattr(arch, key) == getattr(cfg.model.arch, key)
    wav_BT = wav()
    assert torch.equal(encode(back.eval(), wav_BT), encode(model, wav_BT))


@pytest.mark.parametrize("family, stable", [("wav2vec2", False), ("wav2vec2", True), ("hubert", False),
                                            ("wavlm", True)])
def test_transformers_loads_the_export_and_computes_the_same(tmp_path, family, stable):
    extra = STABLE if stable else []
    run, model, cfg = pretrained(tmp_path, family, *extra)
    out = tmp_path / "hf"
    export_hf(run, out)
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()
    hf = transformers.AutoModel.from_pretrained(out).eval()
    wav_BT = wav(20_000)
    with torch.no_grad():
        want = encode(model, wav_BT)
        got = hf(wav_BT).last_hidden_state
    assert got.shape == want.shape and (got - want).abs().max() <= TOL
    extractor = transformers.AutoFeatureExtractor.from_pretrained(out)
    assert extractor.sampling_rate == cfg.audio.sample_rate_hz and extractor.do_normalize == cfg.audio.normalize
    assert extractor.return_attention_mask == stable
    if family == "wav2vec2":
        pre, info = transformers.Wav2Vec2ForPreTraining.from_pretrained(out, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        assert torch.equal(pre.project_hid.weight, model.final_proj.weight)
        assert torch.equal(pre.quantizer.codevectors, model.quantizer.codevectors)


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm"])
def test_exported_ctc_model_transcribes_like_speechbs(tmp_path, family):
    run, model = ctc_checkpoint(tmp_path, family)
    out = tmp_path / "hf-ctc"
    done = export_hf(run, out)
    assert done.hf_class.endswith("ForCTC")
    assert {"vocab.json", "tokenizer_config.json", "special_tokens_map.json"} <= {p.name for p in out.iterdir()}
    loaded, _cfg, _ckpt = load_ctc_checkpoint(run)
    vocab = loaded.vocab
    asr = transformers.pipeline("automatic-speech-recognition", model=str(out), device="cpu")
    processor = transformers.Wav2Vec2Processor.from_pretrained(out)
    hf = transformers.AutoModelForCTC.from_pretrained(out).eval()
    texts = set()
    for seed in range(4):
        wav_BT = wav(12_000 + 3_000 * seed, seed)
        with torch.no_grad():
            logits_BTV, frames_B = loaded(wav_BT, torch.tensor([wav_BT.shape[1]]))
            hf_logits = hf(wav_BT).logits
        assert (hf_logits - logits_BTV).abs().max() <= 1e-4 * logits_BTV.abs().max()
        ours = vocab.to_words(greedy_ids(logits_BTV, frames_B)[0])
        by_processor = processor.batch_decode(hf_logits.argmax(-1))[0]
        by_pipeline = asr(wav_BT[0].numpy())["text"]
        # HF keeps the space of a leading, trailing or blank-separated doubled "|"; speechbs writes words.
        assert " ".join(by_processor.split()) == ours == " ".join(by_pipeline.split())
        texts.add(ours)
    assert any(texts), "every decode was empty: the test would not see a mapping mistake"


def test_hf_vocab_puts_the_blank_at_pad():
    vocab = build_vocab(["A B |"])[0]
    table = hf_vocab(vocab)
    assert table["<pad>"] == 0 and table["<s>"] == 1 and table["<unk>"] == 3 and table["|"] == vocab.index()["|"]


@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_init_reads_hf_exports_of_every_family_and_ctc_dirs(tmp_path, family):
    run, model, _cfg = pretrained(tmp_path, family)
    export_hf(run, tmp_path / "hf")
    ctc_run, ctc_model = ctc_checkpoint(tmp_path, family)
    export_hf(ctc_run, tmp_path / "hf-ctc")
    recipe = REPO / "recipes" / "finetune" / "tiny_digits.toml"
    for source, encoder in ((tmp_path / "hf", model), (tmp_path / "hf-ctc", ctc_model.encoder)):
        cfg, state = prepare_finetune(load_config(recipe, [f"finetune.init={source}"]))
        assert cfg.model.name == family and cfg.model.arch.embed_dim == 32
        assert torch.equal(state["post_extract_proj.weight"], encoder.post_extract_proj.weight)
        assert torch.equal(state["encoder.layers.1.fc2.weight"], encoder.encoder.layers[1].fc2.weight)


@pytest.mark.parametrize("family", FAMILIES)
def test_pretraining_init_from_an_hf_export_keeps_the_weights(tmp_path, family, capsys):
    run, model, cfg = pretrained(tmp_path, family)
    export_hf(run, tmp_path / "hf")
    for source in (tmp_path / "hf", run):
        start = load_config(None, [f"model.name={family}", *SMALL, *EXTRA[family], f"train.init={source}"])
        torch.manual_seed(3)
        seeded = build_model(start.model)
        fresh = {k: v.clone() for k, v in seeded.state_dict().items()}
        note = load_initial_weights(seeded, start)
        from_hf = source != run and family != "wav2vec2"
        for key, tensor in seeded.state_dict().items():
            head = key.split(".")[0] in ("final_proj", "label_embs")
            want = fresh[key] if (head and from_hf) else model.state_dict()[key]
            assert torch.equal(tensor, want), (source, key)
        assert ("seeded initial weights for final_proj, label_embs" in note) == from_hf, note


def test_pretraining_task_starts_from_the_export(tmp_path, capsys):
    """The wav2vec 2.0 task built from train.init holds the exported weights, heads included."""
    from speechbs.dist import DistContext
    from speechbs.tasks.ssl import SSLTask

    run, model, _cfg = pretrained(tmp_path, "wav2vec2")
    export_hf(run, tmp_path / "hf")
    cfg = load_config(None, ["model.name=wav2vec2", *SMALL, *EXTRA["wav2vec2"], f"train.init={tmp_path / 'hf'}",
                             "data.valid_manifest="])
    task = SSLTask(cfg, DistContext())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in task.model.state_dict().items())
    assert "every weight" in capsys.readouterr().out


def test_pretraining_init_must_match_the_architecture(tmp_path):
    run, _model, _cfg = pretrained(tmp_path, "hubert")
    cfg = load_config(None, ["model.name=hubert", *SMALL, "model.num_layers=3", "model.num_clusters=10",
                             f"train.init={run}"])
    with pytest.raises(ConfigError, match="model.num_layers = 2"):
        load_initial_weights(build_model(cfg.model), cfg)
    cfg = load_config(None, [f"train.init={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="train.init"):
        load_initial_weights(build_model(cfg.model), cfg)


def test_every_size_maps_to_an_hf_config_and_a_lost_setting_is_refused(monkeypatch):
    from speechbs.models import convert
    from speechbs.models.sizes import SIZES

    for family in FAMILIES:
        for size, make in SIZES[family].items():
            kwargs = convert.hf_config_kwargs(family, make())
            config_cls = {"wav2vec2": transformers.Wav2Vec2Config, "hubert": transformers.HubertConfig,
                          "wavlm": transformers.WavLMConfig}[family]
            back = {"wav2vec2": convert.config_from_hf, "hubert": convert.hubert_config_from_hf,
                    "wavlm": convert.wavlm_config_from_hf}[family](config_cls(**kwargs))
            assert back.embed_dim == make().embed_dim and back.conv_layers == make().conv_layers, (family, size)
    original = convert._hf_encoder_kwargs
    monkeypatch.setattr(convert, "_hf_encoder_kwargs", lambda arch: {**original(arch), "layer_norm_eps": 1e-6})
    with pytest.raises(ConfigError, match=r"cannot hold model.layer_norm_eps = 1e-05"):
        convert.hf_config_kwargs("hubert", SIZES["hubert"]["tiny"]())
    with pytest.raises(ConfigError, match="no Hugging Face counterpart"):
        convert.hf_config_kwargs("conformer", SIZES["hubert"]["tiny"]())


def _cli(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speechbs", *argv], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})


def test_user_mistakes_are_one_line(tmp_path):
    run, _model, _cfg = pretrained(tmp_path, "wav2vec2")
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("keep me\n")
    cases = [
        (("export", "missing", "--to", "hf", "out"), ("missing", "does not exist")),
        (("export", "notes.txt", "--to", "hf", "out"), ("notes.txt",)),
        (("export", str(run), "--to", "hf", "taken"), ("taken", "--force")),
    ]
    for argv, says in cases:
        proc = _cli(tmp_path, *argv)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
        assert all(s in lines[0] for s in says), lines[0]
    assert (tmp_path / "taken" / "keep.txt").read_text() == "keep me\n"
    assert not (tmp_path / "out").exists()
    proc = _cli(tmp_path, "export", str(run), "--to", "hf", "taken", "--force")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and (tmp_path / "taken" / "config.json").is_file()
    assert not (tmp_path / "taken" / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".taken")] == []
