"""Turning an ``Explanation`` into text an operator reads."""

from __future__ import annotations


def describe(policy, explanation) -> str:
    """The verdict, the deciding rule, every rule considered and why, and the stanza as it leaves."""
    judgement = explanation.judgement
    lines = [f"policy: {policy.name} ({policy.path})"]
    for note in explanation.preliminary:
        lines.append(f"stanza: {note}")
    lines.append("")
    lines.append("rules considered (first match wins):")
    for item in explanation.considered:
        rule = item.rule
        mark = "MATCH" if item.matched else "no"
        terminal = " (acts, does not decide)" if item.matched and rule.verdict == "continue" else ""
        lines.append(f"  [{mark}] {rule.id} rev {rule.rev} -> {rule.verdict}{terminal}: {rule.why}")
        for reason in item.reasons:
            lines.append(f"        {reason}")
    if not explanation.considered:
        lines.append("  (none: decided before the rules)")
    lines.append("")
    lines.append(f"verdict: {judgement.verdict.value}")
    lines.append(f"decided by: {judgement.rule_id} rev {judgement.rule_rev}")
    if judgement.condition:
        lines.append(f"error condition: {judgement.condition}")
    if judgement.text:
        lines.append(f"text: {judgement.text}")
    for action in judgement.actions:
        lines.append(f"action: {action}")
    for note in judgement.notes:
        lines.append(f"log: {note}")
    if judgement.verdict.value == "pass":
        lines.append("leaves as:")
        lines.append(judgement.stanza.toXml())
    return "\n".join(lines) + "\n"
