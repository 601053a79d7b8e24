"""
The conditions a rule can state, each compiled once at load time into a
small object that tests ``StanzaFacts`` and can say why it held or not.

A list value means "any of"; all conditions of a rule must hold; ``not``
holds a table of conditions, each negated on its own.
"""

from __future__ import annotations

import fnmatch

import re2
import re
from dataclasses import dataclass

from guard.core.policy.elements import child_elements, text_of
from guard.core.vocabulary import KIND_TYPES as _KIND_TYPES
from guard.core.vocabulary import STANZA_NAMES, STANZA_NAMESPACES

MAX_REGEX = 512
MAX_PATH_STEPS = 16


class ConditionError(ValueError):
    """A condition written wrongly; ``key`` names it."""

    def __init__(self, key, message):
        super().__init__(message)
        self.key = key


def _as_list(key, value, kind=str):
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConditionError(key, f"{key} is an empty list and could never match")
    for item in values:
        if not isinstance(item, kind) or isinstance(item, bool) and kind is not bool:
            raise ConditionError(key, f"{key} takes {kind.__name__} values, not {item!r}")
    return values


class Condition:
    """One test over a stanza's facts."""

    about_label = False
    # What a label condition says when no label can be established (unreadable,
    # unknown policy, no default): the loader sets True in restrictive rules
    # (drop, bounce, refer) and False in permissive ones, so an unknown label
    # always falls on the side of not passing.
    when_unknown = False

    def holds(self, facts) -> bool:
        raise NotImplementedError

    def explain(self, facts) -> str:
        return f"{self.key} {'holds' if self.holds(facts) else 'does not hold'}"


@dataclass
class KindIs(Condition):
    kinds: frozenset
    key = "kind"

    def holds(self, facts):
        return facts.kind in self.kinds

    def explain(self, facts):
        return f"kind {facts.kind} {'in' if self.holds(facts) else 'not in'} {sorted(self.kinds)}"


@dataclass
class TypeIs(Condition):
    types: frozenset
    key = "type"

    def holds(self, facts):
        return facts.type in self.types

    def explain(self, facts):
        return f"type {facts.type or '(none)'} {'in' if self.holds(facts) else 'not in'} {sorted(self.types)}"


def domain_matches(pattern: str, domain: str | None) -> bool:
    if domain is None:
        return False
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])
    return domain == pattern


@dataclass
class DomainIs(Condition):
    key: str
    side: str  # "from" or "to"
    patterns: tuple

    @property
    def exact(self):
        """The literal domains, when no pattern is a wildcard (used by the rule index)."""
        if any("*" in p for p in self.patterns):
            return None
        return frozenset(self.patterns)

    def _domain(self, facts):
        return facts.from_domain if self.side == "from" else facts.to_domain

    def holds(self, facts):
        domain = self._domain(facts)
        return any(domain_matches(p, domain) for p in self.patterns)

    def explain(self, facts):
        return f"{self.side} domain {self._domain(facts)} {'matches' if self.holds(facts) else 'matches none of'} {list(self.patterns)}"


def _jid_part_matches(pattern, value):
    if pattern is None:
        return True
    return value is not None and fnmatch.fnmatchcase(value, pattern)


@dataclass(frozen=True)
class JidPattern:
    """``[node@]domain[/resource]`` with ``*`` wildcards; an omitted part matches anything."""

    node: str | None
    domain: str
    resource: str | None
    text: str

    @classmethod
    def parse(cls, key, text):
        rest, node, resource = text, None, None
        if "/" in rest:
            rest, resource = rest.split("/", 1)
        if "@" in rest:
            node, rest = rest.split("@", 1)
        if not rest or (node is not None and not node) or (resource is not None and not resource):
            raise ConditionError(key, f"{text!r} is not a JID pattern [node@]domain[/resource]")
        return cls(node.lower() if node else None, rest.lower(), resource, text)

    def matches(self, address) -> bool:
        if address is None:
            return False
        return (
            _jid_part_matches(self.domain, address.host)
            and _jid_part_matches(self.node, address.user)
            and _jid_part_matches(self.resource, address.resource)
        )


@dataclass
class JidIs(Condition):
    key: str
    side: str
    patterns: tuple

    def _address(self, facts):
        return facts.sender if self.side == "from" else facts.receiver

    def holds(self, facts):
        address = self._address(facts)
        return any(p.matches(address) for p in self.patterns)

    def explain(self, facts):
        address = self._address(facts)
        return f"{self.side} {address.full() if address else None} {'matches' if self.holds(facts) else 'matches none of'} {[p.text for p in self.patterns]}"


@dataclass
class PayloadPresent(Condition):
    namespaces: frozenset
    key = "payload_present"

    def holds(self, facts):
        return bool(facts.namespaces & self.namespaces)

    def explain(self, facts):
        return f"payload {sorted(facts.namespaces)} {'includes' if self.holds(facts) else 'includes none of'} {sorted(self.namespaces)}"


@dataclass
class PayloadAbsent(Condition):
    namespaces: frozenset
    key = "payload_absent"

    def holds(self, facts):
        return not facts.namespaces & self.namespaces

    def explain(self, facts):
        return f"payload {sorted(facts.namespaces)} {'has none of' if self.holds(facts) else 'has some of'} {sorted(self.namespaces)}"


