"""
Labels at the IRC boundary, decided with no I/O.

Each bridge has a policy file in the guard's own language
(policies/irc-bridge.toml).  The IRC side is modelled as a side of the
topology (``irc``) whose one domain is the bridge's pseudo-domain
(``irc_domain``, e.g. ``lab.irc.invalid``): the policy's
``[labels.peers."<irc_domain>"]`` gives the channel its clearance and the
label of what is said on IRC.  The guard's compiled policy, label authority,
clearances and folding decide everything; nothing here reads a label itself.

Toward IRC (``release``): a room message is judged as a copy addressed to the
pseudo-domain.  What passes is the text the deciding rule kept (a ``<body/>``
or a ``<subject/>``, built new by the policy), with the display marking of
the label the policy gave it.  Whatever the rules say, a message whose label
is not releasable to the IRC side (``irc:label-not-releasable``), or that has
no label value while the policy declares labels (``irc:no-label``), is
refused with ``policy-violation`` and the gateway's own text.  The marking
goes to IRC as a first-line marking (FLOT) rendered from the bridge's
template: its own first line (``line``) or a prefix of the first line
(``prefix``).

From IRC (``from_irc``): every message gets the IRC side's default label.  A
FLOT typed on IRC is text, never a label, unless the bridge maps that
marking (``map_markings``); a mapped marking becomes the message's label
only when the IRC side's clearance dominates it (the configuration refuses
any other mapping, and this is checked again here).  Decided: a mapped
marking above the clearance is *refused* (the message is not bridged, the
refusal is audited and the IRC user told with the gateway's own text), never
downgraded to the default label, since a downgrade would put text its author
marked higher into the room under a lower label.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from twisted.words.xish import domish

from guard.core.pipeline import Direction, Judgement, Verdict, judge_fail_closed
from guard.core.policy.elements import child_elements, clone, text_of
from guard.core.policy.facts import StanzaFacts
from guard.core.policy.labels import SecurityLabel
from guard.core.settlement import REFER_WITHOUT_AUTHORITY
from guard.core.vocabulary import MUC_USER_NS, SERVER_NS, XML_LANG
from guard.edges.irc.nicks import has_invisible

XMPP_SIDE = "xmpp"
IRC_SIDE = "irc"
TOWARD_IRC = Direction(XMPP_SIDE, IRC_SIDE)
DEFAULT_FLOT_TEMPLATE = "Protective Marking: {marking}"
FLOT_POSITIONS = ("line", "prefix")

# The gateway's own rules and texts (a peer's words never go into a stanza).
RULE_NOT_RELEASABLE = "irc:label-not-releasable"
RULE_NO_LABEL = "irc:no-label"
RULE_MARKING_ABOVE_CLEARANCE = "irc:marking-above-clearance"
NOT_RELEASABLE_TEXT = "The message's security label is not releasable to the IRC channel."
NO_LABEL_TEXT = "The message has no security label the IRC gateway can establish."
MARKING_ABOVE_CLEARANCE_TEXT = "That marking is above what this channel is cleared for; the message was not bridged."
RULE_NICK_INVISIBLE = "irc:nick-invisible"
RULE_NICK_MARKING = "irc:nick-marking"
NICK_REFUSED_TEXT = "That room nick is not allowed on the IRC channel; choose another nick to talk there."
NICK_INVISIBLE_TEXT = "Room nicks with invisible or bidirectional formatting characters do not reach IRC."


@dataclass(frozen=True)
class Released:
    """A room message IRC may see: its ``text`` (body) or ``subject``, and the label's display marking."""

    text: str | None
    marking: str | None
    label: SecurityLabel | None
    rule_id: str
    rule_rev: int
    judgement: Judgement
    subject: str | None = None


@dataclass(frozen=True)
class Refused:
    """A room message that does not reach IRC: bounced with ``condition`` and ``own_text``, or dropped
    (``condition`` None); ``judgement`` is what settles it; ``notes`` go to the audit only."""

    condition: str | None
    own_text: str | None
    rule_id: str
    rule_rev: int
    judgement: Judgement
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Labelled:
    """What an IRC message becomes in the room: its text and the label it carries (``mapped``: from a typed FLOT)."""

    text: str
    label: SecurityLabel | None
    mapped: bool = False


