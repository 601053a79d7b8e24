"""
A loaded policy: its rules in order, indexed by kind and domain, and the
judge that applies them to one stanza.  Built once by the loader and never
changed afterwards, so that swapping policies is one reference assignment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from guard.core.accepted import NotAccepted, accepted_from_element
from guard.core.pipeline import Judgement, Verdict
from guard.core.policy.conditions import DomainIs, KindIs, KINDS, Negated, TypeIs
from guard.core.policy.elements import adopt, clone, seal, sealed_copy
from guard.core.policy.facts import StanzaFacts
from guard.core.policy.labels import LabelMeaningError
from guard.core.policy.memory import BoundedMemory
from guard.core.policy.shapes import EVERYTHING, EnvelopeBounds, envelope, kept_children, reduced_error

RULE_WRONG_DIRECTION = "guard:wrong-direction"
RULE_UNKNOWN_TYPE = "guard:unknown-type"
RULE_TWO_LABELS = "xep0258:two-labels"
RULE_LABEL_ON_PRESENCE = "xep0258:label-on-presence"
RULE_DEFAULT = "default"
# The bounce text of a label that cannot be translated: the guard's own words;
# why (which may quote the label) goes to the audit notes only.
UNTRANSLATABLE = "The security label cannot be translated for the far side."
# Refusals of a text the envelope carries unjudged, over its bound: (rule, the guard's own words).
TOO_LONG = {
    "id": ("guard:long-id", "The stanza id is longer than the guard carries across the boundary."),
    "localpart": ("guard:long-localpart", "An address localpart is longer than the guard carries across the boundary."),
    "resource": ("guard:long-resource", "An address resource is longer than the guard carries across the boundary."),
}

# The rules that can match, remembered by (kind, from domain, to domain,
# type): bounded in entries and in bytes (the domains of each key, a pointer
# per rule remembered), since a peer with many domains picks the keys and a
# large policy makes each entry large.
INDEX_CACHE_LIMIT = 4096
INDEX_CACHE_BYTES = 4 * 1024 * 1024
# Labels the guard has encoded, by judged value (DER encoding is the costly
# part of releasing a labelled stanza); each use gets its own copy.  Bounded
# in entries and in bytes (the text of each key and of each label kept); a
# label with equivalent labels is encoded every time, never remembered.
LABEL_CACHE_LIMIT = 1024
LABEL_CACHE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Rule:
    """One rule: when all ``conditions`` hold, ``verdict`` decides (``continue`` only acts)."""

    id: str
    rev: int
    why: str
    order: int
    conditions: tuple
    verdict: str
    condition: str | None = None
    text: str | None = None
    fold: object = None
    translate: object = None
    strip: tuple = ()
    log: str | None = None
    line: int | None = None
    # What a passing verdict lets leave: shapes of the children kept (none:
    # the envelope only), or EVERYTHING (allow-all: the matched stanza whole).
    keep: object = ()

    @property
    def kinds(self):
        """The kinds this rule can match (from a positive ``kind`` condition)."""
        for condition in self.conditions:
            if isinstance(condition, KindIs):
                return condition.kinds
        return KINDS

    @property
    def types(self):
        """The types this rule can match (from its positive ``type`` conditions), or None for any."""
        found = None
        for condition in self.conditions:
            if isinstance(condition, TypeIs):
                found = condition.types if found is None else found & condition.types
        return found

    def exact_domains(self, side):
        for condition in self.conditions:
            if isinstance(condition, DomainIs) and condition.side == side and condition.exact is not None:
                return condition.exact
        return None


@dataclass
class Consideration:
    """How one rule fared against one stanza (for ``explain``)."""

    rule: Rule
    matched: bool
    reasons: list = field(default_factory=list)


@dataclass
class Explanation:
    judgement: Judgement
    considered: list
    preliminary: list


class CompiledPolicy:
    """A policy ready to judge stanzas; pure and immutable once built."""

    def __init__(self, name, path, rules, default, labels, folding, translations,
                 sides=None, description="", envelope_bounds=EnvelopeBounds()):
        self.name = name
        self.path = path
        self.rules = tuple(rules)
        self.default = default  # (verdict, condition, text)
        self.labels = labels
        self.folding = folding
        self.translations = translations
        self.sides = sides  # (source, destination) or None
        self.description = description
        self.envelope_bounds = envelope_bounds
        self._types = {rule.order: rule.types for rule in self.rules}
        self._index = self._build_index()
        self._candidates_cache = BoundedMemory()
        self._label_cache = BoundedMemory()

    # --- index ---------------------------------------------------------------

    def _build_index(self):
        index = {}
        for kind in KINDS:
            by_to, by_from, general = {}, {}, []
            for rule in self.rules:
                if kind not in rule.kinds:
                    continue
                to_domains = rule.exact_domains("to")
                from_domains = rule.exact_domains("from")
                if to_domains is not None:
                    for domain in to_domains:
                        by_to.setdefault(domain, []).append(rule)
                elif from_domains is not None:
                    for domain in from_domains:
                        by_from.setdefault(domain, []).append(rule)
                else:
                    general.append(rule)
            index[kind] = (by_to, by_from, general)
        return index

    def candidates(self, kind, from_domain, to_domain, stanza_type=None):
        """The rules that can possibly match (of this kind, domains and, when given, type), in file order."""
        key = (kind, from_domain, to_domain, stanza_type)
        found = self._candidates_cache.get(key)
        if found is not None:
            return found
        by_to, by_from, general = self._index[kind]
        merged = {rule.order: rule for rule in general}
        merged.update((rule.order, rule) for rule in by_to.get(to_domain, ()))
        merged.update((rule.order, rule) for rule in by_from.get(from_domain, ()))
        found = tuple(merged[order] for order in sorted(merged)
                      if stanza_type is None or self._types[order] is None or stanza_type in self._types[order])
        self._candidates_cache.put(key, found, len(from_domain) + len(to_domain) + 8 * (len(found) + 8),
                                   INDEX_CACHE_LIMIT, INDEX_CACHE_BYTES)
        return found

    # --- judging -------------------------------------------------------------

    def judge(self, stanza, direction, size=None):
        """
        Decide what becomes of ``stanza`` (an element) crossing in ``direction``;
        ``size`` is the length of the text it was read from, when known.
        """
        return self.judge_accepted(accepted_from_element(stanza, direction, size), direction)

    def judge_accepted(self, accepted, direction=None):
        """Decide what becomes of an accepted stanza (see ``guard.core.accepted``)."""
        return self._evaluate(accepted, direction, None)

    def explain(self, stanza, direction=None, size=None):
        """Judge ``stanza`` considering every rule in order, recording why each matched or not."""
        considered, preliminary = [], []
        accepted = accepted_from_element(stanza, direction, size)
        judgement = self._evaluate(accepted, direction, (considered, preliminary))
        return Explanation(judgement, considered, preliminary)

    def _evaluate(self, accepted, direction, trace):
        if isinstance(accepted, NotAccepted):
            return Judgement.dropped(accepted.element, accepted.rule, text=accepted.text)
        stanza = accepted.element
        if self.sides is not None and direction is not None:
            if (direction.source, direction.destination) != self.sides:
                return Judgement.dropped(stanza, RULE_WRONG_DIRECTION,
                                         text=f"policy {self.name} is for {self.sides[0]}->{self.sides[1]}, not {direction}")
        if not accepted.type_is_known:
            return Judgement.dropped(stanza, RULE_UNKNOWN_TYPE,
                                     text=f"{accepted.kind} type is not one RFC 6120/6121 defines")
        facts = StanzaFacts(accepted, self.labels)
        # Counted, not read: a rule that looks at the label reads it (facts.stanza_label), once.
        labels_on_stanza = facts.label_count
        if labels_on_stanza > 1:
            return self._refuse(facts, RULE_TWO_LABELS, 1, "bad-request",
                                "more than one security label (XEP-0258)")
        if labels_on_stanza and facts.kind == "presence":
            # Presence is broadcast: one error per recipient would be noise, so drop.
            return Judgement.dropped(stanza, RULE_LABEL_ON_PRESENCE,
                                     text="security label on presence is a protocol violation (XEP-0258)")
        if trace is not None:
            trace[1].append(f"kind {facts.kind}, type {facts.type or '(none)'}, "
                            f"{facts.from_domain} -> {facts.to_domain}, {facts.size} bytes")
            rules = self.rules
        else:
            rules = self.candidates(facts.kind, facts.from_domain, facts.to_domain, facts.type)
        current, actions, notes = stanza, [], []
        for rule in rules:
            if trace is None:
                # all(condition.holds(facts) ...) without a generator per rule.
                for condition in rule.conditions:
                    if not condition.holds(facts):
                        matched = False
                        break
                else:
                    matched = True
            else:
                reasons = []
                matched = True
                for condition in rule.conditions:
                    held = condition.holds(facts)
                    reasons.append(("yes " if held else "no  ") + condition.explain(facts))
                    if not held:
                        matched = False
                if not rule.conditions:
                    reasons.append("yes (no conditions: matches everything)")
                trace[0].append(_considered(rule, matched, reasons))
            if not matched:
                continue
            if rule.log:
                notes.append(f"{rule.id}: {rule.log}")
            if rule.strip:
                current = clone(current, skip=lambda c, patterns=rule.strip: any(p.matches(c) for p in patterns))
                actions.append(f"strip:{rule.id}")
            if rule.verdict == "continue":
                continue
            return self._decide(rule, facts, current, actions, notes)
        verdict, condition, text = self.default
        return self._finish(facts, RULE_DEFAULT, 1, verdict, current, condition, text, None, None, (),
                            actions, notes)

    def _decide(self, rule, facts, current, actions, notes):
        return self._finish(facts, rule.id, rule.rev, rule.verdict, current, rule.condition,
                            rule.text, rule.fold, rule.translate, rule.keep, actions, notes)

    def _finish(self, facts, rule_id, rev, verdict, current, condition, text, fold, translate, keep,
                actions, notes):
        stanza = facts.stanza
        if verdict == "drop":
            return Judgement(Verdict.DROP, stanza, rule_id, rev, None, text, tuple(actions), tuple(notes),
                             facts.accepted)
        if verdict == "bounce":
            return _with(self._refuse(facts, rule_id, rev, condition, text), actions, notes, facts)
        if verdict not in ("pass", "fold", "translate", "refer"):
            return Judgement.dropped(stanza, rule_id, rev, text=f"unknown verdict {verdict!r}")
        exceeded = self.envelope_bounds.exceeded(facts.accepted)
        if exceeded is not None:
            # Texts the envelope carries unjudged: only so much of each may leave.
            too_long, too_long_text = TOO_LONG[exceeded]
            return _with(self._refuse(facts, too_long, 1, "policy-violation", too_long_text), actions, notes, facts)
        if verdict == "refer":
            # The release authority is asked about what would leave, built as a
            # pass builds it (the rule's keep shapes); what it releases is that
            # stanza, never the one received.  With none configured the relay drops.
            if keep == EVERYTHING:
                return _with(Judgement.referred(clone(current), rule_id, rev), actions + ["keep:everything"],
                             notes, facts)
            outgoing, refusal = self._construct(facts, current, None, None, keep, actions, notes)
            if outgoing is None:
                return _with(refusal(stanza, rule_id, rev), actions, notes, facts)
            return _with(Judgement.referred(outgoing, rule_id, rev), actions, notes, facts)
        if keep == EVERYTHING:
            # allow-all: the guard terminates streams and judges nothing; the
            # stanza leaves whole (re-serialised by the wire serialiser).
            return _with(Judgement.passed(clone(current), rule_id, rev), actions + ["keep:everything"], notes, facts)
        outgoing, refusal = self._construct(facts, current, fold, translate, keep, actions, notes)
        if outgoing is None:
            return _with(refusal(stanza, rule_id, rev), actions, notes, facts)
        return Judgement(Verdict.PASS, outgoing, rule_id, rev, None, None, tuple(actions), tuple(notes),
                         facts.accepted)

    def _construct(self, facts, current, fold, translate, keep, actions, notes):
        """
        The stanza that leaves, built new: the envelope, then what the verdict
        allows (an error's reduced ``<error/>``; the folding profile's or the
        rule's kept children), then the label the guard encodes from the value
        it judged.  ``(None, refusal)`` when it cannot be built; ``refusal``
        makes the judgement from (stanza, rule id, rev).
        """
        outgoing = envelope(facts.accepted)
        if facts.is_error:
            # An error carries its type and one defined condition, never the payload it echoes.
            if fold is not None and fold.drops_type(facts.kind, facts.type):
                actions.append(f"fold:{fold.name}")
                return None, _dropping(f"folded away: message type {facts.type} is folded away")
            error = reduced_error(current)
            if error.element is None:
                return None, _dropping(error.reason)
            adopt(outgoing, error.element)
            actions.append("error:reduced")
        elif fold is not None:
            folded = fold.fold(current, facts.type)
            actions.append(f"fold:{fold.name}")
            if folded.children is None:
                return None, _dropping(f"folded away: {folded.note}")
            for child in folded.children:
                adopt(outgoing, child)
        else:
            for child in kept_children(current, keep, outgoing.uri):
                adopt(outgoing, child)
        if translate is not None:
            label, why = facts.label
            if label is None:
                notes.append(f"security label cannot be translated: {why}")
                return None, self._refusing(facts, UNTRANSLATABLE)
            try:
                relabelled = self._encoded(("translate", translate.name, label),
                                           lambda: self.labels.relabelled(facts.stanza_label.element, label, translate))
            except (LabelMeaningError, KeyError, ValueError) as problem:
                notes.append(f"security label cannot be translated: {problem}")
                return None, self._refusing(facts, UNTRANSLATABLE)
            adopt(outgoing, relabelled)
            actions.append(f"translate:{translate.name}")
        elif facts.stanza_label.present:
            # Never the sender's label: the one the guard encodes from what it judged.
            label, why = facts.label
            if label is None or self.labels is None:
                return None, _dropping(f"the security label cannot be carried: {why}")
            try:
                adopt(outgoing, self._encoded(("release", label),
                                              lambda: self.labels.outgoing_label(facts.stanza_label, label)))
            except (LabelMeaningError, KeyError, ValueError) as problem:
                return None, _dropping(f"the security label cannot be carried: {problem}")
            actions.append("label:re-encoded")
        return outgoing, None

    def _encoded(self, key, encode):
        """
        A sealed copy of the ``<securitylabel/>`` ``encode()`` builds (the
        serialiser writes it from text it remembers), remembered by ``key``: what the output depends on (the judged value, and the
        translation), never anything the sender wrote.  Bounded; any failure
        to build is raised, never remembered.
        """
        found = self._label_cache.get(key)
        if found is None:
            found = seal(encode())
            self._label_cache.put(key, found, len(repr(key)) + len(found.toXml()), LABEL_CACHE_LIMIT, LABEL_CACHE_BYTES)
        return sealed_copy(found)

    def _refusing(self, facts, text):
        return lambda stanza, rule_id, rev: self._refuse(facts, rule_id, rev, "policy-violation", text)

    def _refuse(self, facts, rule_id, rev, condition, text):
        """Bounce, except to an error or an iq result, which are dropped instead."""
        if facts.is_error or (facts.kind == "iq" and facts.type == "result"):
            return Judgement.dropped(facts.stanza, rule_id, rev,
                                     text=f"not bounced ({facts.kind} {facts.type}): {text or condition}")
        return Judgement.bounced(facts.stanza, rule_id, condition or "not-acceptable", text=text, rule_rev=rev)


def _dropping(text):
    return lambda stanza, rule_id, rev: Judgement.dropped(stanza, rule_id, rev, text=text)


def _considered(rule, matched, reasons):
    return Consideration(rule, matched, reasons)


def _with(judgement, actions, notes, facts=None):
    """Attach the actions taken, the audit notes and the accepted stanza to a judgement."""
    accepted = facts.accepted if facts is not None else None
    if not actions and not notes and accepted is None:
        return judgement
    return Judgement(judgement.verdict, judgement.stanza, judgement.rule_id, judgement.rule_rev,
                     judgement.condition, judgement.text, tuple(actions), tuple(notes), accepted)


__all__ = ["CompiledPolicy", "Rule", "Explanation", "Consideration", "Negated", "Verdict"]
