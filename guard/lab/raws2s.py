"""
The receiving end of a raw server-to-server stream, for benchmarks: just
enough XMPP (stream header, STARTTLS required, SASL EXTERNAL on the client
certificate, the restart) to stand where a far server would, then the
stanzas as bytes, counted without parsing.

The sending end is ``tests.integration.hostile.HostilePeer`` (a red server's
handshake with the lab's certificates).  Everything is blocking with a
deadline on every wait; the wire texts come from ``guard.edges.s2s.wire``.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from guard.edges.s2s import wire

HEADER = re.compile(rb"<stream:stream\b[^>]*>")
STARTTLS = re.compile(rb"<starttls\b[^>]*(/>|>.*?</starttls>)", re.S)
AUTH = re.compile(rb"<auth\b([^>]*?)(/>|>(.*?)</auth>)", re.S)
FROM = re.compile(rb"""\sfrom=['"]([^'"]*)['"]""")
TO = re.compile(rb"""\sto=['"]([^'"]*)['"]""")
MESSAGE_END = b"</message>"


class HandshakeError(Exception):
    """The peer did not speak the server-to-server handshake the sink expects."""


def server_context(certificate: Path, key: Path, cafile: Path) -> ssl.SSLContext:
    """TLS for the receiving server: its certificate, and a client certificate from ``cafile`` required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate), str(key))
    context.load_verify_locations(str(cafile))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Reader:
    """Bytes of one connection, read until a pattern matches, before a deadline."""

    def __init__(self, connection: socket.socket, deadline: float):
        self.connection = connection
        self.deadline = deadline
        self.buffer = b""

    def until(self, pattern: re.Pattern) -> re.Match:
        while True:
            match = pattern.search(self.buffer)
            if match:
                self.buffer = self.buffer[match.end():]
                return match
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise HandshakeError(f"no {pattern.pattern!r} before the deadline; got {self.buffer[-200:]!r}")
            self.connection.settimeout(remaining)
            try:
                data = self.connection.recv(65536)
            except (socket.timeout, ssl.SSLError, OSError) as error:
                raise HandshakeError(f"reading failed while waiting for {pattern.pattern!r}: {error}") from error
            if not data:
                raise HandshakeError(f"closed while waiting for {pattern.pattern!r}; got {self.buffer[-200:]!r}")
            self.buffer += data


@dataclass
class AcceptedStream:
    """An authenticated inbound server stream: the TLS socket, who the peer is, which of our domains it
    addressed, and stanza bytes already read."""

    connection: ssl.SSLSocket
    peer_domain: str
    local_domain: str
    leftover: bytes


def accept_server_stream(connection: socket.socket, context: ssl.SSLContext, local_domain: str,
                         timeout: float = 10.0) -> AcceptedStream:
    """Run the receiving server's side of STARTTLS and SASL EXTERNAL on a freshly accepted connection
    (``local_domain`` answers a header without a ``to``)."""
    deadline = time.monotonic() + timeout
    reader = _Reader(connection, deadline)
    header = reader.until(HEADER)
    sender, receiver = FROM.search(header.group(0)), TO.search(header.group(0))
    peer = sender.group(1).decode() if sender else ""
    local_domain = receiver.group(1).decode() if receiver else local_domain
    connection.sendall(wire.stream_header(local_domain, peer or None, wire.new_stream_id())
                       + wire.features_starttls_required())
    reader.until(STARTTLS)
    connection.sendall(wire.PROCEED)
    connection.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        secure = context.wrap_socket(connection, server_side=True)
    except (ssl.SSLError, OSError) as error:
        raise HandshakeError(f"TLS failed: {error}") from error
    reader = _Reader(secure, deadline)
    reader.until(HEADER)
    secure.sendall(wire.stream_header(local_domain, peer or None, wire.new_stream_id())
                   + wire.features_authentication(external=True, dialback=False))
    auth = reader.until(AUTH)
    if b"EXTERNAL" not in auth.group(1):
        secure.sendall(wire.sasl_failure("invalid-mechanism"))
        raise HandshakeError(f"not SASL EXTERNAL: {auth.group(0)[:200]!r}")
    claimed = wire.decode_sasl_external((auth.group(3) or b"").decode("ascii", "replace"))
    if claimed is None or (claimed and claimed != peer) or not _certificate_names(secure, peer):
        secure.sendall(wire.sasl_failure())
        raise HandshakeError(f"the certificate does not name {peer!r} (authzid {claimed!r})")
    secure.sendall(wire.SASL_SUCCESS)
    reader.until(HEADER)
    secure.sendall(wire.stream_header(local_domain, peer or None, wire.new_stream_id()) + wire.features_empty())
    return AcceptedStream(secure, peer, local_domain, reader.buffer)


def _certificate_names(connection: ssl.SSLSocket, domain: str) -> bool:
    """Whether the peer's (verified) certificate names ``domain`` among its DNS subjectAltNames."""
    certificate = connection.getpeercert() or {}
    names = [value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"]
    return bool(domain) and domain in names


class MessageCounter:
    """Counts complete <message/> stanzas in a byte stream, across reads (never parses)."""

    def __init__(self, keep: bool = False):
        self.count = 0
        self.keep = keep
        self.kept: list[bytes] = []
        self._tail = b""

    def feed(self, data: bytes) -> int:
        """Add the bytes of one read; the count so far."""
        joined = self._tail + data
        self.count += joined.count(MESSAGE_END)
        self._tail = joined[-(len(MESSAGE_END) - 1):]
        if self.keep:
            self.kept.append(data)
        return self.count

    def received(self) -> bytes:
        return b"".join(self.kept)
