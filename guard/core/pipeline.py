"""
The seam between the relay and the policy: a policy judges one stanza and
says what becomes of it.

Everything here is pure: no I/O, no reactor, no metrics.  The relay calls
``policy.judge(stanza, direction)`` for every stanza that passed the
addressing checks and acts on the returned ``Judgement``:

- ``PASS``: the (possibly rewritten) ``Judgement.stanza`` is serialised onto
  the outbound stream;
- ``DROP``: nothing is sent to anyone, an audit record cites the rule;
- ``BOUNCE``: an error reply with ``condition``/``text`` goes back to the
  sender (never to an error, never to an iq result), audited;
- ``REFER``: an external release authority (High Assurance Guard) decides;
  with none configured, or on any failure to answer, the stanza is dropped.

A policy that raises, or returns anything that is not a ``Judgement``, is
treated as ``DROP`` by the caller: fail closed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from twisted.words.xish import domish


class Verdict(enum.Enum):
    PASS = "pass"
    DROP = "drop"
    BOUNCE = "bounce"
    REFER = "refer"


@dataclass(frozen=True)
class Direction:
    """Which way a stanza crosses: from the side named ``source`` to ``destination``."""

    source: str
    destination: str

    def __str__(self) -> str:
        return f"{self.source}->{self.destination}"


@dataclass(frozen=True)
class Judgement:
    """What a policy decided about one stanza, and which rule decided it."""

    verdict: Verdict
    stanza: domish.Element
    rule_id: str
    rule_rev: int = 1
    condition: str | None = None
    text: str | None = None
    # What the policy did on the way (e.g. "strip:rule-id", "translate:map",
    # "fold:profile") and notes for the audit record; both optional.
    actions: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    # The accepted stanza the policy judged (guard.core.accepted), when it judged one.
    accepted: object = None

    @classmethod
    def passed(cls, stanza, rule_id, rule_rev=1):
        return cls(Verdict.PASS, stanza, rule_id, rule_rev)

    @classmethod
    def dropped(cls, stanza, rule_id, rule_rev=1, text=None):
        return cls(Verdict.DROP, stanza, rule_id, rule_rev, text=text)

    @classmethod
    def referred(cls, stanza, rule_id, rule_rev=1):
        return cls(Verdict.REFER, stanza, rule_id, rule_rev)

    @classmethod
    def bounced(cls, stanza, rule_id, condition, text=None, rule_rev=1):
        return cls(Verdict.BOUNCE, stanza, rule_id, rule_rev, condition, text)


class Policy(Protocol):
    """Anything with ``judge`` can sit in the pipeline."""

    def judge(self, stanza: domish.Element, direction: Direction) -> Judgement:
        ...


class AllowAll:
    """Pass everything unchanged: the policy of a guard that only terminates streams."""

    rule_id = "allow-all"

    def judge(self, stanza, direction):
        return Judgement.passed(stanza, self.rule_id)


FAIL_CLOSED_RULE = "guard:policy-failure"


def judge_fail_closed(policy, stanza, direction, accepted=None):
    """
    Ask ``policy`` about ``stanza``; any exception or malformed answer drops it.

    ``accepted`` is the stanza's accepted value (``guard.core.accepted``),
    built once after addressing; a policy that can judge it (``judge_accepted``)
    is given it, so that nothing is parsed or measured a second time.  A
    policy with only ``judge`` is given the element.

    Returns the ``Judgement`` and, when the policy misbehaved, the exception
    (or ``None``), so that the caller can audit what went wrong.
    """
    try:
        judge_accepted = getattr(policy, "judge_accepted", None) if accepted is not None else None
        if judge_accepted is not None:
            judgement = judge_accepted(accepted, direction)
        else:
            judgement = policy.judge(stanza, direction)
    except Exception as problem:  # noqa: BLE001 - fail closed on anything
        return Judgement.dropped(stanza, FAIL_CLOSED_RULE, text=repr(problem)), problem
    if not isinstance(judgement, Judgement) or not isinstance(judgement.verdict, Verdict):
        problem = TypeError(f"policy returned {judgement!r}, not a Judgement")
        return Judgement.dropped(stanza, FAIL_CLOSED_RULE, text=str(problem)), problem
    if judgement.verdict in (Verdict.PASS, Verdict.REFER) and not isinstance(judgement.stanza, domish.Element):
        problem = TypeError("policy passed something that is not a stanza")
        return Judgement.dropped(stanza, FAIL_CLOSED_RULE, text=str(problem)), problem
    return judgement, None
