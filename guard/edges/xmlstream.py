"""
The hardened incremental parser and the serialiser for XMPP streams.

Every byte a peer sends the guard goes through ``StreamParser``: it accepts
the restricted XML of RFC 6120 section 11 and nothing else, enforces size,
depth and count limits while the bytes arrive, and hands each complete
top-level element (stanza or nonza) to the caller as a ``domish.Element``.
Anything hostile, broken or outside the limits raises ``StreamFault``
naming the RFC 6120 stream error to close the stream with; the parser is
then dead and refuses all later input.

``serialise`` writes an element back as XML text for a stream whose default
namespace is known, so that the relay never forwards the peer's bytes, only
what was understood.  Its output is at most 5 times the element's wire size
plus a fixed allowance (see ``serialise``), and ``max_bytes`` stops it as soon
as the output passes the far side's bound.

What a peer cannot make the parser keep: every name cache is bounded in bytes,
pyexpat does not intern names, and the expat parser itself (which keeps every
distinct name it meets) is replaced at a stanza boundary after each MiB.

Stream error texts are the guard's own constant strings; what the peer wrote
goes to ``StreamFault.detail`` (bounded and escaped by ``peer_detail``), for
the log only.

How byte counts are kept exact: expat's ``CurrentByteIndex`` gives the
offset of each start tag.  For an end tag it gives the offset of ``</``; for
an empty-element tag (``<x/>``) the end event reports the offset just past
the tag.  The end of a top-level element is therefore the first ``>`` after
the end event's offset, unless the element has no content and the two bytes
before that offset are ``/>``.
"""

from __future__ import annotations

import codecs
import re
import sys
from dataclasses import dataclass
from typing import Callable

import pyexpat
from pyexpat import errors as _expat_errors

from twisted.words.xish import domish
from guard.core.bounce import peer_detail  # noqa: F401 - one way to show a peer's words, re-exported
from guard.core.policy.elements import SealedElement
from guard.core.vocabulary import SERVER_NS, STREAM_ERROR_CONDITIONS, STREAMS_NS, XML_LANG, XML_NS, XMLNS_NS

__all__ = [
    "ParserLimits",
    "StreamFault",
    "StreamHeader",
    "StreamParser",
    "OversizedStanza",
    "peer_detail",
    "serialise",
]

# Input is handed to expat in pieces of at most this many bytes, so that the
# size limits are checked at least this often however large one feed() is.
_PIECE_BYTES = 64 * 1024

# Bounds on the name caches (a peer may send endless new names, each as long
# as it likes): a cache keeps at most this many names, each at most this many
# characters (longer names are split again each time), so in bytes it stays
# under about _NAME_CACHE_ENTRIES * (_NAME_CACHE_LENGTH + _NAME_ENTRY_OVERHEAD).
_NAME_CACHE_ENTRIES = 1024
_NAME_CACHE_LENGTH = 128
_NAME_ENTRY_OVERHEAD = 200  # a dict slot, the key string and the split tuple, roughly
_URI_CACHE_BYTES = 64 * 1024
# Expat keeps every distinct element and attribute name it meets until the parser is freed: after
# this many bytes of a stream, the parser is replaced at the next stanza boundary.
_EXPAT_RENEW_BYTES = 1024 * 1024
_ROOT_TAG_NAME = re.compile(rb"<([^\s/>]+)")

_XML_WHITESPACE = " \t\r\n"
_XML_WHITESPACE_BYTES = _XML_WHITESPACE.encode("ascii")
_NESTED_STREAM = (STREAMS_NS, "stream")


@dataclass(frozen=True)
class ParserLimits:
    """How much one peer may make the parser hold; every limit is enforced and tested.  Declared here only:
    ``guard.edges.limits.Limits`` extends this class, so the ``[limits]`` table sets these with the same keys."""

    stanza_bytes: int = 512 * 1024  # bytes of one top-level element, start tag to end tag
    element_depth: int = 48  # nesting depth inside one stanza (stanza itself = depth 1)
    attributes_per_element: int = 64  # attributes plus namespace declarations
    attribute_value_bytes: int = 16 * 1024  # utf-8 bytes of one attribute value (or namespace URI)
    children_per_stanza: int = 5000  # elements inside one stanza, all levels, stanza excluded
    header_bytes: int = 4096  # bytes before the stream header's start tag is complete


class StreamFault(Exception):
    """The peer broke the stream; the stream must be closed with this RFC 6120 stream error.

    ``text`` is the guard's own constant wording, safe to write into a stream error or a
    bounce; ``detail`` is what the peer said (already bounded and escaped by
    ``peer_detail``), for the log and the audit only."""

    def __init__(self, condition: str, text: str, detail: str = "") -> None:
        if condition not in STREAM_ERROR_CONDITIONS:
            raise ValueError(f"{condition!r} is not an RFC 6120 stream error condition")
        super().__init__(f"{condition}: {text}")
        self.condition = condition
        self.text = text
        self.detail = detail


# How much of a value a peer chose goes into a log detail.
@dataclass(frozen=True)
class StreamHeader:
    """What the peer's <stream:stream> start tag said."""

    name: str
    uri: str
    default_namespace: str | None
    prefixes: dict[str, str]
    attributes: dict[str, str]


class _Stopped(Exception):
    """Raised inside expat callbacks to abandon the rest of the input."""


class _Renew(Exception):
    """Raised at a stanza boundary to continue the stream, from stream offset ``at``, on a new expat parser."""

    def __init__(self, at: int) -> None:
        super().__init__(at)
        self.at = at


