"""RL prompts from users' files: JSONL, Parquet, or a Hugging Face ``datasets`` directory (``save_to_disk``).

Every row is read, mapped to a prompt, a task and verifier fields (:mod:`prm_rl.data.mappings`), checked
against the built-in verifier its task names, and rendered into the exact prompt text before anything is
returned: a malformed row stops loading with one :class:`DataError` line naming the file, the row and the
field, so a bad dataset fails at start-up instead of scoring 0 for hours. Rows keep file order (the
:class:`~prm_rl.data.prompts.PromptStream` shuffles). Prompts longer than ``max_prompt_tokens`` are dropped
and counted, never truncated: a cut problem statement is a different, often unsolvable, problem.

Row numbers in messages: JSONL ``row N`` is the 1-based line number (blank lines are skipped but counted);
Parquet and ``datasets`` ``row index N`` is the 0-based index (``dataset[N]``). See docs/datasets.md.
"""
from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from prm_rl import json_text
from prm_rl.data import mappings
from prm_rl.data.mappings import Mapped, RowError
from prm_rl.data.prompts import PromptSplits
from prm_rl.data.sample import Sample, encode_prompts
from prm_rl.errors import UsageError

if TYPE_CHECKING:
    from prm_rl.config import DataSection

__all__ = ["DataError", "LoadedPrompts", "load_prompts", "file_splits", "file_rows", "FORMATS"]

FORMATS = ("auto", "jsonl", "parquet", "hf_disk", "hub")
_BY_EXTENSION = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # NAME or ORG/NAME, as the Hub spells them
_BATCH = 1024  # rows per Parquet read, prompts per tokenizer call (a fast tokenizer batches in Rust)
# A few prompts with a character the tokenizer lacks are warned about; more than this share of them means the
# tokenizer does not fit the data (e.g. the built-in character tokenizer on word problems): refused.
_MAX_UNKNOWN_SHARE = 0.1
_VERIFIER_FIELD = {"arithmetic": "answer", "math": "answer", "code": "tests"}  # what each built-in reads


CheckFields = Callable[[str, dict], None]  # (task, fields) -> None, or ValueError naming what is wrong


def is_hub_id(path: str) -> bool:
    """``path`` names no local file or directory and reads as a Hub dataset id (``openai/gsm8k``): no file
    extension the local readers know."""
    return (not os.path.exists(os.path.expanduser(path)) and _HUB_ID.fullmatch(path) is not None
            and os.path.splitext(path)[1].lower() not in _BY_EXTENSION)


class DataError(UsageError):
    """A dataset file cannot be used; the one-line message names the file, and the row and field if any."""

    label = "data error"


@dataclass
class LoadedPrompts:
    samples: list[Sample]
    rows: int  # rows read (at most max_rows)
    dropped_too_long: int  # prompts over max_prompt_tokens, dropped (not truncated)
    with_unknown_tokens: int  # prompts holding the tokenizer's unk token (kept; refused above _MAX_UNKNOWN_SHARE)


def load_prompts(path: str, *, format: str = "auto", split: str = "train", mapping: str = "prime",
                 fields: dict[str, str] | None = None, task: str | None = None, instruction: str = "",
                 tokenizer=None, chat_template: bool = True, max_prompt_tokens: int | None = None,
                 max_rows: int | None = None, check_fields: CheckFields | None = None,
                 config: str | None = None) -> LoadedPrompts:
    """Read ``path`` into Samples (module docstring); the options mirror ``data.*`` in prm_rl/recipes/base.yaml.

    ``check_fields(task, fields)`` raises ValueError when a verifier cannot use a row's fields (the trainer
    passes its scorer's ``check_fields``; None: no verifier check), so data/ never imports the verifiers.
    """
    read_row = mappings.mapper(mapping, fields)
    if mapping == "fields" and not task and "task" not in (fields or {}):
        raise ValueError("data.fields: give data.fields.task=KEY (each row's task) or data.task=NAME (every row's)")
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("max_prompt_tokens needs a tokenizer to count prompt tokens")
    template = tokenizer if chat_template and getattr(tokenizer, "chat_template", None) else None
    samples, rows = [], []
    for where, row in itertools.islice(file_rows(path, format, split, config), max_rows):
        try:
            samples.append(_sample(read_row(row), task, instruction, template, check_fields))
        except RowError as e:
            raise DataError(f"{where}: {e}") from None
        rows.append(where)
    if not samples:
        raise DataError(f"{path}: no rows")
    if tokenizer is None:
        return LoadedPrompts(samples, rows=len(samples), dropped_too_long=0, with_unknown_tokens=0)
    lengths, unknown = _token_counts(samples, tokenizer)
    with_unknown = [i for i, n in enumerate(unknown) if n]
    if len(with_unknown) > _MAX_UNKNOWN_SHARE * len(samples):
        i = with_unknown[0]
        raise DataError(f"{path}: {len(with_unknown)} of {len(samples)} prompts hold characters the tokenizer "
                        f"cannot encode ({tokenizer.unk_token}), e.g. {rows[i].rsplit(': ', 1)[-1]} "
                        f"({unknown[i]} of {lengths[i]} tokens); use the tokenizer these prompts are written for "
                        "(model.path or model.tokenizer_path)")
    kept = samples
    if max_prompt_tokens is not None:
        kept = [s for s, n in zip(samples, lengths) if n <= max_prompt_tokens]
        if not kept:
            raise DataError(f"{path}: all {len(samples)} prompts are longer than max_prompt_tokens="
                            f"{max_prompt_tokens} (the shortest has {min(lengths)} tokens)")
    return LoadedPrompts(kept, rows=len(samples), dropped_too_long=len(samples) - len(kept),
                         with_unknown_tokens=len(with_unknown))


