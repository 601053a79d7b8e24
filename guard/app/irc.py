"""
The IRC gateway's composition root (``guard-irc --config irc.toml``, or
``python -m guard.app.irc --config irc.toml [--check]``), beside
``guard.app.service``: it wires the XEP-0114 component
(``guard.edges.irc.component``), the IRC connections
(``guard.edges.irc.connections``), the bridges' decisions
(``guard.edges.irc.bridge``, ``labels``) and the carrier whose far side is IRC
(``guard.edges.irc.carrier``), around a ``Settlement`` observed by the
books, the audit trail and the metrics, so that the books balance as they
do in the guard: every room message taken toward IRC, and every IRC message
taken toward the room, is accepted, judged and settled exactly once.

Addresses the gateway uses on the XMPP side (all in the component domain):

- the bridge's own occupant, through which it hears the room:
  ``<component>/<room>`` joined as the bridge's ``room_nick``;
- one occupant per IRC nick in the channel:
  ``<escaped nick>%<network>@<component>``, joined as the MUC nick the
  network's nick book gives (``NickBook.muc_nick_for``).

A room message refused toward IRC bounces to its sender's real JID (the room
shows real JIDs to the bridge's occupant, or the bounce cannot be addressed:
then it is counted and audited as a lost bounce, never sent to the occupant
JID, which MUC services punish by kicking the bridge).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
from dataclasses import dataclass

from twisted.logger import Logger
from twisted.words.xish import domish

from guard.core.addressing import parse_jid
from guard.core.vocabulary import SERVER_NS

log = Logger()

MUC_NS = "http://jabber.org/protocol/muc"
MUC_USER_NS = MUC_NS + "#user"
DELAY_NS = "urn:xmpp:delay"

# MUC status codes (XEP-0045 section 15.6) the gateway reads.
SELF_PRESENCE = "110"
NICK_CHANGED = "303"
KICKED = "307"
BANNED = "301"

# The rules the gateway's own settlements name (beside the bridge policy's rule ids).
FROM_IRC_RULE = "irc:default-label"
FROM_IRC_MAPPED_RULE = "irc:mapped-marking"
NO_REAL_JID = "the sender's real JID is not known to the bridge: the bounce cannot be addressed"

EXIT_OK = 0
EXIT_CONFIG = 2


# -- addresses ------------------------------------------------------------------

def bridge_occupant_jid(component: str, room: str) -> str:
    """The full JID of the bridge's own occupant in ``room``."""
    return f"{component}/{room}"


def escape_localpart(text: str) -> str:
    """``text`` as a JID localpart: letters, digits and ``-_.`` kept, every other character as ``=XX`` (UTF-8)."""
    kept = []
    for character in text:
        if character.isascii() and (character.isalnum() or character in "-_."):
            kept.append(character)
        else:
            kept.extend(f"={byte:02x}" for byte in character.encode("utf-8"))
    return "".join(kept)


def irc_user_jid(component: str, network: str, folded_nick: str) -> str:
    """The bare JID the occupant of one IRC user of ``network`` joins from (``folded_nick``: by the network's casemapping)."""
    return f"{escape_localpart(folded_nick)}%{escape_localpart(network)}@{component}"


# -- MUC stanzas (built new: nothing a peer wrote is copied) ----------------------

def join_presence(sender: str, room: str, nick: str) -> domish.Element:
    """The presence that joins ``room`` as ``nick`` from ``sender``, asking for no history."""
    presence = domish.Element((SERVER_NS, "presence"))
    presence["from"] = sender
    presence["to"] = f"{room}/{nick}"
    muc = presence.addElement((MUC_NS, "x"))
    muc.addElement("history")["maxstanzas"] = "0"
    return presence


def leave_presence(sender: str, room: str, nick: str, status: str | None = None) -> domish.Element:
    presence = domish.Element((SERVER_NS, "presence"))
    presence["from"] = sender
    presence["to"] = f"{room}/{nick}"
    presence["type"] = "unavailable"
    if status:
        presence.addElement("status", content=status)
    return presence


