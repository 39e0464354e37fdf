"""Write tests/fixtures/fairseq/: tiny checkpoints made by real fairseq (and WavLM's own code), with outputs.

The tests in tests/interop/test_fairseq.py read these files WITHOUT fairseq: they import each
checkpoint into speechbs and compare speechbs's forward with the forward fairseq computed here on
the same input. The checkpoints are written by fairseq itself (``fairseq_cli.train`` for a few
updates on synthetic audio), so they hold what real fairseq checkpoints hold: the cfg, the
optimizer history, the metrics, and for HuBERT the task's ``Dictionary`` objects.

What it writes (each file well under 1 MB):

- ``w2v2_pretrained.pt``: ``Wav2Vec2Model`` (BASE-like: group-norm conv stack, post-norm), 10
  updates of ``audio_pretraining`` / ``wav2vec`` criterion;
- ``hubert_pretrained.pt``: ``HubertModel`` (LARGE-like: layer-norm conv stack with bias, pre-norm,
  normalized audio), 10 updates of ``hubert_pretraining`` on random 50 Hz labels of 10 clusters;
- ``w2v2_ctc.pt`` + ``dict.ltr.txt``: ``Wav2VecCtc`` fine-tuned from ``w2v2_pretrained.pt`` for 10
  updates of ``audio_finetuning`` / ``ctc`` on letter labels;
- ``hubert_ctc.pt``: ``HubertCtc`` fine-tuned from the HuBERT above for 10 updates of
  ``hubert_pretraining`` with ``fine_tuning`` / ``ctc`` on the same letters (``dict.ltr.txt``);
- ``wavlm_unilm.pt``: a random tiny ``WavLM`` of the WavLM repository's ``WavLM.py`` (the copy s3prl
  ships), saved as that repository saves it, ``{'cfg': WavLMConfig dict, 'model': state}``;
- ``pickled_configs.pt``: the wav2vec 2.0 checkpoint's config as older fairseq checkpoints pickle it,
  an omegaconf ``DictConfig`` and a flat ``argparse.Namespace`` (no weights), beside the plain dicts;
- ``outputs.pt``: per checkpoint, the input waveform and what fairseq (or ``WavLM.py``) computes in
  eval mode: the encoder output, the pretraining heads' outputs, the CTC logits and greedy text.

How to rerun it (only when a fixture must change; the tests never run it):

    pip install hydra-core==1.3.2 omegaconf==2.3.0 bitarray sacrebleu cython
    pip install --no-deps --no-build-isolation fairseq-fixed==0.12.3.1   # builds C++ code: ~12 min on 2 cores
    pip install --no-deps s3prl==0.4.18                                    # for WavLM.py only
    python scripts/make_fairseq_fixtures.py                                # ~2 min on a CPU
    python scripts/make_fairseq_fixtures.py --only hubert_ctc              # that one fixture, ~1 min

``--only hubert_ctc`` writes ``hubert_ctc.pt`` and its entry of ``outputs.pt`` and leaves every
other file (and the other entries) as they are: fairseq's training is not bitwise reproducible
across machines, so a fixture added later must not change the ones the tests already hold.

It trains on the CPU in a temporary directory and replaces the files in tests/fixtures/fairseq/.
fairseq's own loader reads its own checkpoints with ``torch.load``'s default, which torch >= 2.6
makes ``weights_only=True``; fairseq's HuBERT checkpoints hold pickled ``Dictionary`` objects, so
this script sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for fairseq (never for speechbs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "fairseq"
SAMPLE_RATE = 16_000
LETTERS = "ABCDE"
NUM_CLUSTERS = 10
TINY = ["--conv-feature-layers", "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2",
        "--encoder-layers", "2", "--encoder-embed-dim", "48", "--encoder-ffn-embed-dim", "96",
        "--encoder-attention-heads", "4", "--conv-pos", "8", "--conv-pos-groups", "4", "--final-dim", "16"]
TRAIN = ["--cpu", "--optimizer", "adam", "--lr", "0.01", "--max-update", "10", "--max-tokens", "200000",
         "--required-batch-size-multiple", "1", "--num-workers", "0", "--disable-validation",
         "--no-epoch-checkpoints", "--no-save-optimizer-state", "--seed", "3", "--log-format", "simple"]


def write_corpus(data: Path) -> None:
    """Six short utterances (tones in noise), their letter transcripts and random 50 Hz cluster labels."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    data.mkdir(parents=True)
    rows, letters, clusters = [str(data)], [], []
    for i in range(6):
        num = 12_000 + 2_000 * i
        t = np.arange(num) / SAMPLE_RATE
        wav = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(num)
        sf.write(data / f"u{i}.wav", wav.astype("float32"), SAMPLE_RATE)
        rows.append(f"u{i}.wav\t{num}")
        words = ["".join(rng.choice(list(LETTERS), size=rng.integers(1, 4))) for _ in range(2)]
        letters.append(" ".join(" ".join(word) + " |" for word in words))
        clusters.append(" ".join(str(c) for c in rng.integers(0, NUM_CLUSTERS, size=num * 50 // SAMPLE_RATE)))
    for split in ("train", "valid"):
        (data / f"{split}.tsv").write_text("\n".join(rows) + "\n")
        (data / f"{split}.ltr").write_text("\n".join(letters) + "\n")
        (data / f"{split}.km").write_text("\n".join(clusters) + "\n")
    (data / "dict.ltr.txt").write_text("".join(f"{c} {10 - i}\n" for i, c in enumerate("|" + LETTERS)))
    (data / "dict.km.txt").write_text("".join(f"{c} 1\n" for c in range(NUM_CLUSTERS)))


HUBERT_CTC_FIX = """
from fairseq.models.hubert import hubert_asr
from omegaconf import open_dict

def _init(self, cfg, task, _original=hubert_asr.HubertEncoder.__init__):
    if "autoregressive" not in cfg:
        with open_dict(cfg):
            cfg.autoregressive = False
    _original(self, cfg, task)

hubert_asr.HubertEncoder.__init__ = _init
"""
"""fairseq 0.12's ``HubertEncoder`` reads ``cfg.autoregressive``, a field ``HubertCtcConfig`` lacks, so
fairseq can neither train nor load any ``HubertCtc`` (facebookresearch/fairseq#4916): this gives it the
value fairseq means (False, CTC) before the encoder is built; the file fairseq writes is unchanged."""


def fix_fairseq_hubert_ctc() -> None:
    exec(HUBERT_CTC_FIX, {})


def fairseq_train(data: Path, save: Path, *args: str) -> Path:
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    main = HUBERT_CTC_FIX + "from fairseq_cli.train import cli_main\ncli_main()\n"
    cmd = [sys.executable, "-c", main, str(data), "--save-dir", str(save), *TRAIN, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"fairseq training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return save / "checkpoint_last.pt"


def train_all(tmp: Path) -> dict[str, Path]:
    data = tmp / "data"
    write_corpus(data)
    w2v2 = fairseq_train(data, tmp / "w2v2", "--task", "audio_pretraining", "--arch", "wav2vec2",
                         "--criterion", "wav2vec", *TINY, "--quantize-targets", "--latent-vars", "8",
                         "--latent-groups", "2", "--latent-dim", "16", "--num-negatives", "5", "--infonce",
                         "--loss-weights", "[0.1, 10]", "--feature-grad-mult", "0.1",
                         "--log-keys", '["prob_perplexity","code_perplexity","temp"]')
    hubert = train_hubert(data, tmp)
    ctc = fairseq_train(data, tmp / "ctc", "--task", "audio_finetuning", "--arch", "wav2vec_ctc",
                        "--criterion", "ctc", "--w2v-path", str(w2v2), "--labels", "ltr", "--post-process",
                        "letter", "--final-dropout", "0.1", "--mask-prob", "0.3", "--mask-channel-prob", "0.1",
                        "--mask-channel-length", "8", "--layerdrop", "0.0", "--freeze-finetune-updates", "0",
                        "--feature-grad-mult", "0.0")
    return {"w2v2_pretrained": w2v2, "hubert_pretrained": hubert, "w2v2_ctc": ctc,
            "hubert_ctc": train_hubert_ctc(data, tmp, hubert), "data": data}


def train_hubert(data: Path, tmp: Path) -> Path:
    return fairseq_train(data, tmp / "hubert", "--task", "hubert_pretraining", "--arch", "hubert",
                         "--criterion", "hubert", *TINY, "--labels", '["km"]', "--label-dir", str(data),
                         "--label-rate", "50", "--normalize", "--extractor-mode", "layer_norm", "--conv-bias",
                         "--layer-norm-first", "--pred-masked-weight", "1.0", "--pred-nomask-weight", "0.0",
                         "--loss-weights", "[10]", "--feature-grad-mult", "1.0", "--pad-audio")


def train_hubert_ctc(data: Path, tmp: Path, hubert: Path) -> Path:
    """fairseq's HuBERT fine-tuning (its ``base_10h`` config in miniature): letters as sequence labels.

    60 updates, not 10: fewer leave every frame blank and the greedy text empty. fairseq 0.12 saves
    ``HubertCtc`` with ``model.w2v_args = None`` (its encoder sets the field on a copy of the config),
    so the file could only be loaded beside its pretraining checkpoint; the released HuBERT CTC models
    hold ``w2v_args``, and so does this one: the pretraining config as ``HubertEncoder`` reads it.
    """
    ctc = fairseq_train(data, tmp / "hubert_ctc", "--task", "hubert_pretraining", "--fine-tuning",
                         "--labels", '["ltr"]', "--label-dir", str(data), "--label-rate", "-1",
                         "--single-target", "--normalize", "--pad-audio", "--arch", "hubert_ctc",
                         "--criterion", "ctc", "--w2v-path", str(hubert), "--post-process", "letter",
                         "--apply-mask", "--mask-prob", "0.3", "--layerdrop", "0.0", "--final-dropout", "0.1",
                         "--freeze-finetune-updates", "0", "--feature-grad-mult", "0.0", "--max-update", "60",
                         "--lr", "0.003")
    embed_w2v_args(ctc, hubert)
    return ctc


def embed_w2v_args(ctc: Path, hubert: Path) -> None:
    """Put ``hubert``'s config, with ``HubertEncoder``'s fine-tuning overrides, in ``ctc``'s ``model.w2v_args``."""
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    import torch
    from fairseq import checkpoint_utils
    from omegaconf import OmegaConf

    state = torch.load(ctc, weights_only=False)
    model = state["cfg"]["model"]
    names = ["dropout", "activation_dropout", "dropout_input", "attention_dropout", "mask_length", "mask_prob",
             "mask_selection", "mask_other", "no_mask_overlap", "mask_channel_length", "mask_channel_prob",
             "mask_channel_selection", "mask_channel_other", "no_mask_channel_overlap", "feature_grad_mult"]
    overrides = {**{n: model[n] for n in names}, "encoder_layerdrop": model["layerdrop"]}
    inner = checkpoint_utils.load_checkpoint_to_cpu(str(hubert), overrides)["cfg"]
    model["w2v_args"] = OmegaConf.to_container(inner, resolve=True)
    torch.save(state, ctc)


def fairseq_outputs(paths: dict[str, Path]) -> dict[str, dict]:
    """Each checkpoint through fairseq's own loader, in eval mode, on a fixed input."""
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    import torch
    from fairseq import checkpoint_utils

    outputs = {}
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([str(paths["w2v2_pretrained"])])
        model = models[0].eval()
        wav_BT = 0.3 * torch.randn(2, 9_000, generator=gen)
        res = model(wav_BT, mask=False, features_only=True)
        conv_BCT = model.feature_extractor(wav_BT)
        quant = model.quantizer(model.layer_norm(conv_BCT.transpose(1, 2)), produce_targets=True)
        outputs["w2v2_pretrained"] = {
            "wav_BT": wav_BT, "features_BTC": res["x"], "final_proj_BTC": model.final_proj(res["x"]),
            "codevectors_BTE": quant["x"], "codes_BTG": quant["targets"],
            "project_q_BTC": model.project_q(quant["x"])}

        models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(paths["hubert_pretrained"])])
        model = models[0].eval()
        wav_BT = 0.3 * torch.randn(2, 9_000, generator=gen)
        source = torch.nn.functional.layer_norm(wav_BT, wav_BT.shape[1:])  # the task normalizes each utterance
        x_BTC, _ = model.extract_features(source, padding_mask=None, mask=False)
        proj_NC = model.final_proj(x_BTC).flatten(0, 1)
        dictionary = task.dictionaries[0]
        clusters_N = torch.randint(0, NUM_CLUSTERS, (proj_NC.shape[0],), generator=gen)
        target_N = torch.tensor([dictionary.index(str(int(c))) for c in clusters_N])
        embs = model.label_embs_concat
        logits = model.compute_nce(proj_NC, embs[target_N], embs.unsqueeze(1).expand(-1, proj_NC.shape[0], -1))
        # fairseq: column 0 is the target, then every class (the target's own column -inf); back to (N, K).
        full = logits[:, 1:].clone()
        full[torch.arange(len(target_N)), target_N] = logits[:, 0]
        cluster_index = torch.tensor([dictionary.index(str(c)) for c in range(NUM_CLUSTERS)])
        outputs["hubert_pretrained"] = {
            "wav_BT": wav_BT, "normalized_BT": source, "features_BTC": x_BTC,
            "final_proj_BTC": model.final_proj(x_BTC), "cluster_logits_NK": full[:, cluster_index],
            "clusters_N": clusters_N}

    outputs["w2v2_ctc"] = ctc_outputs(paths["w2v2_ctc"], paths["data"], normalize=False)
    outputs["hubert_ctc"] = ctc_outputs(paths["hubert_ctc"], paths["data"], normalize=True)
    return outputs


def ctc_outputs(path: Path, data: Path, normalize: bool) -> dict:
    """A fine-tuned CTC checkpoint through fairseq's loader: logits and greedy text of two utterances.

    ``normalize``: the task normalizes each utterance before the model (HuBERT's fine-tuning here);
    ``wav{i}_BT`` is then the normalized waveform, what the model itself sees.
    """
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    import soundfile
    import torch
    from fairseq import checkpoint_utils

    fix_fairseq_hubert_ctc()
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": str(data)})
    model = models[0].eval()
    ctc = {}
    with torch.no_grad():
        for i in (0, 3):  # two utterances of different lengths, one per batch (no padding)
            wav, _rate = soundfile.read(data / f"u{i}.wav", dtype="float32")
            wav_BT = torch.from_numpy(wav).view(1, -1)
            if normalize:
                wav_BT = torch.nn.functional.layer_norm(wav_BT, wav_BT.shape[1:])
            logits_BTV = model.get_logits(model(source=wav_BT, padding_mask=None)).transpose(0, 1)
            ids = torch.unique_consecutive(logits_BTV[0].argmax(-1))
            ids = ids[ids != task.target_dictionary.bos()]  # the blank
            text = task.target_dictionary.string(ids).replace(" ", "").replace("|", " ").strip()
            ctc.update({f"wav{i}_BT": wav_BT, f"logits{i}_BTV": logits_BTV, f"text{i}": text})
    return ctc


def wavlm_fixture(out: Path) -> dict:
    """A random tiny WavLM of WavLM.py (s3prl's copy), saved as the WavLM repository saves its checkpoints."""
    import types

    import torch

    sys.modules.setdefault("s3prl.util.pseudo_data", types.ModuleType("s3prl.util.pseudo_data"))
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    cfg = WavLMConfig({"extractor_mode": "default", "encoder_layers": 2, "encoder_embed_dim": 48,
                       "encoder_ffn_embed_dim": 96, "encoder_attention_heads": 4, "conv_pos": 8,
                       "conv_pos_groups": 4, "conv_feature_layers": TINY[1], "relative_position_embedding": True,
                       "num_buckets": 16, "max_distance": 40, "gru_rel_pos": True, "layer_norm_first": False,
                       "normalize": False, "feature_grad_mult": 0.1, "encoder_layerdrop": 0.05})
    torch.manual_seed(5)
    model = WavLM(cfg)
    with torch.no_grad():  # move norms, biases and gates off their init, so a mapping mistake shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "grep" in name:
                p.add_(0.1 * torch.randn_like(p))
            if "relative_attention_bias" in name:
                p.normal_()
    model.eval()
    torch.save({"cfg": cfg.__dict__, "model": model.state_dict()}, out / "wavlm_unilm.pt")
    wav_BT = 0.3 * torch.randn(2, 9_000, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        x_BTC, _ = model.extract_features(wav_BT, padding_mask=None, mask=False)
    return {"wav_BT": wav_BT, "features_BTC": x_BTC}


def pickled_configs(w2v2: Path, out: Path) -> None:
    """The config of ``w2v2`` pickled as omegaconf and argparse objects, as older fairseq checkpoints hold it."""
    import torch
    from omegaconf import OmegaConf

    cfg = torch.load(w2v2, weights_only=True)["cfg"]
    flat = {**cfg["task"], **cfg["criterion"], **cfg["model"], "arch": cfg["model"]["_name"],
            "task": cfg["task"]["_name"], "criterion": cfg["criterion"]["_name"]}
    flat.pop("_name")
    torch.save({"cfg_plain": cfg, "cfg_omegaconf": OmegaConf.create(cfg), "args_plain": flat,
                "args_namespace": argparse.Namespace(**flat)}, out / "pickled_configs.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="fixture directory (default: %(default)s)")
    parser.add_argument("--only", choices=["hubert_ctc"],
                        help="write this one fixture and its outputs entry, leaving the others as they are")
    args = parser.parse_args()
    import torch

    if args.only:
        write_only_hubert_ctc(args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = train_all(Path(tmp))
        outputs = fairseq_outputs(paths)
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("w2v2_pretrained", "hubert_pretrained", "w2v2_ctc", "hubert_ctc"):
            shutil.copyfile(paths[name], args.out / f"{name}.pt")
        shutil.copyfile(paths["data"] / "dict.ltr.txt", args.out / "dict.ltr.txt")
        pickled_configs(paths["w2v2_pretrained"], args.out)
    outputs["wavlm_unilm"] = wavlm_fixture(args.out)
    save_outputs(outputs, args.out / "outputs.pt")
    for path in sorted(args.out.iterdir()):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")


def save_outputs(outputs: dict, path: Path) -> None:
    import torch

    torch.save({name: {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
                for name, out in outputs.items()}, path)


def write_only_hubert_ctc(out: Path) -> None:
    """``hubert_ctc.pt`` and ``outputs.pt['hubert_ctc']``; every other fixture and entry untouched.

    The HuBERT it fine-tunes from is trained again here, as in the full run (the stored
    ``hubert_pretrained.pt`` names a label directory that no longer exists, which fairseq's
    ``HubertCtc`` reads its pretraining dictionary from when it loads).
    """
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        write_corpus(data)
        if (out / "dict.ltr.txt").read_text() != (data / "dict.ltr.txt").read_text():
            sys.exit(f"{out / 'dict.ltr.txt'} differs from this script's letters: run the full script instead")
        ctc = train_hubert_ctc(data, tmp, train_hubert(data, tmp))
        result = ctc_outputs(ctc, data, normalize=True)
        shutil.copyfile(ctc, out / "hubert_ctc.pt")
    outputs = torch.load(out / "outputs.pt", weights_only=True)
    outputs["hubert_ctc"] = result
    save_outputs(outputs, out / "outputs.pt")
    for name in ("hubert_ctc.pt", "outputs.pt"):
        print(f"{out / name}  {(out / name).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
