import pytest


@pytest.fixture(scope="session")
def warm_cache(tmp_path_factory):
    """One warm-start cache for the session: the tiny SFT runs once, in the first run that needs it."""
    return tmp_path_factory.mktemp("warm")
