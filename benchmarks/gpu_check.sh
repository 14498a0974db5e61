#!/usr/bin/env bash
# The CUDA check, for any machine with an NVIDIA GPU (under 8 minutes on one GPU):
#   1. the CUDA-marked tests (bf16 autocast, fused AdamW, flash SDPA, torch.compile, NCCL
#      DDP/FSDP2, `triform pretrain` on the GPU), which CI skips for want of a GPU;
#   2. GPT-2 124M pretraining throughput and MFU in bf16, eager and compiled
#      (benchmarks/bench_gpu.py).
# Prints Markdown ready for BENCHMARKS.md and keeps a copy in the file given (default
# gpu_check.md). Usage, from anywhere:
#   bash benchmarks/gpu_check.sh [OUT.md]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
out="${1:-gpu_check.md}"

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA GPU visible to torch; nothing to check" >&2
    exit 2
fi

{
    gpu="$(python -c "import torch; print(torch.cuda.get_device_name())")"
    echo "## GPU check: $gpu"
    echo
    echo "Measured $(date -u +%Y-%m-%d) with torch $(python -c 'import torch; print(torch.__version__)'), by"
    echo
    echo '```bash'
    echo "bash benchmarks/gpu_check.sh"
    echo '```'
    echo
    echo "### CUDA tests (pytest -m cuda)"
    echo
    echo '```'
    timeout 300 python -m pytest -m cuda -q -rs -p no:cacheprovider tests 2>&1 | tail -n 20
    tests_status=${PIPESTATUS[0]}
    echo '```'
    echo
    echo "### GPT-2 124M pretraining, one GPU"
    echo
    timeout 240 python benchmarks/bench_gpu.py
    bench_status=$?
    echo
    echo "(tests exit status $tests_status, benchmark exit status $bench_status)"
} 2>&1 | tee "$out"
grep -q "tests exit status 0, benchmark exit status 0" "$out"
