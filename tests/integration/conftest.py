import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def warm_cache(tmp_path_factory):
    """One warm-start cache for the session: the tiny SFT runs once, in the first run that needs it.
    ``PRM_RL_TEST_WARM_CACHE=DIR`` reuses a cache across sessions (local iteration)."""
    reuse = os.environ.get("PRM_RL_TEST_WARM_CACHE")
    return Path(reuse) if reuse else tmp_path_factory.mktemp("warm")
