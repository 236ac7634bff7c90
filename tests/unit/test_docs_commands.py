"""The commands and config snippets the docs show run as written, checked as far as is cheap (nothing loads).

Read from README.md, docs/*.md and the header comments of prm_rl/recipes/recipe/*.yaml: every command of the forms
``deepspeed [launcher flags] launch/train.py ...`` (or ``train_prm.py``), ``python launch/... ...``,
``python -m prm_rl.cli.TOOL ...`` and the console command ``prm-rl COMMAND ...`` (also as
``deepspeed [launcher flags] --module prm_rl.cli.main COMMAND ...``), in ```bash blocks (backslash continuations joined, here-documents skipped) or
in inline code (which may run over a line break). A recipe's header gives its commands on lines indented
under the ``#``.

- ``launch/`` commands: DeepSpeed's launcher parser accepts the flags, and the overrides compose and validate as
  the script runs them (``startup.compose``: world size = ``--num_gpus`` x ``--num_nodes``, or 1; the script's own
  default recipe; ``offline_prm`` for train_prm.py).
- ``python -m prm_rl.cli.TOOL``: the tool's own argparse parser accepts the arguments (its ``main`` runs up to
  ``parse_args``); ``prm_rl.cli.estimate``'s overrides also compose at its ``--world-size``. A bare
  ``python -m prm_rl.cli.TOOL`` names the tool: it must exist.
- ``prm-rl COMMAND``: the command exists; ``train``/``train-prm`` are checked as launch/train.py/train_prm.py, the
  others as their tool. ``--config-dir DIR`` is dropped: the recipes the docs have the reader write are in the
  copy of the built-in recipes (below).
- ```yaml blocks: a recipe (first line ``# @package _global_``) composes and validates as ``+recipe=NAME``;
  any other block merges into the schema, ``prm_rl.config.Config``.

Placeholders: a path no config check opens (``model.path=/ckpt/my-sft``, ``--prm DIR``) is taken as written.
The values a check opens (:data:`OPENED`) are swapped for empty stand-ins under tmp_path when they do not exist
here; nothing else is. Synopsis notation: ``[...]`` marks optional parts, checked as if given; ``...`` (a word,
or the value of ``KEY=...``) elides more of the same and is dropped. Recipes the docs have the reader write
(a ```yaml recipe block, named by the ``recipes/recipe/NAME.yaml`` or ``my_recipes/recipe/NAME.yaml`` just above
it, or :data:`COPIED_RECIPES`) join a copy of prm_rl/recipes/ for the checks.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prm_rl import config
from prm_rl.cli import startup
from prm_rl.config import Config
from prm_rl.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
SOURCES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
           *sorted((REPO / "prm_rl" / "recipes" / "recipe").glob("*.yaml"))]

# Config values a check opens when the config is validated (prm_rl/config.py: DataSection, TrainerSection), what
# each must be, and its values that are no path. Only these get stand-ins.
OPENED = {"data.train": ("file", ()), "data.eval": ("file", ()), "trainer.resume": ("dir", ("auto", "never"))}
# Recipes the docs tell the reader to make by copying one (docs/recipes.md, "Making a recipe for your task":
# my_task as a copy of the built-in job, the copy that runs unedited).
COPIED_RECIPES = {"my_task": "math_ppo"}
SHELL = {"bash", "sh", "shell", "console"}
LAUNCH_SCRIPT = re.compile(r"launch/[\w/]+\.py")
CONSOLE = "prm-rl"  # the console command (prm_rl.cli.main), also run as deepspeed --module prm_rl.cli.main


# --------------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Command:
    where: str                  # file:line, relative to the repository
    argv: tuple[str, ...]       # from the program name on

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


@dataclass(frozen=True)
class Block:
    line: int                   # 1-based number of its first content line
    lang: str
    lines: tuple[str, ...]
    before: str                 # the prose just above it


def split_markdown(text: str) -> tuple[list[Block], list[str]]:
    """Fenced blocks, and the lines outside them (fenced lines blanked, so line numbers hold)."""
    lines = text.split("\n")
    blocks, prose, i = [], [], 0
    while i < len(lines):
        opening = re.match(r"\s*(`{3,}|~{3,})(.*)$", lines[i])
        if not opening or (opening.group(1)[0] == "`" and "`" in opening.group(2)):  # ```` ```x ```` is inline
            prose.append(lines[i])
            i += 1
            continue
        fence, info = opening.group(1), opening.group(2).strip()
        end = i + 1
        while end < len(lines) and not re.fullmatch(rf"\s*{re.escape(fence[0])}{{{len(fence)},}}\s*", lines[end]):
            end += 1
        before = "\n".join(prose[-3:])
        blocks.append(Block(i + 2, info.split()[0].lower() if info else "", tuple(lines[i + 1:end]), before))
        prose.extend([""] * (min(end, len(lines) - 1) - i + 1))
        i = end + 1
    return blocks, prose


def inline_spans(lines: list[str], first: int = 1) -> list[tuple[int, str]]:
    """(line, content) of every inline code span, paragraph by paragraph; a span may run over line breaks."""
    spans, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        start = i
        while i < len(lines) and lines[i].strip():
            i += 1
        text = "\n".join(lines[start:i])
        pos = 0
        while (opening := re.compile(r"`+").search(text, pos)) is not None:
            closing = next((m for m in re.finditer(r"`+", text[opening.end():])
                            if len(m.group()) == len(opening.group())), None)
            if closing is None:
                pos = opening.end()
                continue
            content = text[opening.end():opening.end() + closing.start()]
            spans.append((first + start + text.count("\n", 0, opening.start()), " ".join(content.split())))
            pos = opening.end() + closing.end()
    return spans


def shell_lines(lines: tuple[str, ...] | list[str], first: int) -> list[tuple[int, str]]:
    """(line, text) of each shell line: backslash continuations joined, here-document bodies skipped."""
    out, i = [], 0
    while i < len(lines):
        start, text = i, lines[i].rstrip()
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1].rstrip() + " " + lines[i].strip()
        i += 1
        out.append((first + start, text))
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)", text)
        if heredoc:
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                i += 1
            i += 1
    return out


def find_commands(text: str) -> list[tuple[str, ...]]:
    """The commands of the forms above in one shell line, from the program name to the end of its simple
    command (before ``&&``, ``|``, ``;``, a redirection or a ``#`` comment)."""
    if not re.search(r"\b(deepspeed|python3?|prm-rl)\b", text):
        return []
    text = re.sub(r"(?<=\s)\d+(?=[<>])", "", text)  # 2>&1: the file descriptor is no argument
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    words = []
    for word in lexer:
        if word.startswith("#"):  # a comment runs to the end of the line
            break
        words.append(word)
    commands, simple, redirected = [], [], False
    for word in [*words, ";"]:
        if re.fullmatch(r"[<>&|;()]+", word):
            if word[0] in "<>":  # a redirection: what follows in this simple command is its target
                redirected = True
            else:
                commands.append(simple)
                simple, redirected = [], False
        elif not redirected:
            simple.append(word)
    found = []
    for words in commands:
        for i, word in enumerate(words):
            rest = words[i + 1:]
            if word == "deepspeed" and any(LAUNCH_SCRIPT.fullmatch(w) or w == "prm_rl.cli.main" for w in rest):
                found.append(tuple(words[i:]))
                break
            if word in ("python", "python3") and rest and (
                    rest[0].startswith("launch/") or (rest[0] == "-m" and rest[1:2] and rest[1].startswith("prm_rl."))):
                found.append(tuple(words[i:]))
                break
            if word == CONSOLE:
                found.append(tuple(words[i:]))
                break
    return found


def markdown_commands(text: str, where: str, first: int = 1) -> list[Command]:
    blocks, prose = split_markdown(text)
    commands = []
    for block in blocks:
        if block.lang in SHELL:
            for line, shell_line in shell_lines(block.lines, first + block.line - 1):
                commands += [Command(f"{where}:{line}", argv) for argv in find_commands(shell_line)]
    for line, span in inline_spans(prose, first):
        commands += [Command(f"{where}:{line}", argv) for argv in find_commands(span)]
    return commands


def recipe_header(path: Path) -> list[str]:
    """The comment lines at the top of a recipe, without their ``#``."""
    header = []
    for line in path.read_text().split("\n"):
        if not line.startswith("#"):
            break
        header.append(line[1:])
    return header


def header_commands(path: Path, where: str) -> list[Command]:
    """A recipe header's commands: lines indented under the ``#`` (two spaces or more) are shell lines; inline code
    in the rest counts as in Markdown."""
    header = recipe_header(path)
    commands = []
    indented = [(i, line.strip()) for i, line in enumerate(header) if re.match(r"\s{2,}\S", line)]
    prose = [line if not re.match(r"\s{2,}\S", line) else "" for line in header]
    i = 0
    while i < len(indented):  # runs of consecutive indented lines
        j = i + 1
        while j < len(indented) and indented[j][0] == indented[j - 1][0] + 1:
            j += 1
        for line, text in shell_lines([t for _, t in indented[i:j]], indented[i][0] + 1):
            commands += [Command(f"{where}:{line}", argv) for argv in find_commands(text)]
        i = j
    for line, span in inline_spans(prose):
        commands += [Command(f"{where}:{line}", argv) for argv in find_commands(span)]
    return commands


def commands_of(path: Path) -> list[Command]:
    where = str(path.relative_to(REPO))
    if path.suffix == ".yaml":
        return header_commands(path, where)
    return markdown_commands(path.read_text(), where)


def yaml_blocks(path: Path) -> list[tuple[str, str, str | None]]:
    """(where, text, recipe name or None) of each ```yaml block; a recipe block is named by the
    ``recipes/recipe/NAME.yaml`` in the prose just above it."""
    blocks, _ = split_markdown(path.read_text())
    out = []
    for block in blocks:
        if block.lang not in ("yaml", "yml"):
            continue
        text = "\n".join(block.lines)
        name = None
        if text.lstrip().startswith("# @package _global_"):
            named = re.findall(r"recipes/recipe/(\w+)\.yaml", block.before)
            name = named[-1] if named else f"doc_{path.stem}_{block.line}"
        out.append((f"{path.relative_to(REPO)}:{block.line}", text, name))
    return out


COMMANDS = [command for path in SOURCES for command in commands_of(path)]
YAML_BLOCKS = [block for path in SOURCES if path.suffix == ".md" for block in yaml_blocks(path)]


# -------------------------------------------------------------------------------------------------- checking
class StandIns:
    """Empty files and directories under ``root`` for the values a check opens that do not exist here."""

    def __init__(self, root: Path):
        self.root = root

    def value(self, key: str, value):
        kind, words = OPENED.get(key.lstrip("+~"), (None, ()))
        if kind is None or not isinstance(value, str) or value == "null" or value in words:
            return value
        path = Path(value).expanduser()
        if (REPO / path).exists():  # a file of the repository: itself (the docs run from the repository root)
            return str(REPO / path)
        stand_in = self.root / str(path).lstrip("/")
        if kind == "dir":
            stand_in.mkdir(parents=True, exist_ok=True)
        else:
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.touch()
        return str(stand_in)

    def overrides(self, overrides: list[str]) -> list[str]:
        out = []
        for override in overrides:
            key, sep, value = override.partition("=")
            out.append(f"{key}={self.value(key, value)}" if sep else override)
        return out

    def recipe(self, text: str) -> str:
        node = OmegaConf.create(text)
        for key in OPENED:
            value = OmegaConf.select(node, key, default=None)
            if value is not None:
                OmegaConf.update(node, key, self.value(key, value))
        return "# @package _global_\n" + OmegaConf.to_yaml(node)


def as_given(argv: tuple[str, ...]) -> list[str]:
    """A synopsis as a command: ``[optional]`` parts given, ``...`` and ``KEY=...`` dropped."""
    out, depth = [], 0
    for word in argv:
        if word.startswith("["):
            depth += word.count("[")
            word = word.lstrip("[")
        if depth and word.endswith("]"):
            depth -= len(word) - len(word.rstrip("]"))
            word = word.rstrip("]")
        if word and word != "..." and not word.endswith("=..."):
            out.append(word)
    return out


class _Parsed(Exception):
    pass


def parse_with(module, args: list[str]) -> argparse.Namespace:
    """Run ``module.main(args)`` up to its ``parse_args``, and return what that parsed."""
    real = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_only):
        try:
            module.main(args)
        except _Parsed as parsed:
            return parsed.args[0]
    raise AssertionError(f"{module.__name__}.main() returned without parsing its arguments")


