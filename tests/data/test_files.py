"""Loading RL prompts from files: every format, every mapping, every malformed-row error, length drops,
chat templates, and that the loaded fields are what the real verifiers accept."""
from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest

from prm_rl.config import DataSection
from prm_rl.data import arithmetic
from prm_rl.data.files import DataError, file_splits, load_prompts
from prm_rl.data.sample import Sample
from prm_rl.models.tiny import build_char_tokenizer
from prm_rl.rewards import build_scorer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
FIELDS_SPEC = {"prompt": "query.text", "answer": "gold", "task": "kind", "difficulty": "difficulty"}
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>\n{% endif %}")


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def rows_of(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def text_tokenizer():
    """A character tokenizer that knows every character of the fixtures (the built-in one knows only arithmetic)."""
    text = "".join(p.read_text() for p in FIXTURES.glob("*.jsonl"))
    return build_char_tokenizer(sorted(set(string.printable) | set(text)))


def chat_tokenizer():
    tok = text_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def data_error(path: str, message: str):
    """pytest.raises for a DataError whose whole (one-line) message is ``path: message``."""
    return pytest.raises(DataError, match="^" + re.escape(f"{path}: {message}") + "$")


# ------------------------------------------------------------------------------------------- mappings
def test_prime_mapping_reads_chat_prompts_and_picks_the_task_from_ability():
    loaded = load_prompts(fixture("prime.jsonl"), mapping="prime")
    assert (loaded.rows, loaded.dropped_too_long) == (3, 0)
    assert [s.task for s in loaded.samples] == ["math", "code", "math"]
    assert loaded.samples[0].fields == {"answer": "72"}
    assert loaded.samples[1].fields == {"tests": {"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7\n"]}}
    assert loaded.samples[2].fields == {"answer": "\\frac{1}{2}"}
    system, user = (m["content"] for m in rows_of("prime.jsonl")[0]["prompt"])
    assert loaded.samples[0].prompt == f"{system}\n{user}\n"  # no tokenizer: plain text, response on a new line


def test_gsm8k_mapping_takes_the_number_after_the_hashes():
    samples = load_prompts(fixture("gsm8k.jsonl"), mapping="gsm8k").samples
    assert [s.fields for s in samples] == [{"answer": "72"}, {"answer": "1000"}]
    assert {s.task for s in samples} == {"math"}
    assert samples[0].prompt == rows_of("gsm8k.jsonl")[0]["question"] + "\n"


def test_math_mapping_takes_the_last_balanced_box():
    samples = load_prompts(fixture("math.jsonl"), mapping="math").samples
    assert [s.fields for s in samples] == [{"answer": "\\frac{1}{2}"}, {"answer": "2"}]
    assert {s.task for s in samples} == {"math"}


def test_code_mapping_reads_mbpp_apps_and_plain_tests():
    samples = load_prompts(fixture("code.jsonl"), mapping="code").samples
    assert {s.task for s in samples} == {"code"}
    assert samples[0].fields == {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}  # MBPP test_list
    assert samples[1].fields == {"tests": {"inputs": ["3\n", "5\n"], "outputs": ["9\n", "25\n"]}}  # APPS JSON
    assert samples[2].fields == {"tests": [{"input": "abc\n", "output": "cba"}]}
    assert samples[0].prompt.startswith("Write a function add(a, b)")  # MBPP's prompt is under `text`


def test_fields_mapping_reaches_nested_keys_and_passes_every_other_entry_as_a_field():
    samples = load_prompts(fixture("fields.jsonl"), mapping="fields", fields=FIELDS_SPEC).samples
    assert samples[0] == Sample("What is 2 + 3?\n", "math", {"answer": "5", "difficulty": "easy"})
    assert samples[1].fields == {"answer": "42", "difficulty": "medium"}


def test_fields_mapping_needs_a_task_from_the_row_or_the_config():
    spec = {k: v for k, v in FIELDS_SPEC.items() if k != "task"}
    with pytest.raises(ValueError, match="data.fields.task=KEY"):
        load_prompts(fixture("fields.jsonl"), mapping="fields", fields=spec)
    samples = load_prompts(fixture("fields.jsonl"), mapping="fields", fields=spec, task="math").samples
    assert {s.task for s in samples} == {"math"}