# Expat errors that mean the peer used XML that RFC 6120 section 11 forbids
# (DTDs, entities) rather than XML that is broken.
_RESTRICTED_ERRORS = frozenset(
    _expat_errors.codes[getattr(_expat_errors, name)]
    for name in (
        "XML_ERROR_UNDEFINED_ENTITY",
        "XML_ERROR_RECURSIVE_ENTITY_REF",
        "XML_ERROR_ASYNC_ENTITY",
        "XML_ERROR_BINARY_ENTITY_REF",
        "XML_ERROR_ATTRIBUTE_EXTERNAL_ENTITY_REF",
        "XML_ERROR_EXTERNAL_ENTITY_HANDLING",
        "XML_ERROR_ENTITY_DECLARED_IN_PE",
        "XML_ERROR_NOT_STANDALONE",
        "XML_ERROR_AMPLIFICATION_LIMIT_BREACH",
    )
    if hasattr(_expat_errors, name)
)
_ENCODING_ERRORS = frozenset(
    _expat_errors.codes[getattr(_expat_errors, name)]
    for name in ("XML_ERROR_UNKNOWN_ENCODING", "XML_ERROR_INCORRECT_ENCODING")
)

# Declaration handlers we never expect to run (a DOCTYPE is refused first);
# each one refuses if it ever does.
_DECLARATION_HANDLERS = (
    "StartDoctypeDeclHandler",
    "EntityDeclHandler",
    "UnparsedEntityDeclHandler",
    "NotationDeclHandler",
    "ElementDeclHandler",
    "AttlistDeclHandler",
    "SkippedEntityHandler",
)


def _refuse_declaration(*_args: object) -> None:
    raise StreamFault("restricted-xml", "DTDs and entity declarations are not allowed")


def _refuse_external_entity(*_args: object) -> int:
    raise StreamFault("restricted-xml", "external entities are not allowed")


def _refuse_comment(_data: str) -> None:
    raise StreamFault("restricted-xml", "comments are not allowed")


def _refuse_processing_instruction(_target: str, _data: str) -> None:
    raise StreamFault("restricted-xml", "processing instructions are not allowed")


def _check_xml_declaration(version: str, encoding: str | None, _standalone: int) -> None:
    if encoding is not None and encoding.upper() != "UTF-8":
        raise StreamFault("unsupported-encoding", "the stream is not UTF-8", peer_detail(encoding))
    if version != "1.0":
        # RFC 6120 4.7.5 and 11: XMPP 1.0 is XML 1.0; any other version is one we do not support.
        raise StreamFault("unsupported-version", "only XML 1.0 is supported", peer_detail(version))


class ParsedElement(domish.Element):
    """
    A ``domish.Element`` as the parser makes one (``StreamParser._on_start``
    sets its fields directly, in a third of the time of
    ``domish.Element(qname, None, attributes)``), with the same fields: its
    namespace is its default, it declares no prefixes, and it takes the
    attribute dictionary expat made for it (a new one for each element).

    One difference: ``parent`` is always None.  A child that points back at
    its parent makes every stanza a reference cycle, which only Python's
    cyclic garbage collector frees, after walking every live tree again and
    again (a fifth of the parser's work); without it a stanza is freed the
    moment the relay lets go of it.  Nothing in the guard walks up a tree.
    """


_new_object = object.__new__


