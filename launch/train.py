"""Entry point: ``deepspeed launch/train.py +recipe=math_ppo [key=value ...]`` (or plain ``python``).

Composes the Hydra config from recipes/, validates it, builds the PRIME trainer and runs it. No logic here.
"""
import os
import sys

# The deepspeed launcher appends --local_rank=N, which Hydra would reject as an override (it also sets
# LOCAL_RANK in the environment, which is what we read).
sys.argv = [a for a in sys.argv if not a.startswith("--local_rank")]
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank unless the user says otherwise

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from prm_rl.config import ConfigError, register_schema, to_config  # noqa: E402
from prm_rl.data.files import DataError  # noqa: E402
from prm_rl.engine import dist  # noqa: E402
from prm_rl.rewards import VerifierConfigError  # noqa: E402
from prm_rl.trainer.faults import RunStopped  # noqa: E402
from prm_rl.trainer.prime import PrimeTrainer  # noqa: E402

register_schema()


@hydra.main(config_path="../recipes", config_name="base", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        typed = to_config(cfg, world_size=int(os.environ.get("WORLD_SIZE", 1)))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    dist.init()
    recipe = HydraConfig.get().runtime.choices.get("recipe") or "base"
    try:
        PrimeTrainer(typed, cfg, name=recipe).fit()
    except DataError as err:  # raised while loading prompts, before any model is built
        if dist.is_main():
            print(f"data error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except VerifierConfigError as err:  # verifier.tasks options, checked before any model is built
        if dist.is_main():
            print(f"config error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        sys.exit(2)
    except RunStopped as stop:  # signal, NaN/inf guard, failed save: state on disk is consistent
        if dist.is_main():
            print(f"[prm_rl] {stop}", file=sys.stderr, flush=True)
        sys.exit(stop.exit_code)


if __name__ == "__main__":
    main()
