"""Speech recognition on top of a pretrained encoder: letter vocabulary, CTC head and loss,
greedy and LM beam-search decoding, n-gram LM and lexicon writing, WER/CER scoring."""
