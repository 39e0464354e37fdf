#!/usr/bin/env bash
# The CPU lab (docs/lab.md): the seed study's three findings with speechbs's own numbers.
#   bash recipes/lab/run.sh            # from the repository root; about 3.5 h on 2 CPU cores
# Every step is idempotent: after a stop (or a preemption), run the same line again and only what
# is missing runs. LAB_OUT moves the run directories (default runs/lab).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${LAB_OUT:-runs/lab}"
SB=(python3 -m speechbs)

# 1. The built-in corpus at 240 min (about 2 min to synthesize; reused when present).
"${SB[@]}" corpus --minutes 240 --seed 11 --audio-dir data/lab --manifest-dir manifests/lab

# 2. Arm 1, 400 steps at every batch, and arm 2, 6.67 h of audio at every batch: pretrain,
#    fine-tune, decode, score, and the fixed-state gradient noise of the chosen checkpoints.
"${SB[@]}" sweep recipes/lab/fixed_steps.toml --out "$OUT/lab-fixed-steps"
"${SB[@]}" sweep recipes/lab/equal_hours.toml --out "$OUT/lab-equal-hours"

# 3. Fine-tuning noise: arm 1's 60 s point (seed 1) fine-tuned again with another fine-tuning seed.
POINT="$OUT/lab-fixed-steps/points/bs60s-seed1"
"${SB[@]}" finetune recipes/sweeps/demo_finetune.toml --set "finetune.init=\"$POINT/pretrain\"" \
    --set "run.output_dir=\"$POINT/finetune\"" --set run.name=train-ftseed2 --set run.seed=2 \
    --set 'data.train_manifest="manifests/lab/train.tsv"' --set 'data.valid_manifest="manifests/lab/valid.tsv"'
FT="$POINT/finetune/train-ftseed2"
CKPT="$FT/checkpoints/best.pt"; [[ -f $CKPT ]] || CKPT="$FT"
DEC="$POINT/decode/train-ftseed2/test"
[[ -f $DEC/decode.json ]] || "${SB[@]}" decode "$CKPT" --manifest manifests/lab/test.tsv --out "$DEC"
[[ -f $DEC/score.json ]] || "${SB[@]}" score "$DEC"

# 4. The tables and plots of each arm.
"${SB[@]}" report "$OUT/lab-fixed-steps" --out "$OUT/report-fixed-steps"
"${SB[@]}" report "$OUT/lab-equal-hours" --out "$OUT/report-equal-hours"