@dataclass
class PayloadOnly(Condition):
    namespaces: frozenset
    key = "payload_only"

    def holds(self, facts):
        return facts.namespaces <= self.namespaces

    def explain(self, facts):
        extra = sorted(facts.namespaces - self.namespaces)
        return f"payload only in {sorted(self.namespaces)}" if not extra else f"payload has others: {extra}"


_STEP = re.compile(r"(?:\{(?P<uri>[^{}]+)\})?(?P<name>[A-Za-z_][\w.\-]*)")


@dataclass(frozen=True)
class ElementPath:
    """``{ns}name/{ns}name`` ending optionally in ``@attribute`` or ``#`` (text), as mod_firewall's INSPECT."""

    steps: tuple
    attribute: str | None
    text: str

    @classmethod
    def parse(cls, key, text):
        if not isinstance(text, str) or not text:
            raise ConditionError(key, "inspect path must be a non-empty string")
        steps, position, attribute = [], 0, None
        while True:
            found = _STEP.match(text, position)
            if found is None:
                raise ConditionError(key, f"inspect path {text!r}: expected an element name at character {position}")
            steps.append((found.group("uri"), found.group("name")))
            position = found.end()
            if position == len(text):
                break
            if text[position] == "/":
                position += 1
                continue
            if text[position] == "@":
                attribute = text[position + 1:]
                if not re.fullmatch(r"[A-Za-z_][\w.\-:]*", attribute):
                    raise ConditionError(key, f"inspect path {text!r}: bad attribute name")
                break
            if text[position:] == "#":
                attribute = "#"
                break
            raise ConditionError(key, f"inspect path {text!r}: unexpected {text[position]!r}")
        if len(steps) > MAX_PATH_STEPS:
            raise ConditionError(key, f"inspect path {text!r} is deeper than {MAX_PATH_STEPS}")
        return cls(tuple(steps), attribute, text)

    def values(self, stanza):
        """Every value the path reaches (element text, attribute value, or "" for a bare element)."""
        current = [stanza]
        for uri, name in self.steps:
            following = []
            for element in current:
                for child in child_elements(element):
                    if child.name != name:
                        continue
                    if uri is None and child.uri not in STANZA_NAMESPACES:
                        continue
                    if uri is not None and child.uri != uri:
                        continue
                    following.append(child)
            current = following
        if self.attribute is None:
            return ["" for _ in current]
        if self.attribute == "#":
            return [text_of(e) for e in current]
        return [e.getAttribute(self.attribute) for e in current if e.getAttribute(self.attribute) is not None]


@dataclass(frozen=True)
class Inspection:
    path: ElementPath
    equals: str | None
    pattern: re.Pattern | None

    def holds(self, stanza):
        for value in self.path.values(stanza):
            if self.equals is not None and value != self.equals:
                continue
            if self.pattern is not None and not self.pattern.search(value):
                continue
            return True
        return False

    def __str__(self):
        if self.equals is not None:
            return f"{self.path.text} = {self.equals!r}"
        if self.pattern is not None:
            return f"{self.path.text} ~ /{self.pattern.pattern}/"
        return f"{self.path.text} exists"


@dataclass
class Inspect(Condition):
    inspections: tuple
    key = "inspect"

    def holds(self, facts):
        return any(i.holds(facts.stanza) for i in self.inspections)

    def explain(self, facts):
        return f"inspect {[str(i) for i in self.inspections]} {'found' if self.holds(facts) else 'not found'}"


def compile_regex(key, text):
    """
    An operator's pattern, compiled with RE2: matching takes time linear in
    the input whatever the pattern, so a hostile body cannot make a pattern
    backtrack for seconds.  RE2 has no backreferences or lookaround; a
    pattern using them is refused here, at load time.
    """
    if not isinstance(text, str) or not text:
        raise ConditionError(key, f"{key} takes non-empty regular expressions")
    if len(text) > MAX_REGEX:
        raise ConditionError(key, f"{key} regular expression longer than {MAX_REGEX}")
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(text, options)
    except re2.error as problem:
        raise ConditionError(key, f"{key}: bad regular expression {text!r} (RE2 syntax): {problem}") from None


@dataclass
class BodyMatches(Condition):
    patterns: tuple
    key = "body_matches"

    def holds(self, facts):
        return any(p.search(body) for body in facts.bodies for p in self.patterns)

    def explain(self, facts):
        if not facts.bodies:
            return "no body"
        bodies = "body" if len(facts.bodies) == 1 else f"one of {len(facts.bodies)} bodies"
        if self.holds(facts):
            return f"{bodies} matches {[p.pattern for p in self.patterns]}"
        return f"{'body' if len(facts.bodies) == 1 else 'no body'} matches none of {[p.pattern for p in self.patterns]}"


