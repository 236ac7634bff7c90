#!/usr/bin/env bash
# The wheels bench/gpu_check.sh installs on a GPU machine that has torch, CUDA and transformers but no network
# (docs/gpu_check.md). Run it here, where pip reaches PyPI:
#   bench/gpu_wheels.sh [DIR]        # default DIR: .whl (git-ignored), then carry DIR to the GPU machine
# Each package at the version this .venv has (the versions the suite runs), without its dependencies: the ones below
# are what a run of launch/train.py imports that the GPU image lacks (deepspeed and its pydantic/hjson, Hydra and
# OmegaConf with antlr4), plus peft (model.lora) and typing-extensions (pydantic needs a recent one). Not carried:
# wandb (imported only when wandb.mode is not disabled; the check disables it), trl and datasets (the built-in
# model's SFT warm start only: the check loads a checkpoint), math-verify (the check's prompts are verified by the
# built-in arithmetic verifier), vllm (its CUDA wheel alone is far over the limit, and it pins its own torch).
# pydantic-core is compiled: fetched for the GPU machine's Python ($GPU_PYTHON, default 3.12) and manylinux x86-64.
# Prints each wheel's size and the total; exits 1 if the total exceeds 64 MiB (what a device call carries at most).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${PYTHON:-.venv/bin/python}
GPU_PYTHON=${GPU_PYTHON:-3.12}
PURE="deepspeed hjson pydantic annotated-types typing-inspection typing-extensions hydra-core omegaconf
      antlr4-python3-runtime peft"
COMPILED="pydantic-core"
LIMIT_MIB=64

pins() { "$PY" -c "import importlib.metadata as m, sys; print(*(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" "$@"; }

rm -rf "$DIR" && mkdir -p "$DIR"
# deepspeed and antlr4 are source distributions: built here (deepspeed's setup imports torch: no build isolation,
# no ops compiled ahead; it JIT-builds what it needs on the GPU machine).
"$PY" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$DIR" $(pins $PURE)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  --dest "$DIR" $(pins $COMPILED)

for whl in "$DIR"/*.whl; do
  case "$whl" in
    *-none-any.whl|*-cp${GPU_PYTHON/./}-*manylinux*x86_64*.whl) ;;
    *) echo "gpu_wheels.sh: $whl will not install on the GPU machine (Python $GPU_PYTHON, x86-64)" >&2; exit 1 ;;
  esac
done
ls -l "$DIR"/*.whl | awk '{printf "%8.2f MiB  %s\n", $5 / 1048576, $9}'
total=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
echo "total: $(awk -v b="$total" 'BEGIN {printf "%.2f", b / 1048576}') MiB in $(ls "$DIR"/*.whl | wc -l) wheels ($DIR)"
if (( total > LIMIT_MIB * 1048576 )); then
  echo "gpu_wheels.sh: over $LIMIT_MIB MiB, more than a device call carries" >&2
  exit 1
fi
