"""An implicit PRM's scores of given responses (the command: ``python -m prm_rl.cli.prm_score``).

A row is ``{"prompt": "...", "response": "...", ...}``: the prompt is the exact text the model saw (chat template
already applied, as the trainer renders it) and the response is scored as generated, ending with the EOS token.
A scored row is the input row plus

- ``score``: the response score, its step rewards aggregated by ``aggregate`` (``min``, the Implicit PRM
  paper's; ``mean``; ``sum`` = q_K, the whole response's implicit reward);
- ``step_rewards``: q_k - q_{k-1} per step, a step closed by a token containing ``delimiter``;
- ``token_rewards`` (with ``tokens``): beta * log(pi_prm / pi_ref) of each response token, EOS last.

The math is :func:`prm_rl.core.step_rewards` and :func:`prm_rl.core.response_score`, as in training.
"""
from __future__ import annotations

from prm_rl import core
from prm_rl.data.sample import text_rollout
from prm_rl.trainer import stages


def score_rows(rows: list[dict], prm, ref, tokenizer, *, beta: float, delimiter: str, aggregate: str,
               batch_size: int, tokens: bool) -> list[dict]:
    """The input rows with ``score``, ``step_rewards`` (and ``token_rewards``) added (module docstring)."""
    step_end_table = stages.step_end_table(tokenizer, delimiter)
    out = []
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        batch = text_rollout(tokenizer, [r["prompt"] for r in part], [r["response"] for r in part])
        response_mask = batch.response_mask
        log_ratio = core.implicit_log_ratio(stages.logprob_stage(prm, batch, batch_size),
                                            stages.logprob_stage(ref, batch, batch_size), response_mask)
        rewards, valid, _ = core.step_rewards(log_ratio, response_mask, stages.step_end_mask(step_end_table, batch),
                                              beta)
        scores = core.response_score(rewards, valid, aggregate)
        for i, row in enumerate(part):
            scored = {**row, "score": float(scores[i]), "step_rewards": rewards[i][valid[i]].tolist()}
            if tokens:
                scored["token_rewards"] = (beta * log_ratio[i][response_mask[i].bool()]).tolist()
            out.append(scored)
    return out
