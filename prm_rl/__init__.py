"""prm_rl: RL fine-tuning of language models with dense implicit process rewards (PRIME) on DeepSpeed."""

CONSOLE_COMMAND = "prm-rl"  # the command the package installs (pyproject.toml's [project.scripts])
