"""`guard --help` and every subcommand's help describe each option with examples, and guard(8) is made from them and current."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
PAGE = PROJECT / "deploy" / "man" / "guard.8"


def man_maker():
    """deploy/man/make_man.py, loaded as a module."""
    spec = importlib.util.spec_from_file_location("make_man", PROJECT / "deploy" / "man" / "make_man.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = man_maker()
COMMANDS = MAKER.subcommands(MAKER.parser_of([]))


def undescribed(path, summary, sub):
    """The commands under ``path`` (itself included) lacking a summary or description, and their arguments lacking help."""
    parser = MAKER.command_parser(path, sub)
    missing = [" ".join(path)] if not (summary and parser.description) else []
    missing += [f"{' '.join(path)} {action.dest}" for action in parser._actions
                if not isinstance(action, (MAKER.argparse._HelpAction, MAKER.argparse._SubParsersAction))
                and not action.help]
    for name, (nested_summary, nested) in MAKER.subcommands(parser).items():
        missing += undescribed([*path, name], nested_summary, nested)
    return missing


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_of_every_command_is_described(name):
    """Each command (and each command under it) has a description and a summary, and every one of its arguments says what it is for."""
    summary, sub = COMMANDS[name]
    assert undescribed([name], summary, sub) == []


@pytest.mark.parametrize("name", ["run", "check-config", "reload", "status", "demo"])
def test_commands_give_examples(name):
    """The help of each command cli.py defines ends with an example of its use."""
    text = subprocess.run([sys.executable, "-m", "guard", name, "--help"], capture_output=True, text=True,
                          cwd=PROJECT, env=os.environ | {"PYTHONPATH": str(PROJECT)}, timeout=60).stdout
    assert "example" in text and f"\n  guard {name}" in text


def test_top_help_lists_every_command_with_examples_signals_and_files():
    """`guard --help` names every command and gives examples, the signals, the exit status and the files."""
    result = subprocess.run([sys.executable, "-m", "guard", "--help"], capture_output=True, text=True, cwd=PROJECT,
                            env=os.environ | {"PYTHONPATH": str(PROJECT)}, timeout=60)
    assert result.returncode == 0
    for heading in ("examples:", "signals:", "exit status:", "files:", *COMMANDS):
        assert heading in result.stdout


def test_committed_manual_page_is_current():
    """deploy/man/guard.8 is what `make man` writes from today's help texts (run `make man` when this fails)."""
    assert PAGE.read_text() == MAKER.manual()


def test_manual_page_has_a_section_per_command_and_every_option():
    """guard(8) has a subsection for each command and a tagged paragraph for each of its options."""
    page = MAKER.manual()
    for name, (_, sub) in COMMANDS.items():
        assert f'.SS "guard {MAKER.roff(name)}"' in page
        for action in MAKER.command_parser([name], sub)._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"\\fB{MAKER.roff(option)}\\fR" in page


def test_man_renders_the_page_without_warnings():
    """`man -l deploy/man/guard.8` renders the page with no troff warning, naming each command."""
    man = shutil.which("man")
    if man is None:
        pytest.skip("man not found: install the Debian packages man-db and groff-base (make test does)")
    result = subprocess.run([man, "--warnings", "-l", str(PAGE)], capture_output=True, text=True, timeout=60,
                            env=os.environ | {"MANWIDTH": "100", "MANPAGER": "cat", "PAGER": "cat", "LC_ALL": "C.UTF-8"})
    assert (result.returncode, result.stderr) == (0, "")
    assert "GUARD(8)" in result.stdout
    for name in COMMANDS:
        assert f"guard {name}" in result.stdout
