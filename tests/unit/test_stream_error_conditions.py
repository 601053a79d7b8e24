"""
Every stream error the guard sends, with its cause, checked against RFC 6120
section 4.9.3 (and 4.7.5, 4.8.1, 11): one table per place that decides the
condition.  Parser rows feed bytes to ``StreamParser`` and then the same
bytes to an ``InboundStream`` over a ``StringTransport``, so the condition is
checked where it is decided and where it is written.

Rows whose condition is decided in a file another engineer owns and is wrong
today are marked ``xfail(strict=True)`` with the owner and the condition RFC
6120 asks for; the lead removes the mark once the fix is merged.
"""

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from guard.edges.limits import Limits
from guard.edges.s2s.inbound import InboundFactory, InboundStream
from guard.edges.s2s.outbound import OutboundStream
from guard.core.bounce import peer_detail
from guard.edges.xmlstream import StreamFault, StreamParser

from .streams.sides import make_side
from .streams.test_handshakes import RecordingOwner

DECLARATION = b"<?xml version='1.0'?>"
HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
    b"xmlns:db='jabber:server:dialback' from='red.example' to='blue.example' version='1.0'>"
)
OPEN = DECLARATION + HEADER
FAR_HEADER = (
    DECLARATION + b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
    b"xmlns:db='jabber:server:dialback' from='blue.example' to='red.example' id='s1' version='1.0'>"
)
BODY = b"<message><body>%s</body></message>"

# cause, bytes from the first byte of the stream, condition, where RFC 6120 says so
PARSER_ROWS = [
    ("XML declaration and stream header of version 0.9", OPEN.replace(b"'1.0'", b"'0.9'"),
     "unsupported-version", "4.7.5"),
    ("XML 1.1", OPEN.replace(b"version='1.0'?>", b"version='1.1'?>"), "unsupported-version", "4.7.5, 11"),
    ("encoding other than UTF-8", OPEN.replace(b"?>", b" encoding='ISO-8859-1'?>", 1), "unsupported-encoding",
     "4.9.3.22, 11.6"),
    ("UTF-16", HEADER.decode().encode("utf-16"), "unsupported-encoding", "4.9.3.22"),
    ("bytes that are not UTF-8", OPEN + BODY % b"\xc0\xaf", "unsupported-encoding", "4.9.3.22"),
    ("DOCTYPE", DECLARATION + b"<!DOCTYPE stream:stream>" + HEADER, "restricted-xml", "4.9.3.18, 11.1"),
    ("comment", OPEN + b"<!-- hi -->", "restricted-xml", "4.9.3.18, 11.1"),
    ("processing instruction", OPEN + BODY % b"<?pi x?>", "restricted-xml", "4.9.3.18, 11.1"),
    ("entity reference", OPEN + BODY % b"&nbsp;", "restricted-xml", "4.9.3.18, 11.1"),
    ("root outside the stream namespace", b"<stream:stream xmlns:stream='urn:x'>", "invalid-namespace", "4.8.1"),
    ("mismatched tags", OPEN + b"<message><body></message>", "not-well-formed", "4.9.3.13"),
    ("unbound prefix", OPEN + b"<foo:message/>", "not-well-formed", "4.9.3.13 (XML-NAMES)"),
    ("element in the xml namespace", OPEN + b"<xml:message/>", "bad-namespace-prefix", "4.9.3.2"),
    ("text directly inside the stream", OPEN + b"hello", "bad-format", "4.9.3.1"),
    ("a second stream header as a first-level child", OPEN + HEADER, "unsupported-stanza-type", "4.9.3.24"),
    ("a stream header inside a stanza", OPEN + BODY % HEADER, "policy-violation", "4.9.3.14"),
    ("stanza over the size limit", OPEN + BODY % (b"x" * (512 * 1024)), "policy-violation", "4.9.3.14"),
    ("elements nested too deeply", OPEN + b"<message>" + b"<a>" * 60, "policy-violation", "4.9.3.14"),
    ("stream header over the size limit", HEADER[:-1] + b" x='" + b"x" * 5000 + b"'>", "policy-violation",
     "4.9.3.14"),
]


def parser_fault(data: bytes) -> StreamFault:
    parser = StreamParser(lambda header: None, lambda element, size: None, lambda: None)
    with pytest.raises(StreamFault) as raised:
        parser.feed(data)
    return raised.value


def stream_error_written(data: bytes, limits=None) -> str:
    """What an InboundStream writes after receiving data, before TLS."""
    side = make_side("red", MemoryReactorClock(), limits=limits)
    stream = InboundStream(side)
    transport = StringTransport()
    stream.makeConnection(transport)
    stream.dataReceived(data)
    assert transport.disconnecting
    return transport.value().decode()


def names_condition(output: str, condition: str) -> bool:
    return f"<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in output


@pytest.mark.parametrize("cause, data, condition, section", PARSER_ROWS, ids=[row[0] for row in PARSER_ROWS])
def test_parser_condition(cause, data, condition, section):
    """The parser names the RFC 6120 condition for each cause, and an inbound stream sends exactly that one."""
    assert parser_fault(data).condition == condition, f"RFC 6120 {section}"
    assert names_condition(stream_error_written(data), condition), f"RFC 6120 {section}"


