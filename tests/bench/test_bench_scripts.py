"""The benchmark scripts still run against the current package (smallest sizes; no timing is checked).

Each test runs a script's ``main`` with tiny arguments and checks the shape of
what it reports, so an API change in speechbs that breaks a script fails here
instead of on the day someone re-runs the benchmarks.
"""

from __future__ import annotations

import json

import pytest
import torch

from bench import accumulation, compile_train, dataload, faults, global_terms, grad_noise, memory, throughput

MACHINE_KEYS = {"platform", "torch", "cpu_count", "device", "date"}


def test_memory_reports_each_point_with_machine_info(tmp_path, capsys) -> None:
    out = tmp_path / "memory.json"
    result = memory.main(["--micro-seconds", "2", "--utterance-seconds", "1", "--json", str(out)])
    (row,) = result["rows"]
    assert row["rows"] == 2 and row["padded_s"] == pytest.approx(2.0)
    assert row["real_s"] < row["padded_s"]  # lengths spread below the padded width
    assert row["fits"] and row["peak_mb"] > row["baseline_mb"] > 0
    assert MACHINE_KEYS <= set(json.loads(out.read_text())["machine"])
    assert "| 2 | 2 x 1 s |" in capsys.readouterr().out


def test_memory_find_max_needs_cuda() -> None:
    with pytest.raises(SystemExit):
        memory.main(["--find-max"])


def test_accumulation_compares_the_same_batch_split_k_ways(tmp_path, capsys) -> None:
    out = tmp_path / "acc.json"
    result = accumulation.main(["--global-seconds", "2", "--utterance-seconds", "0.5", "--splits", "1", "2",
                                "--repeats", "1", "--json", str(out)])
    rows = {r["k"]: r for r in result["rows"]}
    assert set(rows) == {1, 2} and rows[1]["rows_per_micro"] == 4 and rows[2]["rows_per_micro"] == 2
    assert rows[1]["overhead"] == 0.0
    assert all(r["step_s"] > 0 and r["bare_s"] > 0 for r in rows.values())
    assert not result["syncs_checked"] and "not checkable on a CPU" in capsys.readouterr().out
    assert MACHINE_KEYS <= set(json.loads(out.read_text())["machine"])


def test_accumulation_rejects_a_split_that_does_not_divide_the_batch() -> None:
    with pytest.raises(SystemExit):
        accumulation.main(["--global-seconds", "2", "--utterance-seconds", "0.5", "--splits", "1", "3"])


def test_dataload_covers_every_format_and_worker_count(tmp_path) -> None:
    out = tmp_path / "dl.json"
    result = dataload.main(["--files-per-format", "1", "--workers", "0", "1", "--steps", "2", "--step-ms", "5",
                            "--batch-seconds", "16", "--max-device-seconds", "16", "--json", str(out)])
    assert [r["format"] for r in result["formats"]] == ["flac 16000 Hz", "flac 44100 Hz", "wav 16000 Hz",
                                                       "wav 22050 Hz"]
    assert all(r["micro_batch_x"] > 0 for r in result["formats"])
    assert [r["num_workers"] for r in result["loader"]] == [0, 1]
    assert all(r["real_s"] > 0 for r in result["loader"])
    (stall,) = result["stall"]
    assert 0 <= stall["wait_fraction"] < 1 and stall["wait_ms_min"] <= stall["wait_ms_mean"]
    assert MACHINE_KEYS <= set(json.loads(out.read_text())["machine"])


def test_throughput_times_each_side_and_counts_model_flops(tmp_path, capsys) -> None:
    out = tmp_path / "tp.json"
    result = throughput.main(["--sizes", "tiny", "--batch", "1", "--seconds", "0.5", "--repeats", "1", "--warmup", "1",
                              "--against", "transformers", "torchaudio", "--json", str(out)])
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"wav2vec2", "hubert"} and not any("error" in r for r in rows.values())
    for row in rows.values():
        assert row["median_s"]["speechbs"] > 0 and row["median_s"]["transformers"] > 0
        assert row["flops"] > 1e8  # forward + backward of the conv stack and transformer on 0.5 s
    # torchaudio has no wav2vec 2.0 pretraining loss: that cell names why instead of a number.
    assert rows["wav2vec2"]["skipped"]["torchaudio"] == "no wav2vec 2.0 pretraining loss"
    assert "torchaudio" in rows["hubert"]["median_s"] or "torchaudio" in rows["hubert"]["skipped"]
    assert MACHINE_KEYS <= set(json.loads(out.read_text())["machine"])
    assert "| wav2vec2 | tiny | pretraining step | fp32 | off |" in capsys.readouterr().out