def file_splits(data: DataSection, tokenizer,
                check_fields: CheckFields | None = None) -> tuple[PromptSplits, dict[str, int]]:
    """Train and eval prompts for a :class:`prm_rl.config.DataSection` with ``data.train`` set, and the
    counts the trainer logs (``train_rows``, ``train_dropped_too_long``, ``eval_rows``, ...)."""
    splits = {"train": data.split, "eval": data.eval_split or data.split}
    if data.eval is not None and _same_file(data.train, data.eval) and splits["train"] == splits["eval"]:
        raise DataError(f"data.eval={data.eval}: the same rows as data.train (split {data.split} of both); "
                        "point data.eval at held-out prompts (or another split: data.eval_split)")
    loaded, counts = {}, {}
    for name in ("train", "eval"):
        path = getattr(data, name)
        result = LoadedPrompts([], 0, 0, 0) if path is None else load_prompts(
            path, format=data.format, split=splits[name], mapping=data.mapping, fields=dict(data.fields),
            task=data.task, instruction=data.instruction, tokenizer=tokenizer, chat_template=data.chat_template,
            max_prompt_tokens=data.max_prompt_tokens, max_rows=data.max_rows, check_fields=check_fields,
            config=data.config)
        loaded[name] = result.samples
        counts[f"{name}_rows"] = result.rows
        counts[f"{name}_dropped_too_long"] = result.dropped_too_long
        counts[f"{name}_with_unknown_tokens"] = result.with_unknown_tokens
    return PromptSplits(train=loaded["train"], eval=loaded["eval"]), counts


# ------------------------------------------------------------------------------------------------ rows
def file_rows(path: str, format: str, split: str, config: str | None = None) -> Iterator[tuple[str, dict]]:
    """(where, row) pairs in file order; ``where`` is the message prefix naming the file and the row.
    ``config``: a Hub dataset's config name (``data.config``)."""
    chosen = _resolve_format(path, format)
    if chosen == "hub":
        return _hub_rows(path, split, config)
    readers: dict[str, Callable[[str, str], Iterator[tuple[str, dict]]]] = {
        "jsonl": _jsonl_rows, "parquet": _parquet_rows, "hf_disk": _hf_disk_rows}
    return readers[chosen](path, split)


def _resolve_format(path: str, format: str) -> str:
    if format not in FORMATS:
        raise ValueError(f"data.format={format!r}: must be one of {', '.join(FORMATS)}")
    local = os.path.expanduser(path)
    if format == "hub" or (format == "auto" and is_hub_id(path)):
        return "hub"
    if not os.path.exists(local):
        raise DataError(f"{path}: no such file or directory")
    if format != "auto":
        return format
    if os.path.isdir(local):
        return "hf_disk"
    ext = os.path.splitext(local)[1].lower()
    if ext not in _BY_EXTENSION:
        raise DataError(f"{path}: unknown extension {ext or '(none)'!r}: expected .jsonl, .json, .parquet or a "
                        "datasets directory (or set data.format)")
    return _BY_EXTENSION[ext]


