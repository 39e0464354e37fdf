#!/usr/bin/env bash
# Evidence for docs/finetune.md: CTC fine-tuning on real spoken digits (Free Spoken Digit Dataset,
# 2,400 train / 300 dev / 300 test utterances), from a tiny wav2vec 2.0 pretrained on the built-in
# synthetic corpus, and from scratch with the same recipe. Prints test WER/CER of both.
# CPU cost: about 6 minutes on 2 free cores (defaults: 200 pretraining steps of 30 s, 600 fine-tuning
# steps of 20 s); more steps give better numbers: FT_STEPS=1500 bash ...
# Run from the repository root:  bash recipes/finetune/digits_evidence.sh
set -euo pipefail
OUT=${OUT:-runs/digits_evidence}
DIGITS=${DIGITS:-../shared/data/free_spoken_digit}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-200}
FT_STEPS=${FT_STEPS:-600}
SB="python -m speechbs"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

$SB corpus --minutes 20 --audio-dir "$OUT/builtin_audio" --manifest-dir "$OUT/builtin"
$SB manifest "$DIGITS/recordings" --transcripts "$DIGITS/transcripts.txt" \
    --split-file "$DIGITS/manifest.tsv" --out "$OUT/digits"
$SB pretrain recipes/wav2vec2/tiny_builtin.toml --set run.output_dir="$OUT" --set run.name=pretrain \
    --set data.train_manifest="$OUT/builtin/train.tsv" --set data.valid_manifest="$OUT/builtin/valid.tsv" \
    --set train.num_steps="$PRETRAIN_STEPS" --set batch.seconds=30 --set batch.max_device_seconds=30 \
    --set data.num_workers=1
DATA=(--set data.train_manifest="$OUT/digits/train.tsv" --set data.valid_manifest="$OUT/digits/dev.tsv"
      --set run.output_dir="$OUT" --set train.num_steps="$FT_STEPS"
      --set schedule.warmup_steps=$((FT_STEPS / 10)) --set schedule.hold_steps=$((FT_STEPS * 4 / 10))
      --set train.valid_every=$((FT_STEPS / 4)) --set finetune.freeze_steps=$((FT_STEPS / 4)))
$SB finetune recipes/finetune/tiny_digits.toml "${DATA[@]}" --set run.name=ft-pretrained \
    --set finetune.init="$OUT/pretrain"
# From scratch: nothing to protect by freezing a random transformer, so it trains from step 0.
$SB finetune recipes/finetune/tiny_digits.toml "${DATA[@]}" --set run.name=ft-scratch \
    --set finetune.init= --set finetune.freeze_steps=0  # (a later --set wins)
for run in pretrained scratch; do
    $SB decode "$OUT/ft-$run" --manifest "$OUT/digits/test.tsv" --out "$OUT/decode-$run"
    $SB score "$OUT/decode-$run"
done
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("| init | dev WER % (best.pt) | test WER % | test CER % |\n|---|---|---|---|")
for run in ("pretrained", "scratch"):
    best = json.load(open(f"{out}/ft-{run}/checkpoints/index.json"))["best"]
    score = json.load(open(f"{out}/decode-{run}/score.json"))
    print(f"| {run} | {best['value']:.2f} (step {best['step']}) | {score['wer']:.2f} | {score['cer']:.2f} |")
PY
