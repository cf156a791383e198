#!/usr/bin/env bash
# The GPU issue's one prepared run: what this machine is, the CUDA tests (tests/test_gpu.py:
# CPU/CUDA agreement in fp32, tf32, bf16 and fp16 at 1024x2048, export on CUDA with the runner,
# demo training with AMP and SyncBN, fp16 gradients, TTA and sliding windows with peak memory),
# then the benchmark on CUDA. On a machine without a CUDA GPU it runs too, and says what it
# skipped. Exit status: non-zero when a part that ran failed.
#
# usage: bash tools/gpu_check.sh            (from anywhere; runs in the repository root)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
status=0

echo "== machine"
machine=$("$PYTHON" -m pointrend_sem) || status=1
echo "$machine"

echo "== CUDA tests (pytest -m cuda tests/test_gpu.py)"
POINTREND_SEM_TEST_CUDA=1 "$PYTHON" -m pytest -m cuda tests/test_gpu.py -n 0 -rs -s -q || status=1

# its first line: "torch <version> (CUDA <version>, GPU visible: True|False)"
if grep -q "GPU visible: True" <<<"$machine"; then
  echo "== benchmark on CUDA (1024x2048, R-50, random weights)"
  "$PYTHON" tools/benchmark.py --config-file configs/cityscapes_r50.yaml --device cuda \
      --runs 5 --warmup 2 MODEL.RESNETS.NORM BN MODEL.SEM_SEG_HEAD.NORM BN || status=1
else
  echo "skipped: the benchmark on CUDA (no CUDA GPU visible here)"
fi
exit $status
