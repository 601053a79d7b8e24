"""
A policy's own test cases: ``<policy>.tests.toml`` beside ``<policy>.toml``,
each case a stanza written as XML with the verdict and rule id expected.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

from guard.core.pipeline import Direction
from guard.core.policy.elements import StanzaTextError, parse_stanza_text
from guard.core.policy.problems import PolicyError, Problem

CASE_KEYS = {"name", "stanza", "verdict", "rule", "condition", "output", "output_contains", "output_lacks",
             "text_contains", "direction"}
MAX_CASES_BYTES = 4 * 1024 * 1024


@dataclass
class CaseResult:
    name: str
    failures: list = field(default_factory=list)

    @property
    def passed(self):
        return not self.failures


def cases_path(policy_path: str) -> str:
    """``x.toml`` -> ``x.tests.toml``."""
    base = policy_path[:-5] if policy_path.endswith(".toml") else policy_path
    return base + ".tests.toml"


def load_cases(path: str):
    """Read a cases file; raises ``PolicyError``."""
    try:
        with open(path, "rb") as source:
            raw = source.read(MAX_CASES_BYTES + 1)
    except OSError as problem:
        raise PolicyError([Problem(path, "file", f"cannot read: {problem.strerror or problem}")]) from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as problem:
        raise PolicyError([Problem(path, "toml", str(problem))]) from None
    cases = document.get("cases")
    extra = set(document) - {"cases"}
    problems = [Problem(path, "top level", f"unknown key {key!r}") for key in sorted(extra)]
    if not isinstance(cases, list) or not cases:
        problems.append(Problem(path, "cases", "needs at least one [[cases]] table"))
        cases = []
    for number, case in enumerate(cases, start=1):
        if not isinstance(case, dict):
            problems.append(Problem(path, f"case #{number}", "not a table"))
            continue
        for key in case:
            if key not in CASE_KEYS:
                problems.append(Problem(path, f"case {case.get('name', number)}", f"unknown key {key!r}"))
        for key in ("name", "stanza", "verdict"):
            if not isinstance(case.get(key), str):
                problems.append(Problem(path, f"case {case.get('name', number)}", f"{key} is required (a string)"))
        where = f"case {case.get('name', number)}"
        if case.get("verdict") not in ("pass", "drop", "bounce"):
            problems.append(Problem(path, where, "verdict is pass, drop or bounce"))
        for key in ("rule", "condition", "output"):
            if key in case and not isinstance(case[key], str):
                problems.append(Problem(path, where, f"{key} is a string"))
        for key in ("output_contains", "output_lacks", "text_contains"):
            if key in case and (not isinstance(case[key], list) or not all(isinstance(f, str) and f for f in case[key])):
                problems.append(Problem(path, where, f"{key} is a list of non-empty strings"))
        if "direction" in case and not _is_direction(case["direction"]):
            problems.append(Problem(path, where, "direction is \"source->destination\""))
        if isinstance(case.get("output"), str):
            if case.get("verdict") != "pass":
                problems.append(Problem(path, where, "output (the exact stanza that leaves) goes with verdict pass"))
            try:
                parse_stanza_text(case["output"])
            except StanzaTextError as problem:
                problems.append(Problem(path, where, f"output: {problem}"))
    if problems:
        raise PolicyError(problems)
    return cases


def _is_direction(value) -> bool:
    if not isinstance(value, str) or value.count("->") != 1:
        return False
    source, destination = value.split("->")
    return bool(source.strip() and destination.strip())


def run_case(policy, case) -> CaseResult:
    """Judge one case's stanza and compare with what the case expects."""
    result = CaseResult(case["name"])
    try:
        stanza = parse_stanza_text(case["stanza"])
    except StanzaTextError as problem:
        result.failures.append(f"stanza: {problem}")
        return result
    direction = None
    if "direction" in case:
        source, destination = case["direction"].split("->", 1)
        direction = Direction(source.strip(), destination.strip())
    before = stanza.toXml()
    judgement = policy.judge(stanza, direction, size=len(case["stanza"].strip().encode("utf-8")))
    if stanza.toXml() != before:
        result.failures.append("the policy changed the input stanza in place")
    if judgement.verdict.value != case["verdict"]:
        result.failures.append(f"verdict {judgement.verdict.value}, expected {case['verdict']} "
                               f"(rule {judgement.rule_id}: {judgement.text or ''})")
    if "rule" in case and judgement.rule_id != case["rule"]:
        result.failures.append(f"decided by rule {judgement.rule_id}, expected {case['rule']}")
    if "condition" in case and judgement.condition != case["condition"]:
        result.failures.append(f"condition {judgement.condition}, expected {case['condition']}")
    for fragment in case.get("text_contains", []):
        if fragment not in (judgement.text or ""):
            result.failures.append(f"text {judgement.text!r} lacks {fragment!r}")
    output = judgement.stanza.toXml() if judgement.verdict.value == "pass" else ""
    if "output" in case and judgement.verdict.value == "pass":
        expected = parse_stanza_text(case["output"]).toXml()
        if output != expected:
            result.failures.append(f"leaves as {output}, expected exactly {expected}")
    for fragment in case.get("output_contains", []):
        if fragment not in output:
            result.failures.append(f"output lacks {fragment!r}: {output}")
    for fragment in case.get("output_lacks", []):
        if fragment in output:
            result.failures.append(f"output has {fragment!r}: {output}")
    return result


def run_cases(policy, path: str):
    """Run every case of the file at ``path`` against ``policy``."""
    return [run_case(policy, case) for case in load_cases(path)]
