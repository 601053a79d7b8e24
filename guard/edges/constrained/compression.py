"""
Compression of the constrained link: every write becomes one frame that the
far half can decode on arrival, with a preset dictionary both ends share.

The frame, as it is on the bearer::

    +------+----------------+----------------------------------+
    | type | length         | payload (``length`` bytes)       |
    | 1 B  | LEB128, 1..4 B |                                  |
    +------+----------------+----------------------------------+

``type`` is ``D`` (0x44): the payload is the raw deflate (RFC 1951) output
of the write followed by a sync flush, with the flush's trailing empty stored
block ``00 00 ff ff`` left off, as RFC 7692 (permessage-deflate) does; the
compressor and the inflater keep their 32 KiB window from frame to frame
(context takeover), the window starting with the preset dictionary.  Or
``S`` (0x53): the payload is the write as it is (stored), outside the shared
window: what ``carries_secret`` says holds a secret never meets an
attacker's chosen text in the window (CRIME/BREACH).  ``length`` is the
payload's length, unsigned LEB128, minimal, at most four bytes, never zero.

The reading side refuses (``filters.Refused("policy-violation", ...)``,
closing the stream) a frame of unknown type, a length that is not minimal,
zero, or larger than a frame of ``frame_budget`` bytes can take compressed
(before buffering a byte of it), a payload that does not inflate or does not
end on a flush boundary or ends the deflate stream, and a frame that inflates
past ``frame_budget`` bytes: it never inflates more than ``frame_budget + 1``
bytes of one frame, nor more in one read than
``2 * frame_budget + MAX_READ_RATIO * (compressed bytes available)``
(many small bombs in one read are refused as one big one).  What waits for
the rest of a frame is at most one frame's header and payload.

The link writes one stanza (or one of its own elements) per write, so the
frame budget is the receiving half's ``stanza_bytes`` plus
``LINK_ELEMENT_ALLOWANCE``.  A write larger than the budget is refused by the
writing side too (the connection drops): the far half could not take it.

Frames carry no checksum (4 bytes a stanza is too dear at 1,200 bps): the
integrity of what crosses is TLS's, or the bearer's own crypto's; a changed
byte that still inflates reaches the parser and the policy like any other
input.  Mode "none" installs nothing: the link's bytes go as they are.
"""

from __future__ import annotations

import zlib
from importlib import resources
from typing import Iterable

from guard.core.vocabulary import DIALBACK_NS, IQ_AUTH_NS, IQ_REGISTER_NS, SASL_NS

from guard.edges.filters import IN, OUT, FilterChain, Refused

COMPRESSION_MODES = ("none", "zlib", "dictionary")

# Bytes a frame may hold beyond the receiving side's stanza_bytes: the link's
# own elements (stream header, <resume/>, acks, a stream error with the
# guard's own text) and what re-serialising a stanza may add.
LINK_ELEMENT_ALLOWANCE = 4096

# A preset dictionary is at most the deflate window (RFC 1951: 32 KiB).
MAX_DICTIONARY_BYTES = 32 * 1024

# The compression filters run after the inbound filters that spend wire bytes
# (counting 1000, rate 900, pre-authentication 800) and before counting on
# the way out (-1000), so ByteCount counts the compressed bytes on the wire.
COMPRESSION_PRIORITY = 500

DEFLATED = b"D"[0]
STORED = b"S"[0]
FRAME_TYPES = (DEFLATED, STORED)
MAX_LENGTH_BYTES = 4  # LEB128: 28 bits, lengths below 256 MiB
MAX_FRAME_BUDGET = 128 * 1024 * 1024
# In one read, the inflated bytes may be at most this many times the
# compressed bytes available (plus two frame budgets): legitimate traffic
# stays far below it; a read of many small bombs does not.
MAX_READ_RATIO = 64

