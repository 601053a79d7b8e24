"""
What a failed outbound stream tells its owner ends up in bounces: it is the
guard's own text for the condition, never a word the far server chose.
"""

import pytest
from twisted.internet.testing import MemoryReactorClock

from guard.edges.limits import Limits
from guard.edges.s2s.outbound import FAILURE_TEXTS, OutboundStream

from .test_outbound_bytes import FAR_HEADER, ProvenTLSTransport
from .sides import make_side

MARKER = "LEAKMARKER"
STARTTLS_FEATURES = (b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
                     b"</stream:features>")


class TextRecordingOwner:
    """Owns the stream under test: records every report with its text."""

    def __init__(self):
        self.events = []

    def stream_ready(self, stream):
        self.events.append(("ready",))

    def stream_failed(self, stream, condition, text):
        self.events.append(("failed", condition, text))

    def stream_lost(self, stream):
        self.events.append(("lost",))


class _Reason:
    def getErrorMessage(self):
        return f"connection reset by {MARKER}"


def far_stream(limits=None):
    side = make_side("blue", MemoryReactorClock(), authentication="dialback", limits=limits,
                     presents_for=("red.example",))
    owner = TextRecordingOwner()
    stream = OutboundStream(owner, side, "red.example", "blue.example")
    transport = ProvenTLSTransport()
    stream.makeConnection(transport)
    transport.clear()
    return stream, transport, owner, side.clock


FAR_SAYS = {
    "its stream-error element": FAR_HEADER + (
        f"<stream:error><{MARKER} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        f"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{MARKER}</text></stream:error>"
    ).encode(),
    "the from of its header": FAR_HEADER.replace(b"from='blue.example'", f"from='{MARKER}.example'".encode()),
    "an element's namespace and name": FAR_HEADER + f"<{MARKER} xmlns='urn:{MARKER}'/>".encode(),
    "a dialback error": FAR_HEADER + STARTTLS_FEATURES,
}


@pytest.mark.parametrize("case", sorted(FAR_SAYS))
def test_failure_text_is_the_guards_own(case):
    """Whatever the far server writes, the owner hears remote-server-not-found with the guard's fixed text."""
    stream, transport, owner, clock = far_stream()
    stream.dataReceived(FAR_SAYS[case])
    if case == "a dialback error":
        stream.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        stream.dataReceived(FAR_HEADER + b"<stream:features/>")
        assert b"<db:result from='red.example' to='blue.example'>" in transport.value()  # the certificate proved blue
        stream.dataReceived(
            f"<db:result from='blue.example' to='red.example' type='error'><error type='cancel'>"
            f"<{MARKER} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>".encode()
        )
    assert owner.events == [("failed", "remote-server-not-found", FAILURE_TEXTS["remote-server-not-found"])]
    assert MARKER.encode() not in transport.value() or case == "the from of its header"


def test_lost_connection_text_is_the_guards_own():
    """A connection lost during negotiation reports the fixed text, not the system's message."""
    stream, transport, owner, clock = far_stream()
    stream.connectionLost(_Reason())
    assert owner.events == [("failed", "remote-server-not-found", FAILURE_TEXTS["remote-server-not-found"])]


def test_timeout_text_is_the_guards_own():
    """A far server that never finishes negotiating is reported with the fixed remote-server-timeout text."""
    stream, transport, owner, clock = far_stream(Limits(auth_timeout=5.0))
    stream.dataReceived(FAR_HEADER)
    clock.advance(6)
    assert owner.events == [("failed", "remote-server-timeout", FAILURE_TEXTS["remote-server-timeout"])]


def test_unexpected_element_is_refused_without_echoing_its_name():
    """The stream error the guard writes for an unexpected element does not repeat the element's name or namespace."""
    stream, transport, owner, clock = far_stream()
    stream.dataReceived(FAR_SAYS["an element's namespace and name"])
    assert b"<unsupported-stanza-type xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in transport.value()
    assert MARKER.encode() not in transport.value()
