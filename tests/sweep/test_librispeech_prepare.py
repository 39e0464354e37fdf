"""recipes/librispeech/prepare.py on a fake LibriSpeech + Libri-light tree: every split, right contents."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import soundfile as sf

from speechbs.data.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]


def _prepare_module():
    spec = importlib.util.spec_from_file_location("ls_prepare", REPO / "recipes" / "librispeech" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _chapter(root: Path, speaker: int, chapter: int, num_utts: int) -> list[str]:
    folder = root / str(speaker) / str(chapter)
    folder.mkdir(parents=True)
    ids = [f"{speaker}-{chapter}-{i:04d}" for i in range(num_utts)]
    for i, utt in enumerate(ids):
        sf.write(folder / f"{utt}.flac", np.zeros(1600 * (i + 1), dtype=np.int16), 16000, subtype="PCM_16")
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(f"{u} HELLO WORLD\n" for u in ids))
    return ids


def test_prepare_writes_every_split(tmp_path, capsys):
    ls = tmp_path / "LibriSpeech"
    expected = {}
    for n, subset in enumerate(["train-clean-100", "train-clean-360", "train-other-500", "dev-clean",
                                "dev-other", "test-clean", "test-other"]):
        expected[subset] = _chapter(ls / subset, 100 + n, 10, 2)
    ll = tmp_path / "librispeech_finetuning"
    ten_min = _chapter(ll / "1h" / "0" / "clean", 200, 1, 2)
    one_h = ten_min + _chapter(ll / "1h" / "1" / "other", 201, 1, 2)
    ten_h = one_h + _chapter(ll / "9h" / "clean", 202, 1, 3)
    out = tmp_path / "manifests"

    written = _prepare_module().prepare(ls, ll, out, threads=2)

    assert {p.stem for p in written} == {"train-960", "dev-clean", "dev-other", "test-clean", "test-other",
                                        "train-clean-100", "train-10min", "train-1h", "train-10h"}
    def ids(name: str) -> list[str]:
        return sorted(Path(p).stem for p in read_manifest(out / f"{name}.tsv").paths)
    assert ids("train-960") == sorted(expected["train-clean-100"] + expected["train-clean-360"]
                                      + expected["train-other-500"])
    for subset in ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100"):
        assert ids(subset) == sorted(expected[subset])
    assert ids("train-10min") == sorted(ten_min) and ids("train-1h") == sorted(one_h)
    assert ids("train-10h") == sorted(ten_h)
    assert (out / "train-1h.ltr").read_text().splitlines()[0] == "H E L L O | W O R L D |"
    assert (out / "test-other.wrd").read_text().splitlines()[0] == "HELLO WORLD"


def test_missing_subsets_are_reported_not_fatal(tmp_path, capsys):
    ls = tmp_path / "LibriSpeech"
    _chapter(ls / "dev-clean", 1, 1, 2)
    written = _prepare_module().prepare(ls, None, tmp_path / "m", threads=1)
    assert [p.stem for p in written] == ["dev-clean"]
    assert "train-other-500 is missing" in capsys.readouterr().out


def test_checksums_are_sha256_for_every_archive():
    module = _prepare_module()
    assert set(module.SHA256) == set(module.URLS)
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in module.SHA256.values())


def test_every_librispeech_manifest_a_recipe_reads_is_one_prepare_writes():
    """A recipe that names a split the prepare stage never writes fails only on the cluster, at launch."""
    import re

    prepare = _prepare_module()
    written = {"train-960", "train-clean-100", *prepare.EVAL_SETS, *prepare.LIBRILIGHT_SPLITS}
    named = {}
    for recipe in sorted((REPO / "recipes").rglob("*.toml")):
        for split in re.findall(r"manifests/librispeech/([\w.-]+)\.tsv", recipe.read_text(encoding="utf-8")):
            named.setdefault(split, recipe.relative_to(REPO))
    assert named, "no recipe reads a LibriSpeech manifest: the pattern no longer matches"
    assert {s: r for s, r in named.items() if s not in written} == {}