SYNC_FLUSH_TAIL = b"\x00\x00\xff\xff"
# A final, empty, fixed-Huffman block: it ends a raw deflate stream that is
# at a block boundary (after a sync flush), and does not end one that is not.
FINAL_EMPTY_BLOCK = b"\x03\x00"
WINDOW_BITS = -15  # raw deflate, 32 KiB window
COMPRESSION_LEVEL = 9
MEMORY_LEVEL = 9

# What shows a write holds a secret (searched in the write, lower-cased):
# SASL exchanges and dialback keys by namespace, legacy authentication and
# in-band registration (their payloads are credentials), any password or
# password-like field (MUC room passwords, data-form fields of type
# text-private, room secrets).  Over-matching costs bytes, never a secret.
SECRET_MARKERS = tuple(marker.encode("ascii") for marker in (
    SASL_NS, DIALBACK_NS, IQ_AUTH_NS, IQ_REGISTER_NS,
    "text-private", "password", "passwd", "roomsecret",
))

# Refusals: the guard's own texts.
TEXT_UNKNOWN_TYPE = "a compressed frame of unknown type"
TEXT_BAD_LENGTH = "a compressed frame with a malformed length"
TEXT_TOO_LONG = "a compressed frame longer than the frame budget allows"
TEXT_OVER_BUDGET = "a compressed frame inflates past the frame budget"
TEXT_OVER_RATIO = "compressed frames inflate too much for their size"
TEXT_MALFORMED = "a compressed frame that does not inflate"
TEXT_NOT_FLUSHED = "a compressed frame that does not end on a flush"
TEXT_AFTER_REFUSAL = "compressed input after a refused frame"
TEXT_WRITE_TOO_LARGE = "a write larger than one frame may carry"


class OversizedFrame(Refused):
    """
    A frame declared or inflating past the frame budget: the far half wrote a
    stanza larger than this half's parser takes (the halves' ``stanza_bytes``
    differ, or the far half is hostile).  The link refuses the stanza being
    read by its number, as its parser refuses an oversized stanza, so that the
    far half settles it and never writes it again.  ``before``: the bytes of
    the complete frames that came before it in the same read (to be parsed
    first: they are the stanzas before the refused one).
    """

    def __init__(self, condition: str, text: str, before: bytes = b""):
        super().__init__(condition, text)
        self.before = before


def carries_secret(serialised: bytes) -> bool:
    """Whether a write holds a secret (password, SASL exchange, dialback key, private form field): it goes stored."""
    lowered = serialised.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


def deflate_bound(size: int) -> int:
    """The most bytes ``size`` bytes can take as one sync-flushed raw deflate payload (zlib's conservative bound)."""
    return size + ((size + 7) >> 3) + ((size + 63) >> 6) + 16


def largest_payload(frame_type: int, frame_budget: int) -> int:
    """The longest payload a frame of ``frame_type`` may have when it inflates to at most ``frame_budget`` bytes."""
    return frame_budget if frame_type == STORED else deflate_bound(frame_budget)


def encode_length(length: int) -> bytes:
    """``length`` as minimal unsigned LEB128 (1 to 4 bytes)."""
    if not 0 < length < 1 << (7 * MAX_LENGTH_BYTES):
        raise ValueError("a frame length is between 1 and 2**28 - 1")
    encoded = bytearray()
    while True:
        low, length = length & 0x7F, length >> 7
        if length:
            encoded.append(low | 0x80)
        else:
            encoded.append(low)
            return bytes(encoded)


def frame(frame_type: int, payload: bytes) -> bytes:
    """One frame: its type, the payload's length, the payload."""
    return bytes((frame_type,)) + encode_length(len(payload)) + payload


def _check_budget(frame_budget: int) -> None:
    if isinstance(frame_budget, bool) or not isinstance(frame_budget, int) or not 0 < frame_budget <= MAX_FRAME_BUDGET:
        raise ValueError(f"frame_budget is a number of bytes between 1 and {MAX_FRAME_BUDGET}")


