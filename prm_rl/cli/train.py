"""The trainers' command. ``deepspeed launch/train.py +recipe=math_ppo [key=value ...]`` trains a policy (PRIME,
or RLOO/GRPO by ``algorithm.advantage``); ``deepspeed launch/train_prm.py +recipe=prm_math`` trains an implicit
PRM offline (docs/prm_training.md). Plain ``python`` instead of ``deepspeed`` works too (on a CPU box it starts
``trainer.cpu_ranks`` ranks itself).

Composes the Hydra config from the package's recipes (prm_rl/recipes/; ``--config-dir DIR`` adds the user's own,
DIR/recipe/NAME.yaml, which may extend built-in ones: docs/recipes.md) and hands it to
:func:`prm_rl.cli.startup.train`, which validates it, runs the trainer and turns every known failure into one line
and an exit code (docs/checkpoints.md, "Exit codes").
"""
import glob
import os
import sys


def gpu_machine(env: dict[str, str], device_files: list[str]) -> bool:
    """An NVIDIA device (``/dev/nvidiaN``) is there and CUDA_VISIBLE_DEVICES does not hide them all: told without
    importing torch, since OpenMP reads OMP_NUM_THREADS once, when torch starts."""
    return env.get("CUDA_VISIBLE_DEVICES") not in ("", "-1") and bool(device_files)


if not gpu_machine(dict(os.environ), glob.glob("/dev/nvidia[0-9]*")):
    # CPU ranks share the cores: one thread each unless the user says otherwise. On a GPU machine the threads are
    # left alone: DeepSpeed's CPU Adam (optimiser offload) runs on them.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from prm_rl.cli import startup  # noqa: E402
from prm_rl.config import RECIPES, register_schema  # noqa: E402
from prm_rl.errors import EXIT_USAGE, UsageError  # noqa: E402



def main(trainer: str = "prime", command: list[str] | None = None) -> None:
    """Run ``trainer`` (``prime``: launch/train.py; ``prm``: launch/train_prm.py) on ``sys.argv``'s overrides.
    ``command``: what ``python`` runs to start this command again (the CPU ranks); default ``sys.argv[0]``."""
    offline_prm = trainer == "prm"
    with startup.one_line_on_ctrl_c():  # Ctrl-C while this rank imports or checks: one line, no traceback
        sys.argv = startup.strip_launcher_args(sys.argv)
        try:
            sys.argv[1:] = startup.with_user_recipes(sys.argv[1:])  # --config-dir DIR: the user's recipes
        except UsageError as err:
            startup.fail(err.one_line(), EXIT_USAGE)
        sys.argv[1:] = startup.with_default_recipe(sys.argv[1:], trainer)
        composed = startup.check_overrides(RECIPES, "base", sys.argv[1:])  # a bad override: one line, exit 2
        startup.check_engine_installed(composed)
        relaunch = [*(command or sys.argv[:1]), *sys.argv[1:]]
        startup.start_cpu_ranks(composed, relaunch, offline_prm=offline_prm)  # no GPU: one rank per core
        register_schema()  # also for Hydra's own flags (--cfg job, ...), which skip the check above

        import hydra
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import DictConfig

    @hydra.main(config_path=str(RECIPES), config_name="base", version_base=None)
    def run(cfg: DictConfig) -> None:
        startup.train(cfg, recipe=HydraConfig.get().runtime.choices.get("recipe") or "base", trainer=trainer)

    with startup.one_line_on_ctrl_c():
        run()


if __name__ == "__main__":
    main()