@dataclass
class TextMatches(Condition):
    """
    Any text the stanza carries, wherever it is: all its text joined (a word
    split across elements meets again), each text node on its own, and the
    value of every attribute of every element but the stanza's ``from`` and
    ``to``.  Meant to refuse (a word in a ``<subject/>``, an XHTML body, a
    ``<thread/>``, a kept attribute or the id is as much in the stanza as one
    in its ``<body/>``); the loader has a letting-through rule use it only
    negated, so that seeing more can only refuse more.
    """

    patterns: tuple
    key = "text_matches"

    def holds(self, facts):
        return any(p.search(text) for text in facts.texts for p in self.patterns)

    def explain(self, facts):
        patterns = [p.pattern for p in self.patterns]
        if self.holds(facts):
            return f"a text of the stanza matches {patterns}"
        return f"no text of the stanza ({len(facts.texts)} looked at) matches {patterns}"


@dataclass
class SizeAbove(Condition):
    limit: int
    key = "larger_than"

    def holds(self, facts):
        return facts.size > self.limit

    def explain(self, facts):
        return f"size {facts.size} {'>' if self.holds(facts) else '<='} {self.limit}"


@dataclass
class SizeBelow(Condition):
    limit: int
    key = "smaller_than"

    def holds(self, facts):
        return facts.size < self.limit

    def explain(self, facts):
        return f"size {facts.size} {'<' if self.holds(facts) else '>='} {self.limit}"


class LabelCondition(Condition):
    """Conditions on security labels; an error's label is judged like any other."""

    about_label = True
    # Whether the condition reads the label's meaning (policy, classification,
    # categories, releasability).  Such a condition is indeterminate when no
    # label can be established, and then neither it nor its negation holds:
    # an unreadable label must never satisfy "not SECRET".
    needs_meaning = True

    def holds(self, facts):
        if self.needs_meaning and facts.label[0] is None:
            return self.when_unknown
        return self.test(facts)

    def explain(self, facts):
        return self.describe(facts)

    def test(self, facts):
        raise NotImplementedError

    def describe(self, facts):
        return f"{self.key} {'holds' if self.test(facts) else 'does not hold'}"


@dataclass
class LabelPresence(LabelCondition):
    needs_meaning = False

    present: bool
    key = "label"

    def test(self, facts):
        return facts.stanza_label.present == self.present

    def describe(self, facts):
        return f"stanza is {'labelled' if facts.stanza_label.present else 'unlabelled'}"


@dataclass
class LabelValid(LabelCondition):
    needs_meaning = False

    valid: bool
    key = "label_valid"

    def test(self, facts):
        return (facts.label[0] is not None) == self.valid

    def describe(self, facts):
        return facts.label[1]


@dataclass
class LabelReleasable(LabelCondition):
    releasable: bool
    key = "label_releasable"

    def test(self, facts):
        return facts.releasable[0] == self.releasable

    def describe(self, facts):
        ok, why = facts.releasable
        return f"{'releasable' if ok else 'not releasable'}: {why}"


@dataclass
class LabelPolicyIs(LabelCondition):
    policies: frozenset
    key = "label_policy"

    def test(self, facts):
        label = facts.label[0]
        return label is not None and label.policy in self.policies

    def describe(self, facts):
        return f"{facts.label[1]}; wanted policy in {sorted(self.policies)}"


@dataclass
class LabelClassificationIs(LabelCondition):
    classifications: frozenset
    key = "label_classification"

    def test(self, facts):
        label = facts.label[0]
        return label is not None and label.classification in self.classifications

    def describe(self, facts):
        return f"{facts.label[1]}; wanted classification in {sorted(self.classifications)}"


@dataclass
class LabelRank(LabelCondition):
    key: str
    classification: str
    at_most: bool
    policies: dict

    def test(self, facts):
        label = facts.label[0]
        if label is None:
            return False
        policy = self.policies.get(label.policy)
        if policy is None or self.classification not in policy.classifications:
            return False
        here, there = policy.rank(label.classification), policy.rank(self.classification)
        return here <= there if self.at_most else here >= there

    def describe(self, facts):
        return f"{facts.label[1]}; wanted {'at most' if self.at_most else 'at least'} {self.classification}"


@dataclass
class LabelIn(LabelCondition):
    entries: tuple  # of (policy, classification, categories or None)
    key = "label_in"

    def test(self, facts):
        label = facts.label[0]
        if label is None:
            return False
        for policy, classification, categories in self.entries:
            if label.policy == policy and label.classification == classification and (
                categories is None or label.categories == categories
            ):
                return True
        return False

    def describe(self, facts):
        return f"{facts.label[1]}; {'in' if self.test(facts) else 'not in'} the named label set"


@dataclass
class Negated(Condition):
    inner: Condition

    @property
    def key(self):
        return f"not.{self.inner.key}"

    @property
    def about_label(self):
        return self.inner.about_label

    def holds(self, facts):
        if getattr(self.inner, "needs_meaning", False) and facts.label[0] is None:
            return self.when_unknown
        return not self.inner.holds(facts)

    def explain(self, facts):
        return f"not ({self.inner.explain(facts)})"


KIND_TYPES = {kind: set(types) for kind, types in _KIND_TYPES.items()}
ALL_TYPES = set().union(*KIND_TYPES.values())
KINDS = STANZA_NAMES
