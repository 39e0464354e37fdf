#!/usr/bin/env bash
# Tiny HuBERT on the built-in corpus, both iterations end to end (a few minutes on a laptop CPU):
#   MFCC -> k-means (K=50) -> labels -> iteration 1 -> layer-1 features -> k-means (K=100) -> labels -> iteration 2.
# One k-means model per iteration labels every split. Extra arguments go to both pretraining
# stages, e.g.: bash recipes/hubert/tiny_builtin.sh --set run.output_dir=/tmp/runs
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
speechbs corpus                       # no-op when the corpus exists
out_dir="runs"
for ((i = 1; i <= $#; i++)); do       # follow a run.output_dir override to find the iteration-1 run
  if [[ "${!i}" == run.output_dir=* ]]; then out_dir="${!i#run.output_dir=}"; fi
done
splits=(--manifest manifests/builtin/train.tsv --manifest manifests/builtin/valid.tsv)

speechbs targets fit --manifest manifests/builtin/train.tsv --features mfcc --k 50 --out labels/hubert-it1/kmeans.pt
speechbs targets label --kmeans labels/hubert-it1/kmeans.pt "${splits[@]}" --ext km --label-dir labels/hubert-it1
speechbs pretrain "$here/tiny_builtin_iter1.toml" "$@"

speechbs targets fit --manifest manifests/builtin/train.tsv --features layer --checkpoint "$out_dir/hubert-tiny-it1" \
  --layer 1 --k 100 --out labels/hubert-it2/kmeans.pt
speechbs targets label --kmeans labels/hubert-it2/kmeans.pt "${splits[@]}" --ext km --label-dir labels/hubert-it2
speechbs pretrain "$here/tiny_builtin_iter2.toml" "$@"
