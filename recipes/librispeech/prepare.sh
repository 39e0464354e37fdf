#!/bin/bash
# Manifests for the LibriSpeech batch-size study (recipes/librispeech/sweep.toml).
#
#   bash recipes/librispeech/prepare.sh --librispeech DATA/LibriSpeech --librilight DATA/librispeech_finetuning
#   bash recipes/librispeech/prepare.sh --download DATA     # fetch (~60 GB), check SHA-256, extract, then prepare
#
# Writes manifests/librispeech/{train-960,dev-clean,dev-other,test-clean,test-other,
# train-clean-100,train-10min,train-1h,train-10h}.tsv with .ltr/.wrd labels. Run from the
# repository root; see prepare.py for details.
set -euo pipefail
exec python "$(dirname "$0")/prepare.py" "$@"