def compose(overrides: list[str], stand_ins: StandIns, world_size: int = 1, offline_prm: bool = False) -> None:
    overrides = without_config_dir(overrides)
    if any(o.startswith("-") for o in overrides):
        raise AssertionError(f"Hydra's own flags are not checked here: {overrides}")
    startup.compose(stand_ins.overrides(overrides), world_size=world_size, offline_prm=offline_prm)


def check(argv: tuple[str, ...], stand_ins: StandIns) -> None:
    """Raise (SystemExit, UsageError) where ``argv`` would stop before it starts work."""
    words = as_given(argv)
    if words[0] == CONSOLE:
        check_console(words[1:], stand_ins, world=1)
        return
    if words[0] == "deepspeed" or (len(words) > 1 and words[1].startswith("launch/")):
        if words[0] == "deepspeed":
            from deepspeed.launcher.runner import parse_args as launcher_args

            launcher = launcher_args(words[1:])
            script, overrides = launcher.user_script, list(launcher.user_args)
            world = max(launcher.num_gpus, 1) * max(launcher.num_nodes, 1)
            if launcher.module and script == "prm_rl.cli.main":
                check_console(overrides, stand_ins, world)
                return
        else:
            script, overrides, world = words[1], words[2:], 1
        if script not in ("launch/train.py", "launch/train_prm.py"):
            raise AssertionError(f"{script}: not a launch script (launch/train.py, launch/train_prm.py)")
        compose(overrides, stand_ins, world, offline_prm=script.endswith("_prm.py"))
        return
    check_tool(words[2], words[3:], stand_ins)