def test_task_argument_overrides_every_row():
    samples = load_prompts(fixture("gsm8k.jsonl"), mapping="gsm8k", task="gsm8k_math").samples
    assert {s.task for s in samples} == {"gsm8k_math"}  # a custom task name (e.g. verifier: math) is not checked


# -------------------------------------------------------------------------------------------- formats
def test_parquet_gives_the_same_samples_as_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows_of("prime.jsonl")), path)
    assert load_prompts(str(path)) == load_prompts(fixture("prime.jsonl"))


def test_datasets_directory_picks_the_split(tmp_path):
    import datasets

    rows = rows_of("gsm8k.jsonl")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:1]),
                               "test": datasets.Dataset.from_list(rows[1:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_prompts(str(tmp_path / "dd"), mapping="gsm8k").samples[0].fields == {"answer": "72"}
    assert load_prompts(str(tmp_path / "dd"), mapping="gsm8k", split="test").samples[0].fields == {"answer": "1000"}
    with data_error(str(tmp_path / "dd"), "no split 'validation' (available: train, test); set data.split"):
        load_prompts(str(tmp_path / "dd"), mapping="gsm8k", split="validation")

    datasets.Dataset.from_list(rows_of("prime.jsonl")).save_to_disk(str(tmp_path / "ds"))  # a plain Dataset
    assert load_prompts(str(tmp_path / "ds")) == load_prompts(fixture("prime.jsonl"))


def test_explicit_format_ignores_the_extension(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text((FIXTURES / "gsm8k.jsonl").read_text())
    assert load_prompts(str(path), format="jsonl", mapping="gsm8k").rows == 2


def test_blank_lines_are_skipped_and_rows_keep_file_order(tmp_path):
    rows = rows_of("gsm8k.jsonl")
    path = write_jsonl(tmp_path / "t.jsonl", [rows[1], "", rows[0]])
    assert [s.fields["answer"] for s in load_prompts(path, mapping="gsm8k").samples] == ["1000", "72"]


def test_max_rows_reads_only_the_first_rows():
    loaded = load_prompts(fixture("prime.jsonl"), max_rows=2)
    assert loaded.rows == 2 and [s.task for s in loaded.samples] == ["math", "code"]


# ---------------------------------------------------------------------------------------------- errors
GSM = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}
PRIME_MATH = rows_of("prime.jsonl")[0]
PRIME_CODE = rows_of("prime.jsonl")[1]
CALL_BASED = json.dumps({"fn_name": "f", "inputs": [[1]], "outputs": [2]})  # APPS call-based tests


def _with(row: dict, key: str, value) -> dict:
    """A deep copy of ``row`` with dotted ``key`` set to ``value`` (deleted when value is ...)."""
    row = json.loads(json.dumps(row))
    *parents, last = key.split(".")
    target = row
    for p in parents:
        target = target[p]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return row


@pytest.mark.parametrize("mapping, bad_row, message", [
    ("prime", _with(PRIME_MATH, "reward_model.ground_truth", ...), "field 'reward_model.ground_truth': missing"),
    ("gsm8k", _with(GSM, "question", ...), "field 'question': missing"),
    ("prime", _with(PRIME_MATH, "prompt", 7),
     "field 'prompt': expected a string or a list of {role, content} messages, got int"),
    ("prime", _with(PRIME_MATH, "prompt", [{"role": "user", "content": 3}]),
     "field 'prompt': message 0 must be a {role, content} dict of strings"),
    ("prime", _with(PRIME_MATH, "prompt", [{"role": "system", "content": "Be brief."}]),
     "field 'prompt': no message with role 'user'"),
    ("gsm8k", _with(GSM, "answer", 2), "field 'answer': expected a string, got int"),
    ("gsm8k", _with(GSM, "question", "  \n "), "field 'question': empty prompt"),
    ("gsm8k", _with(GSM, "answer", "no final line"), "field 'answer': no '#### ANSWER' line"),
    ("gsm8k", _with(GSM, "answer", "work\n####  "), "field 'answer': math: fields['answer'] is empty"),
    ("prime", _with(PRIME_MATH, "reward_model.ground_truth", " "),
     "field 'reward_model.ground_truth': math: fields['answer'] is empty"),
    ("math", {"problem": "1+1?", "solution": "It is 2."}, "field 'solution': no \\boxed{...} answer"),
    ("prime", _with(PRIME_MATH, "ability", "chess"), "field 'ability': 'chess': expected 'math' or 'code'"),
    ("prime", _with(PRIME_CODE, "reward_model.ground_truth", "{inputs"),
     "field 'reward_model.ground_truth': a string but not JSON (Expecting property name enclosed in double quotes: "
     "line 1 column 2 (char 1))"),
    ("prime", _with(PRIME_CODE, "reward_model.ground_truth", json.dumps({"inputs": ["1\n"], "outputs": []})),
     "field 'reward_model.ground_truth': code: fields['tests'] inputs/outputs must be lists of equal length"),
    ("prime", _with(PRIME_CODE, "reward_model.ground_truth", CALL_BASED),
     "field 'reward_model.ground_truth': call-based tests (fn_name) are not supported by the code verifier; "
     "filter these rows out"),
    ("code", {"prompt": "Add.", "tests": 5}, "field 'tests': code: fields['tests'] must be a non-empty list"),
    ("code", {"prompt": "Add.", "test_list": []}, "field 'test_list': code: fields['tests'] must be a non-empty list"),
    ("code", {"prompt": "Add."}, "field 'tests/test_list/input_output': missing (none of these keys is present)"),
    ("fields", _with(rows_of("fields.jsonl")[0], "gold", ...), "field 'gold': missing"),
    ("fields", _with(rows_of("fields.jsonl")[0], "kind", " "), "field 'kind': empty task name"),
])
def test_a_malformed_row_names_file_row_and_field(tmp_path, mapping, bad_row, message):
    good = {"prime": PRIME_MATH, "gsm8k": GSM, "math": rows_of("math.jsonl")[0], "code": rows_of("code.jsonl")[0],
            "fields": rows_of("fields.jsonl")[0]}[mapping]
    path = write_jsonl(tmp_path / "train.jsonl", [good, good, bad_row, good])
    spec = FIELDS_SPEC if mapping == "fields" else None
    with data_error(path, f"row 3: {message}"):
        load_prompts(path, mapping=mapping, fields=spec, check_fields=build_scorer().check_fields)


def test_bad_json_line_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [GSM, "", '{"question": "x", "answer": }'])
    with data_error(path, "row 3: not valid JSON (Expecting value at column 29)"):
        load_prompts(path, mapping="gsm8k")


def test_a_line_that_is_not_an_object_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "train.json", [[GSM]])
    with data_error(path, "row 1: expected a JSON object, got list"):
        load_prompts(path, mapping="gsm8k")


