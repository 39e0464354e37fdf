"""Every user mistake is one line on stderr and exit status 2, never a traceback, and nothing is lost.

One table, one row per mistake: each row runs the real command line
(``python3 -m speechbs ...``) in a subprocess, in a folder of small inputs
built once (real yesno recordings, and hand-made broken files), and checks

- the exit status (2 for a mistake; 0 where the documented outcome is a clean
  result, e.g. a byte order mark that is now read correctly);
- no ``Traceback`` on stderr, and for a mistake exactly one line, which names
  the file or setting and the fix;
- that good data is kept: an existing output file untouched, the last
  checkpoint still loadable, a transcript's first utterance present.

Disk-full rows mount a small tmpfs (root only; skipped otherwise, and
``test_a_full_disk_in_torch_save_is_reported_without_a_mount`` covers the
same path in-process). Rows fail before training where they can; the two
that train stop within their first steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbs.data.manifest import Manifest, write_labels, write_manifest

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = str(REPO / "recipes" / "wav2vec2" / "tiny_builtin.toml")
FINETUNE = str(REPO / "recipes" / "finetune" / "tiny_digits.toml")
LATIN1 = "ISO-8859-1"
BOM = b"\xef\xbb\xbf"
KEEP = b"an earlier result: keep me\n"
# Training rows: the tiny model, steps of the whole set (3 x 2 s crops, or the two 1 s files of nan/).
TINY_RUN = ("--set", "data.valid_manifest=", "--set", "run.output_dir=runs", "--set", "train.valid_every=0",
            "--set", "batch.crop=max", "--set", "batch.crop_max_seconds=2", "--set", "train.log_every=1")
WHOLE_SET = ("--set", "batch.seconds=6", "--set", "batch.max_device_seconds=6")
NAN_SET = ("--set", "batch.seconds=2", "--set", "batch.max_device_seconds=2")


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    """After ``python3 -m speechbs``; run in the inputs folder, so paths are relative to it."""
    says: tuple[str, ...]
    """Substrings of the error line (or, for status 0, of stdout + stderr): the file or setting, and the fix."""
    code: int = 2
    kept: Callable[[Path], None] | None = None
    """Asserts, given the inputs folder, that good data survived the mistake."""
    needs: str = ""
    """"full_disk": the row writes to a mounted tmpfs (``full/``); "cpu_torch": a torch without CUDA."""


def _unchanged(rel: str) -> Callable[[Path], None]:
    def check(w: Path) -> None:
        assert (w / rel).read_bytes() == KEEP, f"{rel} was changed"
    return check


def _absent(rel: str) -> Callable[[Path], None]:
    def check(w: Path) -> None:
        assert not (w / rel).exists(), f"{rel} was written"
    return check


def _first_line(rel: str, expected: str) -> Callable[[Path], None]:
    def check(w: Path) -> None:
        assert (w / rel).read_text(encoding="utf-8").split("\n")[0] == expected
    return check


def _score_json(rel: str, **expected: object) -> Callable[[Path], None]:
    def check(w: Path) -> None:
        def refuse(name: str) -> None:
            raise AssertionError(f"{rel} holds {name}, which is not JSON")
        data = json.loads((w / rel).read_text(), parse_constant=refuse)
        for key, value in expected.items():
            assert data[key] == value, (key, data[key])
    return check


def _cleaned_without_bad(w: Path) -> None:
    lines = (w / "nan" / "train.clean.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines[1:]] == ["good.wav"]


def _last_checkpoint_kept(w: Path) -> None:
    ckpts = w / "full" / "disk" / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], f"partial files left: {names}"
    ckpt = torch.load(ckpts / "step_00000001.pt", weights_only=True)
    assert ckpt["step"] == 1 and "model" in ckpt


FIRST = "NO NO NO NO YES YES YES YES"  # the first transcript of the yesno files used here

CASES = [
    # --- text that is not UTF-8: the file, the byte offset, how to re-encode ---------------------------------
    Case("latin1_transcripts", ("manifest", "audio", "--transcripts", "latin1/text.txt", "--out", "m_latin"),
         ("transcripts file latin1/text.txt", "not UTF-8", "offset 19", "line 1", "iconv -f latin1 -t utf-8"),
         kept=_absent("m_latin")),
    Case("latin1_list_file", ("manifest", "latin1/list.txt", "--out", "m_latin_list"),
         ("list file latin1/list.txt", "offset 29", "iconv")),
    Case("latin1_split_file", ("manifest", "audio", "--transcripts", "text.txt", "--split-file",
                               "latin1/split.tsv", "--out", "m_latin_split"),
         ("split file latin1/split.tsv", "offset", "line 2", "iconv"), kept=_absent("m_latin_split")),
    Case("latin1_vocab_validate", ("validate", "good/train.tsv", "--labels", "ltr", "--vocab",
                                   "latin1/dict.ltr.txt", "--no-write"),
         ("vocabulary latin1/dict.ltr.txt", "iconv")),
    Case("latin1_manifest_tsv", ("validate", "latin1/train.tsv", "--no-write"),
         ("manifest latin1/train.tsv", "offset 5", "iconv")),
    Case("latin1_wrd_labels", ("validate", "latin1w/train.tsv", "--labels", "wrd", "--no-write"),
         ("label file latin1w/train.wrd", "not UTF-8", "iconv")),
    Case("latin1_score_ref", ("score", "--ref", "latin1/ref.wrd", "--hyp", "hyp.wrd", "--out", "s_latin"),
         ("transcript file latin1/ref.wrd", "offset 1", "iconv"), kept=_absent("s_latin")),
    Case("latin1_recipe", ("validate", "good/train.tsv", "--recipe", "latin1/recipe.toml", "--no-write"),
         ("recipe latin1/recipe.toml", "not UTF-8", "iconv")),
    Case("latin1_decode_refs", ("decode", "ctc.pt", "--manifest", "latin1w/train.tsv", "--out", "d_latin",
                                "--device", "cpu"),
         ("label file latin1w/train.wrd", "iconv")),
    # --- a UTF-8 byte order mark is read as nothing: the first utterance is kept --------------------------
    Case("bom_transcripts", ("manifest", "audio", "--transcripts", "bom/text.txt", "--out", "m_bom"),
         ("3 utterances",), code=0, kept=_first_line("m_bom/train.wrd", FIRST)),
    Case("bom_list_file", ("manifest", "bom/list.txt", "--out", "m_bom_list"),
         ("3 utterances",), code=0, kept=_first_line("m_bom_list/train.wrd", FIRST)),
    Case("bom_score", ("score", "--ref", "bom/ref.wrd", "--hyp", "hyp.wrd", "--out", "s_bom"),
         ("WER 0.00 %",), code=0, kept=_score_json("s_bom/score.json", wer=0.0)),
    Case("bom_recipe", ("validate", "good/train.tsv", "--recipe", "bom/recipe.toml", "--no-write"),
         ("3 usable",), code=0),
    # --- an output that would overwrite a file ---------------------------------------------------------------
    Case("manifest_out_is_a_file", ("manifest", "audio", "--transcripts", "text.txt", "--out", "existing.txt"),
         ("--out existing.txt is a file", "give a directory"), kept=_unchanged("existing.txt")),
    Case("score_out_is_a_file", ("score", "--ref", "hyp.wrd", "--hyp", "hyp.wrd", "--out", "existing.txt"),
         ("--out existing.txt is a file", "give a directory"), kept=_unchanged("existing.txt")),
    Case("decode_out_is_a_file", ("decode", "ctc.pt", "--manifest", "good/train.tsv", "--out", "existing.txt"),
         ("--out existing.txt is a file", "give a directory"), kept=_unchanged("existing.txt")),
    # --- checkpoints and devices -------------------------------------------------------------------------------
    Case("decode_tensor_checkpoint", ("decode", "tensor.pt", "--manifest", "good/train.tsv", "--out", "d_t"),
         ("checkpoint tensor.pt holds a Tensor", "written by speechbs")),
    Case("decode_cuda_on_cpu_torch", ("decode", "ctc.pt", "--manifest", "good/train.tsv", "--out", "d_c",
                                      "--device", "cuda"),
         ("--device cuda", "no CUDA device", "--device cpu"), needs="cpu_torch", kept=_absent("d_c")),
    Case("hf_pickled_bin", ("finetune", FINETUNE, "--set", "finetune.init=hf_pickled"),
         ("finetune.init", "pytorch_model.bin", "argparse.Namespace", "safetensors", "weights only")),
    # --- a full disk: the path, "no space left on device", the last checkpoint kept ---------------------------
    Case("disk_full_during_training", ("pretrain", PRETRAIN, "--set", "data.train_manifest=good/train.tsv",
                                       *TINY_RUN, *WHOLE_SET, "--set", "run.output_dir=full", "--set", "run.name=disk",
                                       "--set", "train.num_steps=3", "--set", "train.checkpoint_every=1",
                                       "--set", "data.num_workers=0"),
         ("no space left on device", "full/disk/checkpoints/step_00000002.pt",
          "last checkpoint full/disk/checkpoints/step_00000001.pt is kept"),
         needs="full_disk", kept=_last_checkpoint_kept),
    Case("disk_full_rerun", ("pretrain", PRETRAIN, "--set", "data.train_manifest=good/train.tsv", *TINY_RUN,
                             *WHOLE_SET, "--set", "run.output_dir=full", "--set", "run.name=disk", "--set", "train.num_steps=3",
                             "--set", "train.checkpoint_every=1", "--set", "data.num_workers=0"),
         ("no space left on device", "full/disk/config.toml"), needs="full_disk_filled", kept=_last_checkpoint_kept),
    # --- audio that would poison training ---------------------------------------------------------------------
    Case("nan_audio_validate", ("validate", "nan/train.tsv", "--decode"),
         ("bad.wav: non_finite", "NaN or infinite"), code=0, kept=_cleaned_without_bad),
    Case("nan_audio_training", ("pretrain", PRETRAIN, "--set", "data.train_manifest=nan/train.tsv", *TINY_RUN, *NAN_SET,
                                "--set", "run.name=nanrun", "--set", "train.num_steps=1", "--set", "data.num_workers=1"),
         ("nan/bad.wav", "NaN or infinite", "speechbs validate", "--decode")),
    Case("no_usable_utterance", ("validate", "nanonly/train.tsv", "--decode", "--no-write"),
         ("nanonly/train.tsv has no usable utterance",), kept=_absent("nanonly/train.clean.tsv")),
    Case("empty_manifest", ("validate", "empty/train.tsv", "--no-write"), ("empty/train.tsv holds no utterances",)),
    Case("manifest_audio_missing", ("validate", "missing/train.tsv"),
         ("missing/train.tsv has no usable utterance",), kept=_absent("missing/train.clean.tsv")),
    # --- scores are valid JSON and never a silent 0.00 % --------------------------------------------------------
    Case("score_empty_references", ("score", "--ref", "blank.wrd", "--hyp", "hyp.wrd", "--out", "s_blank"),
         ("WER n/a",), code=0, kept=_score_json("s_blank/score.json", wer=None, cer=None)),
    Case("score_empty_file", ("score", "--ref", "empty.wrd", "--hyp", "hyp.wrd", "--out", "s_empty"),
         ("empty.wrd is empty", "one transcript per line"), kept=_absent("s_empty")),
    # --- bad settings and arguments --------------------------------------------------------------------------
    Case("valid_percent_negative", ("manifest", "audio", "--transcripts", "text.txt", "--valid-percent", "-0.1",
                                    "--out", "m_neg"),
         ("--valid-percent -0.1", "fraction in [0, 1)"), kept=_absent("m_neg")),
    Case("valid_percent_one", ("manifest", "audio", "--transcripts", "text.txt", "--valid-percent", "1",
                               "--out", "m_one"),
         ("--valid-percent 1", "fraction in [0, 1)"), kept=_absent("m_one")),
    Case("toml_syntax_error", ("validate", "good/train.tsv", "--recipe", "broken.toml", "--no-write"),
         ("recipe broken.toml is not valid TOML", "line 2, column")),
    Case("unknown_set_key", ("validate", "good/train.tsv", "--set", "audio.max_secondz=20", "--no-write"),
         ("unknown key 'audio.max_secondz'", "Did you mean audio.max_seconds")),
    Case("wrong_set_type", ("validate", "good/train.tsv", "--set", "audio.max_seconds=long", "--no-write"),
         ("audio.max_seconds must be float", "'long'")),
    Case("set_text_read_as_a_number", ("validate", "good/train.tsv", "--set", "run.name=nan", "--no-write"),
         ("run.name must be str", "quote it", "--set run.name='\"nan\"'")),
    Case("directory_for_a_file", ("validate", "good", "--no-write"),
         ("manifest good is a directory", "train.tsv", "give the path of a file")),
    Case("file_for_a_directory", ("manifest", "text.txt", "--from", "dir", "--out", "m_dir"),
         ("source text.txt is not a directory",), kept=_absent("m_dir")),
    Case("training_manifest_typo", ("pretrain", PRETRAIN, "--set", "data.train_manifest=good/trian.tsv", *TINY_RUN, *WHOLE_SET,
                                    "--set", "run.name=typo"),
         ("manifest good/trian.tsv does not exist",), kept=_absent("runs/typo")),
    Case("training_manifest_empty", ("pretrain", PRETRAIN, "--set", "data.train_manifest=empty/train.tsv", *TINY_RUN,
                                     *WHOLE_SET, "--set", "run.name=empty"),
         ("data.train_manifest = empty/train.tsv holds no utterances",), kept=_absent("runs/empty")),
    Case("training_audio_missing", ("pretrain", PRETRAIN, "--set", "data.train_manifest=missing/train.tsv", *TINY_RUN,
                                    *WHOLE_SET, "--set", "run.name=missing"),
         ("data.train_manifest = missing/train.tsv", "audio files do not exist", "speechbs validate"),
         kept=_absent("runs/missing")),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The folder every row runs in: a few real recordings and one broken file per mistake."""
    from conftest import shared_dataset

    yesno = shared_dataset("yesno")
    w = tmp_path_factory.mktemp("mistakes")
    (w / "audio").mkdir()
    names = sorted(p.name for p in (yesno / "waves_yesno").glob("*.wav"))[:3]
    for name in names:
        shutil.copy(yesno / "waves_yesno" / name, w / "audio" / name)
    table = dict(line.split(" ", 1) for line in (yesno / "transcripts.txt").read_text().splitlines())
    texts = [table[Path(n).stem] for n in names]
    assert texts[0] == FIRST
    kaldi = "".join(f"{Path(n).stem} {t}\n" for n, t in zip(names, texts))
    listing = "".join(f"audio/{n}\t{t}\n" for n, t in zip(names, texts))
    words = "".join(f"{t}\n" for t in texts)
    _write(w / "text.txt", kaldi)
    _write(w / "hyp.wrd", words)
    (w / "existing.txt").write_bytes(KEEP)
    _write(w / "blank.wrd", "\n" * len(names))
    _write(w / "empty.wrd", "")
    _write(w / "broken.toml", "[audio]\nmax_seconds = = 20\n")

    infos = [sf.info(str(w / "audio" / n)) for n in names]
    good = Manifest((w / "audio").resolve(), names, [i.frames for i in infos], [i.samplerate for i in infos])
    write_manifest(good, w / "good" / "train.tsv")
    write_labels(texts, w / "good" / "train.tsv")

    latin = w / "latin1"
    _write(latin / "text.txt", f"{Path(names[0]).stem} CAFÉ NO\n", LATIN1)  # É at byte 19
    _write(latin / "list.txt", f"audio/{names[0]}\tcafé\n", LATIN1)  # é at byte 29
    _write(latin / "split.tsv", "utt_id\tsplit\n" + f"{Path(names[0]).stem}\ttraîn\n", LATIN1)
    _write(latin / "dict.ltr.txt", "| 10\nÉ 3\n", LATIN1)
    _write(latin / "train.tsv", f"/tmp/é\n{names[0]}\t100\n", LATIN1)  # é at byte 5
    _write(latin / "ref.wrd", "NÖ\n", LATIN1)  # Ö at byte 1
    _write(latin / "recipe.toml", "# Müller's settings\n[audio]\nmax_seconds = 20\n", LATIN1)
    write_manifest(good, w / "latin1w" / "train.tsv")
    _write(w / "latin1w" / "train.wrd", "".join(f"CAFÉ {t}\n" for t in texts), LATIN1)

    bom = w / "bom"
    (bom).mkdir()
    (bom / "text.txt").write_bytes(BOM + kaldi.encode())
    (bom / "list.txt").write_bytes(BOM + listing.replace("audio/", "../audio/").encode())
    (bom / "ref.wrd").write_bytes(BOM + words.encode())
    (bom / "recipe.toml").write_bytes(BOM + b"[audio]\nmax_seconds = 20\n")

    write_manifest(Manifest(w / "nowhere", ["a.wav", "b.wav"], [16000, 16000], [16000, 16000]),
                   w / "missing" / "train.tsv")
    _write(w / "empty" / "train.tsv", f"{(w / 'audio').resolve()}\n")

    nan = w / "nan"
    nan.mkdir()
    rng = np.random.default_rng(0)
    bad = (0.1 * rng.standard_normal(16_000)).astype(np.float32)
    bad[[100, 5000]] = [np.nan, np.inf]
    sf.write(str(nan / "bad.wav"), bad, 16_000, subtype="FLOAT")
    sf.write(str(nan / "good.wav"), (0.1 * rng.standard_normal(16_000)).astype(np.float32), 16_000, subtype="FLOAT")
    write_manifest(Manifest(nan, ["bad.wav", "good.wav"], [16_000, 16_000], [16_000, 16_000]), nan / "train.tsv")
    write_manifest(Manifest(nan, ["bad.wav"], [16_000], [16_000]), w / "nanonly" / "train.tsv")

    torch.save(torch.zeros(3), w / "tensor.pt")
    _tiny_ctc_checkpoint(w / "ctc.pt")
    hf = w / "hf_pickled"
    hf.mkdir()
    _write(hf / "config.json", json.dumps({"model_type": "wav2vec2"}))
    torch.save({"feature_projection.projection.weight": torch.zeros(2, 2), "args": argparse.Namespace(lr=1)},
               hf / "pytorch_model.bin")
    return w