def check_tool(name: str, args: list[str], stand_ins: StandIns) -> None:
    """``python -m NAME ARGS``; no ``args``: the bare name of a tool, which must exist."""
    tool = importlib.import_module(name)  # python -m prm_rl.cli.TOOL: a missing tool fails here
    assert callable(getattr(tool, "main", None)), f"{name} has no main()"
    if not args:
        return
    parsed = parse_with(tool, args)
    if name == "prm_rl.cli.estimate":
        compose(parsed.overrides, stand_ins, parsed.world_size)


def without_config_dir(args: list[str]) -> list[str]:
    """``--config-dir DIR`` dropped: the recipes the docs have the reader write are in the copy (:func:`stand_ins`)."""
    out, folder_next = [], False
    for arg in args:
        if not folder_next and arg.partition("=")[0] not in startup.CONFIG_DIR_FLAGS:
            out.append(arg)
        folder_next = arg in startup.CONFIG_DIR_FLAGS
    return out


def check_console(args: list[str], stand_ins: StandIns, world: int) -> None:
    """``prm-rl ARGS`` (or ``deepspeed --module prm_rl.cli.main ARGS``): its command exists and takes the rest."""
    from prm_rl.cli.main import COMMANDS, TRAINERS

    if not args:  # the bare command prints its commands
        return
    name, rest = args[0], args[1:]
    assert name in COMMANDS, f"{CONSOLE} {name}: no such command"
    if name in TRAINERS:
        compose(rest, stand_ins, world, offline_prm=TRAINERS[name] == "prm")
    else:
        check_tool(COMMANDS[name][0], rest, stand_ins)


