"""Config composition and validation: recipes compose, mistakes fail early with a line naming the field."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from prm_rl.config import ConfigError, register_schema, to_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.stem for p in (REPO / "recipes" / "recipe").glob("*.yaml"))

register_schema()


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "recipes"), version_base=None):
        return compose(config_name="base", overrides=list(overrides))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_validates(recipe):
    cfg = to_config(composed(f"+recipe={recipe}"), world_size=2)
    assert cfg.trainer.max_steps > 0


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
])
def test_rule_violations_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        to_config(composed("+recipe=math_ppo", override), world_size=2)


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