class StreamParser:
    """Turns the bytes of one inbound XML stream into a header, elements and an end."""

    # A stream keeps its parser as long as it lives: its fields in slots take about 300 bytes, where an
    # instance dictionary of more than 30 names takes 1,584 (``__dict__`` stays for any other name).
    __slots__ = (
        "_attributes_limit", "_boundary", "_dead", "_declarations", "_depth_limit", "_element_names",
        "_element_received", "_elements_limit", "_expat", "_expat_began", "_expat_offset", "_fed", "_header",
        "_header_raw", "_limits", "_names", "_partial_start", "_piece", "_piece_start", "_previous_last_byte",
        "_root_default", "_root_name", "_root_prefixes", "_stack", "_stanza_elements", "_stanza_start", "_stopped",
        "_stream_ended", "_stream_started", "_text", "_uris", "_uris_size", "_utf8", "_utf8_pending",
        "_value_bytes_limit", "_value_characters_unchecked", "__dict__", "__weakref__",
    )  # fmt: skip

    def __init__(
        self,
        stream_started: Callable[[StreamHeader], object],
        element_received: Callable[[domish.Element, int], object],
        stream_ended: Callable[[], object],
        limits: ParserLimits = ParserLimits(),
    ) -> None:
        """stream_started(header: StreamHeader); element_received(element: domish.Element, size: int)
        is called for each complete top-level child of the stream (stanzas and nonzas like
        <starttls/>, <stream:features/>, <db:result/>) with the number of input bytes it took;
        stream_ended() when </stream:stream> arrives."""
        self._stream_started = stream_started
        self._element_received = element_received
        self._stream_ended = stream_ended
        self._limits = limits
        self._depth_limit = limits.element_depth
        self._elements_limit = limits.children_per_stanza
        self._attributes_limit = limits.attributes_per_element
        self._value_bytes_limit = limits.attribute_value_bytes
        # A value of at most this many characters is within attribute_value_bytes (4 bytes a character at most).
        self._value_characters_unchecked = limits.attribute_value_bytes // 4

        self._header: StreamHeader | None = None
        self._root_default: str | None = None
        self._root_prefixes: dict[str, str] = {}

        self._stack: list[domish.Element] = []  # open elements of the current stanza
        self._text: list[str] = []  # character data not yet added to stack[-1]
        self._stanza_start = 0  # offset of the current stanza's start tag
        self._stanza_elements = 0  # elements inside the current stanza
        self._declarations = 0  # namespace declarations on the next start tag

        # Between stanzas: where the last top-level item ended, and where the
        # next (still incomplete) markup starts, if it has started.
        self._boundary = 0
        self._partial_start: int | None = None

        self._fed = 0  # bytes handed to expat so far
        self._piece = b""  # the bytes expat is parsing now ...
        self._piece_start = 0  # ... and their offset in the stream
        self._previous_last_byte = b""  # the byte before self._piece

        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._utf8_pending = False  # the decoder holds part of a character

        # Name caches, bounded in bytes: names of at most _NAME_CACHE_LENGTH characters, at most
        # _NAME_CACHE_ENTRIES of them.  Namespace names (up to attribute_value_bytes each) are kept
        # once each in _uris while a stanza is parsed, so that its elements share them; between
        # stanzas _uris is emptied once it holds more than _URI_CACHE_BYTES.
        self._names: dict[str, tuple[str, str]] = {}
        self._element_names: dict[str, tuple[str, str]] = {}
        self._uris: dict[str, str] = {}
        self._uris_size = 0
        self._stopped = False
        self._dead: StreamFault | None = None
        self._header_raw = b""  # the bytes before the stream header is parsed
        self._root_name = b""  # the stream's start tag name as the peer wrote it (stream:stream)
        self._expat = self._create_expat()
        self._expat_offset = 0  # stream offset of byte 0 of what the current expat parsed
        self._expat_began = 0  # stream offset where the current expat started on the peer's bytes

    # -- public -----------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse more bytes. Raises StreamFault on anything hostile or broken. After a fault, or after
        stream_ended, further feed() calls raise StreamFault again (the parser is dead).
        If a callback calls parser.stop(), the parser ignores the rest of this chunk and all later
        input (used when the stream restarts after STARTTLS/SASL: the protocol then creates a new
        StreamParser)."""
        if self._stopped:
            return
        if self._dead is not None:
            raise StreamFault(self._dead.condition, self._dead.text)
        if not data:
            return
        try:
            self._feed(bytes(data))
        except _Stopped:
            self._release()
            return
        except StreamFault as fault:
            self._die(fault)
            raise
        except pyexpat.ExpatError as error:
            fault = self._translate(error)
            self._die(fault)
            raise fault from None
        except BaseException:
            # A callback (or this parser) failed: nothing more is parsed.
            self._die(StreamFault("internal-server-error", "the stream could not be processed"))
            raise

    def stop(self) -> None:
        """Ignore the rest of the current chunk and all later input."""
        self._stopped = True

    @property
    def resting(self) -> bool:
        """Whether the parser holds no expat now (it rested, see rest(), and no markup came since)."""
        return self._expat is None and self._header is not None and not self._stopped and self._dead is None

    def rest(self) -> bool:
        """Let go of expat (its buffers and tables, some 15 KiB), the name caches and the last input while the stream
        waits between stanzas; the next feed() goes on with a new expat, as after a renewal.  Only at a
        stanza boundary followed by nothing but whitespace; whether it did."""
        if (self._expat is None or self._header is None or self._stopped or self._dead is not None
                or self._stack or self._partial_start is not None or self._utf8_pending):
            return False
        # Text outside a stanza was refused as expat reported it, but expat holds back the end of its
        # input when it may start a token ("]" of "]]>", an "&" reference, "<" is known as a partial
        # start above).  Whitespace after the last ">" shows it holds nothing: whitespace ends such a
        # token (or breaks the XML), and a ">" ends a tag, or a token (or breaks it).
        piece = self._piece
        if not piece or piece[piece.rfind(b">") + 1 :].strip(_XML_WHITESPACE_BYTES):
            return False
        self._expat = None
        self._piece = b""
        # The name caches fill again from the next stanzas.
        self._names.clear()
        self._element_names.clear()
        self._uris.clear()
        self._uris_size = 0
        return True

    # -- feeding ----------------------------------------------------------

    def _create_expat(self) -> pyexpat.XMLParserType:
        # intern=None: pyexpat would otherwise keep every distinct name a peer sends for the life
        # of the parser (the name caches above do that job, bounded).
        expat = pyexpat.ParserCreate(encoding="UTF-8", namespace_separator=" ", intern=None)
        expat.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
        expat.buffer_text = True
        expat.buffer_size = 64 * 1024
        expat.StartElementHandler = self._on_start
        expat.EndElementHandler = self._on_end
        expat.CharacterDataHandler = self._on_text
        expat.StartNamespaceDeclHandler = self._on_namespace
        expat.XmlDeclHandler = _check_xml_declaration
        expat.CommentHandler = _refuse_comment
        expat.ProcessingInstructionHandler = _refuse_processing_instruction
        expat.ExternalEntityRefHandler = _refuse_external_entity
        for name in _DECLARATION_HANDLERS:
            setattr(expat, name, _refuse_declaration)
        return expat

    def _renew_expat(self, at: int) -> None:
        """Go on from stream offset ``at`` (a stanza boundary) with a new expat parser, so that the
        names the old one collected (expat keeps every element and attribute name it meets, in
        tables it never shrinks) are freed.  The new parser first reads a copy of the stream's
        start tag, written from what the header declared, with no handlers: it then knows the
        same namespaces and expects the same end tag."""
        expat = self._create_expat()
        handlers = (expat.StartElementHandler, expat.StartNamespaceDeclHandler)
        expat.StartElementHandler = expat.StartNamespaceDeclHandler = None
        start_tag = self._restated_start_tag()
        expat.Parse(start_tag, False)
        expat.StartElementHandler, expat.StartNamespaceDeclHandler = handlers
        self._expat = expat
        self._expat_offset = at - len(start_tag)
        self._expat_began = at

    def _restated_start_tag(self) -> bytes:
        declarations = []
        if self._root_default is not None:
            declarations.append(" xmlns=" + _quote_attribute(self._root_default))
        for prefix, uri in self._root_prefixes.items():
            declarations.append(f" xmlns:{prefix}={_quote_attribute(uri)}")
        return b"<" + self._root_name + "".join(declarations).encode("utf-8") + b">"

    def _die(self, fault: StreamFault) -> None:
        self._dead = fault
        self._release()

    def _release(self) -> None:
        """Drop expat and the partial stanza: nothing more will be parsed."""
        self._expat = None
        self._stack = []
        self._text = []
        self._piece = b""

    def _feed(self, data: bytes) -> None:
        if self._fed < 4:
            self._check_stream_start(data)
        invalid_at = None
        if self._utf8_pending or not data.isascii():
            invalid_at = self._check_utf8(data)
            if invalid_at is not None:
                data = data[:invalid_at]
        if len(data) <= _PIECE_BYTES and self._header is not None:
            self._parse_piece(data)  # the common case: one piece
            data = b""
        while data:
            size = _PIECE_BYTES
            if self._header is None:
                size = min(size, self._limits.header_bytes - self._fed)
                if size <= 0:
                    raise StreamFault("policy-violation", "stream header too large")
            piece, data = data[:size], data[size:]
            self._parse_piece(piece)
        if invalid_at is not None:
            raise StreamFault("unsupported-encoding", "the stream is not valid UTF-8")

    def _check_stream_start(self, data: bytes) -> None:
        """A stream in UTF-16 or UTF-32 shows itself in its first bytes."""
        head = data[: 4 - self._fed]
        if self._fed == 0 and head[:2] in (b"\xfe\xff", b"\xff\xfe"):
            raise StreamFault("unsupported-encoding", "UTF-16 streams are not supported")
        if b"\x00" in head:
            raise StreamFault("unsupported-encoding", "the stream is not UTF-8")

    def _check_utf8(self, data: bytes) -> int | None:
        """The offset in data of the first byte that breaks UTF-8, or None."""
        held = len(self._utf8.getstate()[0])
        try:
            self._utf8.decode(data)
        except UnicodeDecodeError as error:
            return max(0, error.start - held)
        self._utf8_pending = bool(self._utf8.getstate()[0])
        return None

    def _parse_piece(self, piece: bytes) -> None:
        limits = self._limits
        start = self._fed
        self._piece = piece
        self._piece_start = start
        if self._header is None:
            self._header_raw += piece  # at most header_bytes: kept to read the root's tag name
        elif self._expat is None:  # the stream rested (see rest())
            if not piece.strip(_XML_WHITESPACE_BYTES):
                # Whitespace between stanzas (a keepalive): nothing for expat to see, none is made.
                self._fed = start + len(piece)
                self._previous_last_byte = piece[-1:]
                return
            self._renew_expat(start)
        rest = piece
        while True:
            try:
                self._expat.Parse(rest, False)
                break
            except _Renew as renew:
                self._renew_expat(renew.at)
                rest = piece[renew.at - start :]
        end = self._fed = start + len(piece)
        self._previous_last_byte = piece[-1:]

        if self._stack:
            if end - self._stanza_start > limits.stanza_bytes:
                raise StreamFault("policy-violation", "stanza too large")
        elif self._header is not None:
            if self._partial_start is None:
                found = piece.find(b"<", max(0, self._boundary - start))
                if found >= 0:
                    self._partial_start = start + found
            if self._partial_start is not None and end - self._partial_start > limits.stanza_bytes:
                raise StreamFault("policy-violation", "stanza too large")
        elif end >= limits.header_bytes:
            raise StreamFault("policy-violation", "stream header too large")

    def _translate(self, error: pyexpat.ExpatError) -> StreamFault:
        # expat's message (with a line and column) goes to the detail; the text is our own.
        if error.code in _RESTRICTED_ERRORS:
            return StreamFault("restricted-xml", "DTDs and entity references are not allowed", str(error))
        if error.code in _ENCODING_ERRORS:
            return StreamFault("unsupported-encoding", "the stream is not UTF-8", str(error))
        if self._looks_like_declaration(error):
            return StreamFault("restricted-xml", "markup declarations are not allowed", str(error))
        return StreamFault("not-well-formed", "the stream is not well-formed XML", str(error))

    def _looks_like_declaration(self, error: pyexpat.ExpatError) -> bool:
        """Whether expat stopped just after a ``<!`` that opens neither a comment nor CDATA."""
        if self._expat is None:
            return False
        at = self._expat.ErrorByteIndex + self._expat_offset - self._piece_start
        if at < 2 or at > len(self._piece):
            return False
        return self._piece[at - 2 : at] == b"<!" and self._piece[at : at + 1].isalpha()

    # -- expat callbacks --------------------------------------------------

    def _split(self, name: str) -> tuple[str, str]:
        names = self._names
        split = names.get(name)
        if split is None:
            uri, _, local = name.rpartition(" ")
            uris = self._uris
            known = uris.get(uri)
            if known is None:
                uris[uri] = uri
                self._uris_size += len(uri) + _NAME_ENTRY_OVERHEAD
            else:
                uri = known  # elements share one copy of a namespace name, however long
            split = (uri, local)
            if len(name) <= _NAME_CACHE_LENGTH:
                if len(names) >= _NAME_CACHE_ENTRIES:
                    names.clear()
                names[name] = split
        return split

    def _element_name(self, name: str) -> tuple[str, str]:
        """(uri, local name) of an element inside the stream, refusing names no stanza may have."""
        split = self._split(name)
        if split == _NESTED_STREAM:
            # Well-formed XML, but not a stanza (RFC 6120 4.9.3.24) nor anything a stanza may hold.
            if not self._stack:
                raise StreamFault("unsupported-stanza-type", "a stream header inside the stream")
            raise StreamFault("policy-violation", "a stream header inside a stanza")
        if split[0] == XML_NS:
            raise StreamFault("bad-namespace-prefix", "elements in the xml namespace are not allowed")
        if len(name) <= _NAME_CACHE_LENGTH:
            names = self._element_names
            if len(names) >= _NAME_CACHE_ENTRIES:
                names.clear()
            names[name] = split
        return split

    def _on_namespace(self, prefix: str | None, uri: str | None) -> None:
        self._declarations += 1
        if self._declarations > self._attributes_limit:
            raise StreamFault("policy-violation", "too many attributes")
        uri = uri or ""
        if len(uri) > self._value_characters_unchecked and len(uri.encode("utf-8")) > self._value_bytes_limit:
            raise StreamFault("policy-violation", "namespace name too long")
        if self._header is None:
            if prefix is None:
                self._root_default = uri
            else:
                self._root_prefixes[prefix] = uri

    def _check_value_bytes(self, attributes: dict[str, str]) -> None:
        for value in attributes.values():
            if len(value.encode("utf-8")) > self._value_bytes_limit:
                raise StreamFault("policy-violation", "attribute value too long")

    def _on_start(self, name: str, attributes: dict[str, str]) -> None:
        if attributes or self._declarations:
            # The attribute bounds, checked inline (a call per element costs as much as the checks).
            if len(attributes) + self._declarations > self._attributes_limit:
                raise StreamFault("policy-violation", "too many attributes")
            self._declarations = 0
            if attributes:
                if max(map(len, attributes.values())) > self._value_characters_unchecked:
                    self._check_value_bytes(attributes)
                # Namespaced attribute names arrive as "uri local"; plain ones hold no space.
                if " " in "<".join(attributes):
                    attributes = self._qualify(attributes)
        stack = self._stack
        if stack:  # an element inside a stanza
            if len(stack) >= self._depth_limit:
                raise StreamFault("policy-violation", "elements nested too deeply")
            self._stanza_elements += 1
            if self._stanza_elements > self._elements_limit:
                raise StreamFault("policy-violation", "too many elements in one stanza")
            parent = stack[-1]
            if self._text:
                parent.children.append("".join(self._text))
                self._text.clear()
        elif self._header is None:
            self._start_stream(name, attributes)
            return
        else:  # a stanza (or nonza) starts
            parent = None
            self._stanza_start = self._expat.CurrentByteIndex + self._expat_offset
            self._stanza_elements = 0
        # ParsedElement's fields, set here (a class call per element costs more than setting them).
        element = _new_object(ParsedElement)
        uri, element.name = self._element_names.get(name) or self._element_name(name)
        element.uri = element.defaultUri = uri
        element.localPrefixes = {}
        element.attributes = attributes
        element.children = []
        element.parent = None  # not the parent: see ParsedElement
        if parent is not None:
            parent.children.append(element)
        stack.append(element)

    def _qualify(self, attributes: dict[str, str]) -> dict[str, str]:
        qualified = {}
        for key, value in attributes.items():
            if " " in key:
                qualified[self._split(key)] = value
            else:
                qualified[key] = value
        return qualified

    def _start_stream(self, name: str, attributes: dict) -> None:
        uri, _, local = name.rpartition(" ")
        if uri != STREAMS_NS or local != "stream":
            raise StreamFault("invalid-namespace", "the stream root is not {http://etherx.jabber.org/streams}stream",
                              peer_detail(f"{{{uri}}}{local}"))
        plain = {}
        for key, value in attributes.items():
            if key.__class__ is str:
                plain[key] = value
            elif key == XML_LANG:
                plain["xml:lang"] = value
        header = StreamHeader(
            name=local,
            uri=uri,
            default_namespace=self._root_default,
            prefixes=dict(self._root_prefixes),
            attributes=plain,
        )
        self._header = header
        at = self._expat.CurrentByteIndex + self._expat_offset
        root = _ROOT_TAG_NAME.match(self._header_raw, at)
        if root is None:
            raise StreamFault("internal-server-error", "lost track of the stream position")
        self._root_name = root.group(1)
        self._header_raw = b""
        self._boundary = at + 1
        self._partial_start = None
        self._stream_started(header)
        if self._stopped:
            raise _Stopped()

    def _on_text(self, data: str) -> None:
        if self._stack:
            self._text.append(data)
        elif data.strip(_XML_WHITESPACE):
            raise StreamFault("bad-format", "text directly inside the stream")

    def _on_end(self, name: str) -> None:
        stack = self._stack
        if len(stack) > 1:  # an element inside a stanza
            if self._text:
                stack[-1].children.append("".join(self._text))
                self._text.clear()
            stack.pop()
            return
        if not stack:
            self._end_stream()
            return
        element = stack.pop()
        if self._text:
            element.children.append("".join(self._text))
            self._text.clear()
        end = self._element_end(element)
        size = end - self._stanza_start
        if size > self._limits.stanza_bytes:
            raise StreamFault("policy-violation", "stanza too large")
        self._boundary = end
        self._partial_start = None
        if self._uris_size > _URI_CACHE_BYTES:
            self._uris = {}
            self._uris_size = 0
        self._element_received(element, size)
        if self._stopped:
            raise _Stopped()
        if end - self._expat_began > _EXPAT_RENEW_BYTES:
            raise _Renew(end)

    def _element_end(self, element: domish.Element) -> int:
        """The stream offset just past the end of the top-level element closing now."""
        at = self._expat.CurrentByteIndex + self._expat_offset
        start = self._piece_start
        if not element.children:
            before = at - 2 - start
            slash = self._piece[before : before + 1] if before >= 0 else self._previous_last_byte
            if before >= -1 and slash == b"/":
                return at  # an empty-element tag: expat reports the offset past it
        found = self._piece.find(b">", max(0, at - start))
        if found < 0:
            raise StreamFault("internal-server-error", "lost track of the stream position")
        return start + found + 1

    def _end_stream(self) -> None:
        self._dead = StreamFault("not-well-formed", "data after the end of the stream")
        self._stream_ended()
        raise _Stopped()


# -- serialising ----------------------------------------------------------
#
# How the output stays small: each namespace is declared once per scope.  An
# element in its parent's namespace writes no xmlns.  The first element that
# enters a namespace declares it as the default (xmlns="..."), as XMPP
# software expects.  Entering the same namespace again outside that scope
# (siblings, cousins: a stanza error's condition and text) declares it again
# while the stanza's repeated declarations stay within _REDECLARATION_BUDGET
# characters; past that, a namespace entered again is bound once to a prefix
# on the stanza element, and every later element or attribute in it uses that
# prefix.  A namespaced attribute's prefix is declared on the first element
# that needs it and reused by its descendants (and repeated or hoisted the
# same way).  So beyond that budget each namespace name is written at most
# twice per stanza, and output grows with the input, never with the product
# of input sizes.
#
# Escaping is minimal: in text only &, < and the > of "]]>" (and CR, which a
# parser would turn into LF); in attribute values &, <, the quote that
# delimits the value (the rarer of the two quotes is chosen) and the three
# whitespace characters that attribute normalisation would turn into spaces.

_REDECLARATION_BUDGET = 1024
_DECLARATION_OVERHEAD = len(' xmlns:ns0=""')
_SEALED_ELEMENTS = 64  # a sealed element with more elements inside is written by the general path

_FORBIDDEN = "\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff"
_FORBIDDEN_CHARACTER = re.compile(f"[{_FORBIDDEN}]")
# Text needs escaping when it holds one of these or "]]>" (tested apart: a class with no alternation is one fast scan).
_TEXT_SPECIAL_CHARACTER = re.compile(f"[&<\r{_FORBIDDEN}]")
_ATTRIBUTE_SPECIAL = re.compile(f"[&<\"\t\n\r{_FORBIDDEN}]")

_NAME_START = (
    "A-Z_a-z\xc0-\xd6\xd8-\xf6\xf8-\u02ff\u0370-\u037d\u037f-\u1fff\u200c\u200d"
    "\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufffd\U00010000-\U000effff"
)
_NAME_REST = _NAME_START + r"\-.0-9\xb7\u0300-\u036f\u203f-\u2040"
_NCNAME = re.compile(f"[{_NAME_START}][{_NAME_REST}]*")

# Names already checked, so that common names are not matched against the
# regular expression again.  Bounded in bytes, not only in entries: a peer
# chooses how long each name is.
_VALID_NAMES_BYTES = 256 * 1024
_valid_names: dict[str, bool] = {}
_valid_names_size = 0


def _check_name(name: object) -> str:
    """The name if it can be written as an unprefixed XML name, else ValueError."""
    global _valid_names_size
    if _valid_names.get(name):  # type: ignore[call-overload]
        return name  # type: ignore[return-value]
    if name.__class__ is not str or not _NCNAME.fullmatch(name):
        raise ValueError(f"{name!r} cannot be serialised as an XML name")
    if len(name) > _NAME_CACHE_LENGTH:
        return name  # checked, but too long to be worth keeping
    cost = _NAME_ENTRY_OVERHEAD + len(name)
    if len(_valid_names) >= _NAME_CACHE_ENTRIES or _valid_names_size + cost > _VALID_NAMES_BYTES:
        _valid_names.clear()
        _valid_names_size = 0
    _valid_names[name] = True
    _valid_names_size += cost
    return name


def _escape_text(text: object) -> str:
    if text.__class__ is not str:
        raise TypeError(f"cannot serialise {type(text).__name__} as text")
    if _TEXT_SPECIAL_CHARACTER.search(text) is None and "]]>" not in text:  # type: ignore[arg-type, operator]
        return text  # type: ignore[return-value]
    if _FORBIDDEN_CHARACTER.search(text) is not None:  # type: ignore[arg-type]
        raise ValueError("text holds a character XML 1.0 forbids")
    return (
        text.replace("&", "&amp;")  # type: ignore[union-attr]
        .replace("<", "&lt;")
        .replace("]]>", "]]&gt;")
        .replace("\r", "&#13;")
    )


def _quote_attribute(value: object) -> str:
    """The attribute value with its delimiting quotes, escaped as little as XML allows."""
    if value.__class__ is not str:
        raise TypeError(f"cannot serialise {type(value).__name__} as an attribute value")
    if _ATTRIBUTE_SPECIAL.search(value) is None:  # type: ignore[arg-type]
        return '"' + value + '"'  # type: ignore[operator]
    if _FORBIDDEN_CHARACTER.search(value) is not None:  # type: ignore[arg-type]
        raise ValueError("attribute value holds a character XML 1.0 forbids")
    escaped = (
        value.replace("&", "&amp;")  # type: ignore[union-attr]
        .replace("<", "&lt;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )
    if escaped.count('"') > escaped.count("'"):
        return "'" + escaped.replace("'", "&#39;") + "'"
    return '"' + escaped.replace('"', "&#34;") + '"'


class OversizedStanza(ValueError):
    """A stanza whose serialisation would exceed the bound the far side accepts."""


class _Output:
    """The pieces written so far for one stanza, their length, and the namespaces bound in it."""

    __slots__ = ("pieces", "length", "limit", "prefixes", "declared", "hoisted", "root_declarations",
                 "redeclared")

    def __init__(self, limit: int) -> None:
        self.pieces: list[str] = []
        self.length = 0  # characters written: a lower bound of the UTF-8 bytes
        self.limit = limit
        self.prefixes: dict[str, str] = {}  # namespace -> the one prefix this stanza uses for it
        self.declared: set[str] = set()  # namespaces some element declared (as default or prefix)
        self.hoisted: dict[str, str] | None = None  # namespaces bound on the stanza element, in scope everywhere
        self.root_declarations: list[str] = []
        self.redeclared = 0  # characters spent declaring namespaces declared before

    def over(self) -> OversizedStanza:
        return OversizedStanza(f"the stanza serialises to more than {self.limit} bytes")

    def may_declare_again(self, uri: str) -> bool:
        """Whether uri, declared before but not in scope here, may be declared here again within the
        stanza's budget (else it is bound once on the stanza element)."""
        cost = len(uri) + _DECLARATION_OVERHEAD
        if self.redeclared + cost > _REDECLARATION_BUDGET:
            return False
        self.redeclared += cost
        return True

    def prefix_of(self, uri: str) -> str:
        prefix = self.prefixes.get(uri)
        if prefix is None:
            prefix = self.prefixes[uri] = f"ns{len(self.prefixes)}"
        return prefix

    def hoist(self, uri: str) -> str:
        """Bind uri to its prefix on the stanza element (in scope everywhere) and return the prefix."""
        prefix = self.prefix_of(uri)
        declaration = f" xmlns:{prefix}={_quote_attribute(uri)}"
        self.length += len(declaration)
        if self.length > self.limit:
            raise self.over()
        self.root_declarations.append(declaration)
        if self.hoisted is None:
            self.hoisted = {}
        self.hoisted[uri] = prefix
        return prefix


