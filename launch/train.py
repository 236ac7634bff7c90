"""Entry point: ``deepspeed launch/train.py +recipe=math_ppo [key=value ...]`` (or plain ``python``).

Composes the Hydra config from recipes/ and hands it to :func:`prm_rl.cli.train`, which validates it, runs
the PRIME trainer and turns every known failure into one line and an exit code (docs/checkpoints.md, "Exit codes").
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank unless the user says otherwise

from prm_rl import cli  # noqa: E402

with cli.one_line_on_ctrl_c():  # Ctrl-C while this rank imports or checks: one line, no traceback
    RECIPES = Path(__file__).resolve().parent.parent / "recipes"
    sys.argv = cli.strip_launcher_args(sys.argv)
    sys.argv[1:] = cli.with_default_recipe(sys.argv[1:])
    composed = cli.check_overrides(RECIPES, "base", sys.argv[1:])  # a bad override: one line, exit 2, not Hydra's 1
    cli.start_cpu_ranks(composed, sys.argv)  # no GPU: one rank per core (trainer.cpu_ranks)

    import hydra  # noqa: E402
    from hydra.core.hydra_config import HydraConfig  # noqa: E402
    from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="../recipes", config_name="base", version_base=None)
def main(cfg: DictConfig) -> None:
    cli.train(cfg, recipe=HydraConfig.get().runtime.choices.get("recipe") or "base")


if __name__ == "__main__":
    with cli.one_line_on_ctrl_c():
        main()
