"""Manifests for the LibriSpeech batch-size study, from local copies (optionally downloaded first).

    python recipes/librispeech/prepare.py --librispeech DATA/LibriSpeech \
        --librilight DATA/librispeech_finetuning [--out manifests/librispeech] [--download DATA]

Writes, with ``speechbs manifest`` (fairseq .tsv + .rates + .ltr/.wrd labels):

- ``train-960``: train-clean-100 + train-clean-360 + train-other-500 (pretraining);
- ``dev-clean``, ``dev-other``, ``test-clean``, ``test-other`` (validation and test sets);
- ``train-clean-100`` (the 100 h fine-tuning split);
- ``train-10min``, ``train-1h``, ``train-10h`` from Libri-light's ``librispeech_finetuning``
  (Kahn et al. 2020): 10 min = ``1h/0``, 1 h = ``1h/*``, 10 h = ``1h/*`` + ``9h``.

Subsets that are missing are reported and skipped. ``--download DIR`` fetches the archives
into DIR first and checks each against the SHA-256 that torchaudio publishes for it
(``torchaudio/datasets/librispeech.py`` and ``librilight_limited.py``); openslr.org's own
md5 lists are not reproduced here because we could not verify them.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
import urllib.request
from pathlib import Path

TRAIN_960 = ("train-clean-100", "train-clean-360", "train-other-500")
EVAL_SETS = ("dev-clean", "dev-other", "test-clean", "test-other")
LIBRILIGHT_SPLITS = {"train-10min": "1h/0", "train-1h": "1h", "train-10h": "."}

OPENSLR = "http://www.openslr.org/resources/12/"
# SHA-256 as published in torchaudio's LibriSpeech and LibriLightLimited dataset classes.
SHA256 = {
    "dev-clean.tar.gz": "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3",
    "dev-other.tar.gz": "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365",
    "test-clean.tar.gz": "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23",
    "test-other.tar.gz": "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29",
    "train-clean-100.tar.gz": "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2",
    "train-clean-360.tar.gz": "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf",
    "train-other-500.tar.gz": "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2",
    "librispeech_finetuning.tgz": "5d1efdc777b548194d7e09ba89126e2188026df9fd57aa57eb14408d2b2342af",
}
URLS = {name: OPENSLR + name for name in SHA256 if name.endswith(".tar.gz")}
URLS["librispeech_finetuning.tgz"] = "https://dl.fbaipublicfiles.com/librilight/data/librispeech_finetuning.tgz"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--librispeech", help="LibriSpeech root holding train-clean-100/, dev-clean/, ...")
    parser.add_argument("--librilight", help="Libri-light librispeech_finetuning/ root holding 1h/ and 9h/")
    parser.add_argument("--out", default="manifests/librispeech", help="manifest directory")
    parser.add_argument("--download", metavar="DIR",
                        help="download and extract the archives into DIR first (about 60 GB), checking SHA-256")
    parser.add_argument("--threads", type=int, default=8, help="threads reading audio headers")
    return parser.parse_args(argv)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(target: Path, names: list[str] | None = None) -> None:
    """Fetch (if absent), verify and extract each archive into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names or list(SHA256):
        archive = target / name
        if not archive.is_file():
            print(f"downloading {URLS[name]}", flush=True)
            urllib.request.urlretrieve(URLS[name], archive.with_name(name + ".part"))
            archive.with_name(name + ".part").rename(archive)
        digest = sha256_of(archive)
        if digest != SHA256[name]:
            sys.exit(f"{archive}: SHA-256 {digest} does not match the published {SHA256[name]}; "
                     f"delete it and download again")
        print(f"{name}: SHA-256 ok; extracting", flush=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")


def speechbs_manifest(args: list[str]) -> None:
    from speechbs.cli import main as speechbs_main

    print("speechbs manifest " + " ".join(args), flush=True)
    status = speechbs_main(["manifest", *args])
    if status != 0:
        sys.exit(f"speechbs manifest failed with status {status}")


def split_table(librispeech: Path, out: Path) -> Path | None:
    """``utt_id split`` lines: each train subset -> train-960, each eval set -> itself."""
    lines = []
    for subset in TRAIN_960 + EVAL_SETS:
        split = "train-960" if subset in TRAIN_960 else subset
        if not (librispeech / subset).is_dir():
            effect = "train-960 is built without it" if subset in TRAIN_960 else f"{split} not written"
            print(f"note: {librispeech / subset} is missing; {effect}")
            continue
        for trans in sorted((librispeech / subset).rglob("*.trans.txt")):
            lines += [f"{line.split()[0]}\t{split}" for line in trans.read_text().splitlines() if line.strip()]
    if not lines:
        return None
    out.mkdir(parents=True, exist_ok=True)
    table = out / "librispeech-splits.txt"
    table.write_text("\n".join(lines) + "\n")
    return table


def prepare(librispeech: Path | None, librilight: Path | None, out: Path, threads: int = 8) -> list[Path]:
    """Write every manifest whose source is present; return the .tsv paths written."""
    common = ["--out", str(out), "--threads", str(threads)]
    if librispeech is not None:
        table = split_table(librispeech, out)
        if table is not None:
            speechbs_manifest([str(librispeech), "--from", "librispeech", "--split-file", str(table), *common])
        if (librispeech / "train-clean-100").is_dir():
            speechbs_manifest([str(librispeech / "train-clean-100"), "--from", "librispeech",
                               "--name", "train-clean-100", *common])
    if librilight is not None:
        for name, sub in LIBRILIGHT_SPLITS.items():
            source = librilight / sub
            if source.is_dir():
                speechbs_manifest([str(source), "--from", "librispeech", "--name", name, *common])
            else:
                print(f"note: {source} is missing; {name} not written")
    return sorted(out.glob("*.tsv"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    librispeech = Path(args.librispeech) if args.librispeech else None
    librilight = Path(args.librilight) if args.librilight else None
    if args.download:
        download(Path(args.download))
        librispeech = librispeech or Path(args.download) / "LibriSpeech"
        librilight = librilight or Path(args.download) / "librispeech_finetuning"
    if librispeech is None and librilight is None:
        sys.exit("give --librispeech and/or --librilight (or --download DIR)")
    written = prepare(librispeech, librilight, Path(args.out), args.threads)
    print(f"{len(written)} manifests in {args.out}: " + ", ".join(p.stem for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