def _write(element: domish.Element, namespace: str, scope: dict[str, str], output: _Output) -> None:
    """Write element (and its children) where namespace is the default and scope maps namespaces to bound prefixes.

    The start tag is one piece (name, declarations and attributes joined), so that the stanza
    element's start tag is always output.pieces[0]."""
    if element.__class__ is SealedElement and _write_sealed(element, namespace, scope, output):
        return
    local = element.name
    if not _valid_names.get(local):  # the cache's test, inline: a call per element costs as much as the rest
        _check_name(local)
    uri = element.uri
    if uri is None or uri == namespace:
        name = start = local
    else:
        if uri in (XML_NS, XMLNS_NS):
            raise ValueError(f"an element cannot be in the namespace {uri}")
        prefix = scope.get(uri) if scope else None
        if prefix is None and output.hoisted is not None:
            prefix = output.hoisted.get(uri)
        if prefix is not None:
            name = start = prefix + ":" + local
        elif uri and uri in output.declared and not output.may_declare_again(uri):
            name = start = output.hoist(uri) + ":" + local
        else:
            name = local
            start = f"{local} xmlns={_quote_attribute(uri)}"
            output.declared.add(uri)
            namespace = uri

    attributes = element.attributes
    if attributes:
        parts = [start]
        child_scope = scope
        for key, value in attributes.items():
            # The common case first: a plain name known to be valid, a str value needing no escape.
            if (key.__class__ is str and value.__class__ is str and _valid_names.get(key) and key != "xmlns"
                    and _ATTRIBUTE_SPECIAL.search(value) is None):
                parts.append(f' {key}="{value}"')
                continue
            if key.__class__ is str:
                attribute = key
                if not _valid_names.get(key):
                    _check_name(key)
                if attribute == "xmlns":
                    raise ValueError("namespace declarations cannot be attributes")
            else:
                attribute_uri, attribute_local = key
                _check_name(attribute_local)
                if not attribute_uri:
                    if attribute_local == "xmlns" or attribute_local in attributes:
                        raise ValueError(f"attribute {attribute_local!r} appears twice")
                    attribute = attribute_local
                elif attribute_uri == XML_NS:
                    attribute = "xml:" + attribute_local
                elif attribute_uri == XMLNS_NS:
                    raise ValueError("namespace declarations cannot be attributes")
                else:
                    prefix = child_scope.get(attribute_uri)
                    if prefix is None and output.hoisted is not None:
                        prefix = output.hoisted.get(attribute_uri)
                    if prefix is None:
                        if attribute_uri in output.declared and not output.may_declare_again(attribute_uri):
                            prefix = output.hoist(attribute_uri)
                        else:
                            output.declared.add(attribute_uri)
                            prefix = output.prefix_of(attribute_uri)
                            parts.append(f" xmlns:{prefix}={_quote_attribute(attribute_uri)}")
                            if child_scope is scope:
                                child_scope = dict(scope)
                            child_scope[attribute_uri] = prefix
                    attribute = prefix + ":" + attribute_local
            parts.append(f" {attribute}={_quote_attribute(value)}")
        scope = child_scope
        start = "".join(parts)

    pieces = output.pieces
    children = element.children
    if not children:
        pieces.append("<" + start + "/>")
        output.length += len(start) + 3
        if output.length > output.limit:
            raise output.over()
        return
    if len(children) == 1 and children[0].__class__ is str:  # an element holding one text: written in one piece
        text = children[0]
        if _TEXT_SPECIAL_CHARACTER.search(text) is not None or "]]>" in text:
            text = _escape_text(text)
        output.length += len(start) + len(text) + len(name) + 5
        if output.length > output.limit:
            raise output.over()
        pieces.append(f"<{start}>{text}</{name}>")
        return
    pieces.append("<" + start + ">")
    output.length += len(start) + len(name) + 5  # the end tag counted now, with the start tag
    if output.length > output.limit:
        raise output.over()
    run = None  # adjacent text children, escaped together (a "]]" and a ">" may be in two of them)
    for child in children:
        if child.__class__ is str:
            if run is None:
                run = [child]
            else:
                run.append(child)
            continue
        if run is not None:
            _write_text(run, output)
            run = None
        if isinstance(child, domish.Element):
            _write(child, namespace, scope, output)
        else:
            raise TypeError(f"cannot serialise {type(child).__name__} as XML")
    if run is not None:
        _write_text(run, output)
    pieces.append("</" + name + ">")


