"""The committed SFT model the integration tests start from (conftest.warm_cache) is the tiny job's own."""
from __future__ import annotations

import json

from tiny_runs import TINY, WARM_FIXTURE

from prm_rl.cli.startup import compose
from prm_rl.models.loading import warm_start_spec
from prm_rl.models.warm_start import cache_path


def test_the_committed_tiny_sft_is_the_one_the_tiny_job_would_train():
    """When TINY or the warm start's procedure changes, this fails: retrain the fixture (run one tiny job with an
    empty warm_start.cache_dir and copy its folder into tests/fixtures/warm_start/)."""
    spec = warm_start_spec(compose(TINY))
    folder = WARM_FIXTURE / cache_path("/", spec).name
    assert [p.name for p in WARM_FIXTURE.iterdir()] == [folder.name]
    assert json.loads((folder / "warm_start.json").read_text()) == spec
