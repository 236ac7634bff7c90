#!/bin/bash
# Kill-and-resume of the built-in job (docs/checkpoints.md): a 30-step math_ppo run uninterrupted, the same run
# SIGKILLed (launcher and both ranks) after step 17 and resumed; compares metrics.jsonl and final weights.
# Usage: bash bench/kill_and_resume.sh   (about 3 minutes on 2 CPU cores with the warm start cached)
cd "$(dirname "$0")/.."
export WANDB_SILENT=true  # run from the repository root with the venv active
ARGS="+recipe=math_ppo trainer.max_steps=30 trainer.checkpoint_every=10 trainer.progress_bar=false wandb.mode=offline"
rm -rf runs/kr-uninterrupted runs/kr-killed && mkdir -p runs
/usr/bin/time -f "uninterrupted wall %e s" deepspeed --num_gpus 2 launch/train.py $ARGS trainer.output_dir=runs/kr-uninterrupted > runs/kr_a.log 2>&1
tail -1 runs/kr_a.log
setsid deepspeed --num_gpus 2 launch/train.py $ARGS trainer.output_dir=runs/kr-killed > runs/kr_b1.log 2>&1 &
PID=$!
while [ "$(cat runs/kr-killed/metrics.jsonl 2>/dev/null | wc -l)" -lt 17 ]; do sleep 0.2; done
kill -9 -- -$PID; wait $PID 2>/dev/null
echo "killed after step $(wc -l < runs/kr-killed/metrics.jsonl); checkpoints: $(ls runs/kr-killed/checkpoints | tr '\n' ' ')"
/usr/bin/time -f "resumed wall %e s" deepspeed --num_gpus 2 launch/train.py $ARGS trainer.output_dir=runs/kr-killed > runs/kr_b2.log 2>&1
tail -1 runs/kr_b2.log
grep "resumed from\|checkpoint saved\|held-out" runs/kr_b2.log
python - <<'PY'
import json, torch
from safetensors.torch import load_file
def rows(d): return [{k: v for k, v in json.loads(l).items() if not k.startswith(("time/", "perf/"))} for l in open(f"runs/{d}/metrics.jsonl")]
a, b = rows("kr-uninterrupted"), rows("kr-killed")
diff = max(abs((x[k] or 0) - (y[k] or 0)) for x, y in zip(a, b) for k in x)
print("steps", len(a), len(b), "max |metric difference|", diff, "identical rows:", a == b)
for m in ("policy", "prm"):
    wa, wb = load_file(f"runs/kr-uninterrupted/{m}/model.safetensors"), load_file(f"runs/kr-killed/{m}/model.safetensors")
    print(m, "max |weight difference|", max((wa[k] - wb[k]).abs().max().item() for k in wa), "bitwise equal:", all(torch.equal(wa[k], wb[k]) for k in wa))
sa, sb = (json.load(open(f"runs/{d}/summary.json")) for d in ("kr-uninterrupted", "kr-killed"))
print("summary", {k: (sa[k], sb[k]) for k in ("eval_accuracy_start", "eval_accuracy_final", "wall_seconds")})
PY
du -sh runs/kr-killed/checkpoints/step_000030
