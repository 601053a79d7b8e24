"""
IRC nicks from MUC nicks and back, by the rules a network announces in RPL_ISUPPORT (005).

- ``Isupport``: what the gateway needs from 005 (NICKLEN, CASEMAPPING, CHANTYPES, PREFIX,
  CHANNELLEN, LINELEN), values unescaped (``\\xHH``), ``-PARAM`` returning a parameter to its
  default; ``fold`` compares nicks as the network does (``ascii``: A-Z; ``rfc1459``: also ``[]\\~``
  as ``{}|^``; ``strict-rfc1459``: also ``[]\\`` as ``{}|``).  An unknown casemapping folds as
  rfc1459, the widest of the three: over-folding only makes the book avoid more nicks.
- ``NickBook``: the IRC nick of each MUC occupant.  A MUC nick that is a valid IRC nick (first
  character a letter or one of ``[]\\`_^{|}``, the rest also digits and ``-``, at most NICKLEN) is
  used as it is.  Any other is escaped, deterministically: its NFKD form without combining marks,
  each run of characters IRC does not allow replaced by ``_``, ``_`` put first when it would start
  with a digit or ``-``, cut to NICKLEN - 5, then ``|`` and the first four characters of the
  base32 SHA-256 of the MUC nick (``Zoë`` -> ``Zoe|xxxx``), so distinct MUC nicks stay distinct.
  A nick whose fold is already held (by another MUC nick of the book, a reserved nick such as
  the bot's or the network services' in ``SERVICE_NICKS``, or an IRC user the server named in
  ERR_NICKNAMEINUSE) gets the suffix ``|2``, ``|3``, ... within NICKLEN.  A MUC nick keeps its
  IRC nick for the life of the book, across ``release`` (a released entry still holds its nick;
  only when the book is full is the least recently used released entry forgotten), and across
  restarts with ``dump``/``load``.
- ``muc_nick_for``: an IRC nick as a MUC nick (a resourcepart).  A nick in IRC's character set is
  a valid RFC 7622 resourcepart unchanged (ASCII 0x21-0x7E are all allowed by the OpaqueString
  profile, and stringprep leaves them as they are; a test walks the whole set), so it is used as
  it is.  A nick a lax server allowed outside that set is used as stringprep prepares it, or, if
  stringprep refuses it or it holds an invisible or bidi formatting character (``has_invisible``:
  a right-to-left override would make it read as someone else), escaped as ``irc|`` and a base32 hash.

Bounds: at most ``max_entries`` entries (default 4096), each a MUC nick of at most 1023 UTF-8
bytes (RFC 7622) and an IRC nick of at most NICKLEN, so at most about 4096 x (1023 + NICKLEN)
bytes of text; and at most as many nicks the server named in use, each at most NICKLEN.
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Iterable

from guard.core.addressing import parse_jid

MIN_NICKLEN = 5
MAX_NICKLEN = 255
MUC_NICK_BYTES = 1023
MAX_ENTRIES = 4096
HASH_CHARS = 4
ESCAPE_SEPARATOR = "|"
DUMP_VERSION = 1

# Nicks IRC users trust as the network's services: never given to a MUC occupant, so nobody on
# XMPP can speak to IRC as NickServ on a network that happens to run no services.
SERVICE_NICKS = ("NickServ", "ChanServ", "MemoServ", "OperServ", "HostServ", "BotServ", "SaslServ", "HelpServ", "Global")
CASEMAPPINGS = ("ascii", "rfc1459", "strict-rfc1459")
_ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ASCII_LOWER = "abcdefghijklmnopqrstuvwxyz"
_FOLDS = {
    "ascii": str.maketrans(_ASCII_UPPER, _ASCII_LOWER),
    "rfc1459": str.maketrans(_ASCII_UPPER + "[]\\~", _ASCII_LOWER + "{}|^"),
    "strict-rfc1459": str.maketrans(_ASCII_UPPER + "[]\\", _ASCII_LOWER + "{}|"),
}

SPECIAL = "[]\\`_^{|}"
_FIRST = frozenset(_ASCII_UPPER + _ASCII_LOWER + SPECIAL)
_REST = _FIRST | frozenset("0123456789-")
_ISUPPORT_TOKEN = re.compile(r"(-?)([A-Z0-9]+)(?:=(.*))?")
_ISUPPORT_ESCAPE = re.compile(r"\\x([0-9A-Fa-f]{2})")
_SUFFIX = re.compile(r"\|([1-9][0-9]*)$")


class NickBookFull(Exception):
    """Every entry of the book is in use (or no suffix fits NICKLEN): no IRC nick can be given."""


def is_valid_nick(nick: str, nicklen: int) -> bool:
    """Whether ``nick`` is a nick IRC allows (RFC 2812 character set) within ``nicklen``."""
    return (
        isinstance(nick, str)
        and 0 < len(nick) <= nicklen
        and nick[0] in _FIRST
        and all(char in _REST for char in nick[1:])
    )


def has_invisible(nick: str) -> bool:
    """Whether ``nick`` holds a character that is not shown as itself: a control, a format character (Cf: bidi
    controls and marks, zero-width characters, ...), a line or paragraph separator, or a non-character.  A nick
    names who speaks: none of these may disguise it, so the gateway refuses or escapes such a nick."""
    return any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") for char in nick)


def _short_hash(text: str, chars: int) -> str:
    digest = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:chars]


def _bounded_int(value: str, low: int, high: int) -> int | None:
    if not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if low <= number <= high else None


@dataclass(frozen=True)
class Isupport:
    """The network's rules from RPL_ISUPPORT; the defaults are RFC 1459/2812's until the server says otherwise."""

    nicklen: int = 9
    casemapping: str = "rfc1459"
    chantypes: str = "#&"
    prefix: str = "(ov)@+"
    channellen: int = 50
    linelen: int = 512
    tokens: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def from_reply(cls, params: list[str], base: Isupport | None = None) -> Isupport:
        """``base`` (or the defaults) updated by the params of one 005 reply: the target first, the human text last."""
        return (base or cls()).updated(params[1:-1])

    def updated(self, tokens: Iterable[str]) -> Isupport:
        """These rules with ``tokens`` applied (``KEY``, ``KEY=value``, ``-KEY``); malformed tokens and values are ignored."""
        defaults = Isupport()
        changes: dict[str, object] = {}
        raw = dict(self.tokens)
        for token in tokens:
            match = _ISUPPORT_TOKEN.fullmatch(token)
            if not match:
                continue
            removed, key, value = match.group(1), match.group(2), match.group(3)
            value = _ISUPPORT_ESCAPE.sub(lambda hex_match: chr(int(hex_match.group(1), 16)), value or "")
            if removed:
                raw.pop(key, None)
                attribute = key.lower()
                if attribute in _KNOWN:
                    changes[attribute] = getattr(defaults, attribute)
                continue
            raw[key] = value
            parsed = _KNOWN[key.lower()](value) if key.lower() in _KNOWN else None
            if parsed is not None:
                changes[key.lower()] = parsed
        return replace(self, tokens=raw, **changes)

    def fold(self, nick: str) -> str:
        """``nick`` as the network compares it."""
        return nick.translate(_FOLDS[self.casemapping])

    def prefixes(self) -> dict[str, str]:
        """Channel membership modes and their prefix symbols, e.g. ``{"o": "@", "v": "+"}``."""
        match = re.fullmatch(r"\(([^)]*)\)(.*)", self.prefix)
        if not match or len(match.group(1)) != len(match.group(2)):
            return {}
        return dict(zip(match.group(1), match.group(2)))


def _casemapping(value: str) -> str:
    return value if value in CASEMAPPINGS else "rfc1459"


_KNOWN = {
    "nicklen": lambda value: _bounded_int(value, 1, MAX_NICKLEN),
    "casemapping": _casemapping,
    "chantypes": lambda value: value if value.isascii() and value.isprintable() and " " not in value else None,
    "prefix": lambda value: value if value.isascii() and value.isprintable() and " " not in value else None,
    "channellen": lambda value: _bounded_int(value, 1, 1000),
    "linelen": lambda value: _bounded_int(value, 512, 65535),
}


def escaped_nick(muc_nick: str, nicklen: int) -> str:
    """The deterministic escape of ``muc_nick`` (see the module's text) within ``nicklen``."""
    stem = []
    replaced = False
    for char in unicodedata.normalize("NFKD", muc_nick):
        if unicodedata.combining(char):
            continue
        if char in _REST:
            stem.append(char)
            replaced = False
        elif not replaced:
            stem.append("_")
            replaced = True
    text = "".join(stem)
    if text and text[0] not in _FIRST:
        text = "_" + text
    room = nicklen - len(ESCAPE_SEPARATOR) - HASH_CHARS
    return text[:room] + ESCAPE_SEPARATOR + _short_hash(muc_nick, HASH_CHARS)


def base_nick(muc_nick: str, nicklen: int) -> str:
    """The IRC nick ``muc_nick`` asks for before collisions: itself where IRC allows it, else its escape."""
    if is_valid_nick(muc_nick, nicklen):
        return muc_nick
    return escaped_nick(muc_nick, nicklen)


def suffixed_nick(base: str, number: int, nicklen: int) -> str | None:
    """``base`` with collision suffix ``|number`` (1: no suffix) within ``nicklen``, or None when the suffix alone does not fit."""
    if number == 1:
        return base
    suffix = f"{ESCAPE_SEPARATOR}{number}"
    if len(suffix) > nicklen:
        return None
    return base[: nicklen - len(suffix)] + suffix


class NickBook:
    """The IRC nick of each MUC nick on one network: identical where IRC allows, escaped otherwise, unique by fold, stable."""

    def __init__(
        self,
        isupport: Isupport,
        reserved: Iterable[str] = (),
        *,
        max_entries: int = MAX_ENTRIES,
        service_nicks: Iterable[str] = SERVICE_NICKS,
    ):
        if isupport.nicklen < MIN_NICKLEN:
            raise ValueError(f"NICKLEN {isupport.nicklen} leaves no room for an escaped nick (at least {MIN_NICKLEN})")
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.isupport = isupport
        self.max_entries = max_entries
        self._reserved = frozenset(isupport.fold(nick) for nick in (*reserved, *service_nicks))
        self._entries: OrderedDict[str, str] = OrderedDict()  # muc nick -> irc nick, least recently used first
        self._active: set[str] = set()
        self._holders: dict[str, str] = {}  # fold(irc nick) -> muc nick
        self._in_use_on_irc: OrderedDict[str, None] = OrderedDict()  # folds the server said an IRC user holds

    def __len__(self) -> int:
        return len(self._entries)

    def irc_nick_for(self, muc_nick: str) -> str:
        """The IRC nick of ``muc_nick``, given now if it has none; NickBookFull when every entry is in use."""
        _check_muc_nick(muc_nick)
        known = self._entries.get(muc_nick)
        if known is not None:
            self._entries.move_to_end(muc_nick)
            self._active.add(muc_nick)
            return known
        self._make_room()
        nick = self._free_nick(muc_nick)
        self._entries[muc_nick] = nick
        self._holders[self.isupport.fold(nick)] = muc_nick
        self._active.add(muc_nick)
        return nick

    def release(self, muc_nick: str) -> None:
        """``muc_nick`` left: its IRC nick is kept for it (stable), but the entry may be forgotten when the book is full."""
        self._active.discard(muc_nick)

    def nick_in_use(self, muc_nick: str) -> str:
        """The server refused ``muc_nick``'s IRC nick (ERR_NICKNAMEINUSE): an IRC user holds it; the next free nick, kept from now on."""
        _check_muc_nick(muc_nick)
        held = self._entries.pop(muc_nick, None)
        if held is not None:
            folded = self.isupport.fold(held)
            del self._holders[folded]
            self._in_use_on_irc[folded] = None
            self._in_use_on_irc.move_to_end(folded)
            while len(self._in_use_on_irc) > self.max_entries:
                self._in_use_on_irc.popitem(last=False)
        self._active.discard(muc_nick)
        return self.irc_nick_for(muc_nick)

    def holder_of(self, irc_nick: str) -> str | None:
        """The MUC nick whose IRC connection uses ``irc_nick`` now (released entries hold none), or None."""
        muc_nick = self._holders.get(self.isupport.fold(irc_nick))
        return muc_nick if muc_nick in self._active else None

    def muc_nick_for(self, irc_nick: str) -> str:
        """``irc_nick`` as a MUC nick (a valid resourcepart; see the module's text)."""
        if is_valid_nick(irc_nick, MUC_NICK_BYTES):
            return irc_nick
        # A nick with an invisible or bidi formatting character (a lax server's) would disguise who speaks.
        parsed = parse_jid(f"irc@irc.invalid/{irc_nick}") if irc_nick and not has_invisible(irc_nick) else None
        if parsed is not None and parsed.resource:
            return parsed.resource
        return f"irc{ESCAPE_SEPARATOR}{_short_hash(irc_nick, 8)}"

    def dump(self) -> dict:
        """The book's entries (and the nicks named in use) as plain data for ``load`` after a restart."""
        return {
            "version": DUMP_VERSION,
            "entries": [[muc_nick, irc_nick] for muc_nick, irc_nick in self._entries.items()],
            "in_use_on_irc": list(self._in_use_on_irc),
        }

    def load(self, data: dict) -> int:
        """
        Fill this new, empty book from ``dump()``'s data; every entry comes back released.  An
        entry this book could not have given (not the MUC nick's base nick or one of its suffixes
        under the current NICKLEN, a reserved or duplicate fold) is dropped; returns how many were.
        """
        if self._entries or self._in_use_on_irc:
            raise ValueError("load fills an empty book only")
        if not isinstance(data, dict) or data.get("version") != DUMP_VERSION:
            raise ValueError("not a nick book dump")
        entries = data.get("entries")
        in_use = data.get("in_use_on_irc", [])
        if not isinstance(entries, list) or not isinstance(in_use, list):
            raise ValueError("not a nick book dump")
        dropped = 0
        for folded in in_use[-self.max_entries:]:
            if isinstance(folded, str) and is_valid_nick(folded, self.isupport.nicklen):
                self._in_use_on_irc[self.isupport.fold(folded)] = None
        for item in entries[-self.max_entries:]:
            if self._accepts(item):
                muc_nick, irc_nick = item
                self._entries[muc_nick] = irc_nick
                self._holders[self.isupport.fold(irc_nick)] = muc_nick
            else:
                dropped += 1
        return dropped + max(0, len(entries) - self.max_entries)

    def _accepts(self, item) -> bool:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(part, str) for part in item)):
            return False
        muc_nick, irc_nick = item
        try:
            _check_muc_nick(muc_nick)
        except ValueError:
            return False
        folded = self.isupport.fold(irc_nick)
        if muc_nick in self._entries or folded in self._holders or folded in self._reserved:
            return False
        if not is_valid_nick(irc_nick, self.isupport.nicklen):
            return False
        base = base_nick(muc_nick, self.isupport.nicklen)
        if irc_nick == base:
            return True
        suffix = _SUFFIX.search(irc_nick)
        return suffix is not None and suffixed_nick(base, int(suffix.group(1)), self.isupport.nicklen) == irc_nick

    def _make_room(self) -> None:
        if len(self._entries) < self.max_entries:
            return
        for muc_nick in self._entries:
            if muc_nick not in self._active:
                irc_nick = self._entries.pop(muc_nick)
                del self._holders[self.isupport.fold(irc_nick)]
                return
        raise NickBookFull(f"all {self.max_entries} entries in use")

    def _free_nick(self, muc_nick: str) -> str:
        nicklen = self.isupport.nicklen
        base = base_nick(muc_nick, nicklen)
        # Each taken fold blocks at most two candidates (a base may equal its own suffixed form).
        attempts = 2 * (len(self._holders) + len(self._reserved) + len(self._in_use_on_irc)) + 2
        for number in range(1, attempts + 1):
            candidate = suffixed_nick(base, number, nicklen)
            if candidate is None:
                break
            folded = self.isupport.fold(candidate)
            if folded not in self._holders and folded not in self._reserved and folded not in self._in_use_on_irc:
                return candidate
        raise NickBookFull(f"no free nick for a MUC nick within NICKLEN {nicklen}")


def _check_muc_nick(muc_nick: str) -> None:
    if not isinstance(muc_nick, str) or not muc_nick:
        raise ValueError("a MUC nick is a non-empty text")
    if len(muc_nick.encode("utf-8", errors="surrogatepass")) > MUC_NICK_BYTES:
        raise ValueError(f"a MUC nick is at most {MUC_NICK_BYTES} bytes")
