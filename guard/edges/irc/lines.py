"""
IRC lines: RFC 1459/2812 messages with IRCv3 message tags, parsed from the bytes of one line and
formatted back into bytes, refusing (``BadLine``) whatever is not a valid line.

A line, as this module reads and writes it::

    ['@' tags SPACE] [':' source SPACE] command {SPACE param} [SPACE ':' trailing] CR LF

- ``tags``: ``key[=value]`` separated by ``;``; a key is ``['+'] [vendor '/'] name`` (``+`` marks a
  client-only tag, ``vendor`` is a DNS name, ``name`` letters, digits and ``-``); values escape
  ``;`` as ``\\:``, space as ``\\s``, ``\\`` as ``\\\\``, CR as ``\\r`` and LF as ``\\n``, so a value
  can never end the tag section or the line.  A key given twice keeps its last value (IRCv3).
- Limits (enforced both ways, in bytes): the tag section, ``@`` and its space included, at most
  8191 bytes (``TAGS_BYTES``) received, of which the client-only tags at most 4094
  (``CLIENT_TAGS_BYTES``); at most 4094 sent (we are a client).  The rest of the line at most
  512 bytes with its CR LF (``LINE_BYTES``; a network's ISUPPORT ``LINELEN`` may raise it, passed
  as ``line_bytes``).  At most 15 parameters (``MAX_PARAMS``): a line with more is refused rather
  than folded into the 15th as RFC 2812 allows, so no parameter ever holds a space it was not
  given behind a ``:``.
- Refused on sight: NUL, CR or LF anywhere in the line (the caller has split lines on LF and
  removed the CR), an empty or space-only line, a malformed tag, an empty source, a command that is
  neither letters nor three digits.
- Text: each parameter is decoded as UTF-8 first, then with the configured ``fallback`` charset
  (which must be ASCII-compatible), and bytes neither can read become U+FFFD: invalid bytes are
  never passed on.  Tag values are UTF-8 (IRCv3), invalid bytes replaced.  Control characters are
  left in the text here (formatting codes and CTCP use them); ``formatting`` strips them.

No CTCP low-level dequoting is done (``\\x10`` sequences stay as they are, and ``formatting`` strips
the ``\\x10``): Twisted's ``IRCClient.lineReceived`` applies ``lowDequote``, which turns ``\\x100``
into NUL and ``\\x10n`` into LF inside a parameter, so lines must reach ``parse_line`` as bytes.

CTCP: a PRIVMSG or NOTICE text that starts with ``\\x01`` is a CTCP message, never text.
``read_ctcp`` names its kind; only ACTION (``/me``) becomes text; the caller refuses the others
(or answers VERSION itself with ``ctcp_message``).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import lru_cache

LINE_BYTES = 512
TAGS_BYTES = 8191
CLIENT_TAGS_BYTES = 4094
MAX_PARAMS = 15
CRLF = b"\r\n"

CTCP_DELIMITER = "\x01"
CTCP_ACTION = "ACTION"
# What wrapping a text as a CTCP ACTION adds to it, in bytes: "\x01ACTION " and "\x01".
CTCP_ACTION_OVERHEAD = len(f"{CTCP_DELIMITER}{CTCP_ACTION} {CTCP_DELIMITER}".encode("ascii"))

_FORBIDDEN_BYTES = re.compile(rb"[\x00\r\n]")
_FORBIDDEN_CHARS = re.compile("[\x00\r\n]")
_COMMAND = re.compile(r"[A-Za-z]+|[0-9]{3}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_TAG_KEY = re.compile(rf"\+?(?:{_LABEL}(?:\.{_LABEL})*/)?[A-Za-z0-9-]+")
_CTCP_KIND = re.compile(r"[A-Za-z0-9]+")

_TAG_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_TAG_ESCAPES = {"\\": "\\\\", ";": "\\:", " ": "\\s", "\r": "\\r", "\n": "\\n"}
_TAG_ESCAPE = re.compile(r"[\\; \r\n]")


class BadLine(ValueError):
    """A line that is not a valid IRC line (or would not be, were it written), with the reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class IrcMessage:
    """One IRC message: its IRCv3 tags (unescaped values), source, command (upper case) and params."""

    tags: dict[str, str]
    source: str | None
    command: str
    params: list[str]

    @property
    def source_nick(self) -> str | None:
        """The nick (or server name) of the source: what comes before ``!`` and ``@``."""
        if self.source is None:
            return None
        return self.source.split("!", 1)[0].split("@", 1)[0]