def test_xml_version_refusal_text_is_the_guards_own():
    """The refusal of an XML version carries the guard's constant text; the version the peer wrote is only in the detail."""
    fault = parser_fault(DECLARATION.replace(b"1.0", b"0." + b"9" * 1000) + HEADER)
    assert (fault.condition, fault.text) == ("unsupported-version", "only XML 1.0 is supported")
    assert fault.detail == peer_detail("0." + "9" * 1000)


# cause, bytes after nothing, condition, where RFC 6120 says so; decided by s2s/decisions.py or inbound.py
INBOUND_ROWS = [
    ("stream header of version 0.9", OPEN.replace(b"version='1.0'>", b"version='0.9'>"), "unsupported-version",
     "4.7.5"),
    ("stream header without a version", OPEN.replace(b" version='1.0'>", b">"), "unsupported-version", "4.7.5"),
    ("content namespace other than jabber:server", OPEN.replace(b"xmlns='jabber:server'", b"xmlns='jabber:client'"),
     "invalid-namespace", "4.8.2, 4.9.3.10"),
    ("stream prefix bound elsewhere",
     OPEN.replace(b"<stream:stream xmlns=", b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns=")
     .replace(b"xmlns:stream='http://etherx.jabber.org/streams'", b"xmlns:stream='urn:x'"),
     "bad-namespace-prefix", "4.8.5, 4.9.3.2"),
    ("to names a domain the guard does not front", OPEN.replace(b"to='blue.example'", b"to='green.example'"),
     "host-unknown", "4.9.3.6"),
    ("from names a domain not of this side", OPEN.replace(b"from='red.example'", b"from='blue.example'"),
     "invalid-from", "4.9.3.9"),
    ("a stanza before authentication", OPEN + b"<message from='a@red.example' to='b@blue.example'/>",
     "not-authorized", "4.9.3.12"),
    ("a first-level element the guard does not accept", OPEN + b"<foo xmlns='urn:x'/>", "unsupported-stanza-type",
     "4.9.3.24"),
]


@pytest.mark.parametrize("cause, data, condition, section", INBOUND_ROWS, ids=[row[0] for row in INBOUND_ROWS])
def test_inbound_condition(cause, data, condition, section):
    """An inbound stream refuses each cause with the RFC 6120 condition for it."""
    assert names_condition(stream_error_written(data), condition), f"RFC 6120 {section}"


def test_connection_over_the_per_address_limit_is_a_conflict():
    """A connection beyond connections_per_address is refused with conflict (RFC 6120 4.9.3.3)."""
    side = make_side("red", MemoryReactorClock(), limits=Limits(connections_per_address=1))
    factory = InboundFactory(side)
    address = IPv4Address("TCP", "127.0.0.1", 5000)
    first = factory.buildProtocol(address)
    first.makeConnection(StringTransport(peerAddress=address))
    second = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5001))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5001))
    second.makeConnection(transport)
    assert names_condition(transport.value().decode(), "conflict")


def outbound_error_written(data: bytes) -> str:
    """What an OutboundStream writes after the far server sent data, before TLS."""
    side = make_side("blue", MemoryReactorClock(), presents_for=("red.example", "conference.red.example"))
    stream = OutboundStream(RecordingOwner(), side, "red.example", "blue.example")
    transport = StringTransport()
    stream.makeConnection(transport)
    transport.clear()
    stream.dataReceived(data)
    assert transport.disconnecting
    return transport.value().decode()


OUTBOUND_ROWS = [
    ("far header without an id", FAR_HEADER.replace(b" id='s1'", b""), "invalid-xml", "4.7.3, 4.9.3.11"),
    ("far header from another domain", FAR_HEADER.replace(b"from='blue.example'", b"from='green.example'"),
     "invalid-from", "4.9.3.9"),
    ("far header of version 0.9", FAR_HEADER.replace(b"version='1.0'>", b"version='0.9'>"), "unsupported-version",
     "4.7.5"),
    ("a verification answer nobody asked for",
     FAR_HEADER + b"<db:verify type='valid' id='x' from='blue.example' to='red.example'/>",
     "undefined-condition", "4.9.3.21 (RFC 6120 has no invalid-id)"),
    ("a dialback answer for another pair", FAR_HEADER + b"<db:result type='valid' from='x.example' to='red.example'/>",
     "invalid-from", "4.9.3.9"),
    ("a first-level element the guard does not accept", FAR_HEADER + b"<foo xmlns='urn:x'/>",
     "unsupported-stanza-type", "4.9.3.24"),
]


@pytest.mark.parametrize("cause, data, condition, section", OUTBOUND_ROWS, ids=[row[0] for row in OUTBOUND_ROWS])
def test_outbound_condition(cause, data, condition, section):
    """An outbound stream closes on each cause from the far server with the RFC 6120 condition for it."""
    assert names_condition(outbound_error_written(data), condition), f"RFC 6120 {section}"


def test_far_server_without_starttls_is_a_policy_violation():
    """A far server that does not offer STARTTLS is told policy-violation."""
    output = outbound_error_written(FAR_HEADER + b"<stream:features/>")
    assert names_condition(output, "policy-violation")