def problem(argv: tuple[str, ...], stand_ins: StandIns) -> str | None:
    """Why ``argv`` would not run as written (the line it prints, or the exception), or None."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            check(argv, stand_ins)
    except SystemExit as stop:
        if stop.code in (0, None):  # --help
            return None
        printed = err.getvalue().strip().splitlines()
        return printed[-1] if printed else f"exit {stop.code}"
    except UsageError as e:
        return e.one_line()
    except (AssertionError, ImportError, OmegaConfBaseException) as e:
        return f"{type(e).__name__}: {e}"
    return None


def snippet_problem(text: str, recipe: str | None, stand_ins: StandIns) -> str | None:
    """Why a ```yaml block does not fit the config: a recipe that does not compose and validate, or a snippet that
    does not merge into the schema."""
    if recipe is not None:
        return problem(("python", "launch/train.py", f"+recipe={recipe}"), stand_ins)
    try:
        OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(text))
    except OmegaConfBaseException as e:
        return f"{type(e).__name__}: {' '.join(str(e).split())}"
    return None


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Stand-ins, and startup.compose reading a copy of prm_rl/recipes/ that also holds the recipes the docs have the
    reader write."""
    root = tmp_path_factory.mktemp("docs_commands")
    recipes = root / "recipes"
    shutil.copytree(REPO / "prm_rl" / "recipes", recipes)
    made = StandIns(root / "stand_ins")
    user = {name: (recipes / "recipe" / f"{source}.yaml").read_text() for name, source in COPIED_RECIPES.items()}
    user |= {name: made.recipe(text) for _, text, name in YAML_BLOCKS if name is not None}
    for name, text in user.items():
        path = recipes / "recipe" / f"{name}.yaml"
        assert not path.exists(), f"the docs' recipe {name} has the name of a recipe in prm_rl/recipes/recipe/"
        path.write_text(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "RECIPES", recipes)
        yield made


# ----------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_doc_command_runs_as_written(command, stand_ins):
    found = problem(command.argv, stand_ins)
    assert found is None, f"{command}\n  -> {found}"


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[where for where, _, _ in YAML_BLOCKS])
def test_doc_yaml_snippet_fits_the_config(block, stand_ins):
    where, text, recipe = block
    found = snippet_problem(text, recipe, stand_ins)
    assert found is None, f"{where}: {found}"


def test_every_source_and_form_is_read():
    """The commands the extractor must find, one of each kind of place: a guard against one that finds nothing."""
    found = {(c.where.split(":")[0], shlex.join(c.argv)) for c in COMMANDS}
    for expected in [
        ("README.md", "deepspeed launch/train.py +recipe=math_ppo"),
        ("README.md", "deepspeed launch/train_prm.py +recipe=prm_math"),
        ("docs/recipes.md", "deepspeed --num_gpus 2 launch/train.py +recipe=math_ppo"),
        ("docs/recipes.md", "prm-rl train --config-dir my_recipes +recipe=my_task"),
        ("docs/datasets.md", "deepspeed --num_gpus 8 --module prm_rl.cli.main train --config-dir my_recipes "
         "+recipe=my_units model.path=/ckpt/my-sft"),
        ("docs/prm_training.md", "python -m prm_rl.cli.prm_score --prm runs/prm_math/prm --ref SFT rows.jsonl"),
        ("prm_rl/recipes/recipe/paper_7b.yaml", "deepspeed --num_gpus 8 launch/train.py +recipe=paper_7b "
         "model.path=/ckpt/Eurus-2-7B-SFT data.train=/data/prime/train.parquet "
         "data.eval=/data/prime/validation.parquet"),
    ]:
        assert expected in found, expected
    assert any(recipe == "my_units" for _, _, recipe in YAML_BLOCKS)


MADE_UP = """\
Run `python -m prm_rl.cli.eval_prm runs/x
--seed 3` or `python -m prm_rl.cli.verify`; not `kill <pid of the deepspeed runner>` nor ```` ```python ````.

