#!/usr/bin/env bash
# The GPU truth kit (docs/gpu-kit.md): on one CUDA GPU, checks every ftwatch CUDA number in under
# 8 minutes and writes the results under $OUT. `scripts/gpu-check.sh --dry-run` does every stage on
# tiny shapes on the CPU. ftwatch runs from src/ (it need not be installed); textual/plotext are not needed.
set -u
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
if [ -z "${OUT:-}" ]; then OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu-kit-out.XXXXXX"); fi
export OUT
mkdir -p "$OUT"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# A hard stop past the kit's own deadline (420 s on the GPU): whatever was measured is already saved.
LIMIT=${GPU_KIT_HARD_LIMIT:-480}
set -o pipefail
timeout --kill-after=15 "$LIMIT" "$PY" scripts/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/kit-log.txt"
rc=$?
echo "gpu-check.sh: exit $rc; results in $OUT:"
ls -l "$OUT"
exit "$rc"
