#!/usr/bin/env bash
# Rollout throughput on a GPU machine: our hf engine (and a bare model.generate) against the vllm engine, on
# randomly initialised Qwen2.5-0.5B- and 1.5B-shaped models in bf16, 256 rows (the main job's 32 prompts x 8) of up
# to 256 new tokens. Needs `pip install -e ".[vllm]"`; writes docs/benchmarks/rollout_gpu_*.{json,md,png}. Keep
# these numbers apart from the CPU ones (docs/benchmarks.md, "Rollout engines").
set -euo pipefail
cd "$(dirname "$0")/.."
for shape in qwen2.5-0.5b qwen2.5-1.5b; do
  python bench/rollout_throughput.py --shape "$shape" --dtype bfloat16 --device cuda --variants ours vllm \
    --max-new-tokens 256 --repeats 3 --out "docs/benchmarks/rollout_gpu_${shape}"
done