def _sealed_text(element: SealedElement) -> tuple[str, frozenset[str]] | None:
    """
    The text of a sealed element written on its own, and the namespaces it
    declares; None when that text would depend on where it is written: an
    element without a namespace, a prefix it binds (for a namespaced
    attribute or a hoisted namespace: prefix names count the stanza's), or a
    namespace it declares again (the stanza's budget for that).
    """
    uris = set()
    pending = [element]
    for _ in range(_SEALED_ELEMENTS):
        if not pending:
            break
        node = pending.pop()
        if not node.uri:
            return None
        uris.add(node.uri)
        pending.extend(child for child in node.children if child.__class__ is not str)
    else:
        return None
    output = _Output(sys.maxsize)
    _write(element, "", {}, output)
    if output.hoisted is not None or output.redeclared or output.prefixes:
        return None
    return "".join(output.pieces), frozenset(uris)


def _write_sealed(element: SealedElement, namespace: str, scope: dict[str, str], output: _Output) -> bool:
    """
    Write a sealed element from the text remembered for it, where that text
    is what _write would write (none of its namespaces in scope, bound or
    declared before in this stanza); False, writing nothing, elsewhere.
    """
    written = element.written
    if written[0] is None:
        written[0] = False  # while it is written on its own, the general path writes it
        written[0] = _sealed_text(element) or False
    if not written[0]:
        return False
    text, uris = written[0]
    # A namespace bound to a prefix in scope or hoisted was declared before (output.declared holds it).
    if namespace in uris or not uris.isdisjoint(output.declared):
        return False
    output.length += len(text)
    if output.length > output.limit:
        raise output.over()
    output.declared.update(uris)
    output.pieces.append(text)
    return True


