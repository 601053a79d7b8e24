"""
Write guard(8), in roff, to standard output: made from the argparse parsers
of ``guard`` and of each of its subcommands (their descriptions, options and
epilogs), so that the manual says what ``--help`` says.  ``make man`` runs
it into deploy/man/guard.8; a test checks that the committed page is current.

The parsers are taken as ``guard`` builds them: ``parse_args`` is replaced,
while this runs, by one that hands the parser back instead of parsing.
"""

from __future__ import annotations

import argparse
import re
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import guard  # noqa: E402
from guard.app import cli  # noqa: E402

SECTION_HEADING = re.compile(r"^([a-z][a-z ]*):(?: (.*))?$")


class _Built(Exception):
    """Carries the parser a command built, out of the command."""

    def __init__(self, parser):
        super().__init__(parser.prog)
        self.parser = parser


@contextmanager
def _parsers_handed_back():
    original = argparse.ArgumentParser.parse_args

    def hand_back(self, *args, **kwargs):
        raise _Built(self)

    argparse.ArgumentParser.parse_args = hand_back
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def parser_of(argv: list[str]) -> argparse.ArgumentParser:
    """The parser ``guard`` builds for ``argv`` (the top parser, or a command's own, as check-policy has)."""
    with _parsers_handed_back():
        try:
            cli.main(argv)
        except _Built as built:
            return built.parser
    raise RuntimeError(f"guard {' '.join(argv)} built no parser")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """name -> (one-line help, parser) for each subcommand of ``parser``, in its order."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found[name] = (helps.get(name) or "", sub)
    return found


def command_parser(path: list[str], sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A command's own parser when it builds one (``guard check-policy``), else its subparser."""
    own = parser_of(path)
    return own if own.prog == f"guard {' '.join(path)}" else sub


def roff(text: str) -> str:
    """``text`` safe in roff: backslashes and hyphens escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def paragraphs(text: str) -> list[str]:
    """Roff for a description: one .PP per paragraph, words re-flowed."""
    out = []
    for block in re.split(r"\n\s*\n", (text or "").strip()):
        if block.strip():
            out += [".PP", roff(" ".join(block.split()))]
    return out


def epilog(text: str, level: str) -> list[str]:
    """Roff for an epilog: each "heading:" line opens a section (``level`` .SH or .SS), its lines kept as written."""
    out = []
    for block in re.split(r"\n\s*\n", (text or "").strip()):
        lines = block.split("\n")
        heading = SECTION_HEADING.match(lines[0])
        if heading is None:
            out += [".PP", ".nf", roff(block), ".fi"]
            continue
        if level == ".SH":
            out.append(f'.SH "{heading.group(1).upper()}"')
        else:
            out += [".PP", f"\\fB{roff(heading.group(1).capitalize())}:\\fR"]
        rest = ([heading.group(2)] if heading.group(2) else []) + lines[1:]
        if heading.group(2):
            out += [roff(" ".join(" ".join(rest).split()))]
        else:
            out += [".nf", roff("\n".join(rest)), ".fi"]
    return out


def options(parser: argparse.ArgumentParser) -> list[str]:
    """Roff for every argument of ``parser`` but --help: a tagged paragraph each."""
    out = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
        if action.option_strings:
            takes = "" if action.nargs == 0 else f" \\fI{roff(metavar)}\\fR"
            tag = ", ".join(f"\\fB{roff(option)}\\fR{takes}" for option in action.option_strings)
        else:
            tag = f"\\fI{roff(metavar)}\\fR" + (" ..." if action.nargs in ("+", "*") else "")
        required = " (required)" if getattr(action, "required", False) and action.option_strings else ""
        out += [".TP", tag, roff((action.help or "") + required)]
    return out


def usage(parser: argparse.ArgumentParser) -> str:
    text = parser.format_usage().strip()
    return " ".join(text.removeprefix("usage:").split())


def manual() -> str:
    top = parser_of([])
    lines = [
        '.\\" guard(8): generated by deploy/make_man.py from the help of guard; do not edit: make man',
        f'.TH GUARD 8 "" "xmpp-guard {guard.__version__}" "System Administration"',
        ".SH NAME",
        "guard \\- " + roff("an XMPP server-to-server boundary guard"),
        ".SH SYNOPSIS",
    ]
    commands = subcommands(top)
    for name in commands:
        lines += [".nf", f"\\fBguard {roff(name)}\\fR \\fI{roff('[options]')}\\fR", ".fi"]
    lines += [".SH DESCRIPTION", *paragraphs(top.description)]
    lines.append(".SH COMMANDS")
    for name, (summary, sub) in commands.items():
        lines += command_section([name], summary, sub)
    lines += epilog(top.epilog, ".SH")
    lines += [".SH SEE ALSO", "\\fBsystemd.socket\\fR(5), \\fBsystemd\\-socket\\-activate\\fR(1), "
              "\\fBsystemd\\-analyze\\fR(1), \\fBprosody\\fR(1), \\fBlogrotate\\fR(8)"]
    return "\n".join(lines) + "\n"


def command_section(path: list[str], summary: str, sub: argparse.ArgumentParser) -> list[str]:
    """Roff for one command (and, nested, the commands under it): usage, description, options, epilog."""
    parser = command_parser(path, sub)
    lines = [f'.SS "guard {roff(" ".join(path))}"', roff(summary) if summary else "",
             ".PP", ".nf", roff(usage(parser)), ".fi"]
    lines += paragraphs(parser.description)
    lines += options(parser)
    lines += epilog(parser.epilog, ".SS")
    for name, (nested_summary, nested) in subcommands(parser).items():
        lines += command_section([*path, name], nested_summary, nested)
    return [line for line in lines if line != ""]


if __name__ == "__main__":
    sys.stdout.write(manual())
