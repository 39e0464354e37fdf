#!/usr/bin/env bash
# Every GPU row of docs/benchmarks.md in one run, on one CUDA device. Each benchmark runs under its
# own time limit (13 minutes in all at the most, 10 without the torch.compile rows).
#
#   bash bench/gpu.sh [OUT_DIR]          # default: bench-results/gpu-<date>
#   SKIP_COMPILE=1 bash bench/gpu.sh     # leave out the torch.compile rows (the slowest part)
#
# Each benchmark prints its table to OUT_DIR/<name>.txt and writes OUT_DIR/<name>.json; one that
# fails or runs past its time limit is reported as such and the others still run. Needs speechbs
# installed (bash scripts/install.sh keeps a CUDA torch that is already there) and, for the
# comparison rows, transformers (and torchaudio, where it imports).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench-results/gpu-$(date +%F)}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1  # a benchmark stopped at its time limit keeps what it printed
mkdir -p "$OUT"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu.sh: torch sees no CUDA device here; the CPU tables come from each script without --device cuda" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

# bench NAME LIMIT_S SCRIPT ARGS...: run one benchmark under a time limit, keep its table and JSON.
bench() {
    local name=$1 limit=$2 script=$3
    shift 3
    echo "== $name (limit ${limit} s): $script $*"
    local start=$SECONDS
    timeout "$limit" "$PY" "bench/$script" "$@" --json "$OUT/$name.json" >"$OUT/$name.txt" 2>&1
    local rc=$?
    cat "$OUT/$name.txt"
    case $rc in
        0) echo "== $name: done in $((SECONDS - start)) s" ;;
        124) echo "== $name: STOPPED at its ${limit} s limit" ;;
        *) echo "== $name: FAILED (exit $rc)" ;;
    esac
}

# 1. Throughput against transformers (and torchaudio) at BASE, fp32 and bf16; the 5,000 audio-s/s target.
bench throughput_base 150 throughput.py --device cuda --sizes base --precision fp32 bf16 \
    --against transformers torchaudio --batch 8 --seconds 10 --repeats 5
# 2. The largest BASE micro-batch (target >= 600 s on 80 GB), bf16 then fp32, and the memory curve.
bench memory_find_bf16 90 memory.py --device cuda --precision bf16 --size base --utterance-seconds 15 --find-max
bench memory_find_fp32 90 memory.py --device cuda --precision fp32 --size base --utterance-seconds 15 --find-max
bench memory_curve_bf16 60 memory.py --device cuda --precision bf16 --size base --utterance-seconds 10 \
    --micro-seconds 20 40 80 160 320
# 3. Accumulation overhead (target <= 3%) and host syncs in the micro-batch loop (target 0).
bench accumulation 90 accumulation.py --device cuda --precision bf16 --size base --global-seconds 320 \
    --utterance-seconds 10 --splits 1 2 4 8 --repeats 5
# 4. Gradient-noise measurement overhead.
bench grad_noise 45 grad_noise.py --device cuda --precision bf16 --size base --micro 4 --micro-seconds 40
# 5. Data loading per worker on this machine's cores (CPU-side; the GPU machine's cores feed the GPU).
bench dataload 60 dataload.py --workers 0 1 2 4 8
# 6. torch.compile, last: the compile time of the first steps is reported apart from the step time.
if [[ -z "${SKIP_COMPILE:-}" ]]; then
    bench throughput_compile 200 throughput.py --device cuda --sizes base --precision bf16 --compile on \
        --against transformers --batch 8 --seconds 10 --repeats 5
fi
echo "results in $OUT"
