"""``train.compile``: the padding it adds is invisible, its graphs are few, and it trains as eager does.

Legend: B rows, T samples. The loop tests run ``speechbs pretrain`` in this process on 40 synthetic
utterances of 0.6-3 s (every step has other row counts and widths) with dropout and the
per-micro-batch diversity term off, as the world-size tests do: padding and compiling then
change nothing but float rounding, and the split into micro-batches (which padding changes)
changes nothing at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbs.asr.ctc import CTCModel, CTCTargets, ctc_loss_per_row
from speechbs.asr.vocab import build_vocab
from speechbs.cli import main as cli_main
from speechbs.data.manifest import Manifest, write_manifest
from speechbs.models.registry import MODELS
from speechbs.targets.labels import ClusterTargets
from speechbs.train.compile import compile_model, graphs_per_region

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "wav2vec2" / "tiny_builtin.toml"
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0)
EXACT = ["model.dropout=0", "model.attention_dropout=0", "model.dropout_input=0", "model.dropout_features=0",
         "model.diversity_weight=0", "data.num_workers=0"]
NUM_LENGTHS = 3
pytestmark = pytest.mark.filterwarnings("ignore:batch.seconds")


def _loss(family: str, model: torch.nn.Module, wav_BT: torch.Tensor, lengths_B: torch.Tensor) -> torch.Tensor:
    """The training loss sum of one micro-batch, as the pretraining and fine-tuning tasks compute it."""
    seeds_B = torch.arange(len(lengths_B)) + 11
    if family == "ctc":
        logits_BTV, frame_lengths_B = model(wav_BT, lengths_B, seeds_B=seeds_B, layerdrop_seed=3)
        labels_BL = torch.tensor([[3, 4, 3], [4, 4, -1], [3, -1, -1]])
        targets = CTCTargets(labels_BL, torch.tensor([3, 2, 1]), torch.tensor([3, 3, 1]), torch.zeros(3, dtype=torch.int64))
        return ctc_loss_per_row(logits_BTV, frame_lengths_B, targets)[0].sum()
    inputs: dict = {"gumbel_temperature": 2.0}
    if family != "wav2vec2":
        arch = model.cfg
        num_labels_B = (lengths_B * arch.label_rate_hz / 16_000).long()
        labels_BL = torch.randint(0, arch.num_clusters, (len(lengths_B), int(num_labels_B.max())),
                                  generator=torch.Generator().manual_seed(5))
        inputs = {"targets": ClusterTargets(labels_BL, num_labels_B, arch.label_rate_hz, arch.num_clusters)}
    return model(wav_BT, lengths_B, seeds_B=seeds_B, layerdrop_seed=3, **inputs).loss.loss_sum


def _model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "ctc":
        arch = MODELS["wav2vec2"].sizes["tiny"](**NO_DROPOUT, dropout_features=0.0, mask_channel_prob=0.3)
        encoder = MODELS["wav2vec2"].model_cls(arch)
        vocab, _ = build_vocab(["A B |"])
        return CTCModel(encoder, encoder.cfg.embed_dim, vocab).train()
    spec = MODELS[family]
    features = {"dropout_features": 0.0} if family == "wav2vec2" else {}
    return spec.model_cls(spec.sizes["tiny"](**NO_DROPOUT, **features, layerdrop=0.3)).train()


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm", "ctc"])
def test_padding_to_a_longer_width_changes_neither_loss_nor_gradients(family):
    """What a compiled run pads (zeros after every row, lengths unchanged) is masked everywhere:
    the padding-aware conv norm, the positional conv's zeroed frames, attention's key padding,
    masks, distractors and labels drawn over valid frames only, losses over valid frames.

    In float64, so that any leak of the padding would stand out of the rounding (equal to 1e-15
    here; float32 gives up to 1e-5, from sums over a longer time axis).
    """
    model = _model(family).double()
    lengths_B = torch.tensor([20_800, 17_123, 9_001])
    wav_BT = 0.1 * torch.randn(3, int(lengths_B.max()), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    wav_BT[torch.arange(wav_BT.shape[1]) >= lengths_B.view(-1, 1)] = 0.0
    results = []
    for extra_samples in (0, 5_317):  # 5,317 samples: 16 more frames
        padded_BT = torch.nn.functional.pad(wav_BT, (0, extra_samples))
        model.zero_grad()
        loss = _loss(family, model, padded_BT, lengths_B)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss_exact, grads_exact), (loss_padded, grads_padded) = results
    assert grads_exact.keys() == grads_padded.keys() and len(grads_exact) > 10
    assert loss_padded == pytest.approx(float(loss_exact), rel=1e-12)
    for name, grad in grads_exact.items():  # relative, floored: attention key biases' true gradient is 0
        scale = grad.abs().max().clamp_min(1e-3)
        assert ((grads_padded[name] - grad).abs().max() / scale) < 1e-12, name


def test_compiling_in_place_keeps_parameter_names_and_refuses_what_it_cannot_compile():
    model = _model("wav2vec2")
    names = list(model.state_dict())
    regions = compile_model(model, num_lengths=2, backend="eager")
    assert list(model.state_dict()) == names and not any("_orig_mod" in n for n in names)
    assert regions.names == ["feature_encoder", "encoder.layers.0", "encoder.layers.1"]
    assert model.encoder.always_mask  # the compiled layers get the key mask even when no row is padded
    assert torch._dynamo.config.recompile_limit >= graphs_per_region(2)
    with pytest.raises(ValueError, match="holds no ConvFeatureEncoder or TransformerLayer"):
        compile_model(torch.nn.Linear(2, 2), num_lengths=1)
    with pytest.raises(ValueError, match="backend 'tvm'"):
        compile_model(_model("wav2vec2"), num_lengths=1, backend="tvm")


@pytest.fixture(scope="module")
def varied_manifest(tmp_path_factory) -> Path:
    """40 tones in noise of 0.6-3 s at 16 kHz: micro-batches of 1-4 rows and every width."""
    root = tmp_path_factory.mktemp("varied")
    rng = np.random.default_rng(0)
    files, lengths = [], []
    for i in range(40):
        num_samples = int(rng.uniform(0.6, 3.0) * 16_000)
        t_s = np.arange(num_samples) / 16_000
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t_s) + 0.05 * rng.standard_normal(num_samples)
        files.append(f"u{i:02d}.wav")
        lengths.append(num_samples)
        sf.write(root / files[-1], wav.astype(np.float32), 16_000)
    write_manifest(Manifest(root, files, lengths, [16_000] * len(files)), root / "train.tsv")
    return root / "train.tsv"


def _pretrain(manifest: Path, out: Path, name: str, *extra: str) -> list[dict]:
    sets = [f"data.train_manifest={manifest}", 'data.valid_manifest=""', f"run.output_dir={out}", f"run.name={name}",
            "train.num_steps=8", "batch.seconds=8", "batch.max_device_seconds=3", "train.valid_every=0",
            "train.checkpoint_every=4", "train.keep_last=3", *EXACT, *extra]
    assert cli_main(["pretrain", str(RECIPE), *[a for s in sets for a in ("--set", s)]]) == 0
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"]


def _compiled(backend: str, num_lengths: int = NUM_LENGTHS) -> list[str]:
    return ["train.compile=true", f'train.compile_backend="{backend}"', f"train.compile_num_lengths={num_lengths}"]


def _params(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / f"step_{step:08d}.pt", weights_only=True)["model"]


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest difference relative to each tensor's scale; attention key biases (true gradient 0,
    rounding noise that Adam amplifies) are held to an absolute bound instead, as in test_pretrain."""
    assert a.keys() == b.keys()
    keys = [k for k in a if not k.endswith("k_proj.bias")]
    assert all((a[k] - b[k]).abs().max() < 1e-5 for k in a if k not in keys)
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-3)).item() for k in keys)


