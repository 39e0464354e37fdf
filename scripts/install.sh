#!/usr/bin/env bash
# Install speechbs into the active Python environment.
#   bash scripts/install.sh          # the package, ready for `speechbs demo`
#   bash scripts/install.sh test     # plus what the test suite needs
# A torch that is already installed (for example a CUDA build on a GPU server) is
# kept. Otherwise torch==2.13.0 is installed first, by itself, so that no other
# requirement can pull an unpinned multi-GB CUDA build onto a CPU-only machine.
# Override the choice with TORCH_SPEC, e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRAS="corpus,asr,report"
if [[ "${1:-}" == "test" ]]; then EXTRAS="corpus,asr,report,test"; fi

if "$PY" -c "import torch" 2>/dev/null; then
    echo "speechbs: keeping the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
fi
"$PY" -m pip install --quiet -e ".[${EXTRAS}]"
# pyenv only sees new console scripts after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
echo "speechbs: installed ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
