"""Token-reward heatmaps: what the HTML says and that a PNG is drawn."""
import pytest
import torch

from prm_rl.tracking.heatmap import TokenHeatmap, of_response, to_html, to_png

HEAT = TokenHeatmap(title="3+4*2=? <wrong>", tokens=["3", "+", "4", "=", "7", "\n", "7", "*", "2", "=", "1", "5"],
                    rewards=[0.0, 0.1, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, -0.5, 0.1],
                    step_ends=[5, 11], step_rewards=[0.3, -0.4], first_wrong=2)


def test_a_responses_heatmap_sums_each_steps_token_rewards_up_to_its_end():
    """The HEAT above from its token rewards and newline flags: steps end at the newline and at the last token."""
    ends = torch.tensor([t == "\n" for t in HEAT.tokens])
    built = of_response(HEAT.title, HEAT.tokens, torch.tensor(HEAT.rewards, dtype=torch.float64), ends, first_wrong=2)
    assert built.step_ends == HEAT.step_ends and built.first_wrong == 2 and built.rewards == HEAT.rewards
    assert built.step_rewards == pytest.approx(HEAT.step_rewards)


def test_html_has_every_step_its_reward_and_the_first_error_boxed():
    page = to_html(HEAT)
    assert "step 1: +0.3000" in page and "step 2: -0.4000 (first wrong step)" in page
    assert page.count("border:2px solid #c00") == 1
    assert "&lt;wrong&gt;" in page  # text is escaped
    assert "\u21b5" in page  # the newline token is visible
    # the most negative token is the reddest: full scale gives rgb(255,63,63)
    assert 'title="-0.5000" style="background:rgb(255,63,63)"' in page


def test_png_is_written(tmp_path):
    path = to_png([HEAT, HEAT], tmp_path / "sub" / "heat.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
