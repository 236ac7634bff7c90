"""Config composition and validation: recipes compose, mistakes fail early with a line naming the field."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from prm_rl.config import ConfigError, register_schema, to_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.stem for p in (REPO / "recipes" / "recipe").glob("*.yaml"))

register_schema()


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "recipes"), version_base=None):
        return compose(config_name="base", overrides=list(overrides))


# What a recipe needs on top of itself to validate (model.path is checked later, by check_model_source).
REQUIRED = {"math_file": [f"data.train={REPO}/tests/data/fixtures/math.jsonl"],
            "paper_7b": [f"data.train={REPO}/tests/data/fixtures/math.jsonl"]}


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_validates(recipe):
    cfg = to_config(composed(f"+recipe={recipe}", *REQUIRED.get(recipe, [])), world_size=8)
    assert cfg.trainer.max_steps > 0


def test_baseline_recipes_differ_from_math_ppo_only_in_the_estimator():
    base = composed("+recipe=math_ppo")
    for recipe, estimator in (("math_rloo", "rloo"), ("math_grpo", "grpo")):
        cfg = composed(f"+recipe={recipe}")
        assert cfg.algorithm.advantage == estimator
        cfg.algorithm.advantage = "prime"
        assert cfg == base


def test_paper_recipe_holds_the_paper_values():
    cfg = to_config(composed("+recipe=paper_7b", *REQUIRED["paper_7b"]), world_size=8)
    assert (cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt, cfg.rollout.max_new_tokens) == (256, 4, 3072)
    assert (cfg.policy.learning_rate, cfg.prm.learning_rate, cfg.prm.beta) == (5e-7, 1e-6, 0.05)
    assert (cfg.deepspeed.zero_stage, cfg.deepspeed.offload, cfg.model.dtype) == (3, True, "bfloat16")
    assert cfg.model.gradient_checkpointing


def test_recipe_overrides_base():
    cfg = to_config(composed("+recipe=math_ppo", "policy.clip_eps=0.3"))
    assert cfg.policy.clip_eps == 0.3
    assert cfg.policy.learning_rate != to_config(composed()).policy.learning_rate  # the recipe's own value


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigCompositionException, match="polcy"):
        composed("polcy.clip_eps=0.3")


def test_wrong_type_is_rejected():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        composed("policy.clip_eps=wide")


@pytest.mark.parametrize("override, field", [
    ("filter.low=0.9", "filter.low"),
    ("filter.high=1.5", "filter.low"),
    ("rollout.samples_per_prompt=1", "rollout.samples_per_prompt"),
    ("prm.update=sometimes", "prm.update"),
    ("reward.granularity=sentence", "reward.granularity"),
    ("policy.dual_clip=0.5", "policy.dual_clip"),
    ("rollout.prompts_per_step=31", "rollout.prompts_per_step"),
    ("algorithm.advantage=rloo rollout.samples_per_prompt=1", "rollout.samples_per_prompt"),
    ("filter.low=-0.1", "filter.low"),
    ("prm.mini_batches=3", "prm.mini_batches"),
    ("policy.mini_batches=3", "policy.mini_batches"),
    ("trainer.checkpoint_every=-1", "trainer.checkpoint_every"),
    ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints"),
    ("trainer.resume=/no/such/checkpoint", "trainer.resume"),
    ("data.train=/no/such/train.jsonl", "data.train"),
    ("data.mapping=csv", "data.mapping"),
    ("task.name=poetry", "task.name"),
    ("task.arithmetic.min_steps=5", "task.arithmetic.min_steps"),
    ("task.name=code task.code.num_examples=1", "task.code.num_examples"),
    ("algorithm.advantage=grpo rollout.samples_per_prompt=1", "rollout.samples_per_prompt"),
    ("rollout.samples_per_prompt=2 filter.low=0.6 filter.high=0.9", "filter.low"),  # only 0, 0.5, 1 possible
    ("prm.learning_rate=-1e-3", "prm.learning_rate"),
    ("prm.weight_decay=-1", "prm.weight_decay"),
    ("prm.grad_clip=0", "prm.grad_clip"),
    ("policy.weight_decay=-5", "policy.weight_decay"),
    ("policy.grad_clip=-1", "policy.grad_clip"),
])
def test_rule_violations_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        to_config(composed("+recipe=math_ppo", *override.split()), world_size=2)


def test_typo_in_a_new_section_is_rejected():
    with pytest.raises(ConfigCompositionException, match="resum"):
        composed("+recipe=math_ppo", "trainer.resum=never")


def test_unknown_recipe_fails_listing_the_available_ones():
    proc = subprocess.run([sys.executable, "launch/train.py", "+recipe=math_ppo_typo"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "math_ppo_typo" in proc.stderr and "math_ppo" in proc.stderr.replace("math_ppo_typo", "")


def test_config_error_exits_before_loading_models():
    proc = subprocess.run([sys.executable, "launch/train.py", "+recipe=math_ppo", "filter.low=2"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("config error: filter.low=2")


@pytest.mark.parametrize("option, message", [
    ("+verifier.tasks.chess={verifier: chessy}", "config error: verifier.tasks.chess.verifier='chessy': must be one of"),
    ("+verifier.tasks.chess={_target_: no_such_module.fn}",
     "config error: verifier.tasks.chess._target_='no_such_module.fn': cannot import"),
])
def test_verifier_option_error_is_one_line_naming_the_config_path(tmp_path, option, message):
    """Checked before the warm start (none is cached here, so reaching it would take minutes)."""
    proc = subprocess.run([sys.executable, "launch/train.py", "+recipe=math_ppo", option,
                           f"warm_start.cache_dir={tmp_path / 'empty'}", f"trainer.output_dir={tmp_path / 'run'}",
                           "wandb.mode=disabled"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if "real_accelerator" not in line]
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert "warm start" not in proc.stdout


def test_unwritable_output_dir_fails_before_loading_models():
    proc = subprocess.run([sys.executable, "launch/train.py", "+recipe=math_ppo", "trainer.output_dir=/proc/prm_rl_run"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5
    assert proc.stderr.strip().splitlines()[-1].startswith("[prm_rl] trainer.output_dir=/proc/prm_rl_run: cannot write")


def test_a_real_checkpoint_without_training_data_is_refused():
    """paper_7b names a 7B checkpoint but no prompts: it must not RL-train it on the toy arithmetic task."""
    with pytest.raises(ConfigError, match="^data.train: required with model.path=/checkpoints/Eurus-2-7B-SFT"):
        to_config(composed("+recipe=paper_7b"), world_size=8)


def test_base_yaml_holds_the_defaults_of_sections_that_have_them():
    """A section whose dataclass has real defaults (the built-in tasks' configs) is documented in base.yaml with
    the same values: the two cannot drift."""
    import dataclasses
    import typing

    from omegaconf import OmegaConf

    from prm_rl.config import Config

    yaml = OmegaConf.to_container(OmegaConf.load(REPO / "recipes" / "base.yaml"))
    checked = 0

    def walk(cls, node, path):
        nonlocal checked
        types = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            where = f"{path}.{f.name}".lstrip(".")
            assert f.name in node, f"{where}: declared in the schema, missing from base.yaml"
            if dataclasses.is_dataclass(types[f.name]):
                walk(types[f.name], node[f.name], where)
            elif f.default is not dataclasses.MISSING and f.default != "???":
                assert node[f.name] == f.default, f"{where}: base.yaml has {node[f.name]!r}, the code {f.default!r}"
                checked += 1

    walk(Config, yaml, "")
    assert checked >= 14  # model.tiny (5), task.arithmetic (5) and task.code (4) at least
