"""
A refusal at a stream restart (after STARTTLS, after SASL, on a dialback side)
must be readable: the bytes the guard writes on the new stream parse as a
stream of their own that carries the error (RFC 6120 4.9.1.1).
"""

import pytest
from twisted.internet.testing import MemoryReactorClock

from guard.edges.s2s.inbound import InboundStream
from guard.edges.s2s.outbound import OutboundStream
from guard.edges.xmlstream import StreamFault, StreamParser

from .sides import make_side
from .test_handshakes import RecordingOwner
from .test_inbound_bytes import HEADER, TLSRecordingTransport
from .test_outbound_bytes import FAR_HEADER

STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
AUTH_EXTERNAL = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>"
SUCCESS = b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
BODY = HEADER[len(b"<?xml version='1.0'?>"):]
FAR_BODY = FAR_HEADER[len(b"<?xml version='1.0'?>"):]

# What may arrive where the new header is expected: each restricted
# construct, in front of an otherwise good header.
RESTRICTED = {
    "doctype": b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>]>",
    "processing-instruction": b"<?xml version='1.0'?><?evil data?>",
    "comment": b"<?xml version='1.0'?><!-- hello -->",
    "xml-1.1": b"<?xml version='1.1'?>",
    "latin-1": b"<?xml version='1.0' encoding='ISO-8859-1'?>",
    "utf-16": b"\xff\xfe<\x00",
}


class ProvingAnchors:
    """Stands for the trust anchors: every certificate proves red.example and blue.example (TLS is not run here)."""

    class _Verdict:
        chain_valid = True
        problem = None

        def proves(self, domain):
            return domain in ("red.example", "blue.example")

    def judge_peer(self, connection):
        return self._Verdict()

    def judge_server(self, connection):
        return self._Verdict()


def expected_condition(data):
    """The condition the parser itself raises for these bytes at the start of a stream."""
    with pytest.raises(StreamFault) as raised:
        StreamParser(lambda header: None, lambda element, size: None, lambda: None).feed(data)
    return raised.value.condition


def parse_stream(data):
    """The header and the elements of ``data`` read as one stream; fails the test if they do not parse."""
    found = {"header": None, "elements": [], "ended": False}
    parser = StreamParser(lambda header: found.__setitem__("header", header),
                          lambda element, size: found["elements"].append(element),
                          lambda: found.__setitem__("ended", True))
    parser.feed(data)
    return found


def assert_stream_with_error(data, condition):
    """``data`` is a whole stream: a header, one stream error with ``condition``, the close."""
    found = parse_stream(data)
    assert found["header"] is not None and found["header"].name == "stream"
    errors = [element for element in found["elements"] if element.name == "error"]
    assert len(errors) == 1, data
    names = [child.name for child in errors[0].elements() if child.name != "text"]
    assert names == [condition]
    assert found["ended"]


def inbound(authentication):
    clock = MemoryReactorClock()
    side = make_side("red", clock, authentication=authentication)
    side.anchors = ProvingAnchors()
    stream = InboundStream(side)
    transport = TLSRecordingTransport()
    stream.makeConnection(transport)
    return stream, transport


def inbound_after_starttls(authentication="certificate"):
    stream, transport = inbound(authentication)
    stream.dataReceived(HEADER + STARTTLS)
    assert transport.value().endswith(PROCEED)
    transport.clear()
    return stream, transport


def inbound_after_sasl():
    stream, transport = inbound_after_starttls()
    stream.dataReceived(HEADER)
    stream.dataReceived(AUTH_EXTERNAL)
    assert transport.value().endswith(SUCCESS)
    transport.clear()
    return stream, transport


INBOUND_RESTARTS = {
    "after-starttls": inbound_after_starttls,
    "after-sasl": inbound_after_sasl,
    "dialback-after-starttls": lambda: inbound_after_starttls("dialback"),
}


@pytest.mark.parametrize("restart", sorted(INBOUND_RESTARTS))
@pytest.mark.parametrize("construct", sorted(RESTRICTED))
def test_inbound_refusal_at_a_restart_is_a_whole_stream(restart, construct):
    """What a peer sends before its new header is refused with a fresh header of ours first, so the error parses."""
    stream, transport = INBOUND_RESTARTS[restart]()
    data = RESTRICTED[construct] + BODY
    stream.dataReceived(data)
    assert_stream_with_error(transport.value(), expected_condition(data))
    assert transport.disconnecting
    assert stream.side.relay.events == []


@pytest.mark.parametrize("restart", sorted(INBOUND_RESTARTS))
def test_inbound_refused_restart_header_is_a_whole_stream(restart):
    """A restarted header that changes its to address is refused on a stream of its own, with host-unknown."""
    stream, transport = INBOUND_RESTARTS[restart]()
    stream.dataReceived(HEADER.replace(b"to='blue.example'", b"to='conference.blue.example'"))
    assert_stream_with_error(transport.value(), "host-unknown")


def test_inbound_header_is_sent_once_per_stream():
    """On a stream that restarted, the error after a good new header follows that header, with no second header."""
    stream, transport = inbound_after_starttls()
    stream.dataReceived(HEADER)
    stream.dataReceived(b"<!-- late -->")
    assert_stream_with_error(transport.value(), "restricted-xml")
    assert transport.value().count(b"<stream:stream") == 1


def outbound(authentication):
    clock = MemoryReactorClock()
    side = make_side("blue", clock, authentication=authentication,
                     presents_for=("red.example", "conference.red.example"))
    side.anchors = ProvingAnchors()
    owner = RecordingOwner()
    stream = OutboundStream(owner, side, "red.example", "blue.example")
    transport = TLSRecordingTransport()
    stream.makeConnection(transport)
    return stream, transport, owner


def outbound_after_starttls(authentication="certificate"):
    stream, transport, owner = outbound(authentication)
    stream.dataReceived(FAR_HEADER + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
                                     b"</stream:features>")
    transport.clear()
    stream.dataReceived(PROCEED)
    assert transport.tls_options is not None
    return stream, transport, owner


def outbound_after_sasl():
    stream, transport, owner = outbound_after_starttls()
    stream.dataReceived(FAR_HEADER + b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                                     b"<mechanism>EXTERNAL</mechanism></mechanisms></stream:features>")
    transport.clear()
    stream.dataReceived(SUCCESS)
    return stream, transport, owner


OUTBOUND_RESTARTS = {
    "after-starttls": outbound_after_starttls,
    "after-sasl": outbound_after_sasl,
    "dialback-after-starttls": lambda: outbound_after_starttls("dialback"),
}


@pytest.mark.parametrize("restart", sorted(OUTBOUND_RESTARTS))
@pytest.mark.parametrize("construct", sorted(RESTRICTED))
def test_outbound_refusal_at_a_restart_is_a_whole_stream(restart, construct):
    """What a far server sends before its new header is refused on the new stream we opened, which the far server can parse."""
    stream, transport, owner = OUTBOUND_RESTARTS[restart]()
    data = RESTRICTED[construct] + FAR_BODY
    stream.dataReceived(data)
    assert_stream_with_error(transport.value(), expected_condition(data))
    assert transport.disconnecting
    assert owner.events == [("failed", "remote-server-not-found")]