```bash
/usr/bin/time -v deepspeed --num_gpus 2 launch/train.py +recipe=math_ppo \\
    trainer.max_steps=20   # a comment
cat > hostfile <<'HOSTS'
python -m prm_rl.not_a_tool
HOSTS
OMP_NUM_THREADS=1 python launch/train_prm.py prm.loss=dpo > log.txt 2>&1 && python -m prm_rl.cli.prm_score --prm P rows.jsonl
```

```python
python -m prm_rl.cli.prm_score   # not a shell block
```
"""


def test_the_extractor_reads_continuations_inline_code_and_prefixes():
    assert [(c.where, c.argv) for c in markdown_commands(MADE_UP, "x.md")] == [
        ("x.md:5", ("deepspeed", "--num_gpus", "2", "launch/train.py", "+recipe=math_ppo", "trainer.max_steps=20")),
        ("x.md:10", ("python", "launch/train_prm.py", "prm.loss=dpo")),
        ("x.md:10", ("python", "-m", "prm_rl.cli.prm_score", "--prm", "P", "rows.jsonl")),
        ("x.md:1", ("python", "-m", "prm_rl.cli.eval_prm", "runs/x", "--seed", "3")),
        ("x.md:2", ("python", "-m", "prm_rl.cli.verify")),
    ]


@pytest.mark.parametrize("line, why", [
    ("deepspeed --num_gpus 3 launch/train.py +recipe=math_ppo", "rollout.prompts_per_step=32: must divide evenly"),
    ("deepspeed launch/train.py +recipe=math_ppo trainer.max_step=20", "config error: Could not override"),
    ("deepspeed launch/train.py +recipe=paper_7b", "data.train: required with model.path"),
    ("deepspeed launch/train_prm.py data.train=/nowhere.jsonl prm.loss=nope", "prm.loss='nope'"),
    ("deepspeed --num-gpus 2 launch/train.py", "unrecognized arguments: --num-gpus"),
    ("python launch/train.py trainer.resume=/ckpt/step_9 +recipe=nope", "Could not find 'recipe/nope'"),
    ("python -m prm_rl.cli.prm_score --prm DIR rows.jsonl", "the following arguments are required: --ref"),
    ("python -m prm_rl.cli.eval_prm RUN_DIR --seed S", "argument --seed: invalid int value: 'S'"),
    ("python -m prm_rl.cli.prm_score --prm DIR --ref DIR IN.jsonl [--outfile OUT.jsonl]", "unrecognized arguments: --outfile"),
    ("python -m prm_rl.cli.estimate +recipe=math_ppo rollout.samples_per_prompt=1", "need at least 2 responses"),
    ("python -m prm_rl.no_such_tool --x", "ModuleNotFoundError"),
    ("prm-rl trian +recipe=math_ppo", "prm-rl trian: no such command"),
    ("prm-rl train --config-dir my_recipes +recipe=math_ppo trainer.max_step=20", "config error: Could not override"),
    ("deepspeed --num_gpus 3 --module prm_rl.cli.main train +recipe=math_ppo", "must divide evenly"),
    ("prm-rl train-prm data.train=/nowhere.jsonl prm.loss=nope", "prm.loss='nope'"),
    ("prm-rl prm-score --prm DIR rows.jsonl", "the following arguments are required: --ref"),
])
def test_a_bad_line_fails(line, why, stand_ins):
    (command,) = markdown_commands(f"```bash\n{line}\n```\n", "bad.md")
    found = problem(command.argv, stand_ins)
    assert found is not None and why in found, found


def test_a_snippet_with_an_unknown_key_fails(stand_ins):
    found = snippet_problem("verifiers:\n  mytask: {_target_: mypkg.judge}\n", None, stand_ins)
    assert found is not None and "verifiers" in found, found
    assert snippet_problem("verifier:\n  tasks:\n    mytask: {_target_: mypkg.judge}\n", None, stand_ins) is None


def test_train_prm_lines_run_as_train_prm_runs_them(stand_ins):
    """Its own default recipe (prm_math) and offline_prm: labelled rows stand in for data.train there only."""
    line = "{} model.path=/ckpt/sft prm_train.data=rows.jsonl"
    assert problem(tuple(line.format("python launch/train_prm.py").split()), stand_ins) is None
    assert "data.train: required" in problem(tuple(line.format("python launch/train.py").split()), stand_ins)
    assert problem(("python", "-m", "prm_rl.cli.prm_score", "--prm", "D", "--ref", "D", "IN.jsonl", "[--out", "OUT]"),
                   stand_ins) is None