def _check_dictionary(dictionary: bytes | None) -> None:
    if dictionary is None:
        return
    if not isinstance(dictionary, bytes) or not 0 < len(dictionary) <= MAX_DICTIONARY_BYTES:
        raise ValueError(f"a preset dictionary is 1 to {MAX_DICTIONARY_BYTES} bytes")


class FrameWriter:
    """
    The outgoing filter: each write becomes one frame, deflated in the shared
    window and sync-flushed, or stored when it carries a secret.
    """

    def __init__(self, frame_budget: int, dictionary: bytes | None = None):
        _check_budget(frame_budget)
        _check_dictionary(dictionary)
        self.frame_budget = frame_budget
        options = {"zdict": dictionary} if dictionary else {}
        self._compressor = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, WINDOW_BITS, MEMORY_LEVEL, **options)
        self.frames_deflated = 0
        self.frames_stored = 0

    def __call__(self, data: bytes) -> bytes:
        if not data:
            return data
        if len(data) > self.frame_budget:
            raise Refused("policy-violation", TEXT_WRITE_TOO_LARGE)
        if carries_secret(data):
            self.frames_stored += 1
            return frame(STORED, bytes(data))
        flushed = self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        if not flushed.endswith(SYNC_FLUSH_TAIL):  # zlib always ends a sync flush so; anything else is a fault
            raise Refused("internal-server-error", TEXT_NOT_FLUSHED)
        self.frames_deflated += 1
        return frame(DEFLATED, flushed[: -len(SYNC_FLUSH_TAIL)])


