"""A real two-rank ``deepspeed`` run of a few PRIME steps on a tiny model (see tiny_runs.py).

Warm start, rollouts, verification, PRM and policy updates all run for real.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tiny_runs import all_rows, environment, launch, metrics

PRM_EVAL_KEYS = ("accuracy", "ce", "ce_constant_guess", "outcome_auroc", "ranking_acc", "ranking_weight",
                 "step_auroc", "first_error_hit_rate", "first_error_random", "first_error_n",
                 "tree_step_auroc", "tree_first_error_hit_rate")


@pytest.mark.slow
def test_two_rank_prime_run_updates_and_saves(tmp_path, warm_cache):
    run_dir = tmp_path / "run"
    proc = launch(warm_cache, run_dir, ["trainer.max_steps=3", "trainer.eval_every=2", "wandb.mode=offline",
                                        "tracking.rollout_table_every=2", "tracking.rollouts_jsonl_mb=1"],
                  launcher="deepspeed")  # the README's launch line
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    updated = [r for r in rows if "policy/loss" in r]
    assert updated, "no step kept any group: the warm start is too weak for this test"
    assert all("prm/loss" in r and "time/generate" in r for r in updated)
    assert all(0 < r["mem/generate_gb"] < 20 and 0 < r["mem/policy_gb"] < 20 for r in updated)  # RSS, GiB

    # The PRM is evaluated before training (a step-0 line), every trainer.eval_every steps and at the end.
    start = all_rows(run_dir)[0]
    assert start["step"] == 0
    assert set(start) == {"step", *(f"{s}/{k}" for s in ("prm_eval", "prm_eval_sft") for k in PRM_EVAL_KEYS)}
    # The PRM starts equal to its reference: every reward ties, so every ranking metric is at chance
    # (None only if this tiny sample holds no pair to rank).
    assert start["prm_eval/ranking_acc"] in (0.5, None) and start["prm_eval/step_auroc"] in (0.5, None)
    assert start["prm_eval/ce"] == pytest.approx(math.log(2), abs=1e-6)
    assert [r["step"] for r in rows if "prm_eval/ce" in r] == [2, 3]
    # the starting model's samples are drawn once: the same responses, so the same accuracy, every time
    assert start["prm_eval_sft/accuracy"] == rows[1]["prm_eval_sft/accuracy"] == rows[2]["prm_eval_sft/accuracy"]
    for r in (rows[1], rows[2]):
        assert 0.0 <= r["prm_eval/accuracy"] <= 1.0 and r["prm_eval/ce_constant_guess"] >= 0.0
    for step in (0, 2, 3):  # the heatmaps of table_rows held-out responses, also without W&B
        page = (run_dir / "prm_eval" / f"step_{step:06d}.html").read_text()
        shown = [json.loads(line) for line in (run_dir / "prm_eval" / f"step_{step:06d}.jsonl").open()]
        assert len(shown) == 2 and page.count("step 1:") == 2
        assert {"prompt", "response", "outcome_score", "prm_score", "first_wrong_step",
                "lowest_reward_step"} <= set(shown[0])
    tables = list((run_dir / "wandb").glob("offline-run-*/files/media/table/prm_eval/samples_*.table.json"))
    assert len(tables) == 3, tables  # one W&B Table per evaluation
    assert json.loads(tables[0].read_text())["columns"][-1] == "heatmap"

    # Training rollouts: every response of every step in rollouts.jsonl (the filter keeps all here: 8 groups
    # of 4 trained a step), and at step 2 a W&B table of tracking.rollout_table_groups=4 groups, coloured.
    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").open()]
    assert [r["step"] for r in rollouts] == [s for s in (1, 2, 3) for _ in range(32)]
    assert all(r["kept"] and r["process_reward"] is not None and r["advantage_min"] <= r["advantage"]
               <= r["advantage_max"] and r["outcome_score"] in (0.0, 1.0) for r in rollouts)
    tables = list((run_dir / "wandb").glob("offline-run-*/files/media/table/rollouts/samples_*.table.json"))
    assert len(tables) == 1, tables
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["step", "prompt", "response", "outcome_score", "kept", "process_reward",
                                "advantage", "advantage_min", "advantage_max", "heatmap"]
    shown = [dict(zip(table["columns"][:-1], row[:-1])) for row in table["data"]]
    assert shown == [r for r in rollouts if r["step"] == 2][:16]
    # W&B keeps a table's HTML cells in the run's artifact, staged outside the run folder until synced
    log = b"".join(p.read_bytes() for p in (run_dir / "wandb").glob("offline-run-*/*.wandb"))
    staged = re.findall(rb"media/html/\w+\.html.{0,80}?(/[\w/.-]+/staging/\w+)", log, re.S)
    assert any("process reward" in Path(p.decode()).read_text() for p in staged)  # a rollout heatmap's title

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["world_size"] == 2
    assert summary["prm_eval_final"] == {k: v for k, v in rows[-1].items() if k.startswith("prm_eval")}
    assert summary["command"].startswith("deepspeed --num_gpus 2 launch/train.py +recipe=math_ppo")
    assert 0.0 <= summary["eval_accuracy_start"] <= 1.0 and 0.0 <= summary["eval_accuracy_final"] <= 1.0
    assert (run_dir / "config.yaml").exists()
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B offline run missing"
    for role in ("policy", "prm"):  # each export's model card carries the run's figures
        card = (run_dir / role / "README.md").read_text()
        assert f"# {role} of a prm_rl run" in card and f"| `eval_accuracy_final` | {summary['eval_accuracy_final']:.4g} |" in card

    # The evaluation command on the finished run: metrics JSON and a heatmap picture.
    out, png = tmp_path / "prm_eval.json", tmp_path / "heat.png"
    cli = subprocess.run([sys.executable, "-m", "prm_rl.cli.eval_prm", str(run_dir), "--num-prompts", "4",
                          "--out", str(out), "--heatmaps", str(png)], capture_output=True, text=True,
                         env=environment())
    assert cli.returncode == 0, cli.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["metrics"]) == set(PRM_EVAL_KEYS) and result["num_prompts"] == 4
    assert all(set(v) == {"n", "hit_rate", "random"} for v in result["first_error_by_operation"].values())
    assert png.stat().st_size > 1000 and png.with_suffix(".html").exists()

    warm = next(warm_cache.iterdir())
    start = AutoModelForCausalLM.from_pretrained(warm)
    for name in ("policy", "prm"):
        trained = AutoModelForCausalLM.from_pretrained(run_dir / name)
        tokenizer = AutoTokenizer.from_pretrained(run_dir / name)
        changed = [n for (n, a), (_, b) in zip(start.named_parameters(), trained.named_parameters())
                   if not torch.equal(a, b)]
        assert changed, f"{name} parameters did not change"
        ids = tokenizer("3+4=?\n", return_tensors="pt")["input_ids"]
        out = trained.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert out.shape[1] > ids.shape[1]


@pytest.mark.slow
def test_authors_filter_and_double_forward_options_run(tmp_path, warm_cache):
    """Keep-sampling with carry-over, truncated-group drop, re-scoring PRM, policy as PRM reference, two PRM
    passes per step."""
    run_dir = tmp_path / "run"
    proc = launch(warm_cache, run_dir, ["trainer.max_steps=2", "filter.low=0.2", "filter.high=0.8",
                                        "filter.fill_rounds=3", "filter.drop_truncated=true", "prm.update=before",
                                        "prm.reference=policy", "prm.loss=dpo", "reward.granularity=step",
                                        "prm.epochs=2", "reward.credit=min"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(1 <= r["filter/rounds"] <= 3 for r in rows)
    assert any("policy/loss" in r and "prm/loss" in r for r in rows), "no step trained: nothing passed the band"
    assert all(0 <= r["watch/repeated_4gram_frac"] < 1 for r in rows)
    assert any("watch/prm_outcome_corr" in r for r in rows)
    # Either the batch filled up in fewer rounds than allowed, or all three rounds were used.
    assert all(r.get("filter/groups", 0) == 8 or r["filter/rounds"] == 3 for r in rows)


@pytest.mark.slow
def test_outcome_only_rloo_loads_no_prm(tmp_path, warm_cache):
    run_dir = tmp_path / "run"
    proc = launch(warm_cache, run_dir, ["trainer.max_steps=2", "algorithm.advantage=rloo"], num_ranks=1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "policy").is_dir() and not (run_dir / "prm").exists()
    assert not any(k.startswith("prm/") for r in metrics(run_dir) for k in r)


@pytest.mark.slow
def test_self_guided_spro_trains_the_policy_without_a_prm(tmp_path, warm_cache):
    """SPRO: two models (policy, reference), the policy's own log-ratios as process rewards; on-policy settings
    (one mini-batch) still take the old-log-prob pass, which those rewards are read from."""
    run_dir = tmp_path / "run"
    proc = launch(warm_cache, run_dir, ["trainer.max_steps=2", "algorithm.advantage=spro", "policy.mini_batches=1"],
                  num_ranks=1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(run_dir)
    assert not (run_dir / "prm").exists() and not any(k.startswith("prm/") for r in rows for k in r)
    assert any(r.get("policy/grad_norm", 0) > 0 for r in rows)


@pytest.mark.slow
def test_tree_credit_trains_without_a_prm(tmp_path, warm_cache):
    """algorithm.advantage=tree: the group's prefix-tree credit on top of RLOO; no PRM, no reference."""
    run_dir = tmp_path / "run"
    proc = launch(warm_cache, run_dir, ["trainer.max_steps=2", "algorithm.advantage=tree"], num_ranks=1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(run_dir)
    assert not (run_dir / "prm").exists() and not any(k.startswith("prm/") for r in rows for k in r)
    trained = [r for r in rows if "adv/tree_std" in r]
    assert trained and any(r["adv/tree_std"] > 0 for r in trained)  # the groups branch, so the credit is not all 0


@pytest.mark.slow
def test_prefix_loss_on_tree_targets_with_tree_credit_runs_and_reports_the_tree_baseline(tmp_path, warm_cache):
    """The implicit PRM learns per-prefix values from the group's tree; held-out evaluation puts the tree's own
    step metrics beside the PRM's."""
    run_dir = tmp_path / "run"
    proc = launch(warm_cache, run_dir, ["trainer.max_steps=2", "algorithm.advantage=prime-tree", "prm.loss=prefix",
                                        "prm.targets=tree", "prm.beta=2.0", "prm.margin=0.1"], num_ranks=1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(run_dir)
    assert any("prm/loss" in r and "adv/tree_std" in r and "adv/process_std" in r for r in rows)
    evaluated = [r for r in rows if "prm_eval/step_auroc" in r]
    assert evaluated and all("prm_eval/tree_step_auroc" in r and "prm_eval/tree_first_error_hit_rate" in r
                             for r in evaluated)


@pytest.mark.slow
def test_the_prm_can_start_from_another_checkpoint(tmp_path, warm_cache):
    """prm.init_path: the PRM starts from that model (here a smaller one with the same tokenizer), the reference
    stays the SFT model, so before any update the PRM already differs from its reference."""
    from prm_rl.data import arithmetic
    from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer(arithmetic.CHARACTERS)
    start = tmp_path / "pretrained_prm"
    build_tiny_model(TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                                     max_positions=64), tokenizer, seed=3).save_pretrained(start)
    tokenizer.save_pretrained(start)
    run_dir = tmp_path / "run"
    proc = launch(warm_cache, run_dir, ["trainer.max_steps=1", f"prm.init_path={start}", "wandb.mode=disabled"],
                  num_ranks=1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    before = all_rows(run_dir)[0]
    assert before["step"] == 0 and before["prm_eval/ce"] != pytest.approx(0.693147, abs=1e-4)  # not PRM == ref
    assert json.loads((run_dir / "prm" / "config.json").read_text())["hidden_size"] == 16