def test_throughput_encoder_row_times_the_shared_encoder_against_transformers_on_copied_weights(tmp_path, capsys):
    result = throughput.main(["--kind", "encoder", "--sizes", "tiny", "--batch", "1", "--seconds", "0.5",
                              "--repeats", "2", "--warmup", "1", "--json", str(tmp_path / "enc.json")])
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"wav2vec2", "hubert"} and not any("error" in r for r in rows.values())
    for row in rows.values():
        assert row["kind"] == "encoder" and row["max_abs_diff"] < 1e-4  # the same weights give the same encoder
        assert len(row["times_s"]["speechbs"]) == len(row["times_s"]["transformers"]) == 2
        assert row["ratios"]["transformers"]["q1"] <= row["ratios"]["transformers"]["q3"]
        assert row["flops"] > 1e8
    assert "| hubert | tiny | encoder fwd+bwd (train) | fp32 | off |" in capsys.readouterr().out


def test_throughput_compiles_speechbs_as_training_does_and_counts_the_same_flops(monkeypatch) -> None:
    """--compile on goes through speechbs.train.compile (here with the tracing-only backend, for speed)."""
    from speechbs.train import compile as speechbs_compile

    calls = []

    def compile_model(model, **kwargs):
        calls.append(type(model).__name__)
        return speechbs_compile.compile_model(model, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(throughput, "compile_model", compile_model)
    monkeypatch.setattr(throughput, "compile_reference",
                        lambda module, setting: torch.compile(module, backend="eager") if setting.compile else module)
    result = throughput.main(["--sizes", "tiny", "--models", "wav2vec2", "--batch", "1", "--seconds", "0.5",
                              "--repeats", "1", "--warmup", "1", "--compile", "off", "on"])
    off, on = result["rows"]
    assert calls == ["Wav2Vec2Model"] and "error" not in on
    assert on["flops"] == off["flops"]  # counted eagerly, also for the compiled model


def test_throughput_refuses_cuda_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit):
        throughput.main(["--device", "cuda"])


def test_grad_noise_reports_the_amortized_overhead(tmp_path) -> None:
    out = tmp_path / "gn.json"
    result = grad_noise.main(["--micro", "2", "--micro-seconds", "2", "--repeats", "1", "--json", str(out)])
    assert result["plain_s"] > 0 and result["measured_s"] > 0
    assert [r["every"] for r in result["rows"]] == [1, 10, 100]
    assert MACHINE_KEYS <= set(json.loads(out.read_text())["machine"])


def test_global_terms_times_both_scopes_and_the_loader_partners(tmp_path, capsys) -> None:
    out = tmp_path / "global.json"
    result = global_terms.main(["--global-seconds", "2", "--micro-seconds", "1", "--utterance-seconds", "0.5",
                                "--repeats", "1", "--loader-steps", "1", "--json", str(out)])
    assert result["num_micro_batches"] == 2 and result["global_seconds"] == pytest.approx(2.0)
    d = result["diversity"]
    assert d["micro_batch"] > 0 and d["global"] > d["pre_pass"] > 0 and 0 < d["pre_pass_share"] < 1
    assert d["flops"]["global"] == pytest.approx(d["flops"]["micro_batch"] + d["flops"]["pre_pass"], rel=1e-6)
    partners = result["partners"]
    assert partners["with"] > 0 and partners["without"] > 0
    assert partners["decoded_s_with"] >= partners["decoded_s_without"] > 0
    assert MACHINE_KEYS <= set(json.loads(out.read_text())["machine"])
    assert "| global |" in capsys.readouterr().out


def test_compile_train_times_each_setting_on_the_same_batches(tmp_path, capsys) -> None:
    pytest.importorskip("espeakng_loader", reason="the built-in corpus needs espeakng-loader")
    out = tmp_path / "compile.json"
    result = compile_train.main(["--steps", "3", "--minutes", "1", "--batch-seconds", "10", "--backend", "eager",
                                 "--warmup", "1", "--json", str(out)])
    off, on = result["rows"]["off"], result["rows"]["on, 16 lengths"]
    assert off["graphs"] == 0 and off["compiling_steps"] == 0 and off["steps_per_s"] > 0
    assert 0 < on["graphs"] <= 2 * 16 + 4 and on["compiling_steps"] >= 1 and on["packing"] <= off["packing"]
    assert result["runs"]["off"]["batch_s"] == result["runs"]["on, 16 lengths"]["batch_s"]  # the same batches
    assert MACHINE_KEYS <= set(json.loads(out.read_text())["machine"])
    assert "| on, 16 lengths |" in capsys.readouterr().out


def test_faults_kills_and_resumes_to_the_uninterrupted_model(tmp_path, capsys) -> None:
    result = faults.main(["--steps", "4", "--kills", "1", "--write-kills", "1", "--files", "12",
                          "--json", str(tmp_path / "faults.json")])
    assert sum(c["injected"] for c in result["counts"].values()) == 2
    assert all(c["loadable"] == c["injected"] for c in result["counts"].values())
    assert result["params_identical"] and result["losses_identical"]
    assert "| SIGKILL during a checkpoint write |" in capsys.readouterr().out