@dataclass(frozen=True)
class RefusedFromIrc:
    """An IRC message that is not bridged: ``rule_id``, the gateway's ``own_text`` for the IRC user, ``detail`` for
    the audit."""

    rule_id: str
    own_text: str
    detail: str


@dataclass(frozen=True)
class MarkingOnly:
    """A line holding only a mapped FLOT: the label of the same nick's next message (``label``)."""

    label: SecurityLabel


class FirstLineMarking:
    """The bridge's FLOT template (``{marking}`` once) at its position (``line`` or ``prefix``)."""

    def __init__(self, template: str = DEFAULT_FLOT_TEMPLATE, position: str = "line"):
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError:
            raise ValueError("a FLOT template holds {marking} once") from None
        fields = [part[1] for part in parts if part[1] is not None]
        if fields != ["marking"] or any(part[2] or part[3] for part in parts) or position not in FLOT_POSITIONS:
            raise ValueError("a FLOT template holds {marking} once; its position is line or prefix")
        self.template = template
        self.position = position
        self.before, _, self.after = template.partition("{marking}")

    def render(self, marking: str) -> str:
        """The FLOT for ``marking`` (the label policy's display marking, control characters removed)."""
        return self.template.replace("{marking}", "".join(c for c in marking if c.isprintable()))

    def apply(self, text: str, marking: str | None) -> str:
        """``text`` as it goes to IRC: the FLOT as its own first line, or prefixed to its first line."""
        if marking is None:
            return text
        if self.position == "line":
            return f"{self.render(marking)}\n{text}"
        return f"{self.render(marking)} {text}"

    def typed(self, line: str, markings) -> tuple[str, str] | None:
        """``(marking, rest)`` when ``line`` starts with this FLOT holding one of ``markings`` (case and runs of
        white space ignored; the longest marking wins), else None.  ``rest`` is the line after it, as typed."""
        for marking in sorted(markings, key=len, reverse=True):
            ending = (self.after.strip() or marking)[-1:]
            pattern = (r"\s*" + _spaced(self.before) + r"\s*" + _spaced(marking) + r"\s*" + _spaced(self.after)
                       + (r"(?!\w)" if ending.isalnum() else ""))
            found = re.match(pattern, line, re.IGNORECASE)
            if found is not None:
                return marking, line[found.end():].strip()
        return None


def _spaced(text: str) -> str:
    """A pattern matching ``text`` with any run of white space for each of its runs of white space."""
    return r"\s+".join(re.escape(word) for word in text.split())


def nick_presence(room: str, nick: str, to: str) -> domish.Element:
    """
    A room nick as the policy judges it: what it is, the occupant's presence under that nick,
    ``<presence from='room/nick' to='...'><x xmlns='muc#user'><item nick='nick'/></x></presence>``
    (the item's nick is there so that ``text_matches`` sees the nick as it sees a body's text; ``from``
    patterns see it as the resource).
    """
    presence = domish.Element((SERVER_NS, "presence"))
    presence["from"], presence["to"] = f"{room}/{nick}", to
    presence.addElement((MUC_USER_NS, "x")).addElement("item")["nick"] = nick
    return presence


def _first(element: domish.Element, name: str) -> domish.Element | None:
    """The ``name`` child in the stanza's namespace without xml:lang, or else the first one."""
    found = [c for c in child_elements(element) if c.name == name and c.uri == element.uri]
    plain = [c for c in found if XML_LANG not in c.attributes]
    return (plain or found or [None])[0]


def judged_copy(stanza: domish.Element, irc_domain: str) -> domish.Element:
    """
    What the policy judges: a copy of the room message in the server
    namespace (a component stream delivers ``jabber:component:accept``),
    addressed to the bridge's IRC pseudo-domain.  The received stanza is
    never changed; what leaves is built by the policy from this copy.
    """
    copy = clone(stanza)
    own = stanza.uri
    pending = [copy]
    while pending:
        element = pending.pop()
        if element.uri == own:
            element.uri = SERVER_NS
        if element.defaultUri == own:
            element.defaultUri = SERVER_NS
        pending.extend(child_elements(element))
    copy["to"] = irc_domain
    return copy


