"""The prompts a job trains and evaluates on: the user's files (``data.*``) or the built-in task (``task.*``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from prm_rl.data.files import DataError, file_splits
from prm_rl.data.prompts import PromptSplits, builtin_splits

if TYPE_CHECKING:
    from prm_rl.config import DataSection, TaskSection


def load_prompt_splits(data: DataSection, task: TaskSection, tokenizer, scorer,
                       log: Callable[[str], None]) -> PromptSplits:
    """Training and held-out prompts; a file's rows are checked against ``scorer``'s tasks and fields, and what
    was dropped is said through ``log``."""
    if data.train is None:
        return builtin_splits(task.selected, train_size=task.train_size, eval_size=task.eval_size, seed=task.seed)
    splits, counts = file_splits(data, tokenizer, scorer.check_fields)
    try:
        scorer.check_tasks({s.task for s in splits.train + splits.eval})
    except ValueError as err:
        raise DataError(f"{data.train}: {err}") from None
    limit = f"longer than data.max_prompt_tokens={data.max_prompt_tokens}"
    log(f"data: {len(splits.train)} training prompts from {data.train} ({counts['train_rows']} rows, "
        f"{counts['train_dropped_too_long']} dropped: {limit})")
    if data.eval is not None:
        log(f"data: {len(splits.eval)} held-out prompts from {data.eval} ({counts['eval_rows']} rows, "
            f"{counts['eval_dropped_too_long']} dropped: {limit})")
    for name in ("train", "eval"):
        if counts[f"{name}_with_unknown_tokens"]:
            log(f"warning: {counts[f'{name}_with_unknown_tokens']} prompts of data.{name} hold characters the "
                "tokenizer cannot encode (kept, with its unknown token in their place)")
    return splits
