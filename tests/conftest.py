"""The suite's environment is its own, whatever the caller's shell holds.

Set before any test module imports transformers, huggingface_hub or wandb (they read these once): no W&B
settings of the caller's (``WANDB_MODE``, ``WANDB_DIR``, ``WANDB_API_KEY``, ...) and W&B data and cache folders of
the suite's own, the Hugging Face Hub offline and an empty Hugging Face home of the suite's own (nothing in the
suite downloads; a test of the online path says so itself), one thread per process. Subprocesses inherit all of it.
"""
from __future__ import annotations

import os
import tempfile


def pytest_configure(config) -> None:
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        del os.environ[key]
    os.environ |= {"WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                   # W&B's staged table artifacts and its cache: the suite's own, not the caller's home
                   "WANDB_DATA_DIR": tempfile.mkdtemp(prefix="prm_rl_tests_wandb_data_"),
                   "WANDB_CACHE_DIR": tempfile.mkdtemp(prefix="prm_rl_tests_wandb_cache_"),
                   "HF_HOME": tempfile.mkdtemp(prefix="prm_rl_tests_hf_"),
                   # vLLM (rollout.engine=vllm tests): its own cache folder, no usage report, warnings only
                   "VLLM_CACHE_ROOT": tempfile.mkdtemp(prefix="prm_rl_tests_vllm_"), "VLLM_NO_USAGE_STATS": "1",
                   "VLLM_LOGGING_LEVEL": "WARNING"}
