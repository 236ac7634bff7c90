#!/usr/bin/env bash
# The GPU check in one command (docs/gpu_check.md): 3 PRIME steps of a random Qwen2-0.5B-shaped model in bf16 on
# ZeRO-2 and ZeRO-3 x the hf and vllm engines, each beside the memory estimator's figure; writes
# docs/benchmarks/gpu_check.{json,md} (--out PREFIX for elsewhere). Options: bench/gpu_check.sh --help.
#
# The environment part, for a GPU machine with torch and CUDA but no network: when the trainer's packages are not
# importable, it installs the wheels bench/gpu_wheels.sh built (in .whl/, or $GPU_CHECK_WHEELS) into a folder of
# their own (no dependencies resolved, no index) and puts it first on PYTHONPATH, with the repository (no install of
# the project). Python: $PYTHON, else .venv/bin/python when there is one, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}

if ! "$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" \
    deepspeed hydra omegaconf; then
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "gpu_check.sh: installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE" >&2
    rm -rf "$SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check.sh: deepspeed/hydra/omegaconf not importable and no wheels in $WHEELS (bench/gpu_wheels.sh" \
         "builds them where pip works); going on: the runs will fail and say why" >&2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# No network on the GPU machine: nothing may wait on a hub, W&B or a usage-stats server.
export PIP_ROOT_USER_ACTION=ignore PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       HF_DATASETS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$PY" bench/gpu_check.py "$@"