def _jsonl_rows(path: str, split: str) -> Iterator[tuple[str, dict]]:
    """One JSON object per line. Read as bytes and decoded per line so a bad byte names its exact row."""
    try:
        f = open(os.path.expanduser(path), "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}: row {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 text ({e.reason})") from None
            if not line.strip():
                continue
            try:
                row = json_text.loads(line)
            except ValueError as e:
                raise DataError(f"{where}: not valid JSON ({json_text.problem(e)})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


def _parquet_rows(path: str, split: str) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(os.path.expanduser(path))
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    index = itertools.count()
    for batch in table.iter_batches(batch_size=_BATCH):
        for row in batch.to_pylist():
            yield f"{path}: row index {next(index)}", row


def _hf_disk_rows(path: str, split: str) -> Iterator[tuple[str, dict]]:
    """A Dataset, or one ``split`` of a DatasetDict, written by ``save_to_disk``."""
    import datasets

    try:
        ds = datasets.load_from_disk(os.path.expanduser(path))
    except FileNotFoundError as e:
        raise DataError(f"{path}: not a datasets directory written by save_to_disk ({e}); for Parquet or "
                        "JSONL files point at one file") from None
    where = path
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r} (available: {', '.join(ds)}); set data.split")
        ds, where = ds[split], f"{path} (split {split})"
    for index, row in enumerate(ds.with_format(None)):
        yield f"{where}: row index {index}", row


def _hub_rows(name: str, split: str, config: str | None) -> Iterator[tuple[str, dict]]:
    """One split of a dataset on the Hugging Face Hub, through ``datasets.load_dataset`` (its cache, offline with
    HF_HUB_OFFLINE=1, as every Hugging Face library reads it)."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - not found, offline and not cached, unknown split or config: one line
        reason = " ".join(str(e).split())[:300]
        raise DataError(f"{name}: no such file or directory, and not loadable as a Hugging Face Hub dataset "
                        f"(config {config}, split {split}: {type(e).__name__}: {reason})") from None
    for index, row in enumerate(ds.with_format(None)):
        yield f"{name} (split {split}): row index {index}", row


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


# ---------------------------------------------------------------------------------------------- samples
def _sample(mapped: Mapped, task: str | None, instruction: str, template, check_fields: CheckFields | None) -> Sample:
    """``task`` (data.task) overrides the mapping's; ``template`` is a tokenizer whose chat template wraps
    the prompt, or None for plain text."""
    task = task or mapped.task
    _check_fields(task, mapped, check_fields)
    try:
        prompt = _render_prompt(mapped.messages, instruction, template)
    except Exception as e:  # noqa: BLE001 - a template may raise anything on a row it rejects (e.g. role order)
        raise RowError(mapped.prompt_key, f"the chat template failed ({' '.join(str(e).split())})") from None
    return Sample(prompt=prompt, task=task, fields=mapped.fields)


def _check_fields(task: str, mapped: Mapped, check_fields: CheckFields | None) -> None:
    """The built-in verifiers' own field check (the trainer passes ``Scorer.check_fields``), so loading accepts
    exactly what scoring accepts. Custom tasks are not checked here: their verifier alone knows what it reads."""
    if check_fields is None or task not in _VERIFIER_FIELD:
        return
    try:
        check_fields(task, mapped.fields)
    except ValueError as e:
        name = _VERIFIER_FIELD[task]
        raise RowError(mapped.sources.get(name, name), " ".join(str(e).split())) from None


def _render_prompt(messages: list[dict[str, str]], instruction: str, template=None) -> str:
    """The text the model sees. ``instruction`` is appended verbatim to the last user message. With a
    tokenizer whose chat template to use: that template with the generation prompt. Without: the message
    contents joined by newlines, ending in a newline (added unless the text already ends in whitespace),
    so the response starts on its own line as in the built-in task."""
    if instruction:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages = [dict(m) for m in messages]
        messages[last_user]["content"] += instruction
    if template is not None:
        return template.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = "\n".join(m["content"] for m in messages)
    return text if text[-1:].isspace() else text + "\n"


def _token_counts(samples: list[Sample], tokenizer: Any) -> tuple[list[int], list[int]]:
    """Per prompt: its token count as the trainer tokenizes prompts, and how many of them are ``unk``."""
    unk = tokenizer.unk_token_id
    lengths: list[int] = []
    unknown: list[int] = []
    for start in range(0, len(samples), _BATCH):
        for ids in encode_prompts(tokenizer, [s.prompt for s in samples[start:start + _BATCH]]):
            lengths.append(len(ids))
            unknown.append(0 if unk is None else ids.count(unk))
    return lengths, unknown
