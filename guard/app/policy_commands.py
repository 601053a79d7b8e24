"""
Command-line front ends of the policy tools: ``guard check-policy`` and
``guard explain``.  Thin: they read arguments and files and print what the
pure policy package says.
"""

from __future__ import annotations

import argparse
import os
import sys

from guard.core.pipeline import Direction
from guard.core.policy import PolicyError, load_policy
from guard.core.policy.cases import cases_path, run_cases
from guard.core.policy.elements import MAX_STANZA_TEXT, StanzaTextError, parse_stanza_text
from guard.core.policy.explaining import describe
from guard.core.vocabulary import SERVER_NS
from guard.edges.xmlstream import serialise

TESTS_SUFFIX = ".tests.toml"


def check_policy_main(argv: list[str], out=None, err=None) -> int:
    """Validate each policy file and run its test cases; 0 only when all is well."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = argparse.ArgumentParser(
        prog="guard check-policy",
        description="Validate policy files (unknown keys, unknown sets, shadowed and impossible rules) "
                    "and run the test cases in <policy>.tests.toml beside each.  A <policy>.tests.toml "
                    "given as FILE stands for its policy, so 'policies/*.toml' checks each policy once.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="policy file (.toml) or its .tests.toml")
    parser.add_argument("--no-cases", action="store_true", help="validate only; do not require or run test cases")
    arguments = parser.parse_args(argv)
    failed = False
    for path in policies_named_by(arguments.files):
        try:
            policy = load_policy(path)
        except PolicyError as problem:
            print(str(problem), file=err)
            failed = True
            continue
        if arguments.no_cases:
            print(f"{path}: ok ({len(policy.rules)} rules)", file=out)
            continue
        tests = cases_path(path)
        if not os.path.exists(tests):
            print(f"{path}: no test cases: {tests} is missing", file=err)
            failed = True
            continue
        try:
            results = run_cases(policy, tests)
        except PolicyError as problem:
            print(str(problem), file=err)
            failed = True
            continue
        bad = [r for r in results if not r.passed]
        for result in bad:
            for failure in result.failures:
                print(f"{tests}: case {result.name!r}: {failure}", file=err)
        if bad:
            failed = True
        print(f"{path}: {len(policy.rules)} rules, {len(results) - len(bad)}/{len(results)} cases pass", file=out)
    return 1 if failed else 0


def policies_named_by(files: list[str]) -> list[str]:
    """
    The policy files to check, in order, each once: a ``<policy>.tests.toml``
    stands for ``<policy>.toml`` (its cases run when the policy is checked),
    so that ``guard check-policy policies/*.toml`` works.
    """
    policies = []
    for path in files:
        if path.endswith(TESTS_SUFFIX):
            path = path[: -len(TESTS_SUFFIX)] + ".toml"
        if path not in policies:
            policies.append(path)
    return policies


def explain_main(argv: list[str], out=None, err=None, stdin=None) -> int:
    """Show how a policy judges one stanza, rule by rule; 0 when judged, 2 on bad input."""
    out = out or sys.stdout
    err = err or sys.stderr
    stdin = stdin or sys.stdin
    parser = argparse.ArgumentParser(
        prog="guard explain",
        description="Print the verdict on one stanza, the rule that decided, every rule considered "
                    "and why it matched or not, and the stanza as it would leave.")
    parser.add_argument("--policy", required=True, metavar="FILE", help="policy file (.toml)")
    parser.add_argument("--direction", metavar="SOURCE->DESTINATION",
                        help="sides the stanza crosses, when the policy names them")
    parser.add_argument("stanza", nargs="?", default="-", metavar="STANZA.xml",
                        help="file holding one stanza as XML; '-' or nothing reads standard input")
    arguments = parser.parse_args(argv)
    try:
        policy = load_policy(arguments.policy)
    except PolicyError as problem:
        print(str(problem), file=err)
        return 2
    try:
        if arguments.stanza == "-":
            text = stdin.read(MAX_STANZA_TEXT + 1)
        else:
            with open(arguments.stanza, encoding="utf-8") as source:
                text = source.read(MAX_STANZA_TEXT + 1)
    except (OSError, UnicodeDecodeError) as problem:
        print(f"{arguments.stanza}: cannot read: {problem}", file=err)
        return 2
    try:
        stanza = parse_stanza_text(text)
    except StanzaTextError as problem:
        print(f"{arguments.stanza}: {problem}", file=err)
        return 2
    direction = None
    if arguments.direction:
        if "->" not in arguments.direction:
            print("--direction is SOURCE->DESTINATION", file=err)
            return 2
        source, destination = arguments.direction.split("->", 1)
        direction = Direction(source.strip(), destination.strip())
    explanation = policy.explain(stanza, direction, size=len(text.strip().encode("utf-8")))
    out.write(leaving_as_on_the_wire(describe(policy, explanation), explanation.judgement))
    return 0


def leaving_as_on_the_wire(text: str, judgement) -> str:
    """The explanation with its "leaves as" stanza replaced by the exact text the S2S wire serialiser writes."""
    if judgement.verdict.value != "pass":
        return text
    described = "leaves as:\n" + judgement.stanza.toXml() + "\n"
    if not text.endswith(described):
        raise AssertionError("the explanation does not end with the stanza as it leaves")
    try:
        wire = serialise(judgement.stanza, SERVER_NS)  # the default namespace of the S2S streams it leaves on
    except ValueError:
        wire = "(nothing: the stanza cannot be serialised, so it would be refused)"
    return text[: -len(described)] + "leaves as:\n" + wire + "\n"


if __name__ == "__main__":  # pragma: no cover - convenience for running without the guard CLI
    commands = {"check-policy": check_policy_main, "explain": explain_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print("usage: python -m guard.app.policy_commands check-policy|explain ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