def room_message(sender: str, room: str, body: str | None, label=None, subject: str | None = None,
                 stanza_id: str | None = None) -> domish.Element:
    """A groupchat message to ``room`` (``label``: a ``<securitylabel/>`` the label policy built, or None)."""
    message = domish.Element((SERVER_NS, "message"))
    message["from"] = sender
    message["to"] = room
    message["type"] = "groupchat"
    if stanza_id:
        message["id"] = stanza_id
    if subject is not None:
        message.addElement("subject", content=subject)
    if body is not None:
        message.addElement("body", content=body)
    if label is not None:
        message.addChild(label)
    return message


@dataclass(frozen=True)
class RoomPresence:
    """What an occupant presence from a room says, read strictly (anything else: None)."""

    room: str
    nick: str
    available: bool
    real_jid: str | None = None  # the occupant's real JID, when the room shows it
    own: bool = False  # status 110: about one of the gateway's own occupants
    new_nick: str | None = None  # status 303: the occupant is now called this
    kicked: bool = False  # status 307 (or 301, banned)
    error: str | None = None  # a presence error (our join was refused): its condition


def read_room_presence(stanza, room_service: str) -> RoomPresence | None:
    """An occupant presence from ``room@room_service/nick``, or None when the stanza is not one."""
    if stanza.name != "presence":
        return None
    sender = parse_jid(stanza.getAttribute("from"))
    if sender is None or sender.host != room_service or not sender.user or not sender.resource:
        return None
    room = f"{sender.user}@{sender.host}"
    kind = stanza.getAttribute("type")
    if kind == "error":
        condition = next((child.name for error in stanza.elements(SERVER_NS, "error")
                          for child in error.elements() if child.name != "text"), "undefined-condition")
        return RoomPresence(room, sender.resource, False, error=condition)
    if kind not in (None, "unavailable"):
        return None
    codes, real_jid, new_nick = set(), None, None
    for x in stanza.elements(MUC_USER_NS, "x"):
        for child in x.elements():
            if child.uri != MUC_USER_NS:
                continue
            if child.name == "status" and child.getAttribute("code"):
                codes.add(child["code"])
            elif child.name == "item":
                jid = parse_jid(child.getAttribute("jid"))
                real_jid = jid.full() if jid is not None else None
                new_nick = child.getAttribute("nick")
    return RoomPresence(room, sender.resource, kind is None, real_jid, SELF_PRESENCE in codes,
                        new_nick if NICK_CHANGED in codes else None, bool(codes & {KICKED, BANNED}))


@dataclass(frozen=True)
class RoomMessage:
    """A live groupchat message (or subject change) from ``room/nick``."""

    room: str
    nick: str
    body: str | None
    subject: str | None


def read_room_message(stanza, room_service: str) -> RoomMessage | None:
    """A live groupchat from an occupant (history, errors and other kinds: None)."""
    if stanza.name != "message" or stanza.getAttribute("type") != "groupchat":
        return None
    sender = parse_jid(stanza.getAttribute("from"))
    if sender is None or sender.host != room_service or not sender.user or not sender.resource:
        return None
    if next(stanza.elements(DELAY_NS, "delay"), None) is not None:
        return None  # history replayed by the room: said before the bridge listened
    body = next(stanza.elements(SERVER_NS, "body"), None)
    subject = next(stanza.elements(SERVER_NS, "subject"), None)
    if body is None and subject is None:
        return None
    return RoomMessage(f"{sender.user}@{sender.host}", sender.resource,
                       None if body is None else str(body), None if subject is None else str(subject))


def write_json_atomically(path: str, value) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as out:
        json.dump(value, out, indent=2, sort_keys=True, default=str)
    os.replace(temporary, path)


__all__ = ["RoomMessage", "RoomPresence", "bridge_occupant_jid", "irc_user_jid", "join_presence",
           "leave_presence", "read_room_message", "read_room_presence", "room_message", "argparse", "random",
           "signal", "sys", "EXIT_OK", "EXIT_CONFIG"]
