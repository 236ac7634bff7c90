"""prm_rl as a user gets it: a wheel built from the checkout, installed (not editable) into a folder of its own, run
from a project directory outside the checkout with a recipe that lives there and extends a built-in one.

One launch does it all: DeepSpeed's launcher starts the installed console script (``prm-rl train``: the launcher's
``--local_rank`` comes before the command's name), which starts two CPU ranks as ``python -m prm_rl.cli.main
train`` with the user's ``--config-dir`` (as a Hydra search path) passed on to both.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tiny_runs import REPO, TINY, _port, environment, metrics, run_retrying_startup_abort

USER_RECIPE = """\
# @package _global_
defaults:
  - math_ppo                  # a built-in recipe, from the installed package
trainer:
  max_steps: 2                # math_ppo's 350 would show if this file were not read
"""


def _pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "--quiet"], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The package installed from its wheel into a folder of its own (with the console script in bin/)."""
    root = tmp_path_factory.mktemp("installed")
    src = root / "src"  # a copy: the wheel's build writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "prm_rl", src / "prm_rl", ignore=shutil.ignore_patterns("__pycache__"))
    _pip("wheel", "--no-build-isolation", "-w", str(root / "wheel"), str(src), cwd=root)
    (wheel,) = (root / "wheel").glob("prm_rl-*.whl")
    _pip("install", "--target", str(root / "site"), str(wheel), cwd=root)
    return root / "site"


@pytest.mark.slow
def test_a_recipe_in_the_users_project_runs_from_the_installed_package(tmp_path, warm_cache, site):
    project = tmp_path / "project"
    (project / "my_recipes" / "recipe").mkdir(parents=True)
    (project / "my_recipes" / "recipe" / "my_task.yaml").write_text(USER_RECIPE)
    env = environment(PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import prm_rl; print(prm_rl.__file__)"], cwd=project, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed copy, not the checkout's editable one
    assert (site / "prm_rl" / "recipes" / "recipe" / "math_ppo.yaml").is_file()

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", str(_port()),
           str(site / "bin" / "prm-rl"), "train", "--config-dir", "my_recipes", "+recipe=my_task", *TINY,
           f"warm_start.cache_dir={warm_cache}", f"trainer.output_dir={run_dir}", "trainer.cpu_ranks=2"]
    proc = run_retrying_startup_abort(cmd, env, timeout=600, cwd=project)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[prm_rl] no GPU: starting 2 ranks" in proc.stdout
    assert [row["step"] for row in metrics(run_dir)] == [1, 2]  # the user's recipe's max_steps
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.trainer.max_steps == 2 and saved.policy.learning_rate == 1e-3  # the recipe, then the overrides
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert "--module prm_rl.cli.main train " in summary["command"] and "+recipe=my_task" in summary["command"]
