#!/usr/bin/env bash
# The CPU lab (docs/lab.md): the seed study's three findings with speechbs's own numbers.
#   bash recipes/lab/run.sh            # from the repository root; about 3 h on 2 CPU cores
# Every step is idempotent: after a stop (or a preemption), run the same line again and only what
# is missing runs. LAB_OUT moves the run directories (default runs/lab).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${LAB_OUT:-runs/lab}"
SB=(python3 -m speechbs)

# 1. The built-in corpus at 240 min (about 2 min to synthesize; reused when present).
"${SB[@]}" corpus --minutes 240 --seed 11 --audio-dir data/lab --manifest-dir manifests/lab

# 2. Every point: pretrain, fine-tune (final and milestone checkpoints), decode, score, and the
#    fixed-state gradient noise. Seed by seed, so a stopped lab already holds whole seeds.
for seed in 1 2 3; do
    points=()
    for batch in 15 30 60 120; do points+=(--point "bs${batch}s-seed${seed}"); done
    "${SB[@]}" sweep recipes/lab/lab.toml --out "$OUT/lab" "${points[@]}"
done

# 3. Fine-tuning noise: the 60 s point (seed 1) fine-tuned again with another fine-tuning seed.
POINT="$OUT/lab/points/bs60s-seed1"
"${SB[@]}" finetune recipes/sweeps/demo_finetune.toml --set "finetune.init=\"$POINT/pretrain\"" \
    --set "run.output_dir=\"$POINT/finetune\"" --set run.name=train-ftseed2 --set run.seed=2 \
    --set 'data.train_manifest="manifests/lab/train.tsv"' --set 'data.valid_manifest="manifests/lab/valid.tsv"' \
    --set train.valid_every=600
FT="$POINT/finetune/train-ftseed2"
CKPT="$FT/checkpoints/best.pt"; [[ -f $CKPT ]] || CKPT="$FT"
DEC="$POINT/decode/train-ftseed2/test"
[[ -f $DEC/decode.json ]] || "${SB[@]}" decode "$CKPT" --manifest manifests/lab/test.tsv --out "$DEC"
[[ -f $DEC/score.json ]] || "${SB[@]}" score "$DEC"

# 4. The tables and plots.
"${SB[@]}" report "$OUT/lab" --out "$OUT/report"