class FrameReader:
    """
    The incoming filter: buffers what the bearer delivered until a frame is
    complete, then returns the bytes of every complete frame (inflated in the
    shared window, or stored), or None while no frame is complete.  Refuses
    (and goes on refusing) what is malformed or inflates past the budget.
    """

    def __init__(self, frame_budget: int, dictionary: bytes | None = None):
        _check_budget(frame_budget)
        _check_dictionary(dictionary)
        self.frame_budget = frame_budget
        options = {"zdict": dictionary} if dictionary else {}
        self._inflater = zlib.decompressobj(WINDOW_BITS, **options)
        self._pending = bytearray()
        self._refused = False
        self.frames_read = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes received that wait for the rest of their frame."""
        return len(self._pending)

    def __call__(self, data: bytes) -> bytes | None:
        if self._refused:
            raise Refused("policy-violation", TEXT_AFTER_REFUSAL)
        try:
            return self._read(data)
        except Refused:
            self._refused = True
            self._pending = bytearray()
            raise

    def _read(self, data: bytes) -> bytes | None:
        available = len(self._pending) + len(data)
        allowance = 2 * self.frame_budget + MAX_READ_RATIO * available
        self._pending += data
        pieces = []
        while True:
            try:
                header = self._header()
            except OversizedFrame as refusal:
                raise OversizedFrame(refusal.condition, refusal.text, b"".join(pieces)) from None
            if header is None:
                break
            frame_type, header_bytes, length = header
            if len(self._pending) < header_bytes + length:
                break
            payload = bytes(self._pending[header_bytes:header_bytes + length])
            del self._pending[:header_bytes + length]
            try:
                piece = self._payload(frame_type, payload, allowance)
            except OversizedFrame as refusal:
                raise OversizedFrame(refusal.condition, refusal.text, b"".join(pieces)) from None
            allowance -= len(piece)
            pieces.append(piece)
            self.frames_read += 1
        return b"".join(pieces) if pieces else None

    def _header(self) -> tuple[int, int, int] | None:
        """(type, header length, payload length) of the frame that starts the pending bytes, or None if incomplete."""
        pending = self._pending
        if not pending:
            return None
        frame_type = pending[0]
        if frame_type not in FRAME_TYPES:
            raise Refused("policy-violation", TEXT_UNKNOWN_TYPE)
        length = 0
        for index in range(MAX_LENGTH_BYTES):
            if 1 + index >= len(pending):
                return None
            byte = pending[1 + index]
            length |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                if (index and byte == 0) or length == 0:
                    raise Refused("policy-violation", TEXT_BAD_LENGTH)
                if length > largest_payload(frame_type, self.frame_budget):
                    raise OversizedFrame("policy-violation", TEXT_TOO_LONG)
                return frame_type, 2 + index, length
        raise Refused("policy-violation", TEXT_BAD_LENGTH)

    def _payload(self, frame_type: int, payload: bytes, allowance: int) -> bytes:
        if frame_type == STORED:
            if len(payload) > allowance:
                raise Refused("policy-violation", TEXT_OVER_RATIO)
            return payload
        limit = max(0, min(self.frame_budget, allowance))
        try:
            inflated = self._inflater.decompress(payload + SYNC_FLUSH_TAIL, limit + 1)
        except zlib.error:
            raise Refused("policy-violation", TEXT_MALFORMED) from None
        if len(inflated) > limit or self._inflater.unconsumed_tail:
            if limit == self.frame_budget:
                raise OversizedFrame("policy-violation", TEXT_OVER_BUDGET)
            raise Refused("policy-violation", TEXT_OVER_RATIO)
        if self._inflater.eof:
            raise Refused("policy-violation", TEXT_NOT_FLUSHED)
        probe = self._inflater.copy()
        try:
            probe.decompress(FINAL_EMPTY_BLOCK, 1)
        except zlib.error:
            raise Refused("policy-violation", TEXT_NOT_FLUSHED) from None
        if not probe.eof:
            raise Refused("policy-violation", TEXT_NOT_FLUSHED)
        return inflated


def install_compression(chain: FilterChain, mode: str, frame_budget: int, dictionary: bytes) -> None:
    """
    Add the outgoing deflate filter and the incoming inflate filter of ``mode``
    to a stream's chain ("none": nothing; "zlib": no preset dictionary;
    "dictionary": ``dictionary``, the one ``link_dictionary`` gives both ends).
    """
    if mode not in COMPRESSION_MODES:
        raise ValueError(f"compression is one of {', '.join(COMPRESSION_MODES)}")
    _check_budget(frame_budget)
    if mode == "none":
        return
    preset = None
    if mode == "dictionary":
        if not dictionary:
            raise ValueError("compression 'dictionary' needs a preset dictionary")
        _check_dictionary(dictionary)
        preset = dictionary
    chain.add(OUT, FrameWriter(frame_budget, preset), -COMPRESSION_PRIORITY)
    chain.add(IN, FrameReader(frame_budget, preset), COMPRESSION_PRIORITY)


# -- the preset dictionary ------------------------------------------------------

DICTIONARY_RESOURCE = "dictionary.bin"


def shipped_dictionary() -> bytes:
    """The dictionary built from typical stanzas (deploy/constrained/build_dictionary.py), shipped as package data."""
    return resources.files(__package__).joinpath(DICTIONARY_RESOURCE).read_bytes()


def domain_tail(domains: Iterable[str]) -> bytes:
    """The bytes naming the configured domains as stanzas spell them, in sorted order."""
    parts = []
    for domain in sorted(set(domains)):
        if not isinstance(domain, str) or not domain or len(domain.encode("utf-8")) > 1023:
            raise ValueError("a configured domain is a non-empty string of at most 1023 bytes")
        parts.append(f'="{domain}" @{domain}/'.encode("utf-8"))
    return b"".join(parts)


def link_dictionary(near_domains: Iterable[str], far_domains: Iterable[str]) -> bytes:
    """
    The preset dictionary of one link: the shipped dictionary, then the
    domains of both ends (sorted, so the two ends compute the same bytes from
    their mirrored configurations); at most 32 KiB, the front of the shipped
    dictionary (its least useful bytes) giving way.
    """
    tail = domain_tail(list(near_domains) + list(far_domains))[-MAX_DICTIONARY_BYTES:]
    room = MAX_DICTIONARY_BYTES - len(tail)
    shipped = shipped_dictionary()
    return (shipped[len(shipped) - room:] if room < len(shipped) else shipped) + tail
