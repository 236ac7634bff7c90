import os
import shutil
from pathlib import Path

import pytest

from tiny_runs import WARM_FIXTURE


@pytest.fixture(scope="session")
def warm_cache(tmp_path_factory):
    """One warm-start cache for the session, holding the committed tiny SFT model.
    ``PRM_RL_TEST_WARM_CACHE=DIR`` uses a cache of your own instead (local iteration)."""
    reuse = os.environ.get("PRM_RL_TEST_WARM_CACHE")
    if reuse:
        return Path(reuse)
    cache = tmp_path_factory.mktemp("warm")
    for model in WARM_FIXTURE.iterdir():
        shutil.copytree(model, cache / model.name)
    return cache