def _resume_toggled(manifest: Path, out: Path, name: str, *extra: str) -> list[dict]:
    """Cut run ``name`` back to its step-4 checkpoint and finish it with other settings."""
    (out / name / "checkpoints" / "step_00000008.pt").unlink()
    return _pretrain(manifest, out, name, *extra)


def test_compiled_training_equals_eager_with_few_graphs_and_resumes_either_way(varied_manifest, tmp_path):
    torch._dynamo.reset()  # a fresh process's caches: the graphs counted are this run's
    eager = _pretrain(varied_manifest, tmp_path, "eager")
    compiled = _pretrain(varied_manifest, tmp_path, "compiled", *_compiled("aot_eager"))
    # The same global batches; other micro-batches (padded widths) of up to NUM_LENGTHS widths.
    assert [r["batch_fingerprint"] for r in compiled] == [r["batch_fingerprint"] for r in eager]
    assert all(c["padded_s"] >= e["padded_s"] for c, e in zip(compiled, eager))
    # Graphs: at most two per width for the conv stack (B > 1 and B = 1) plus the layer's few and the
    # first static ones, never one per micro-batch; none once every width has been seen.
    num_micro_batches = sum(r["num_micro_batches"] for r in compiled)
    graphs = [r["num_compiled_graphs"] for r in compiled]
    assert graphs[-1] <= 2 * NUM_LENGTHS + 4 < num_micro_batches
    assert graphs[-3:] == [graphs[-1]] * 3
    # The same training, up to float rounding; checkpoints keep the eager model's keys.
    for c, e in zip(compiled, eager):
        assert c["loss"] == pytest.approx(e["loss"], rel=1e-6)
    eager_8 = _params(tmp_path / "eager", 8)
    assert _max_rel_diff(_params(tmp_path / "compiled", 8), eager_8) < 2e-5

    # Resumed at step 4 with compile toggled, either way: each ends where the eager run ends.
    resumed = _resume_toggled(varied_manifest, tmp_path, "compiled")
    assert "num_compiled_graphs" not in resumed[-1] and [r["step"] for r in resumed][-4:] == [5, 6, 7, 8]
    assert _max_rel_diff(_params(tmp_path / "compiled", 8), eager_8) < 2e-5
    resumed = _resume_toggled(varied_manifest, tmp_path, "eager", *_compiled("aot_eager"))
    assert "num_compiled_graphs" in resumed[-1]
    assert _max_rel_diff(_params(tmp_path / "eager", 8), eager_8) < 2e-5


@pytest.mark.slow
def test_inductor_trains_a_tiny_model_end_to_end(varied_manifest, tmp_path):
    """The default backend generates and runs C++ kernels (gcc) for every region, forward and backward."""
    torch._dynamo.reset()
    eager = _pretrain(varied_manifest, tmp_path, "eager", "train.num_steps=4")
    compiled = _pretrain(varied_manifest, tmp_path, "inductor", "train.num_steps=4", *_compiled("inductor", 2))
    assert compiled[-1]["num_compiled_graphs"] <= 2 * 2 + 4
    for c, e in zip(compiled, eager):  # generated kernels sum in another order than eager's
        assert c["loss"] == pytest.approx(e["loss"], rel=1e-4)
    assert _max_rel_diff(_params(tmp_path / "inductor", 4), _params(tmp_path / "eager", 4)) < 1e-3
