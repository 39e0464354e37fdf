"""Frame-level pretraining targets for HuBERT and WavLM: MFCC, k-means, label files."""
