"""``speechbs decode CHECKPOINT --manifest M.tsv --out DIR``: transcribe with a fine-tuned CTC model.

Legend: B utterances, T frames, V vocabulary classes.

Greedy CTC (best path) by default; with ``--lm`` (an ARPA or KenLM binary word
n-gram) a lexicon-constrained beam search through flashlight-text (the
decoder of wav2letter, fairseq's ``W2lKenLMDecoder`` and torchaudio's
``ctc_decoder``), with ``--lm-weight`` and ``--word-score`` as in the wav2vec
2.0 paper (Table 7). flashlight-text, not pyctcdecode: pyctcdecode pins
numpy<2. Writes ``hyp.wrd`` (manifest order), ``ref.wrd`` when the manifest has
a ``.wrd`` (or ``.ltr``) beside it, and ``decode.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from speechbs.asr.ctc import CTCModel, greedy_ids, load_ctc_checkpoint
from speechbs.asr.lm import arpa_words, write_lexicon
from speechbs.asr.vocab import BLANK, UNK, Vocab
from speechbs.atomic import output_dir, write_text
from speechbs.data.loader import eval_micro_batches
from speechbs.data.manifest import WORD_BOUNDARY, label_path, letters_to_words, read_manifest
from speechbs.dist import device_from_name
from speechbs.errors import ConfigError, DataError
from speechbs.textio import read_lines


@dataclass
class BeamSettings:
    """Beam search settings (defaults: the wav2vec 2.0 paper's dev-set search, beam 50, weight 2, word -1)."""

    beam: int = 50
    lm_weight: float = 2.0
    word_score: float = -1.0
    beam_threshold: float = 25.0
    unk_score: float = float("-inf")
    sil_score: float = 0.0


class BeamDecoder:
    """flashlight-text CTC beam search: lexicon + word LM, or lexicon-free without an LM."""

    def __init__(self, vocab: Vocab, settings: BeamSettings, lm: str | None = None, lexicon: str | None = None,
                 lexicon_dir: Path | None = None) -> None:
        try:
            from flashlight.lib.text import decoder as fl
            from flashlight.lib.text.dictionary import create_word_dict, load_words
        except ImportError:
            raise ConfigError("beam search needs flashlight-text: pip install 'speechbs[lm]'") from None
        table = vocab.index()
        if WORD_BOUNDARY not in table:
            raise ConfigError(f"the model's vocabulary has no word boundary {WORD_BOUNDARY!r}; beam search "
                              f"needs it to end words")
        self.vocab, self.fl, self.silence = vocab, fl, table[WORD_BOUNDARY]
        if lm is None:
            options = fl.LexiconFreeDecoderOptions(settings.beam, len(vocab), settings.beam_threshold, 0.0,
                                                   settings.sil_score, False, fl.CriterionType.CTC)
            self.decoder = fl.LexiconFreeDecoder(options, fl.ZeroLM(), self.silence, BLANK, [])
            self.word_dict = None
            return
        if lexicon is None:  # every unigram of the LM, spelled in letters
            lexicon = str(write_lexicon(arpa_words(lm), (lexicon_dir or Path(".")) / "lexicon.txt"))
        if not Path(lexicon).is_file():
            raise DataError(f"lexicon {lexicon} does not exist (lines 'WORD<TAB>W O R D |')")
        words = load_words(lexicon)
        self.word_dict = create_word_dict(words)
        kenlm = _kenlm_class(fl)(lm, self.word_dict)
        trie = fl.Trie(len(vocab), self.silence)
        start = kenlm.start(False)
        for word, spellings in words.items():
            word_index = self.word_dict.get_index(word)
            _, score = kenlm.score(start, word_index)
            for spelling in spellings:
                ids = [table.get(letter, UNK) for letter in spelling]
                trie.insert(ids, word_index, score)
        trie.smear(fl.SmearingMode.MAX)
        options = fl.LexiconDecoderOptions(settings.beam, len(vocab), settings.beam_threshold, settings.lm_weight,
                                           settings.word_score, settings.unk_score, settings.sil_score, False,
                                           fl.CriterionType.CTC)
        self.decoder = fl.LexiconDecoder(options, trie, kenlm, self.silence, BLANK,
                                         self.word_dict.get_index("<unk>"), [], False)

    def __call__(self, lprobs_TV: torch.Tensor) -> str:
        emissions = lprobs_TV.float().contiguous().cpu()
        best = self.decoder.decode(emissions.data_ptr(), emissions.shape[0], emissions.shape[1])[0]
        if self.word_dict is not None:
            return " ".join(self.word_dict.get_entry(i) for i in best.words if i >= 0)
        tokens = torch.unique_consecutive(torch.tensor(list(best.tokens), dtype=torch.int64))
        return self.vocab.to_words(int(i) for i in tokens.tolist() if i != BLANK)


def _kenlm_class(fl):
    try:  # flashlight-text >= 0.0.7 moved KenLM into its own module
        from flashlight.lib.text.decoder.kenlm import KenLM
    except ImportError:
        return fl.KenLM
    return KenLM


def transcribe(model: CTCModel, cfg, manifest_path: str | Path, beam: BeamDecoder | None = None,
               device: torch.device | None = None) -> list[str]:
    """One hypothesis per manifest row, in manifest order (greedy, or ``beam``)."""
    device = device or torch.device("cpu")
    manifest = read_manifest(manifest_path)
    hyps: list[str | None] = [None] * len(manifest)
    vocab = model.vocab
    model = model.to(device).eval()
    with torch.no_grad():
        for mb in eval_micro_batches(manifest, replace(cfg.batch, crop="none"), cfg.audio, rank=0, world_size=1):
            if mb.is_empty:
                continue
            logits_BTV, frame_lengths_B = model(mb.wav_BT.to(device), mb.lengths_B.to(device))
            if beam is None:
                texts = [vocab.to_words(ids) for ids in greedy_ids(logits_BTV, frame_lengths_B)]
            else:
                lprobs_BTV = torch.log_softmax(logits_BTV.float(), dim=-1)
                texts = [beam(lprobs_BTV[b, :n]) for b, n in enumerate(frame_lengths_B.tolist())]
            for row, text in zip(mb.indices_B.tolist(), texts):
                hyps[row] = text
    assert all(h is not None for h in hyps), "evaluation covers every manifest row"
    return hyps  # type: ignore[return-value]


def references(manifest_path: str | Path) -> list[str] | None:
    """Reference words from the ``.wrd`` beside the manifest (or its ``.ltr``), None without either."""
    for ext in ("wrd", "ltr"):
        path = label_path(manifest_path, ext)
        if path.is_file():
            lines = read_lines(path, "label file")
            return [" ".join(line.split()) if ext == "wrd" else letters_to_words(line) for line in lines]
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="fine-tuning checkpoint (.pt) or run directory (its best.pt)")
    parser.add_argument("--manifest", required=True, help="manifest (.tsv) to transcribe")
    parser.add_argument("--out", required=True, help="output directory (hyp.wrd, ref.wrd, decode.json)")
    parser.add_argument("--beam", type=int, default=0, help="beam size (0: greedy; with --lm default 50)")
    parser.add_argument("--lm", help="word n-gram LM, ARPA or KenLM binary (see speechbs.asr.lm)")
    parser.add_argument("--lexicon", help="lexicon 'WORD<TAB>W O R D |' (default: the LM's unigrams)")
    parser.add_argument("--lm-weight", type=float, default=2.0, help="LM weight (default 2)")
    parser.add_argument("--word-score", type=float, default=-1.0, help="score added per word (default -1)")
    parser.add_argument("--beam-threshold", type=float, default=25.0, help="prune hypotheses this far below the best")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto")