@lru_cache(maxsize=32)
def check_fallback(charset: str) -> str:
    """
    The codec name of ``charset`` if it can serve as the fallback for text that is not UTF-8: a
    known codec that decodes the ASCII bytes as ASCII (so spaces and colons keep their meaning).
    Raises ValueError otherwise (a configuration error, reported at load).
    """
    try:
        info = codecs.lookup(charset)
    except LookupError:
        raise ValueError(f"unknown charset {charset!r}") from None
    ascii_bytes = bytes(range(0x01, 0x80))
    try:
        decoded = ascii_bytes.decode(info.name)
    except (UnicodeDecodeError, LookupError, TypeError, AttributeError):
        raise ValueError(f"charset {charset!r} is not ASCII-compatible") from None
    if decoded != ascii_bytes.decode("ascii"):
        raise ValueError(f"charset {charset!r} is not ASCII-compatible")
    return info.name


def decode_text(raw: bytes, fallback: str = "latin-1") -> str:
    """``raw`` as UTF-8 if it is UTF-8, else in ``fallback``; bytes neither reads become U+FFFD."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode(check_fallback(fallback), errors="replace")


def unescape_tag_value(escaped: str) -> str:
    """A tag value as IRCv3 unescapes it: ``\\:`` ``\\s`` ``\\\\`` ``\\r`` ``\\n``; ``\\x`` is x; a lone final ``\\`` is dropped."""
    if "\\" not in escaped:
        return escaped
    out = []
    index = 0
    while index < len(escaped):
        char = escaped[index]
        if char == "\\":
            if index + 1 < len(escaped):
                following = escaped[index + 1]
                out.append(_TAG_UNESCAPES.get(following, following))
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


def escape_tag_value(value: str) -> str:
    """A tag value escaped so it holds no ``;``, space, CR or LF (NUL cannot be escaped: BadLine)."""
    if "\x00" in value:
        raise BadLine("NUL in a tag value")
    return _TAG_ESCAPE.sub(lambda match: _TAG_ESCAPES[match.group()], value)


def parse_line(raw: bytes, fallback: str = "latin-1", *, line_bytes: int = LINE_BYTES) -> IrcMessage:
    """The message in one received line (without its CR LF), or BadLine saying why it is not one."""
    if not isinstance(raw, bytes):
        raise BadLine("not bytes")
    check_fallback(fallback)
    if len(raw) > TAGS_BYTES + line_bytes:
        raise BadLine("line too long")
    if _FORBIDDEN_BYTES.search(raw):
        raise BadLine("NUL, CR or LF inside the line")
    rest = raw
    tags: dict[str, str] = {}
    if rest.startswith(b"@"):
        section, space, rest = rest.partition(b" ")
        if not space:
            raise BadLine("tags without a message")
        if len(section) + 1 > TAGS_BYTES:
            raise BadLine("tags too long")
        tags = _parse_tags(section[1:])
    if len(rest) + len(CRLF) > line_bytes:
        raise BadLine("line too long")
    rest = rest.lstrip(b" ")
    if not rest:
        raise BadLine("empty line")
    source = None
    if rest.startswith(b":"):
        raw_source, _, rest = rest[1:].partition(b" ")
        if not raw_source:
            raise BadLine("empty source")
        source = decode_text(raw_source, fallback)
        rest = rest.lstrip(b" ")
    raw_command, _, rest = rest.partition(b" ")
    if not raw_command:
        raise BadLine("no command")
    command = raw_command.decode("ascii", errors="replace")
    if not _COMMAND.fullmatch(command):
        raise BadLine("bad command")
    params = [decode_text(param, fallback) for param in _split_params(rest)]
    return IrcMessage(tags, source, command.upper(), params)


def _split_params(rest: bytes) -> list[bytes]:
    params: list[bytes] = []
    while True:
        rest = rest.lstrip(b" ")
        if not rest:
            return params
        if len(params) == MAX_PARAMS:
            raise BadLine("more than 15 parameters")
        if rest.startswith(b":"):
            params.append(rest[1:])
            return params
        param, _, rest = rest.partition(b" ")
        params.append(param)


def _parse_tags(section: bytes) -> dict[str, str]:
    if not section:
        raise BadLine("empty tag section")
    tags: dict[str, str] = {}
    client_bytes = 0
    for item in section.split(b";"):
        raw_key, _, raw_value = item.partition(b"=")
        try:
            key = raw_key.decode("ascii")
        except UnicodeDecodeError:
            raise BadLine("bad tag key") from None
        if not _TAG_KEY.fullmatch(key):
            raise BadLine("bad tag key")
        if key.startswith("+"):
            client_bytes += len(item) + 1
        tags[key] = unescape_tag_value(raw_value.decode("utf-8", errors="replace"))
    # The client-only tags, as their sender wrote them: '@', the items and their ';', the space.
    if client_bytes and client_bytes + 1 > CLIENT_TAGS_BYTES:
        raise BadLine("client tags too long")
    return tags


def format_line(
    command: str,
    params: list[str],
    tags: dict[str, str] | None = None,
    *,
    source: str | None = None,
    line_bytes: int = LINE_BYTES,
) -> bytes:
    """
    The bytes of one line (CR LF included) for ``command`` and ``params``, with ``tags`` (a value
    of "" or None writes the bare key), or BadLine: CR, LF or NUL in any part, an empty parameter,
    a space or a leading ``:`` in any parameter but the last, more than 15 parameters, a bad
    command, tag key or source, or more bytes than the limits.  ``source`` is for the lab's own
    servers: a client sends none.
    """
    if not isinstance(command, str) or not _COMMAND.fullmatch(command):
        raise BadLine("bad command")
    params = list(params)
    if len(params) > MAX_PARAMS:
        raise BadLine("more than 15 parameters")
    parts = []
    if source is not None:
        if not source or _FORBIDDEN_CHARS.search(source) or " " in source or source.startswith(":"):
            raise BadLine("bad source")
        parts.append(":" + source)
    parts.append(command.upper())
    for index, param in enumerate(params):
        if not isinstance(param, str):
            raise BadLine("parameter is not text")
        if _FORBIDDEN_CHARS.search(param):
            raise BadLine("NUL, CR or LF in a parameter")
        if index < len(params) - 1:
            if not param or " " in param or param.startswith(":"):
                raise BadLine("space, colon or nothing in a middle parameter")
            parts.append(param)
        elif not param or " " in param or param.startswith(":"):
            parts.append(":" + param)
        else:
            parts.append(param)
    body = _encoded(" ".join(parts))
    if len(body) + len(CRLF) > line_bytes:
        raise BadLine("line too long")
    if not tags:
        return body + CRLF
    section = _encoded_tags(tags)
    if len(section) + 2 > CLIENT_TAGS_BYTES:
        raise BadLine("tags too long")
    return b"@" + section + b" " + body + CRLF


def _encoded_tags(tags: dict[str, str]) -> bytes:
    items = []
    for key, value in tags.items():
        if not isinstance(key, str) or not _TAG_KEY.fullmatch(key):
            raise BadLine("bad tag key")
        if value is None or value == "":
            items.append(key)
        elif isinstance(value, str):
            items.append(f"{key}={escape_tag_value(value)}")
        else:
            raise BadLine("tag value is not text")
    return _encoded(";".join(items))


def _encoded(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadLine("text that UTF-8 cannot encode") from None


def split_text(text: str, budget: int) -> list[str]:
    """
    ``text`` as the texts of IRC lines of at most ``budget`` UTF-8 bytes each: every newline (LF,
    CR LF or CR) starts a new line and empty lines are dropped (IRC cannot send them); a longer
    line is cut at its last space that fits (the spaces around the cut are dropped), else at the
    last code point that fits.  Raises ValueError when ``budget`` cannot hold one code point (4 bytes).
    """
    if budget < 4:
        raise ValueError("budget below one code point")
    pieces: list[str] = []
    for line in re.split(r"\r\n|\r|\n", text):
        while line:
            if len(line.encode("utf-8", errors="surrogatepass")) <= budget:
                pieces.append(line)
                break
            fits = _chars_within(line, budget)
            space = line.rfind(" ", 1, fits + 1)
            if space > 0:
                piece = line[:space].rstrip(" ")
                if piece:
                    pieces.append(piece)
                line = line[space + 1:].lstrip(" ")
            else:
                pieces.append(line[:fits])
                line = line[fits:]
    return pieces


def _chars_within(text: str, budget: int) -> int:
    used = 0
    for index, char in enumerate(text):
        used += len(char.encode("utf-8", errors="surrogatepass"))
        if used > budget:
            return index
    return len(text)


def source_prefix_bytes(nick: str, user: str, host: str) -> int:
    """The bytes a server puts before a relayed command: ``:nick!user@host`` and a space."""
    return len(f":{nick}!{user}@{host} ".encode("utf-8"))


def privmsg_budget(
    target: str, source_prefix_bytes: int, *, command: str = "PRIVMSG", line_bytes: int = LINE_BYTES
) -> int:
    """
    The UTF-8 bytes of text one PRIVMSG (or ``command``) to ``target`` may carry so that the line
    the server relays, ``:nick!user@host PRIVMSG target :text`` CR LF, stays within ``line_bytes``;
    ``source_prefix_bytes`` counts ``:nick!user@host`` and its space (``source_prefix_bytes()``;
    a client that does not know its host counts the longest the network may give it).  Raises
    ValueError when nothing is left.
    """
    fixed = len(CRLF) + source_prefix_bytes + len(command) + 1 + len(target.encode("utf-8")) + len(" :")
    budget = line_bytes - fixed
    if budget < 4:
        raise ValueError("no room for text in one line")
    return budget


def ctcp_message(kind: str, body: str = "") -> str:
    """The text of a CTCP message of ``kind`` (letters and digits) carrying ``body``."""
    if not _CTCP_KIND.fullmatch(kind):
        raise BadLine("bad CTCP kind")
    if CTCP_DELIMITER in body or _FORBIDDEN_CHARS.search(body):
        raise BadLine("control character in a CTCP body")
    inner = f"{kind.upper()} {body}" if body else kind.upper()
    return f"{CTCP_DELIMITER}{inner}{CTCP_DELIMITER}"


def ctcp_action(text: str) -> str:
    """The PRIVMSG text of a ``/me`` action."""
    return ctcp_message(CTCP_ACTION, text)


def read_ctcp(text: str) -> tuple[str, str] | None:
    """
    ``(kind, body)`` when ``text`` is a CTCP message (it starts with ``\\x01``; the closing one may
    be missing), else None.  ``kind`` is upper case, or "" when it is not letters and digits (the
    caller refuses it like any kind it does not handle).
    """
    if not text.startswith(CTCP_DELIMITER):
        return None
    inner = text[1:]
    if inner.endswith(CTCP_DELIMITER):
        inner = inner[:-1]
    kind, _, body = inner.partition(" ")
    if not _CTCP_KIND.fullmatch(kind):
        return "", inner
    return kind.upper(), body
