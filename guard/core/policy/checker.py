"""
Static checks over compiled rules: rules that can never match, and rules
that an earlier rule always decides first (shadowed).  Both are conservative:
a finding is always real; some real cases may go unreported.
"""

from __future__ import annotations

from guard.core.policy.conditions import (
    KIND_TYPES, BodyMatches, DomainIs, Inspect, JidIs, KindIs, LabelClassificationIs, LabelIn,
    LabelPolicyIs, LabelPresence, LabelRank, LabelReleasable, LabelValid, Negated, PayloadAbsent,
    PayloadOnly, PayloadPresent, SizeAbove, SizeBelow, TextMatches, TypeIs,
)


def analyse(policy, lines=None):
    """``[(rule id, message, line)]`` for every impossible or shadowed rule."""
    findings = []
    for rule in policy.rules:
        for message in impossible(rule):
            findings.append((rule.id, f"can never match: {message}", rule.line))
    earlier_rules = _EarlierRules()
    for rule in policy.rules:
        for earlier in earlier_rules.that_could_shadow(rule):
            if shadows(earlier, rule):
                findings.append((rule.id, f"unreachable: rule {earlier.id} (line {earlier.line}) always decides first", rule.line))
                break
        if rule.verdict != "continue":
            earlier_rules.add(rule)
    return findings


class _EarlierRules:
    """
    The deciding rules seen so far, filed by their literal domains, so that a
    large policy is not checked pair by pair.  A rule limited to literal
    to/from domains can only shadow a rule limited to some of the same
    domains; only those (and the rules without literal domains) are compared.
    """

    def __init__(self):
        self.general, self.by_to, self.by_from = [], {}, {}

    def add(self, rule):
        to_domains, from_domains = rule.exact_domains("to"), rule.exact_domains("from")
        if to_domains is not None:
            for domain in to_domains:
                self.by_to.setdefault(domain, []).append(rule)
        elif from_domains is not None:
            for domain in from_domains:
                self.by_from.setdefault(domain, []).append(rule)
        else:
            self.general.append(rule)

    def that_could_shadow(self, rule):
        found = list(self.general)
        to_domains, from_domains = rule.exact_domains("to"), rule.exact_domains("from")
        if to_domains:
            found.extend(self.by_to.get(min(to_domains), ()))
        if from_domains:
            found.extend(self.by_from.get(min(from_domains), ()))
        return sorted(found, key=lambda r: r.order)


def _positive(rule, kind):
    return [c for c in rule.conditions if isinstance(c, kind)]


def impossible(rule):
    """Reasons why ``rule`` can never match (empty when it can)."""
    reasons = []
    kinds = rule.kinds
    types = None
    for condition in _positive(rule, TypeIs):
        types = condition.types if types is None else types & condition.types
    if types is not None:
        possible = set().union(*(KIND_TYPES[k] for k in kinds))
        if not types & possible:
            reasons.append(f"type {sorted(types)} never occurs on {sorted(kinds)}")
    if kinds == {"presence"} and any(isinstance(c, LabelPresence) and c.present for c in rule.conditions):
        reasons.append("labelled presence is dropped before any rule (XEP-0258)")
    above = [c.limit for c in _positive(rule, SizeAbove)]
    below = [c.limit for c in _positive(rule, SizeBelow)]
    if above and below and min(below) <= max(above) + 1:
        reasons.append(f"larger_than {max(above)} and smaller_than {min(below)} leave no size")
    ranks = _positive(rule, LabelRank)
    for low in (c for c in ranks if not c.at_most):
        for high in (c for c in ranks if c.at_most):
            common = [p for p in low.policies.values()
                      if low.classification in p.classifications and high.classification in p.classifications]
            if common and all(p.rank(low.classification) > p.rank(high.classification) for p in common):
                reasons.append(f"label_at_least {low.classification} is above label_at_most {high.classification}")
    for negated in (c for c in rule.conditions if isinstance(c, Negated)):
        for condition in rule.conditions:
            if not isinstance(condition, Negated) and implies(condition, negated.inner):
                reasons.append(f"{condition.key} and not.{negated.inner.key} contradict")
    present = set().union(*(c.namespaces for c in _positive(rule, PayloadPresent))) if _positive(rule, PayloadPresent) else None
    for absent in _positive(rule, PayloadAbsent):
        for one in _positive(rule, PayloadPresent):
            if one.namespaces <= absent.namespaces:
                reasons.append(f"payload_present {sorted(one.namespaces)} are all in payload_absent")
    del present
    if rule.fold is not None and not kinds <= rule.fold.kinds:
        reasons_kinds = sorted(kinds - rule.fold.kinds)
        reasons.append(f"folding profile {rule.fold.name} does not fold {reasons_kinds}; "
                       f"add kind = {sorted(rule.fold.kinds)} to say what the rule is for")
    return reasons