def main(args: argparse.Namespace) -> int:
    start_s = time.perf_counter()
    device = device_from_name(args.device)  # before any work: a wrong device is found at once
    output_dir(args.out, create=False)  # a file in the way is found before the checkpoint is read
    model, cfg, ckpt = load_ctc_checkpoint(args.checkpoint)
    out = output_dir(args.out)
    settings = BeamSettings(beam=args.beam or 50, lm_weight=args.lm_weight, word_score=args.word_score,
                            beam_threshold=args.beam_threshold)
    beam = None
    if args.lm or args.beam > 0:
        beam = BeamDecoder(model.vocab, settings, lm=args.lm, lexicon=args.lexicon, lexicon_dir=out)
    refs = references(args.manifest)
    manifest = read_manifest(args.manifest)
    if refs is not None and len(refs) != len(manifest):
        raise DataError(f"the transcripts beside {args.manifest} have {len(refs)} lines for {len(manifest)} utterances")
    decode_start_s = time.perf_counter()
    hyps = transcribe(model, cfg, args.manifest, beam, device)
    decode_s = time.perf_counter() - decode_start_s
    write_text(out / "hyp.wrd", "".join(f"{h}\n" for h in hyps))
    if refs is not None:
        write_text(out / "ref.wrd", "".join(f"{r}\n" for r in refs))
    audio_s = float(manifest.seconds(cfg.audio.sample_rate_hz).sum())
    info = {"checkpoint": ckpt["path"], "step": ckpt.get("step"), "manifest": str(args.manifest),
            "num_utterances": len(hyps), "audio_s": audio_s, "decoder": "beam" if beam else "greedy",
            "lm": args.lm, "lexicon": args.lexicon, **({"beam": asdict(settings)} if beam else {}),
            "decode_s": decode_s, "total_s": time.perf_counter() - start_s,
            "real_time_factor": decode_s / max(audio_s, 1e-9), "device": str(device), "has_ref": refs is not None}
    info["beam"] = {k: (None if v == float("-inf") else v) for k, v in info.get("beam", {}).items()} or None
    write_text(out / "decode.json", json.dumps(info, indent=1) + "\n")
    print(f"decoded {len(hyps)} utterances ({audio_s:.1f} s of audio) in {decode_s:.1f} s -> {out}/hyp.wrd")
    return 0
