"""What the trainers' command (:mod:`prm_rl.cli.train`) does around a trainer: turn every way a start can fail into
one line and an exit code.

Exit codes and what each means: docs/checkpoints.md, "Exit codes" (2: :data:`EXIT_USAGE`, a start-up check
refused the run; 130: Ctrl-C while starting; the early stops of training come from :mod:`prm_rl.trainer.faults`).
Messages are printed by the first rank only, so a multi-rank start says each thing once.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from prm_rl.errors import EXIT_USAGE, ConfigError, UsageError

if TYPE_CHECKING:  # omegaconf loads in the entry point's guarded block, not before it
    from omegaconf import DictConfig

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
INTERRUPTED = "[prm_rl] interrupted (Ctrl-C); nothing saved since the last checkpoint"


def strip_launcher_args(argv: list[str]) -> list[str]:
    """The deepspeed launcher appends ``--local_rank=N``, which Hydra would reject (LOCAL_RANK is in the env)."""
    return [a for a in argv if not a.startswith("--local_rank")]


DEFAULT_RECIPES = {"prime": "math_ppo", "prm": "prm_math"}  # each trainer's built-in job (launch/train.py, train_prm.py)
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")  # Hydra's own flag for a config folder of the user's: here, their recipes


def with_user_recipes(args: list[str]) -> list[str]:
    """Hydra's ``--config-dir DIR`` (``-cd DIR``, ``--config-dir=DIR``) as the override ``hydra.searchpath``, which
    both the start-up check's compose and Hydra's own entry point read (the flag alone reaches only the latter).
    A missing or bad DIR: :class:`ConfigError` naming the flag."""
    out, folder, i = [], None, 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if flag in CONFIG_DIR_FLAGS:
            if not eq:
                if i + 1 == len(args):
                    raise ConfigError(f"{flag}: needs a folder (its recipe/NAME.yaml are your recipes)")
                value, i = args[i + 1], i + 1
            folder = Path(value)
        else:
            out.append(args[i])
        i += 1
    return out if folder is None else [search_path(folder), *out]  # first: Hydra's flags (--cfg job) may end argv


def search_path(folder: Path) -> str:
    """The override that adds the user's recipe folder (checked first) to Hydra's search path, after the built-in
    recipes (Hydra searches those first, so a user's recipe with a built-in one's name would be silently ignored:
    refused here)."""
    quoted = str(check_recipe_dir(folder)).replace("\\", "\\\\").replace("'", "\\'")  # in Hydra's quotes
    return f"hydra.searchpath=['file://{quoted}']"


def check_recipe_dir(folder: Path) -> Path:
    """The user's recipe folder, as an absolute path: it holds ``recipe/NAME.yaml``, none named as a built-in one."""
    from prm_rl.config import RECIPES

    if not folder.is_dir():
        raise ConfigError(f"--config-dir {folder}: no such directory")
    mine = sorted(p.name for p in (folder / "recipe").glob("*.yaml"))
    if not mine:
        raise ConfigError(f"--config-dir {folder}: no recipe/*.yaml in it (a recipe NAME is DIR/recipe/NAME.yaml)")
    clashes = [name for name in mine if (RECIPES / "recipe" / name).exists()]
    if clashes:
        raise ConfigError(f"--config-dir {folder}: recipe/{clashes[0]} has a built-in recipe's name, which Hydra "
                          "would use instead; rename it (it may extend the built-in one: defaults: [NAME])")
    return folder.resolve()


def with_default_recipe(overrides: list[str], trainer: str = "prime") -> list[str]:
    """No ``+recipe=`` given: the trainer's built-in job. base.yaml alone holds the paper's 7B values (learning
    rates, batch), which are no job for the built-in ~1M-parameter model."""
    if any(a.lstrip("+").startswith("recipe=") or a.startswith("-") for a in overrides):
        return overrides
    recipe = DEFAULT_RECIPES[trainer]
    if first_rank():
        print(f"[prm_rl] no recipe given: using +recipe={recipe} (the built-in job)", flush=True)
    return [f"+recipe={recipe}", *overrides]


