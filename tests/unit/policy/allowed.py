"""
What a stanza that leaves may hold, checked from the outside: given the
policy, the judgement and the stanza that arrived, every part of what leaves
must be one the deciding rule allows (its shapes, its folding profile's, an
error's type and condition, the label the guard writes), and what leaves must
be no larger than what arrived plus what the guard adds.  Shared by the leak
corpus, the hypothesis properties and the pipeline fuzzer.
"""

from __future__ import annotations

from twisted.words.xish import domish

from guard.core.addressing import parse_jid
from guard.core.policy.compiled import CompiledPolicy
from guard.core.policy.folding import PRESENCE_STATES
from guard.core.policy.shapes import EVERYTHING, LANGUAGE_TAG
from guard.core.vocabulary import (
    SEC_LABEL_NS, STANZA_ERROR_CONDITIONS, STANZA_ERROR_TYPES, STANZA_ERRORS_NS, XML_LANG,
)
from tests.trees import tree

ENVELOPE_ATTRIBUTES = {"from", "to", "id", "type", XML_LANG}



def _elements(element):
    return [child for child in element.children if isinstance(child, domish.Element)]


def _text(element):
    return "".join(child for child in element.children if isinstance(child, str))


def _shape_problems(element, shapes, where):
    """Why ``element`` is no shape in ``shapes`` allows (empty when one does)."""
    candidates = [shape for shape in shapes if shape.matches(element)]
    if not candidates:
        return [f"{where}: {{{element.uri}}}{element.name} is no kept shape"]
    shape = candidates[0]
    problems = []
    allowed = {XML_LANG if a == "xml:lang" else a for a in shape.attributes}
    extra = set(element.attributes) - allowed
    if extra:
        problems.append(f"{where}/{element.name}: attributes {sorted(map(str, extra))} not in its shape")
    if _text(element) and not shape.text:
        problems.append(f"{where}/{element.name}: text its shape does not allow")
    for child in _elements(element):
        problems.extend(_shape_problems(child, shape.children, f"{where}/{element.name}"))
    return problems


def _unjudged_text_problems(policy, leaving):
    """The texts no rule judges, over their bounds: the id, the resources, any xml:lang, a priority."""
    problems = []
    bounds = policy.envelope_bounds
    if len((leaving.getAttribute("id") or "").encode("utf-8")) > bounds.id:
        problems.append("an id longer than the policy's id_max_bytes")
    for name in ("from", "to"):
        address = parse_jid(leaving.getAttribute(name))
        if len((address.user or "").encode("utf-8")) > bounds.localpart:
            problems.append(f"a {name} localpart longer than the policy's localpart_max_bytes")
        if len((address.resource or "").encode("utf-8")) > bounds.resource:
            problems.append(f"a {name} resource longer than the policy's resource_max_bytes")
    pending = [leaving]
    while pending:
        element = pending.pop()
        language = element.attributes.get(XML_LANG)
        if language is not None and not LANGUAGE_TAG.fullmatch(language):
            problems.append(f"xml:lang {language!r} on {element.name} is not language[-Script][-REGION]")
        if element.name == "priority" and element.uri == leaving.uri and element is not leaving:
            if not (_text(element).lstrip("-").isascii() and _text(element).lstrip("-").isdigit()
                    and -128 <= int(_text(element)) <= 127):
                problems.append(f"a <priority/> of {_text(element)!r}")
        pending.extend(_elements(element))
    return problems


def _error_problems(error):
    problems = []
    if set(error.attributes) != {"type"} or error.getAttribute("type") not in STANZA_ERROR_TYPES:
        problems.append(f"<error/> attributes {sorted(map(str, error.attributes))}")
    if _text(error):
        problems.append("<error/> holds text")
    conditions = _elements(error)
    if len(conditions) != 1 or conditions[0].uri != STANZA_ERRORS_NS \
            or conditions[0].name not in STANZA_ERROR_CONDITIONS \
            or conditions[0].attributes or conditions[0].children:
        problems.append("<error/> does not hold exactly one empty defined condition")
    return problems


def disallowed_parts(policy, judgement, received) -> list[str]:
    """Every part of ``judgement.stanza`` the deciding rule of ``policy`` does not allow (empty: all allowed)."""
    if not isinstance(policy, CompiledPolicy):
        return []
    leaving = judgement.stanza
    rule = next((r for r in policy.rules if r.id == judgement.rule_id), None)
    if rule is None:
        return [f"passed by {judgement.rule_id}, which is no rule of the policy"]
    if rule.keep == EVERYTHING:
        return [] if tree(leaving) == tree(received) else ["keep = everything changed the stanza"]
    problems = []
    if (leaving.uri, leaving.name) != (received.uri, received.name):
        problems.append(f"the stanza left as {{{leaving.uri}}}{leaving.name}")
    extra = set(leaving.attributes) - ENVELOPE_ATTRIBUTES
    if extra:
        problems.append(f"stanza attributes {sorted(map(str, extra))}")
    for name in ("id", "type"):
        if leaving.getAttribute(name) != received.getAttribute(name):
            problems.append(f"{name} changed")
    for name in ("from", "to"):
        if leaving.getAttribute(name) != parse_jid(received.getAttribute(name)).full():
            problems.append(f"{name} is not the parsed address")
    if _text(leaving):
        problems.append("text directly inside the stanza")
    problems.extend(_unjudged_text_problems(policy, leaving))
    children = _elements(leaving)
    labels = [c for c in children if c.uri == SEC_LABEL_NS and c.name == "securitylabel"]
    if len(labels) > 1 or labels and children[-1] is not labels[0]:
        problems.append("more than one label, or a label that is not the guard's last child")
    if labels and rule.translate is None and not any(
            c.uri == SEC_LABEL_NS and c.name == "securitylabel" for c in _elements(received)):
        problems.append("a label on a stanza that arrived without one and was not translated")
    content = [c for c in children if c not in labels]
    if received.getAttribute("type") == "error":
        if len(content) != 1 or content[0].name != "error":
            problems.append("an error carries more than its <error/>")
        else:
            problems.extend(_error_problems(content[0]))
        return problems
    if rule.fold is not None:
        part = rule.fold.message if received.name == "message" else rule.fold.presence
        shapes = part.keep
        if received.name == "presence":
            shows = [c for c in content if c.name == "show" and c.uri == leaving.uri]
            if len(shows) > 1 or shows and (_text(shows[0]) not in PRESENCE_STATES or shows[0].attributes):
                problems.append("a <show/> that is not one the guard writes")
            content = [c for c in content if c not in shows]
    else:
        shapes = rule.keep
    for child in content:
        problems.extend(_shape_problems(child, shapes, leaving.name))
    return problems


def size_problem(serialise, judgement, received, received_size) -> str | None:
    """
    Whether what leaves is larger than what arrived plus what the guard adds:
    the label it encodes, a <show/> it writes and the addresses as parsed.
    What arrived is measured on the wire and as the same serialiser writes
    it (escaping is the serialiser's to bound, not the policy's).  ``None``
    when it is not larger.
    """
    leaving = judgement.stanza
    added = 0
    for child in _elements(leaving):
        if (child.uri, child.name) in ((SEC_LABEL_NS, "securitylabel"), (leaving.uri, "show")):
            added += len(serialise(child).encode("utf-8"))
    added += sum(len((leaving.getAttribute(name) or "").encode("utf-8")) for name in ("from", "to"))
    out = len(serialise(leaving).encode("utf-8"))
    bound = max(received_size, len(serialise(received).encode("utf-8"))) + added
    if out > bound:
        return f"{out} bytes leave for {received_size} received (+{added} the guard adds)"
    return None
