"""
The leak corpus: for every shipped policy and every rule that lets something
through, a stanza that rule passes, and copies of it with a marker hidden in
each place a stanza can carry data (an attribute of every element, prefixed
attributes, xml:lang, text, stanza-namespace and foreign children, prefixed
duplicates, nested payloads, an error's text, application condition and
echoed payload, a label's display marking, attributes and equivalent labels).
Each copy goes the whole inbound way: written on a stream, read by the stream
parser, addressing-checked, accepted, judged.  The marker never leaves (nor
appears in a bounce's text), and what leaves holds only parts the deciding
rule allows, no larger than what arrived plus what the guard adds.  allow-all
says the opposite, on purpose: there everything leaves, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from twisted.words.xish import domish

from guard.core.accepted import accept
from guard.core.addressing import Addressed, check_addressing
from guard.core.pipeline import Direction, Verdict, judge_fail_closed
from guard.core.policy import load_policy
from guard.core.policy.elements import clone, parse_stanza_text
from guard.core.policy.shapes import EVERYTHING
from guard.core.vocabulary import STANZA_ERRORS_NS, XML_LANG
from guard.edges.xmlstream import StreamFault, StreamParser, serialise

from .allowed import disallowed_parts, size_problem, tree

POLICIES = Path(__file__).resolve().parents[3] / "policies"
MARKER = "LEAK7q2MARKER"  # not a language tag, not a JID, found nowhere else
# A marker shaped like a language tag of many subtags: free text an xml:lang could carry.
TAG_MARKER = "leaktag-q2tag-marker-attack-at-dawn"
MARKERS = (MARKER, TAG_MARKER)
# An id (or localpart, or resource) longer than the guard carries (64 bytes unless a policy says otherwise).
LONG_ID = MARKER * 8
FOREIGN = "urn:example:leak"

RED = "romeo@red.example/pc"
BLUE = "juliet@blue.example"
TO_HIGH = ("juliet@blue.example/phone", "romeo@red.example")
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def ess(b64, marking=""):
    shown = f"<displaymarking>{marking}</displaymarking>" if marking else ""
    return (f"<securitylabel xmlns='urn:xmpp:sec-label:0'>{shown}<label><esssecuritylabel "
            f"xmlns='urn:xmpp:sec-label:ess:0'>{b64}</esssecuritylabel></label></securitylabel>")


REL_BLUE = ess("MRoCAQIGA4g3ATEQMA6ABIg3AQmBBgwEQkxVRQ==", "RESTRICTED REL BLUE")
UNCLASSIFIED = ess("MQgCAQEGA4g3AQ==")
ALPHA_REL_BRAVO = ess("MRsCAQIGA4g3FTERMA+ABIg3FQGBBwwFQlJBVk8=")


def error(sender, recipient, kind="message", label=""):
    return (f"<{kind} from='{sender}' to='{recipient}' type='error' id='e1'>{label}"
            f"<error type='cancel'><item-not-found xmlns='{STANZAS}'/></error></{kind}>")


def message(sender, recipient, label):
    return (f"<message from='{sender}' to='{recipient}' type='chat' id='m1' xml:lang='en'>"
            f"<subject>s</subject><body xml:lang='en'>hello</body><thread parent='t0'>t1</thread>{label}</message>")


def presence(sender, recipient, attributes="", show="<show>away</show><status>here</status>"):
    return f"<presence from='{sender}' to='{recipient}'{attributes}>{show}</presence>"


PING = "<iq from='{0}' to='{1}' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>"
EMPTY_RESULT = "<iq from='{0}' to='{1}' type='result' id='p1'/>"
DISCO = ("<iq from='{0}' to='{1}' type='result' id='d1'><query xmlns='http://jabber.org/protocol/disco#info' node='n'>"
         "<identity category='server' type='im' name='x' xml:lang='en'/><feature var='urn:xmpp:ping'/></query></iq>")
VERSION = ("<iq from='{0}' to='{1}' type='result' id='v1'><query xmlns='jabber:iq:version'>"
           "<name>n</name><version>1</version><os>o</os></query></iq>")
TIME = ("<iq from='{0}' to='{1}' type='result' id='t1'><time xmlns='urn:xmpp:time'>"
        "<tzo>+00:00</tzo><utc>2026-12-01T00:00:00Z</utc></time></iq>")


@dataclass(frozen=True)
class Base:
    """A stanza the named rule of the policy lets through, as it arrives."""

    policy: str
    rule: str
    xml: str


BASES = [
    Base("high-to-low", "errors-unlabelled", error(RED, BLUE)),
    Base("high-to-low", "errors-labelled", error(RED, BLUE, "iq", REL_BLUE)),
    Base("high-to-low", "iq-ping", PING.format(RED, "blue.example")),
    Base("high-to-low", "iq-ping", EMPTY_RESULT.format(RED, "blue.example")),
    Base("high-to-low", "presence-fold", presence(RED, BLUE)),
    Base("high-to-low", "presence-fold", presence(RED, BLUE, " type='unavailable'", "<status>bye</status>")),
    Base("high-to-low", "presence-fold", presence(RED, BLUE, " type='subscribe'", "")),
    Base("high-to-low", "message-release", message(RED, BLUE, REL_BLUE)),
    Base("low-to-high", "errors-unlabelled", error(*TO_HIGH)),
    Base("low-to-high", "errors-labelled", error(*TO_HIGH, "message", UNCLASSIFIED)),
    Base("low-to-high", "iq-harmless", PING.format(*TO_HIGH)),
    Base("low-to-high", "iq-harmless", DISCO.format(*TO_HIGH)),
    Base("low-to-high", "iq-harmless", VERSION.format(*TO_HIGH)),
    Base("low-to-high", "iq-harmless", TIME.format(*TO_HIGH)),
    Base("low-to-high", "presence-import", presence(*TO_HIGH, "", "<show>dnd</show><status>busy</status>")),
    Base("low-to-high", "presence-import", presence(*TO_HIGH, " type='subscribed'", "")),
    Base("low-to-high", "message-import", message(*TO_HIGH, "")),
    Base("low-to-high", "message-import", message(*TO_HIGH, REL_BLUE)),
    Base("coalition", "errors-unlabelled", error(RED, BLUE)),
    Base("coalition", "errors-labelled", error(RED, BLUE, "message", ALPHA_REL_BRAVO)),
    Base("coalition", "iq-ping-disco", PING.format(RED, "blue.example")),
    Base("coalition", "iq-ping-disco", DISCO.format(RED, "blue.example")),
    Base("coalition", "presence-fold", presence(RED, BLUE, "", "<show>dnd</show><status>here</status>")),
    Base("coalition", "release-translated", message(RED, BLUE, ALPHA_REL_BRAVO)),
    Base("allow-all", "allow-all", message(RED, BLUE, REL_BLUE)),
    Base("allow-all", "allow-all", error(RED, BLUE, "iq", REL_BLUE)),
    # Issue 14: the IRC bridge's sample policy judges a room message toward the IRC side's pseudo-domain.
    Base("irc-bridge", "room-message-release",
         "<message from='ops@conference.red.example/alice' to='lab.irc.invalid' type='groupchat' id='m1' "
         f"xml:lang='en'><subject>s</subject><body xml:lang='en'>hello</body>{UNCLASSIFIED}</message>"),
]


def _policy(name):
    policy = load_policy(POLICIES / f"{name}.toml")
    direction = Direction(*policy.sides) if policy.sides else Direction("red", "blue")
    return policy, direction


LOADED = {name: _policy(name) for name in sorted({base.policy for base in BASES})}


# -- where a marker can hide --------------------------------------------------

def _walk(element, path=""):
    """Every element of the tree with a readable path, the stanza first."""
    here = f"{path}/{element.name}"
    yield here, element
    for child in element.children:
        if isinstance(child, domish.Element):
            yield from _walk(child, here)


def _has_text(element):
    return any(isinstance(child, str) and child.strip() for child in element.children)


def hiding_places(stanza):
    """``(where, stanza with the marker hidden there)`` for every place of ``stanza``."""

    def variant(where, change):
        copy = clone(stanza)
        targets = dict(_walk(copy))
        change(copy, targets)
        return where, copy

    places = []
    root = stanza.uri
    places.append(variant("stanza text", lambda s, t: s.addContent(MARKER)))
    places.append(variant("stanza xml:lang", lambda s, t: s.attributes.__setitem__(XML_LANG, MARKER)))
    places.append(variant("long stanza id", lambda s, t: s.attributes.__setitem__("id", LONG_ID)))
    for address in ("from", "to"):
        places.append(variant(f"long resource in {address}", lambda s, t, a=address: s.attributes.__setitem__(
            a, s.getAttribute(a).split("/")[0] + "/" + LONG_ID)))
        places.append(variant(f"long localpart in {address}", lambda s, t, a=address: s.attributes.__setitem__(
            a, LONG_ID.lower() + "@" + s.getAttribute(a).split("@")[-1])))
    places.append(variant("stanza-namespace child", lambda s, t: s.addElement((root, "data"), content=MARKER)))
    places.append(variant("jabber:client child", lambda s, t: s.addChild(_element("jabber:client", "query", MARKER))))
    places.append(variant("foreign child", lambda s, t: s.addChild(_element(FOREIGN, "x", MARKER))))
    if stanza.getAttribute("type") == "error":
        places.append(variant("echoed body beside the error", lambda s, t: s.addElement((root, "body"), content=MARKER)))
        places.append(variant("error text", lambda s, t: _first(s, "error").addElement((STANZA_ERRORS_NS, "text"),
                                                                                      content=MARKER)))
        places.append(variant("error by", lambda s, t: _first(s, "error").attributes.__setitem__("by", MARKER)))
    for child in [c for c in stanza.children if isinstance(c, domish.Element)]:
        places.append(variant(f"prefixed duplicate of {child.name}",
                              lambda s, t, name=child.name: s.addChild(_element("urn:example:dup", name, MARKER))))
    for path, element in _walk(stanza):
        places.append(variant(f"attribute on {path}", lambda s, t, p=path: t[p].attributes.__setitem__("leak", MARKER)))
        places.append(variant(f"prefixed attribute on {path}",
                              lambda s, t, p=path: t[p].attributes.__setitem__((FOREIGN, "leak"), MARKER)))
        places.append(variant(f"nested payload in {path}",
                              lambda s, t, p=path: t[p].addChild(_element(FOREIGN, "x", MARKER))))
        places.append(variant(f"tag-shaped xml:lang on {path}",
                              lambda s, t, p=path: t[p].attributes.__setitem__(XML_LANG, TAG_MARKER)))
        if element is not stanza:  # a <body/> of the stanza itself is what a message carries
            places.append(variant(f"nested stanza-namespace body in {path}",
                                  lambda s, t, p=path: t[p].addElement((root, "body"), content=MARKER)))
        if not _has_text(element):
            places.append(variant(f"text in {path}", lambda s, t, p=path: t[p].addContent(MARKER)))
    label = _first(stanza, "securitylabel")
    if label is not None:
        places.append(variant("display marking", lambda s, t: _set_marking(s)))
        places.append(variant("equivalent label", lambda s, t: _first(s, "securitylabel").addChild(_equivalent())))
    elif stanza.name != "presence":
        places.append(variant("a label the sender added, marked", lambda s, t: s.addChild(_marked_label())))
    return places


def _element(uri, name, text):
    element = domish.Element((uri, name), defaultUri=uri)
    element.addContent(text)
    return element


def _first(stanza, name):
    return next((c for c in stanza.children if isinstance(c, domish.Element) and c.name == name), None)


def _set_marking(stanza):
    label = _first(stanza, "securitylabel")
    marking = _first(label, "displaymarking")
    if marking is None:
        marking = domish.Element((label.uri, "displaymarking"))
        label.children.insert(0, marking)
        marking.parent = label
    marking.children = [MARKER]


def _equivalent():
    equivalent = domish.Element(("urn:xmpp:sec-label:0", "equivalentlabel"))
    equivalent.addChild(_element("urn:xmpp:sec-label:ess:0", "esssecuritylabel", MARKER))
    return equivalent


def _marked_label():
    label = parse_stanza_text(f"<m>{UNCLASSIFIED}</m>").firstChildElement()
    marking = domish.Element((label.uri, "displaymarking"))
    marking.addContent(MARKER)
    label.children.insert(0, marking)
    marking.parent = label
    return label


# -- the whole inbound way ----------------------------------------------------

def _header(sender, recipient):
    return (f"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
            f"to='{recipient}' from='{sender}' version='1.0'>").encode()


def crossing(policy, direction, stanza):
    """Write ``stanza`` on a stream, parse, address-check, accept and judge it: (received, size, judgement)."""
    sender, recipient = (stanza.getAttribute("from").split("@")[-1].split("/")[0],
                         stanza.getAttribute("to").split("@")[-1].split("/")[0])
    received = []
    parser = StreamParser(lambda header: None, lambda element, size: received.append((element, size)), lambda: None)
    try:
        parser.feed(_header(sender, recipient) + serialise(stanza).encode("utf-8"))
    except StreamFault as fault:
        return None, 0, fault
    ((element, size),) = received
    addressed = check_addressing(element, frozenset({(sender, recipient)}), frozenset({recipient}))
    assert isinstance(addressed, Addressed), addressed
    judgement, problem = judge_fail_closed(policy, element, direction, accept(element, addressed, size, direction))
    assert problem is None, problem
    return element, size, judgement


def leaks(policy, received, size, judgement):
    """What is wrong with one judgement: the marker leaving, parts no rule allows, growth."""
    found = []
    if judgement.verdict is Verdict.BOUNCE and any(m in (judgement.text or "") for m in MARKERS):
        found.append("the marker is in the bounce text")
    if judgement.verdict is not Verdict.PASS:
        return found
    leaving = serialise(judgement.stanza)
    if any(m in leaving or m.lower() in leaving for m in MARKERS):
        found.append(f"the marker leaves: {leaving}")
    found.extend(disallowed_parts(policy, judgement, received))
    grown = size_problem(serialise, judgement, received, size)
    if grown:
        found.append(grown)
    return found


@pytest.mark.parametrize("base", BASES, ids=[f"{b.policy}:{b.rule}:{n}" for n, b in enumerate(BASES)])
def test_no_marker_leaves_from_any_hiding_place(base):
    """The base stanza passes by its rule, and with a marker hidden in any place, the marker does not leave (allow-all: everything leaves whole)."""
    policy, direction = LOADED[base.policy]
    stanza = parse_stanza_text(base.xml)
    received, _, judgement = crossing(policy, direction, stanza)
    assert (judgement.verdict, judgement.rule_id) == (Verdict.PASS, base.rule), judgement
    everything = next(r for r in policy.rules if r.id == base.rule).keep == EVERYTHING
    failures = []
    for where, hidden in hiding_places(stanza):
        received, size, judgement = crossing(policy, direction, hidden)
        if received is None:
            continue  # refused by the stream parser: nothing crosses
        if everything:
            if judgement.verdict is not Verdict.PASS or tree(judgement.stanza) != tree(received):
                failures.append(f"{where}: allow-all did not pass it whole")
            continue
        failures.extend(f"{where}: {problem}" for problem in leaks(policy, received, size, judgement))
    assert failures == []


def test_every_rule_that_lets_something_through_has_a_base_in_the_corpus():
    """Each shipped policy's passing rules (pass, fold, translate) are all exercised by the corpus."""
    for name, (policy, _) in LOADED.items():
        passing = {rule.id for rule in policy.rules if rule.verdict in ("pass", "fold", "translate")}
        assert passing == {base.rule for base in BASES if base.policy == name}, name
    assert set(LOADED) == {path.stem for path in POLICIES.glob("*.toml") if not path.stem.endswith(".tests")}


def test_the_corpus_is_large():
    """The corpus holds every hiding place of every base: report its size (at least 25 places per base)."""
    size = sum(len(hiding_places(parse_stanza_text(base.xml))) for base in BASES)
    print(f"leak corpus: {len(BASES)} base stanzas, {size} stanzas with a hidden marker")
    assert size >= 25 * len(BASES)