def _write(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))


def _tiny_ctc_checkpoint(path: Path) -> None:
    """A randomly initialized CTC model as `speechbs decode` reads it (never trained: decode fails first)."""
    from speechbs.asr.ctc import build_ctc_model
    from speechbs.asr.vocab import build_vocab
    from speechbs.configio import dump_toml, load_config
    from speechbs.tasks.ctc import prepare_finetune

    cfg, _ = prepare_finetune(load_config(FINETUNE, ["finetune.init="]))
    model = build_ctc_model(cfg, build_vocab(["N O |", "Y E S |"])[0])
    torch.save({"model": model.state_dict(), "config_toml": dump_toml(cfg), "step": 1}, path)


@pytest.fixture(scope="module")
def full_disk(inputs):
    """``inputs/full``: a 5 MiB tmpfs, room for one checkpoint of the tiny model (3.4 MB) but not two."""
    mount = inputs / "full"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small tmpfs needs root to mount (the in-process test covers the same code)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(mount: Path) -> None:
    """Take every byte left on the tmpfs."""
    with open(mount / "filler", "ab", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while f.write(b"\0" * size) == size:
                    pass
            except OSError:
                pass


def _speechbs(argv: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "speechbs", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_user_mistake(case: Case, inputs: Path, request) -> None:
    if case.needs == "cpu_torch" and torch.cuda.is_available():
        pytest.skip("needs a torch that sees no CUDA device")
    if case.needs.startswith("full_disk"):
        mount = request.getfixturevalue("full_disk")
        if case.needs == "full_disk_filled":
            if not (mount / "disk" / "checkpoints" / "step_00000001.pt").is_file():
                assert _speechbs(CASES_BY_NAME["disk_full_during_training"].argv, inputs).returncode == 2
            _fill(mount)
    result = _speechbs(case.argv, inputs)
    shown = f"status {result.returncode}\nstdout: {result.stdout[-1500:]}\nstderr: {result.stderr[-3000:]}"
    assert result.returncode == case.code, shown
    assert "Traceback" not in result.stderr, shown
    if case.code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"speechbs {case.argv[0]}: error: "), shown
        text = lines[0]
    else:
        text = result.stdout + result.stderr
    for part in case.says:
        assert part in text, f"{part!r} not in the output\n{shown}"
    if case.kept is not None:
        case.kept(inputs)


CASES_BY_NAME = {c.name: c for c in CASES}


def test_the_table_is_big_enough_and_names_are_unique() -> None:
    assert len(CASES) >= 30 and len(CASES_BY_NAME) == len(CASES)


@pytest.mark.parametrize("content", [[1, 2], 3, "text"], ids=["list", "int", "str"])
def test_a_checkpoint_that_is_not_a_dict_is_refused(tmp_path, content) -> None:
    """The table runs `decode` on a tensor; other non-dict checkpoints take the same path (in-process: fast)."""
    from speechbs.checkpoint import load_checkpoint
    from speechbs.errors import DataError

    torch.save(content, tmp_path / "x.pt")
    with pytest.raises(DataError, match=f"holds a {type(content).__name__}, not a speechbs checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


def test_a_full_disk_in_torch_save_is_reported_without_a_mount(tmp_path, monkeypatch) -> None:
    """torch.save wraps ENOSPC in a RuntimeError: the partial file goes, the last checkpoint stays."""
    from speechbs import checkpoint
    from speechbs.errors import StorageError, user_message

    ckpt_dir = tmp_path / "checkpoints"
    checkpoint.save_checkpoint(ckpt_dir, 1, {"step": 1, "w": torch.ones(4)}, keep_last=2)

    def full(state, f) -> None:
        f.write(b"PK partial")
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(StorageError) as info:
        checkpoint.save_checkpoint(ckpt_dir, 2, {"step": 2}, keep_last=2)
    message = user_message(info.value)
    assert "no space left on device" in message and "step_00000002.pt" in message
    assert "step_00000001.pt is kept" in message
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["index.json", "step_00000001.pt"]
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(ckpt_dir / "step_00000001.pt")["step"] == 1