def first_rank() -> bool:
    """Rank 0, known from the launcher's environment before the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def fail(line: str, code: int) -> None:
    if first_rank():
        print(line, file=sys.stderr, flush=True)
    sys.exit(code)


def check_overrides(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig | None:
    """Compose once with the command line's overrides, so that a typo, an unknown key or recipe, or a value of
    the wrong type is one line and exit 2 (Hydra's own handler prints several lines and exits 1). Returns the
    composed config.

    Skipped (None) when Hydra's own flags are given (``--cfg``, ``-m``, ...): Hydra then reports as it does.
    """
    if any(a.startswith("-") for a in overrides):
        return None
    from hydra import compose, initialize_config_dir

    from prm_rl.config import register_schema

    register_schema()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return compose(config_name=config_name, overrides=overrides)
    except Exception as err:  # noqa: BLE001 - Hydra raises several unrelated classes for bad overrides
        fail(f"config error: {hydra_error_line(err)}", EXIT_USAGE)


def check_engine_installed(cfg: DictConfig | None) -> None:
    """``rollout.engine=vllm`` without vLLM installed: one line naming the extra, exit 2, before any rank starts or
    model loads. (Not a rule of the config itself: a config names the engine validly wherever it is composed.)"""
    if cfg is None or cfg.rollout.engine != "vllm":
        return
    from prm_rl.rollout.vllm_engine import check_installed

    try:
        check_installed()
    except ImportError as err:
        fail(f"config error: {err}", EXIT_USAGE)


def compose(overrides: list[str], world_size: int = 1, offline_prm: bool = False, config_dir: Path | None = None):
    """The typed config the trainers' command would run from ``overrides`` (prm_rl/recipes/, and the user's recipe
    folder ``config_dir``; no recipe given: the built-in job), for tools that run outside Hydra's entry point. A bad
    override or value: one line, exit 2; a bad ``config_dir``: :class:`ConfigError`."""
    from prm_rl.config import RECIPES, to_config

    if config_dir is not None:
        overrides = [*overrides, search_path(config_dir)]
    composed = check_overrides(RECIPES, "base", with_default_recipe(overrides, "prm" if offline_prm else "prime"))
    return to_config(composed, world_size=world_size, offline_prm=offline_prm)


def start_cpu_ranks(cfg: DictConfig | None, argv: list[str], offline_prm: bool = False) -> None:
    """On a machine without a GPU, launched as one process: run ``argv`` as ``trainer.cpu_ranks`` ranks
    (:mod:`prm_rl.engine.cpu_ranks`) and exit with their status. Returns when one rank is to run here."""
    import torch

    from prm_rl.config import to_config
    from prm_rl.engine import cpu_ranks
    from prm_rl.errors import UsageError

    if cfg is None or not cpu_ranks.should_spawn(dict(os.environ), gpu=torch.cuda.is_available()):
        return

    def accepts(world_size: int) -> bool:
        try:
            to_config(cfg, world_size=world_size, offline_prm=offline_prm)
        except UsageError:
            return False
        return True

    ranks = cpu_ranks.ranks_to_start(int(cfg.trainer.cpu_ranks), cpu_ranks.available_cores(), accepts)
    if ranks == 1:
        return
    how = "one per core" if cfg.trainer.cpu_ranks == 0 else "trainer.cpu_ranks"
    print(f"[prm_rl] no GPU: starting {ranks} ranks of one thread ({how}; trainer.cpu_ranks=1 runs one)",
          flush=True)
    code = cpu_ranks.run_ranks(argv, ranks)
    if code == EXIT_INTERRUPTED:  # the ranks stopped by Ctrl-C while starting said nothing (one_line_on_ctrl_c)
        print(INTERRUPTED, file=sys.stderr, flush=True)
    sys.exit(code)


def hydra_error_line(err: BaseException) -> str:
    """Hydra's multi-line message (and its cause's first line) as one line, without links and search paths."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if err.__cause__ is not None and str(err.__cause__).strip():
        lines.insert(1, str(err.__cause__).strip().splitlines()[0])
    parts: list[str] = []
    options: list[str] = []
    for line in lines:
        if line.startswith(("See https://", "full_key:", "object_type=", "reference_type=")):
            continue
        if line.startswith(("Config search path", "provider=")):
            break
        if parts and parts[-1].startswith("Available options"):
            options.append(line)
            continue
        parts.append(line)
    if options:
        parts[-1] = f"{parts[-1]} {', '.join(options)}"
    return "; ".join(p.rstrip(".") for p in parts)


def train(cfg: DictConfig, recipe: str, trainer: str = "prime") -> None:
    """Validate ``cfg``, build the trainer (``prime``: launch/train.py; ``prm``: launch/train_prm.py), run it;
    every known failure ends as one line and its exit code."""
    from prm_rl.config import to_config
    from prm_rl.engine import dist
    from prm_rl.trainer.faults import RunStopped

    try:
        typed = to_config(cfg, world_size=int(os.environ.get("WORLD_SIZE", 1)), offline_prm=trainer == "prm")
        dist.init()
        if trainer == "prm":
            from prm_rl.trainer.prm_trainer import PrmTrainer as Trainer
        else:
            from prm_rl.trainer.prime import PrimeTrainer as Trainer
        Trainer(typed, cfg, name=recipe).fit()
    except UsageError as err:
        fail(err.one_line(), EXIT_USAGE)
    except RunStopped as stop:  # signal, NaN/inf guard, failed save: state on disk is consistent
        fail(f"[prm_rl] {stop}", stop.exit_code)


@contextmanager
def one_line_on_ctrl_c():
    """Around an entry point: Ctrl-C before training turns it into a graceful stop (imports, config checks, the
    warm start, loading models) ends as one line and exit 130. A CPU rank started by this process exits quietly:
    its launcher says it once (:func:`start_cpu_ranks`), whichever rank saw it first."""
    from prm_rl.engine.cpu_ranks import SPAWNED

    try:
        yield
    except KeyboardInterrupt:
        if os.environ.get(SPAWNED):
            sys.exit(EXIT_INTERRUPTED)
        fail(INTERRUPTED, EXIT_INTERRUPTED)