class BridgeLabels:
    """One bridge's label decisions: its compiled policy toward its IRC side, its FLOT and its marking map."""

    def __init__(self, policy, irc_domain: str, flot: FirstLineMarking | None = None, map_markings=None):
        self.policy = policy
        self.authority = policy.labels
        self.irc_domain = irc_domain
        self.flot = flot or FirstLineMarking()
        self.map_markings = dict(map_markings or {})

    @classmethod
    def for_bridge(cls, bridge) -> "BridgeLabels":
        """From an irc.toml ``[[bridges]]`` entry (guard.app.irc_config.BridgeConfig)."""
        return cls(bridge.policy, bridge.irc_domain, FirstLineMarking(bridge.flot_template, bridge.flot_position),
                   bridge.map_markings)

    # -- toward IRC ---------------------------------------------------------

    def release(self, stanza: domish.Element, size: int | None = None) -> Released | Refused:
        """Judge a room message toward the IRC side; any fault refuses it (fail closed)."""
        try:
            judged = judged_copy(stanza, self.irc_domain)
        except Exception as problem:  # noqa: BLE001 - fail closed on anything
            judgement = Judgement.dropped(stanza, "guard:policy-failure", text=repr(problem))
            return Refused(None, judgement.text, judgement.rule_id, 1, judgement)
        judgement, _ = judge_fail_closed(self.policy, judged, TOWARD_IRC)
        if judgement.verdict is Verdict.BOUNCE:
            return Refused(judgement.condition or "not-acceptable", judgement.text, judgement.rule_id,
                           judgement.rule_rev, judgement, judgement.notes)
        if judgement.verdict is Verdict.REFER:
            judgement = Judgement.dropped(stanza, judgement.rule_id, judgement.rule_rev, text=REFER_WITHOUT_AUTHORITY)
        if judgement.verdict is not Verdict.PASS:
            return Refused(None, judgement.text, judgement.rule_id, judgement.rule_rev, judgement, judgement.notes)
        return self._passed(judged, judgement)

    def release_nick(self, room: str, nick: str) -> Released | Refused:
        """
        Judge a room nick toward the IRC side (an occupant joining, or renaming): a nick is content, it
        reaches IRC as an IRC nick and in the bot's ``<nick> text`` relay.  Judged as the occupant's
        presence under that nick (``nick_presence``) by the bridge policy, then as a message is: its label
        must be known and releasable to the IRC side.  A nick with an invisible or bidi formatting character
        is refused before the policy (``irc:nick-invisible``); any fault refuses it.
        """
        try:
            presence = nick_presence(room, nick, self.irc_domain)
        except Exception as problem:  # noqa: BLE001 - fail closed on anything
            judgement = Judgement.dropped(domish.Element((SERVER_NS, "presence")), "guard:policy-failure",
                                          text=repr(problem))
            return Refused(None, NICK_REFUSED_TEXT, judgement.rule_id, 1, judgement)
        if has_invisible(nick):
            judgement = Judgement.bounced(presence, RULE_NICK_INVISIBLE, "policy-violation", text=NICK_INVISIBLE_TEXT)
            return Refused("policy-violation", NICK_INVISIBLE_TEXT, RULE_NICK_INVISIBLE, 1, judgement)
        judgement, _ = judge_fail_closed(self.policy, presence, TOWARD_IRC)
        if judgement.verdict is not Verdict.PASS:
            return Refused(judgement.condition or "policy-violation", judgement.text or NICK_REFUSED_TEXT,
                           judgement.rule_id, judgement.rule_rev, judgement, judgement.notes)
        return self._passed(presence, judgement)

    def nick_from_irc(self, nick: str) -> Labelled | RefusedFromIrc:
        """
        An IRC nick toward the room (an IRC user joining or renaming), judged as ``from_irc`` judges a
        message: it gets the IRC side's default label; a nick holding a marking ``map_markings`` maps is
        refused (a presence carries no label, XEP-0258), and so is one with an invisible or bidi
        formatting character (``NickBook.muc_nick_for`` escapes those too).
        """
        if has_invisible(nick):
            return RefusedFromIrc(RULE_NICK_INVISIBLE, NICK_INVISIBLE_TEXT, f"nick {nick!r}")
        folded = nick.casefold()
        for marking in self.map_markings:
            if marking.replace(" ", "").casefold() in folded:
                return RefusedFromIrc(RULE_NICK_MARKING, NICK_REFUSED_TEXT, f"nick {nick!r} holds marking {marking!r}")
        return Labelled(nick, self.default_label)

    def _passed(self, judged, judgement) -> Released | Refused:
        label = marking = None
        if self.authority is not None:
            facts = StanzaFacts(judgement.accepted, self.authority) if judgement.accepted is not None \
                else StanzaFacts.of(judged, self.authority, TOWARD_IRC)
            label, why = facts.label
            if label is None:
                return self._refused(RULE_NO_LABEL, NO_LABEL_TEXT, judged, why)
            releasable, why = facts.releasable
            if not releasable:
                return self._refused(RULE_NOT_RELEASABLE, NOT_RELEASABLE_TEXT, judged, why)
            marking = self.marking(label)
        leaving = judgement.stanza
        body, subject = _first(leaving, "body"), _first(leaving, "subject")
        return Released(None if body is None else text_of(body), marking, label, judgement.rule_id,
                        judgement.rule_rev, judgement, None if subject is None else text_of(subject))

    def _refused(self, rule_id, text, judged, why) -> Refused:
        judgement = Judgement.bounced(judged, rule_id, "policy-violation", text=text)
        return Refused("policy-violation", text, rule_id, 1, judgement, (why,))

    def marking(self, label: SecurityLabel) -> str:
        """The display marking of ``label``, from its label policy."""
        return self.authority.policies[label.policy].display_marking(label)

    def for_irc(self, released: Released) -> str:
        """The text of a released message as IRC gets it, with its FLOT."""
        return self.flot.apply(released.text or "", released.marking)

    # -- from IRC -----------------------------------------------------------

    @property
    def default_label(self) -> SecurityLabel | None:
        """The label of what is said on IRC: the IRC side's default in the bridge policy."""
        return None if self.authority is None else self.authority.default_for(self.irc_domain)

    def from_irc(self, text: str) -> Labelled | RefusedFromIrc | MarkingOnly:
        """
        The label an IRC message gets: the IRC side's default; a typed FLOT
        on its first line becomes the label only if ``map_markings`` maps it
        and the IRC side's clearance dominates the mapped label (otherwise
        refused).  An unmapped FLOT is text, kept as typed.
        """
        first, newline, rest = text.partition("\n")
        typed = self.flot.typed(first, self.map_markings) if self.map_markings else None
        if typed is None:
            return Labelled(text, self.default_label)
        marking, remainder = typed
        label = self.map_markings[marking]
        ok, why = self.authority.releasable(label, self.irc_domain)
        if not ok:
            return RefusedFromIrc(RULE_MARKING_ABOVE_CLEARANCE, MARKING_ABOVE_CLEARANCE_TEXT,
                                  f"typed marking {marking!r} maps to {label}: {why}")
        body = "\n".join(part for part in (remainder, rest) if part)
        if not body:
            return MarkingOnly(label)
        return Labelled(body, label, mapped=True)

    def releasable_from_irc(self, label: SecurityLabel) -> tuple[bool, str]:
        """Whether the IRC side's clearance dominates ``label`` (a label IRC text may carry)."""
        return self.authority.releasable(label, self.irc_domain)

    def securitylabel(self, label: SecurityLabel | None) -> domish.Element | None:
        """The ``<securitylabel/>`` the gateway writes for ``label`` (built from the label policy), or None."""
        if label is None or self.authority is None:
            return None
        return self.authority.outgoing_label(None, label)
