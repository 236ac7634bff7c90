"""bench/common.py, the plumbing every benchmark shares: the numbers of its tables, the order its jobs run in,
the command a training job gets and the reuse of a finished one, and the three report files."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import common  # noqa: E402


def test_numbers_over_seeds():
    assert common.mean([0.5, None, 0.25]) == 0.375 and common.mean([None]) is None and common.mean([]) is None
    assert common.cell(0.12345) == "0.123" and common.cell(None) == "-" and common.cell(None, "n/a") == "n/a"
    assert common.spread([0.3, None, 0.1, 0.2]) == "0.200 (0.100-0.300)"
    assert common.spread([0.25]) == "0.250"  # one seed: its value alone
    assert common.spread([0.25], range_of_one=True) == "0.250 (0.250-0.250)"
    assert common.spread([None, None]) == "-" and common.spread([], "n/a", range_of_one=True) == "n/a"


def test_the_first_job_runs_alone_then_the_rest_in_parallel_in_order():
    running, alongside, lock = set(), {}, threading.Lock()

    def run(job: int) -> str:
        with lock:
            running.add(job)
        time.sleep(0.05)
        with lock:
            alongside[job] = set(running) - {job}
            running.discard(job)
        return f"result {job}"

    assert common.run_jobs(run, [0, 1, 2, 3, 4], parallel=2) == [f"result {j}" for j in range(5)]
    assert alongside[0] == set()  # the warm start's job: nothing else at the same time
    assert all(len(others) <= 1 and 0 not in others for others in alongside.values())
    assert common.run_jobs(run, [], parallel=2) == []


FAKE_ENTRY = """import json, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("trainer.output_dir=")))
if "fail=true" in args:
    sys.exit(3)
(out / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\\n")
(out / "summary.json").write_text(json.dumps({"argv": args}))
"""


def test_a_job_gets_its_command_and_a_finished_run_directory_is_reused_by_the_same_command(tmp_path):
    entry = tmp_path / "entry.py"
    entry.write_text(FAKE_ENTRY)
    out = tmp_path / "runs" / "rloo-s0"
    rows, summary = common.train(out, ["algorithm.advantage=rloo", "trainer.checkpoint_every=5"], seed=1, steps=4,
                                 eval_every=2, entry=str(entry), recipe="math_grpo")
    assert rows == [{"step": 1, "loss": 0.5}]
    # the defaults first, so that a benchmark's overrides (and a user's --set) can change them
    assert summary["argv"] == ["+recipe=math_grpo", *common.JOB_DEFAULTS, "algorithm.advantage=rloo",
                               "trainer.checkpoint_every=5", "trainer.seed=1", "trainer.max_steps=4",
                               "trainer.eval_every=2", f"trainer.output_dir={out}"]
    assert (out / "bench.log").read_text().startswith(f"{sys.executable} {entry} +recipe=math_grpo ")
    entry.write_text("raise SystemExit('must not run: the run directory is finished')")
    same = dict(seed=1, steps=4, eval_every=2, entry=str(entry), recipe="math_grpo")
    assert common.train(out, ["algorithm.advantage=rloo", "trainer.checkpoint_every=5"], **same) == (rows, summary)
    with pytest.raises(RuntimeError, match="rloo-s0 holds a finished run of another command"):
        common.train(out, ["algorithm.advantage=rloo"], **same)  # e.g. another --set: not its results
    with pytest.raises(RuntimeError, match=r"rloo-s1 failed \(exit 3\); see .*rloo-s1/bench.log"):
        entry.write_text(FAKE_ENTRY)
        common.train(tmp_path / "runs" / "rloo-s1", ["fail=true"], seed=1, steps=4, eval_every=2, entry=str(entry))


def test_the_report_is_json_markdown_and_a_png(tmp_path, capsys):
    def plot():
        fig, ax = common.pyplot().subplots()
        ax.plot([0, 1], [0, 1])
        return fig

    out = tmp_path / "sub" / "report"
    common.write_report(out, {"results": [1, 2]}, "| a |\n", plot)
    assert json.loads(out.with_suffix(".json").read_text()) == {"results": [1, 2]}
    assert out.with_suffix(".json").read_text().endswith("}\n")
    assert out.with_suffix(".md").read_text() == "| a |\n" and "| a |" in capsys.readouterr().out
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("decay, warmup, floor", [("constant", 0, 0.0), ("constant", 0.2, 0.0), ("linear", 3, 0.0),
                                                  ("cosine", 0.25, 0.1), ("cosine", 0, 0.0)])
def test_the_trl_benchmark_asks_transformers_for_our_schedule(decay, warmup, floor):
    """bench/trl_grpo.py's GRPOConfig options give, through transformers' own scheduler, the rate ours gives."""
    import torch
    from transformers import TrainingArguments, get_scheduler

    from bench.trl_grpo import trl_schedule
    from prm_rl.config import LrScheduleSection
    from prm_rl.core import lr_multiplier, warmup_steps_of

    total = 20
    args = TrainingArguments(output_dir="unused", learning_rate=1.0, max_steps=total, use_cpu=True, report_to=[],
                             **trl_schedule(LrScheduleSection(decay, warmup, floor)))
    optimiser = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    hf = get_scheduler(args.lr_scheduler_type, optimiser, num_warmup_steps=args.get_warmup_steps(total),
                       num_training_steps=total, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    for step in range(1, total + 1):
        ours = lr_multiplier(step, total, decay, warmup_steps_of(warmup, total), floor)
        assert ours == pytest.approx(optimiser.param_groups[0]["lr"], abs=1e-12), step
        optimiser.step()
        hf.step()


def test_the_trl_benchmark_refuses_a_schedule_transformers_lacks(capsys):
    from bench.trl_grpo import trl_schedule
    from prm_rl.config import LrScheduleSection

    with pytest.raises(SystemExit) as ended:
        trl_schedule(LrScheduleSection("linear", 0, 0.1))
    assert ended.value.code == 2 and "min_lr_ratio=0.1 with decay=linear" in capsys.readouterr().err