def test_parquet_errors_name_the_row_index(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([GSM, {"question": "2+2?", "answer": None}]), path)
    with data_error(str(path), "row index 1: field 'answer': missing"):
        load_prompts(str(path), mapping="gsm8k")


def test_unknown_extension(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("question,answer\n")
    with data_error(str(path), "unknown extension '.csv': expected .jsonl, .json, .parquet or a datasets "
                               "directory (or set data.format)"):
        load_prompts(str(path))


def test_missing_file_and_empty_file(tmp_path):
    with data_error(str(tmp_path / "nope.jsonl"), "no such file or directory"):
        load_prompts(str(tmp_path / "nope.jsonl"))
    path = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with data_error(path, "no rows"):
        load_prompts(path)


def test_a_directory_that_is_not_a_saved_dataset(tmp_path):
    with pytest.raises(DataError, match="not a datasets directory written by save_to_disk"):
        load_prompts(str(tmp_path))


# --------------------------------------------------------------------------- prompt text and lengths
def test_chat_template_wraps_the_prompt_with_the_instruction_on_the_last_user_message():
    loaded = load_prompts(fixture("prime.jsonl"), tokenizer=chat_tokenizer(), instruction=" Think step by step.")
    system, user = (m["content"] for m in rows_of("prime.jsonl")[0]["prompt"])
    assert loaded.samples[0].prompt == f"<system>{system}\n<user>{user} Think step by step.\n<assistant>\n"


def test_plain_text_when_the_template_is_off_or_absent():
    inst = " Put the answer in \\boxed{}."
    question = rows_of("gsm8k.jsonl")[0]["question"]
    for tokenizer, chat in ((chat_tokenizer(), False), (text_tokenizer(), True), (None, True)):
        sample = load_prompts(fixture("gsm8k.jsonl"), mapping="gsm8k", tokenizer=tokenizer, chat_template=chat,
                              instruction=inst).samples[0]
        assert sample.prompt == question + inst + "\n"
    # A prompt that already ends in whitespace gets no extra newline.
    spaced = load_prompts(fixture("gsm8k.jsonl"), mapping="gsm8k", instruction="\n\n").samples[0]
    assert spaced.prompt == question + "\n\n"


def test_a_chat_template_that_rejects_a_row_names_the_row():
    tok = chat_tokenizer()
    tok.chat_template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}x"
    with data_error(fixture("prime.jsonl"), "row 1: field 'prompt': the chat template failed (user first)"):
        load_prompts(fixture("prime.jsonl"), tokenizer=tok)


