"""Entry point of offline implicit PRM training: ``deepspeed launch/train_prm.py +recipe=prm_math [key=value ...]``.

Same config tree, checks, exit codes and run directory as ``launch/train.py``; what it trains and writes:
:mod:`prm_rl.trainer.prm_trainer` and docs/prm_training.md.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank unless the user says otherwise

from prm_rl import cli  # noqa: E402

with cli.one_line_on_ctrl_c():  # Ctrl-C while this rank imports or checks: one line, no traceback
    RECIPES = Path(__file__).resolve().parent.parent / "recipes"
    sys.argv = cli.strip_launcher_args(sys.argv)
    sys.argv[1:] = cli.with_default_recipe(sys.argv[1:], recipe="prm_math")
    composed = cli.check_overrides(RECIPES, "base", sys.argv[1:])
    cli.start_cpu_ranks(composed, sys.argv, offline_prm=True)  # no GPU: one rank per core (trainer.cpu_ranks)

    import hydra  # noqa: E402
    from hydra.core.hydra_config import HydraConfig  # noqa: E402
    from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="../recipes", config_name="base", version_base=None)
def main(cfg: DictConfig) -> None:
    cli.train(cfg, recipe=HydraConfig.get().runtime.choices.get("recipe") or "base", trainer="prm")


if __name__ == "__main__":
    with cli.one_line_on_ctrl_c():
        main()