def _domain_covered(pattern, patterns):
    for other in patterns:
        if other == "*" or other == pattern:
            return True
        if other.startswith("*.") and pattern.endswith(other[1:]):
            return True
    return False


def implies(narrow, broad) -> bool:
    """Whether every stanza meeting condition ``narrow`` also meets ``broad`` (conservative)."""
    if isinstance(narrow, Negated) and isinstance(broad, Negated):
        return implies(broad.inner, narrow.inner)
    if isinstance(narrow, Negated) or isinstance(broad, Negated):
        return False
    if type(narrow) is not type(broad):
        if isinstance(narrow, TypeIs) and isinstance(broad, KindIs):
            kinds_of = {k for k, types in KIND_TYPES.items() if narrow.types & types}
            return "error" not in narrow.types and kinds_of <= broad.kinds
        return False
    if isinstance(narrow, KindIs):
        return narrow.kinds <= broad.kinds
    if isinstance(narrow, TypeIs):
        return narrow.types <= broad.types
    if isinstance(narrow, DomainIs):
        return narrow.side == broad.side and all(_domain_covered(p, broad.patterns) for p in narrow.patterns)
    if isinstance(narrow, JidIs):
        return narrow.side == broad.side and {p.text for p in narrow.patterns} <= {p.text for p in broad.patterns}
    if isinstance(narrow, (PayloadPresent, PayloadOnly)):
        return narrow.namespaces <= broad.namespaces
    if isinstance(narrow, PayloadAbsent):
        return narrow.namespaces >= broad.namespaces
    if isinstance(narrow, Inspect):
        return {str(i) for i in narrow.inspections} <= {str(i) for i in broad.inspections}
    if isinstance(narrow, (BodyMatches, TextMatches)):
        return {p.pattern for p in narrow.patterns} <= {p.pattern for p in broad.patterns}
    if isinstance(narrow, SizeAbove):
        return narrow.limit >= broad.limit
    if isinstance(narrow, SizeBelow):
        return narrow.limit <= broad.limit
    if isinstance(narrow, LabelPresence):
        return narrow.present == broad.present
    if isinstance(narrow, LabelValid):
        return narrow.valid == broad.valid
    if isinstance(narrow, LabelReleasable):
        return narrow.releasable == broad.releasable
    if isinstance(narrow, LabelPolicyIs):
        return narrow.policies <= broad.policies
    if isinstance(narrow, LabelClassificationIs):
        return narrow.classifications <= broad.classifications
    if isinstance(narrow, LabelRank):
        return narrow.key == broad.key and narrow.classification == broad.classification
    if isinstance(narrow, LabelIn):
        return set(narrow.entries) <= set(broad.entries)
    return False


def shadows(earlier, later) -> bool:
    """Whether ``earlier`` matches every stanza ``later`` matches (so ``later`` never decides)."""
    if not later.kinds <= earlier.kinds:
        return False
    for condition in earlier.conditions:
        if isinstance(condition, KindIs):
            continue  # compared through kinds above
        if not any(implies(mine, condition) for mine in later.conditions):
            return False
    return True