def test_over_long_prompts_are_dropped_and_counted(tmp_path):
    rows = [{"question": "q" * n, "answer": "#### 1"} for n in (5, 30, 9, 10)]  # one token per char, plus "\n"
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    loaded = load_prompts(path, mapping="gsm8k", tokenizer=text_tokenizer(), max_prompt_tokens=10)
    assert (loaded.rows, loaded.dropped_too_long) == (4, 2)
    assert [s.prompt for s in loaded.samples] == ["q" * 5 + "\n", "q" * 9 + "\n"]  # kept whole, in order


def test_all_rows_too_long_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "q" * 20, "answer": "#### 1"}] * 2)
    with data_error(path, "all 2 prompts are longer than max_prompt_tokens=10 (the shortest has 21 tokens)"):
        load_prompts(path, mapping="gsm8k", tokenizer=text_tokenizer(), max_prompt_tokens=10)


# ----------------------------------------------------------------------------------------- file_splits
def data_section(**overrides) -> DataSection:
    values = dict(train=fixture("prime.jsonl"), eval=None, format="auto", split="train", mapping="prime", fields={},
                  task=None, instruction="", chat_template=True, max_prompt_tokens=512, max_rows=None)
    return DataSection(**{**values, **overrides})


def test_file_splits_loads_train_and_eval_and_counts(tmp_path):
    long_row = _with(PRIME_MATH, "prompt", "x" * 600)
    eval_path = write_jsonl(tmp_path / "eval.jsonl", [PRIME_MATH, long_row])
    splits, counts = file_splits(data_section(eval=eval_path), text_tokenizer())
    assert [s.task for s in splits.train] == ["math", "code", "math"] and len(splits.eval) == 1
    assert counts == {"train_rows": 3, "train_dropped_too_long": 0, "eval_rows": 2, "eval_dropped_too_long": 1,
                      "train_with_unknown_tokens": 0, "eval_with_unknown_tokens": 0}


def test_file_splits_without_eval_and_with_eval_equal_to_train():
    splits, counts = file_splits(data_section(), text_tokenizer())
    assert splits.eval == [] and counts["eval_rows"] == 0 and len(splits.train) == 3
    with pytest.raises(DataError, match="the same rows as data.train"):
        file_splits(data_section(eval=fixture("prime.jsonl")), text_tokenizer())


# -------------------------------------------------------------------- the real verifiers accept the fields
def test_loaded_fields_score_correct_responses_1_and_wrong_ones_0():
    from prm_rl.rewards import build_scorer

    prime = load_prompts(fixture("prime.jsonl")).samples
    gsm8k = load_prompts(fixture("gsm8k.jsonl"), mapping="gsm8k").samples
    math = load_prompts(fixture("math.jsonl"), mapping="math").samples
    code = load_prompts(fixture("code.jsonl"), mapping="code").samples
    add = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    cases = [
        (gsm8k[0], "24 + 48 = 72\n#### 72", 1.0), (gsm8k[1], "\\boxed{1000}", 1.0), (gsm8k[0], "\\boxed{71}", 0.0),
        (math[0], "\\boxed{0.5}", 1.0), (prime[2], "It is \\boxed{\\dfrac{1}{2}}.", 1.0),
        (prime[1], add, 1.0), (prime[1], add.replace("a + b", "a - b"), 0.0),
        (code[0], "```python\ndef add(a, b):\n    return a + b\n```", 1.0),
        (code[1], "```python\nn = int(input())\nprint(n * n)\n```", 1.0),
    ]
    with build_scorer(num_workers=2) as scorer:
        result = scorer.score([c[0] for c in cases], [c[1] for c in cases])
    assert result.failures == [None] * len(cases)
    assert result.scores == [c[2] for c in cases]


