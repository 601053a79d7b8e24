"""
What the constrained profile adds to one end of the pair link, wired from
the pieces that do the work:

- compression (guard.edges.constrained.compression): installed on every link
  connection's filter chain, with the frame budget this half's parser allows
  (``stanza_bytes`` + ``LINK_ELEMENT_ALLOWANCE``); ``ByteCount`` still counts
  wire (compressed) bytes;
- abbreviation (guard.edges.constrained.abbreviation): the sender leaves out
  the default ``from``/``to`` domains, the receiver puts them back before its
  addressing check (``written_form``/``read_form``);
- the bearer schedule (guard.core.constrained.schedule): what the link writes
  next, at the bearer's rate, by priority, presence stripped and coalesced,
  groupchat copies merged (``new_schedule``);
- fan-out: a merged groupchat message carries its recipients in the link's
  namespace (``with_recipients``); the receiving end makes one stanza per
  recipient (``fan_out``), and the recipients element never leaves it.

The decisions here are plain functions of elements; ``Link`` does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.words.xish import domish

from guard.core.addressing import parse_jid

from .ledger import StanzaNotTaken
from .profile import ConstrainedProfile
from .wire import LINK_NS

RECIPIENTS = "recipients"
# What the schedule merges and the receiving end fans out: groupchat messages, and one presence to many recipients.
FANNED_OUT = ("message", "presence")

# Texts of the stream errors the receiving end closes with (the guard's own; the peer's bytes go to the log).
MALFORMED_RECIPIENTS = "a malformed recipients list"
TOO_MANY_RECIPIENTS = "a recipients list longer than this half fans out"
FAN_OUT_TOO_LARGE = "a recipients list whose copies exceed what this half fans out in bytes"
NOT_AN_ABBREVIATION = "a stanza whose addresses are not a valid abbreviation"


@dataclass(frozen=True)
class Merged:
    """Several parcels carried as one link stanza (a groupchat message merged with its siblings):
    acknowledged, all are delivered; refused or given up, each bounces once."""

    parcels: tuple


def parcels_of(parcel) -> tuple:
    """The parcels one link stanza settles."""
    return parcel.parcels if isinstance(parcel, Merged) else (parcel,)


def carries_link_elements(element) -> bool:
    """Whether a stanza holds an element of the link's own namespace (it never crosses as stanza content)."""
    return any(getattr(child, "uri", None) == LINK_NS for child in element.children)


def _shallow(element, children) -> domish.Element:
    """A new element with ``element``'s name, namespaces and attributes and the given children (shared, not copied)."""
    made = domish.Element((element.uri, element.name), defaultUri=element.defaultUri)
    made.attributes = dict(element.attributes)
    made.localPrefixes = dict(element.localPrefixes)
    made.children = list(children)
    return made


def with_recipients(element, recipients) -> domish.Element:
    """A copy of the merged message ``element`` listing every recipient in the link's namespace."""
    merged = _shallow(element, element.children)
    listing = domish.Element((LINK_NS, RECIPIENTS))
    for jid in recipients:
        listing.addElement((LINK_NS, "to"))["jid"] = jid
    merged.addChild(listing)
    return merged


def fan_out(element, max_recipients: int, max_bytes: int, size: int) -> list:
    """The stanzas a received link stanza stands for: itself, or one message (or presence) per listed recipient (each with that
    recipient as ``to`` and no recipients element).  StanzaNotTaken when the list is malformed or over the bounds
    (at most ``max_recipients`` copies, and at most ``max_bytes`` counting ``size`` bytes per copy)."""
    listings = [child for child in element.children if getattr(child, "uri", None) == LINK_NS]
    if not listings:
        return [element]
    if len(listings) != 1 or listings[0].name != RECIPIENTS or element.name not in FANNED_OUT:
        raise StanzaNotTaken("policy-violation", MALFORMED_RECIPIENTS)
    listing = listings[0]
    if listing.attributes or any(isinstance(child, str) and child.strip() for child in listing.children):
        raise StanzaNotTaken("policy-violation", MALFORMED_RECIPIENTS)
    entries = [child for child in listing.children if not isinstance(child, str)]
    if not entries:
        raise StanzaNotTaken("policy-violation", MALFORMED_RECIPIENTS)
    if len(entries) > max_recipients:
        raise StanzaNotTaken("policy-violation", TOO_MANY_RECIPIENTS)
    if len(entries) * size > max_bytes:
        raise StanzaNotTaken("policy-violation", FAN_OUT_TOO_LARGE)
    recipients = []
    for entry in entries:
        jid = entry.attributes.get("jid")
        if (entry.uri, entry.name) != (LINK_NS, "to") or set(entry.attributes) != {"jid"} or entry.children \
                or parse_jid(jid) is None or jid in recipients:
            raise StanzaNotTaken("policy-violation", MALFORMED_RECIPIENTS)
        recipients.append(jid)
    copies = []
    for jid in recipients:
        single = _shallow(element, (child for child in element.children if child is not listing))
        single.attributes["to"] = jid
        copies.append(single)
    return copies


def default_domain(domains) -> str:
    """The domain an end of the link implies in addresses: the shortest of its domains, then the first in order."""
    return min(domains, key=lambda domain: (len(domain), domain))


class ConstrainedLink:
    """The constrained profile's pieces for one link end, built once from the configuration."""

    def __init__(self, profile: ConstrainedProfile, near_domains, far_domains, stanza_bytes: int):
        from guard.edges.constrained.abbreviation import Abbreviation
        from guard.edges.constrained.compression import LINK_ELEMENT_ALLOWANCE, link_dictionary

        self.profile = profile
        near, far = sorted(near_domains), sorted(far_domains)
        self.dictionary = link_dictionary(near, far)
        self.frame_budget = stanza_bytes + LINK_ELEMENT_ALLOWANCE
        # The default domain each end implies: its shortest (then first in order), so that its subdomains
        # (conference.red.example) are written short too; both ends compute it from their mirrored domains.
        self.abbreviation = Abbreviation(default_domain(near), default_domain(far)) if near and far else None

    def prepare_stream(self, stream) -> None:
        """Install the configured compression on a new link connection's filter chain."""
        from guard.edges.constrained.compression import install_compression

        install_compression(stream.filters, self.profile.compression, self.frame_budget, self.dictionary)
        stream.compression = self.profile.compression

    def written_form(self, element):
        """The element as this half writes it (default domains implied)."""
        return self.abbreviation.shorten(element) if self.abbreviation is not None else element

    def read_form(self, element):
        """The element as the peer meant it (default domains restored); StanzaNotTaken when it is no abbreviation."""
        if self.abbreviation is None:
            return element
        expanded = self.abbreviation.expand(element)
        if expanded is None:
            raise StanzaNotTaken("improper-addressing", NOT_AN_ABBREVIATION)
        return expanded

    def new_schedule(self, settings):
        """The bearer schedule of this link end: bounded by the link's own buffer bounds (``buffer_stanzas``,
        ``buffer_bytes``) and by ``max_wait``; IQ deadlines from ``iq_deadline`` and ``round_trip``."""
        from guard.core.constrained.schedule import BearerSchedule, ScheduleLimits

        limits = ScheduleLimits(queue_stanzas=settings.buffer_stanzas, queue_bytes=settings.buffer_bytes,
                                max_wait_seconds=self.profile.max_wait, iq_deadline_seconds=self.profile.iq_deadline,
                                round_trip_seconds=self.profile.round_trip)
        return BearerSchedule(self.profile.rate, self.profile.presence, self.profile.groupchat_merge, limits)
