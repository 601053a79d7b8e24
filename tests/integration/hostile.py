"""
Helpers for hostile tests: a raw server-to-server client that speaks just
enough XMPP (stream header, STARTTLS, SASL EXTERNAL with the lab's
certificates) to stand where a red server would and then send whatever bytes
a test chooses; and a fixture-free way to bring a lab up with guard options.

Everything is synchronous with a deadline on every wait.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import time
from pathlib import Path

from guard.lab.topology import GUARD_RED_FACING, S2S_PORT, LabLock

STREAM_ERROR = re.compile(rb"<stream:error><([a-z-]+) xmlns=['\"]urn:ietf:params:xml:ns:xmpp-streams['\"]")

# Source addresses for hostile peers: none of them is a lab server's.
ATTACKER_ADDRESS = "127.0.9.1"


def header(sender: str | None = "red.example", receiver: str | None = "blue.example") -> bytes:
    """An opening server stream header, as a red server would send it."""
    attributes = ""
    if sender:
        attributes += f" from='{sender}'"
    if receiver:
        attributes += f" to='{receiver}'"
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server'"
        " xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'"
        f"{attributes} version='1.0'>"
    ).encode()


class StreamClosed(Exception):
    """The guard closed the stream before the expected bytes arrived."""


class HostilePeer:
    """One TCP connection to the guard, as a (possibly lying) red server."""

    def __init__(self, address: str = GUARD_RED_FACING, port: int = S2S_PORT,
                 source: str | None = ATTACKER_ADDRESS, timeout: float = 10.0):
        self.socket = socket.create_connection(
            (address, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.received = b""  # everything the guard sent, decrypted
        self.closed = False
        self.timeout = timeout

    # -- bytes ------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def try_send(self, data: bytes) -> bool:
        """Send, reporting (instead of raising) that the guard has closed or reset the connection."""
        try:
            self.socket.sendall(data)
            return True
        except (OSError, ssl.SSLError):
            return False

    def _read_some(self, timeout: float) -> bytes:
        self.socket.settimeout(max(0.01, timeout))
        try:
            data = self.socket.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return b""
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            self.closed = True
            return b""
        if not data:
            self.closed = True
        self.received += data
        return data

    def expect(self, pattern: bytes, timeout: float | None = None) -> bytes:
        """Read until ``pattern`` (a regular expression) matches what arrived since the call; return that."""
        start = len(self.received)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            match = re.search(pattern, self.received[start:], re.S)
            if match:
                return self.received[start:start + match.end()]
            if self.closed:
                raise StreamClosed(f"closed while waiting for {pattern!r}; got {self.received[start:]!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {pattern!r} within the deadline; got {self.received[start:]!r}")
            self._read_some(min(remaining, 0.5))

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Read until the guard closes the connection (True) or the deadline passes (False)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.closed and time.monotonic() < deadline:
            self._read_some(min(0.5, deadline - time.monotonic()))
        return self.closed

    def stream_error(self, timeout: float | None = None) -> str | None:
        """Wait for the guard to close; the stream error condition it sent first (None if none)."""
        self.wait_closed(timeout)
        match = STREAM_ERROR.search(self.received)
        return match.group(1).decode() if match else None

    def close(self) -> None:
        try:
            self.socket.close()
        except OSError:
            pass

    def __enter__(self) -> "HostilePeer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- just enough protocol -----------------------------------------------------

    def open_stream(self, sender: str = "red.example", receiver: str = "blue.example") -> bytes:
        """Send a stream header; return the features the guard answers with."""
        self.send(header(sender, receiver))
        return self.expect(rb"<stream:features/>|</stream:features>")

    def starttls(self, certificate: Path | None, key: Path | None, cafile: Path,
                 server_name: str = "blue.example") -> None:
        """Ask for TLS and wrap the socket, presenting ``certificate`` (if any) and trusting ``cafile``."""
        self.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.expect(rb"<proceed[^>]*/>")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(str(cafile))
        if certificate is not None:
            context.load_cert_chain(str(certificate), str(key))
        self.socket.settimeout(self.timeout)
        self.socket = context.wrap_socket(self.socket, server_hostname=server_name)

    def authenticate_external(self, sender: str = "red.example", receiver: str = "blue.example") -> bytes:
        """SASL EXTERNAL for ``sender`` and the stream restart; the final (empty) features."""
        encoded = base64.b64encode(sender.encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{encoded}</auth>".encode())
        self.expect(rb"<success[^>]*/>")
        return self.open_stream(sender, receiver)

    def secure(self, pki, sender: str = "red.example", receiver: str = "blue.example") -> bytes:
        """Header, STARTTLS with red's server certificate, header again: the authentication features."""
        self.open_stream(sender, receiver)
        self.starttls(pki.red_server.certificate, pki.red_server.key, pki.red_ca, server_name=receiver)
        return self.open_stream(sender, receiver)

    def authenticate(self, pki, sender: str = "red.example", receiver: str = "blue.example") -> "HostilePeer":
        """Everything up to an authenticated stream for sender -> receiver, by certificate."""
        self.secure(pki, sender, receiver)
        self.authenticate_external(sender, receiver)
        return self


def lab_lock_held_here() -> bool:
    """Whether this very process holds the lab lock (another fixture's lab is still running)."""
    lock = LabLock()
    try:
        text = lock.path.read_text().strip()
    except OSError:
        return False
    import os

    return text == str(os.getpid()) and _locked(lock.path)


def _locked(path: Path) -> bool:
    import fcntl

    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
