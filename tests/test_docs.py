"""The README and docs/ as a new user meets them: every relative link resolves (to a heading, where it names one),
every command shown in a bash block parses with that command's own parser (the job itself is not run), every Python
block compiles, and the README's Python example runs."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]


def _prose(page: Path) -> str:
    """The page without its code blocks and inline code, where a bracket is not a link."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text()))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to
    hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().replace("`", "").lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.M)}


def _links() -> Iterator[tuple[Path, str]]:
    for page in PAGES:
        for target in LINK.findall(_prose(page)):
            if not re.match(r"[a-z]+:", target):
                yield page, target


def test_the_readme_is_short_and_its_reference_is_in_docs():
    assert (REPO / "README.md").stat().st_size <= 12 * 1024
    linked = {(page.parent / target.split("#")[0]).resolve() for page, target in _links() if page.name == "README.md"}
    assert {p.resolve() for p in PAGES[1:]} <= linked, "a docs page the README does not link"
    assert (REPO / "LICENSE").read_text().startswith(" " * 33 + "Apache License\n")
    assert "preferred-citation:" in (REPO / "CITATION.cff").read_text()


@pytest.mark.parametrize(("page", "target"), list(_links()), ids=lambda x: getattr(x, "name", x))
def test_every_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.exists() and REPO in file.parents, f"{page.name}: {target} is not a file of the repository"
    if anchor:
        assert anchor in _anchors(file), f"{page.name}: no heading #{anchor} in {file.name}"


# --- commands -----------------------------------------------------------------------------------------------------


class Parsed(Exception):
    """Raised in place of a stage's job: the command line parsed into these option dataclasses."""


# the job each stage runs once its options are parsed (imported by the stage's cli when it runs)
JOBS = {
    "score": ("srt_trainer.scoring.runner", "run_score"),
    "reflect": ("srt_trainer.reflection.runner", "run_reflect"),
    "select": ("srt_trainer.selection.runner", "run_select"),
    "agree": ("srt_trainer.agreement.measure", "measure_agreement"),
    "train": ("srt_trainer.training", "prepare_training_data"),  # the first step of srt train and the recipes
    "run": ("srt_trainer.run.job", "run"),
    "eval generate": ("srt_trainer.evaluation.generate", "run_generate"),
    "eval judge": ("srt_trainer.evaluation.judge", "run_judge"),
    "eval aggregate": ("srt_trainer.evaluation.aggregate", "check_report_paths"),
    "eval alpacaeval": ("srt_trainer.evaluation.alpaca", "run_alpaca_eval"),
    "eval harness": ("srt_trainer.evaluation.harness", "run_harness"),
    "eval report": ("srt_trainer.evaluation.report", "run_report"),
    "eval mtbench": ("srt_trainer.evaluation.mtbench", "run_mtbench"),
    "ablate": ("srt_trainer.ablation.runner", "run_ablation"),
}


@pytest.fixture
def no_jobs(monkeypatch):
    import importlib

    def parsed(*args, **kwargs):
        raise Parsed(args)

    # every module first, then the patches: a module imported after a patch (``run.job`` imports ``train`` by
    # name) would keep the stand-in after the test, for the next test in this process
    modules = [(importlib.import_module(module), name) for module, name in JOBS.values()]
    for module, name in modules:
        monkeypatch.setattr(module, name, parsed)


def _commands(page: Path) -> list[list[str]]:
    words = []
    for block in _blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                words.append(shlex.split(line, comments=True))
    return [w for w in words if w]


def _srt(argv: list[str], capsys) -> None:
    from srt_trainer.cli import main

    with pytest.raises(Parsed):
        code = main(argv)
        pytest.fail(f"srt {shlex.join(argv)} exited {code} without reaching its job: {capsys.readouterr().err}")


def _script(script: str, argv: list[str]) -> None:
    assert (REPO / script).is_file(), f"{script} is not in the repository"
    old = sys.argv
    sys.argv = [script, *argv]
    try:
        with pytest.raises(Parsed):
            runpy.run_path(str(REPO / script), run_name="__main__")
    finally:
        sys.argv = old


def _accelerate(argv: list[str], capsys) -> None:
    from accelerate.commands.launch import launch_command_parser

    assert argv[0] == "launch", argv
    args = launch_command_parser().parse_args(argv[1:])
    if args.config_file:
        assert (REPO / args.config_file).is_file(), f"no accelerate config {args.config_file}"
    if args.module:
        assert args.training_script == "srt_trainer.cli", args.training_script
        _srt(args.training_script_args, capsys)
    else:
        _script(args.training_script, args.training_script_args)


def _make(argv: list[str]) -> None:
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    for word in argv:
        assert "=" in word or word in targets, f"make {word}: no such target"


def _shell_script(script: str, argv: list[str]) -> None:
    text = (REPO / script).read_text()
    for word in argv:
        if word.startswith("--"):
            assert re.search(rf"^\s*{re.escape(word)}\)", text, re.M), f"{script} takes no {word}"


def _check(command: list[str], capsys) -> None:
    head, *rest = command
    if head == "export" or re.fullmatch(r"\w+=\S*", head):
        return
    if head == "srt":
        _srt(rest, capsys)
    elif head == "accelerate":
        _accelerate(rest, capsys)
    elif head in ("python", "python3") and rest[:2] == ["-m", "srt_trainer.cli"]:
        _srt(rest[2:], capsys)
    elif head in ("python", "python3"):
        _script(rest[0], rest[1:])
    elif head == "make":
        _make(rest)
    elif head.startswith("scripts/") and head.endswith(".sh"):
        _shell_script(head, rest)
    else:
        pytest.fail(f"a command the docs test does not know how to check: {shlex.join(command)}")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_shown_parses(page, no_jobs, capsys):
    commands = _commands(page)
    for command in commands:
        _check(command, capsys)
    if page.name == "README.md":  # the two set-up commands, and the GPU path from a raw file to the recipe
        assert ["make", "demo"] in commands and ["make", "test"] in commands
        assert any(c[:2] == ["accelerate", "launch"] and "recipes/sft_7b.py" in c for c in commands)


def test_a_mistyped_flag_would_be_caught(no_jobs, capsys):
    with pytest.raises(AssertionError):
        _check(
            ["accelerate", "launch", "--config_file", "accelerate_configs/nowhere.yaml", "recipes/sft_7b.py"], capsys
        )
    with pytest.raises(pytest.fail.Exception):
        _check(
            ["srt", "reflect", "--mode", "response", "--data", "x.json", "--output", "y.jsonl", "--teachr", "x"], capsys
        )


# --- Python --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p, "python")], ids=lambda p: p.name)
def test_every_python_block_compiles(page):
    for i, block in enumerate(_blocks(page, "python")):
        compile(block, f"{page.name} block {i}", "exec")


def test_the_readme_python_example_runs(embedded_dir, monkeypatch):
    """The README's thirty seconds of Python, as written, from the repository root."""
    (example,) = _blocks(REPO / "README.md", "python")
    monkeypatch.chdir(REPO)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "README.md", "exec"), {"__name__": "readme"})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("torch.Size([16, ") and len(lines) == 5  # 4 rows × 4 views, then one line per row
    assert all(re.match(r"IFD \d\.\d{3}  r-IFD \d\.\d{3}  \S", line) for line in lines[1:])