def _write_text(run: list, output: _Output) -> None:
    escaped = _escape_text(run[0] if len(run) == 1 else "".join(run))
    output.pieces.append(escaped)
    output.length += len(escaped)
    if output.length > output.limit:
        raise output.over()


def serialise(element: domish.Element, default_namespace: str = SERVER_NS,
              max_bytes: int | None = None) -> str:
    """The element as XML text for a stream whose default namespace is default_namespace:
    no xmlns attribute where the element is in default_namespace, each other namespace declared
    once per scope (see above), minimal escaping, and the characters XML 1.0 forbids never appear
    (ValueError instead).  Output re-parses to an equal tree.  With max_bytes, raises
    OversizedStanza as soon as the UTF-8 output is known to exceed it, without writing the rest.

    Size: for an element the parser produced from a stanza of N bytes, the output is at most
    5 * N bytes, plus the namespace names the stanza used from its stream header (each written
    at most twice), plus _REDECLARATION_BUDGET; the factor 5 is reached only by '&' inside
    CDATA (1 byte in, '&amp;' out)."""
    output = _Output(max_bytes if max_bytes is not None else sys.maxsize)
    _write(element, default_namespace, {}, output)
    pieces = output.pieces
    if output.root_declarations:
        # Hoisting happens only below the stanza element, so it has element children and its start
        # tag, the first piece, ends with ">".
        pieces[0] = pieces[0][:-1] + "".join(output.root_declarations) + ">"
    text = "".join(pieces)
    if max_bytes is not None and len(text) > max_bytes // 4 and len(text.encode("utf-8")) > max_bytes:
        raise OversizedStanza(f"the stanza serialises to more than {max_bytes} bytes")
    return text
