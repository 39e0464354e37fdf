"""The letter vocabulary: fairseq dict.ltr.txt compatibility, OOV handling, storage in the weights."""

from __future__ import annotations

from speechbs.asr.vocab import BLANK, SPECIALS, UNK, Vocab, build_vocab, read_dict, write_dict


def test_fairseq_dict_indices(tmp_path):
    # fairseq's Dictionary: <s>=0 <pad>=1 </s>=2 <unk>=3, then the file's symbols in file order.
    path = tmp_path / "dict.ltr.txt"
    path.write_text("| 94802\nE 51860\nT 38431\n")
    vocab = read_dict(path)
    assert vocab.symbols == ("<s>", "<pad>", "</s>", "<unk>", "|", "E", "T")
    assert vocab.index()["|"] == 4 and BLANK == 0 and vocab.symbols[UNK] == "<unk>"


def test_build_orders_by_count_then_symbol_and_round_trips(tmp_path):
    vocab, counts = build_vocab(["B A |", "A C |", "C |"])
    assert vocab.letters == ("|", "A", "C", "B")  # | x3, A x2, C x2 (tie: alphabetical), B x1
    assert counts == {"|": 3, "A": 2, "C": 2, "B": 1}
    path = write_dict(vocab, tmp_path / "dict.ltr.txt", counts)
    assert path.read_text().splitlines() == ["| 3", "A 2", "C 2", "B 1"]
    assert read_dict(path) == vocab
    assert Vocab.from_tensor(vocab.to_tensor()) == vocab


def test_encode_maps_unknown_to_unk_and_counts():
    vocab, _ = build_vocab(["H I |"])
    ids, num_oov = vocab.encode("H Z I Q |")
    table = vocab.index()
    assert ids.tolist() == [table["H"], UNK, table["I"], UNK, table["|"]]
    assert num_oov == 2


def test_to_words_skips_specials_and_splits_on_boundary():
    vocab, _ = build_vocab(["H I | Y O |"])
    t = vocab.index()
    ids = [t["H"], t["I"], t["|"], UNK, t["Y"], t["O"], t["|"]]
    assert vocab.to_words(ids) == "HI YO"
    assert len(SPECIALS) == 4