# ---------------------------------------------------------------------------------------------- recipe
def test_math_file_recipe_stops_until_model_and_train_file_are_set_then_validates():
    from hydra import compose, initialize_config_dir

    from prm_rl.config import ConfigError, register_schema, to_config

    register_schema()

    def composed(*overrides):
        with initialize_config_dir(config_dir=str(REPO / "prm_rl" / "recipes"), version_base=None):
            return compose(config_name="base", overrides=["+recipe=math_file", *overrides])

    with pytest.raises(ConfigError, match=r"^data.train=/path/to/train.jsonl: no such file or directory "
                                          r"\(nor a Hub dataset id, ORG/NAME\)$"):
        to_config(composed())  # model.path's placeholder is caught next, by models.loading.check_model_source
    cfg = to_config(composed(f"model.path={REPO}", f"data.train={fixture('math.jsonl')}"), world_size=8)
    assert (cfg.data.mapping, cfg.data.task) == ("math", "math")
    assert cfg.data.instruction.endswith("\\boxed{}.")  # a literal backslash: YAML did not read it as an escape
    splits, _ = file_splits(cfg.data, text_tokenizer())
    assert splits.train[0].prompt.endswith(cfg.data.instruction + "\n")


def test_committed_parquet_and_datasets_fixtures_load_like_their_jsonl():
    """Files written by pyarrow and by datasets' save_to_disk (committed, a few KB) read as the JSONL rows do."""
    assert load_prompts(fixture("math.parquet"), mapping="math") == load_prompts(fixture("math.jsonl"), mapping="math")
    gsm8k = load_prompts(fixture("gsm8k.jsonl"), mapping="gsm8k").samples
    train = load_prompts(fixture("gsm8k_dataset"), mapping="gsm8k").samples
    test = load_prompts(fixture("gsm8k_dataset"), mapping="gsm8k", split="test").samples
    assert train + test == gsm8k


def test_prompts_the_tokenizer_cannot_encode_are_refused_naming_the_first_row():
    """The built-in character tokenizer knows digits and operators only: word problems are mostly <unk>."""
    with data_error(fixture("gsm8k.jsonl"), "2 of 2 prompts hold characters the tokenizer cannot encode (<unk>), "
                    "e.g. row 1 (81 of 94 tokens); use the tokenizer these prompts are written for "
                    "(model.path or model.tokenizer_path)"):
        load_prompts(fixture("gsm8k.jsonl"), mapping="gsm8k", tokenizer=build_char_tokenizer(arithmetic.CHARACTERS))


def test_a_few_prompts_with_unknown_characters_are_kept_and_counted(tmp_path):
    rows = [{"question": f"{i}+{i}=?", "final": str(2 * i)} for i in range(19)]
    rows.append({"question": "1+1=? ☃", "final": "2"})
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    loaded = load_prompts(path, mapping="fields", fields={"prompt": "question", "answer": "final"}, task="arithmetic",
                          tokenizer=build_char_tokenizer(arithmetic.CHARACTERS))
    assert (loaded.rows, len(loaded.samples), loaded.with_unknown_tokens) == (20, 20, 1)


@pytest.mark.parametrize("row, message", [
    ('{"prompt": "1+1=?", "answer": "2", "extra": ' + "[" * 5000 + "]" * 5000 + "}",
     "row 1: not valid JSON (nested too deeply to read)"),
    ('{"prompt": "1+1=?", "tests": "' + "[" * 5000 + "]" * 5000 + '"}',
     "row 1: field 'tests': a string but not JSON (nested too deeply to read)"),
])
def test_json_nested_deeper_than_the_recursion_limit_is_a_row_error(tmp_path, row, message):
    path = tmp_path / "deep.jsonl"
    path.write_text(row + "\n")
    mapping = {"prompt": "prompt", "answer": "answer"} if "answer" in row else {"prompt": "prompt", "tests": "tests"}
    with data_error(str(path), message):
        load_prompts(str(path), mapping="fields", fields=mapping, task="math" if "answer" in row else "code")
