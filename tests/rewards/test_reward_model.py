"""A learned reward model as an outcome scorer: a real tiny Llama sequence-classification checkpoint, built here with
the project's char tokenizer and saved to a temporary directory (no hub), scored through the Scorer in batches."""
from __future__ import annotations

import pytest
import torch

from prm_rl.data import arithmetic
from prm_rl.data.sample import Sample
from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, tiny_config
from prm_rl.rewards import VerifierConfigError, build_scorer
from prm_rl.rewards.scorer import real_valued_tasks

TOK = build_char_tokenizer(arithmetic.CHARACTERS)
SHAPE = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=96)
TEMPLATE = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
PAIRS = [("1+2=", "3"), ("12*3=", "36\n"), ("7-9=", "-2"), ("2+2=", "5"), ("40/8=", "5\n5"), ("3*3=", "9")]


def save_reward_model(path, num_labels: int = 1, seed: int = 0) -> None:
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_config(SHAPE, TOK)
    config.num_labels = num_labels
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok = build_char_tokenizer(arithmetic.CHARACTERS)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("rm")
    save_reward_model(path)
    return path


def direct(rm_dir, text: str) -> float:
    """The checkpoint's logit on one text, unpadded: what each batched score must equal."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([TOK(text)["input_ids"]])).logits[0, 0])


def rm_samples(task: str = "rm") -> list[Sample]:
    return [Sample(prompt, task) for prompt, _ in PAIRS]


def test_scores_are_the_models_logit_on_prompt_and_response_in_padded_batches(rm_dir):
    """Batches of 4 and 2 texts of different lengths (padded on the right): each score is the unpadded text's logit,
    any real (not clipped to [0, 1])."""
    with build_scorer({"rm": {"verifier": "reward_model", "path": str(rm_dir), "batch_size": 4}}) as scorer:
        result = scorer.score(rm_samples(), [r for _, r in PAIRS])
    expected = [direct(rm_dir, p + r) for p, r in PAIRS]
    assert result.scores == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert result.failures == [None] * len(PAIRS)
    assert len(set(result.scores)) == len(PAIRS)  # the texts, not their padding, decide the score


def test_a_batch_mixing_verifier_and_reward_model_tasks_keeps_each_rows_scorer_and_order(rm_dir):
    """Under the task name ``reward_model`` itself no ``verifier:`` key is needed."""
    arith = Sample("2+5=", "arithmetic", {"answer": 7})
    samples = [arith, Sample("1+2=", "reward_model"), arith, Sample("3*3=", "reward_model")]
    responses = ["\\boxed{7}", "3", "\\boxed{8}", "9"]
    with build_scorer({"reward_model": {"path": str(rm_dir)}}) as scorer:
        scores = scorer.score(samples, responses).scores
    assert scores[0] == 1.0 and scores[2] == 0.0
    assert scores[1] == pytest.approx(direct(rm_dir, "1+2=3"), abs=1e-6)
    assert scores[3] == pytest.approx(direct(rm_dir, "3*3=9"), abs=1e-6)


def test_long_texts_keep_their_end_and_the_chat_template_is_applied(rm_dir):
    opts = {"verifier": "reward_model", "path": str(rm_dir), "max_length": 4}
    with build_scorer({"rm": opts}) as scorer:
        short = scorer.score([Sample("12*3=", "rm")], ["36\n"]).scores[0]
    assert short == pytest.approx(direct(rm_dir, "=36\n"), abs=1e-6)  # the last 4 tokens of "12*3=36\n"
    with build_scorer({"rm": {"verifier": "reward_model", "path": str(rm_dir), "chat_template": True}}) as scorer:
        templated = scorer.score([Sample("1+2=", "rm")], ["3"]).scores[0]
    assert templated == pytest.approx(direct(rm_dir, "[user]1+2=[assistant]3"), abs=1e-6)


def test_a_model_with_more_than_one_output_is_refused_when_it_loads(tmp_path):
    save_reward_model(tmp_path, num_labels=2)
    with build_scorer({"rm": {"verifier": "reward_model", "path": str(tmp_path)}}) as scorer:
        with pytest.raises(ValueError, match="has 2 outputs; a reward model has one"):
            scorer.score([Sample("1+2=", "rm")], ["3"])


@pytest.mark.parametrize("options, message", [
    ({"verifier": "reward_model"}, r"verifiers\.rm\.path: required"),
    ({"verifier": "reward_model", "path": "/no/such/rm"}, r"verifiers\.rm\.path='/no/such/rm': no such directory"),
    ({"verifier": "reward_model", "path": "RM_DIR", "batch_size": 0}, r"verifiers\.rm\.batch_size=0"),
    ({"verifier": "reward_model", "path": "RM_DIR", "max_length": -1}, r"verifiers\.rm\.max_length=-1"),
    ({"verifier": "reward_model", "path": "RM_DIR", "chat_template": "yes"}, r"verifiers\.rm\.chat_template"),
    ({"verifier": "reward_model", "path": "RM_DIR", "dtype": "bf16"}, r"verifiers\.rm\.dtype: unknown option"),
    ({"verifier": "reward_models"}, r"must be one of arithmetic, math, code, reward_model"),
])
def test_reward_model_options_are_checked_when_the_scorer_is_built(rm_dir, options, message):
    options = {k: str(rm_dir) if v == "RM_DIR" else v for k, v in options.items()}
    with pytest.raises(VerifierConfigError, match=message):
        build_scorer({"rm": options})


def test_real_valued_tasks_are_the_reward_model_ones():
    verifiers = {"rm": {"verifier": "reward_model", "path": "x"}, "reward_model": {"path": "y"},
                 "code": {"timeout_s": 2}, "mine": {"_target_": "pkg.fn"}}
    assert real_valued_tasks(verifiers) == ["rm", "reward_model"]
    assert real_valued_tasks(None) == [] and real_valued_tasks({}) == []



def test_held_out_evaluation_labels_a_reward_models_scores_by_the_runs_rule(rm_dir):
    """The held-out accuracy and the PRM evaluation's groups read a reward model's logits through
    reward.outcome_labels, as training does (not the mean logit as an accuracy, nor logits as the PRM's targets)."""
    from prm_rl.config import PrmEvalSection, RewardSection
    from prm_rl.data.sample import encode_prompts
    from prm_rl.evaluation import prm_quality
    from prm_rl.evaluation.accuracy import heldout_accuracy
    from prm_rl.models.tiny import build_tiny_model
    from prm_rl.rollout.generate import generate, left_pad
    from prm_rl.trainer.stages import decode_responses

    policy = build_tiny_model(SHAPE, TOK, seed=1).eval()
    prompts = rm_samples()
    settings = PrmEvalSection(num_prompts=len(prompts), samples_per_prompt=4)
    greedy = generate(policy, *left_pad(encode_prompts(TOK, [s.prompt for s in prompts]), TOK.pad_token_id),
                      max_new_tokens=6, eos_id=TOK.eos_token_id, pad_id=TOK.pad_token_id, do_sample=False)
    with build_scorer({"rm": {"verifier": "reward_model", "path": str(rm_dir), "batch_size": 4}}) as scorer:
        greedy_scores = torch.tensor(scorer.score(prompts, decode_responses(TOK, greedy, range(len(prompts)))).scores)
        accuracy = {rule: heldout_accuracy(policy, TOK, prompts, scorer, batch_size=4, max_new_tokens=6,
                                           synced_gpus=False,
                                           reward=RewardSection(outcome_labels=rule, label_threshold=0.1))
                    for rule in ("score", "threshold", "sigmoid")}
        groups = prm_quality.sample_heldout(policy, TOK, prompts, scorer, settings, max_new_tokens=6,
                                            reward=RewardSection(outcome_labels="threshold", label_threshold=0.1))
    assert greedy_scores.min() < 0 or greedy_scores.max() > 1  # logits, not labels
    assert accuracy["score"] == pytest.approx(float(greedy_scores.double().mean()))  # RLOO on the logits: no labels
    assert accuracy["threshold"] == pytest.approx(float((greedy_scores > 0.1).double().mean()))
    assert accuracy["sigmoid"] == pytest.approx(float(torch.sigmoid(greedy_scores - 0.1).double().mean()), rel=1e-6)
    assert torch.equal(groups.labels, (groups.scores > 0.1).float())
