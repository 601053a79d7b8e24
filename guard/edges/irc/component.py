"""
The IRC gateway's XMPP side: one XEP-0114 component connection to the
side's Prosody, as ``irc.red.example``.  The protocol only parses and
classifies; the owner (the gateway, ``guard.app.irc``) decides; the Automat
machine holds the lifecycle, named for facts:

    awaiting_header -> awaiting_handshake -> open
    any state -> closed

``awaiting_header``: TCP (or TLS, certificate verified by the endpoint) is
up and the gateway sent its ``jabber:component:accept`` header; Prosody's
header must come back naming the component and giving a stream id.
``awaiting_handshake``: the gateway sent ``<handshake/>`` = hex SHA-1(stream
id + secret); only an empty ``<handshake/>`` opens the stream.  Anything
else (another element, a stream error, a timeout) closes it: fail closed.
A stream error is read and logged in words the operator can act on
(``conflict``: another gateway is connected as this component;
``not-authorized``: the secret was refused); the dialler
(``ComponentDialler``) then backs off with jitter on the injected clock.

Stanzas arrive in ``jabber:component:accept`` and leave the stream in
``jabber:server`` (the namespace the policy and the guard's bounces speak);
stanzas written by the gateway are serialised with ``jabber:server`` as the
default namespace, so they carry no ``xmlns`` and inherit the component
namespace of the stream, as XEP-0114 wants.  A stanza from Prosody must be
addressed to the component domain (or a JID in it) and come from a valid
JID, else the stream ends (``improper-addressing``); what the gateway writes
must come from the component domain and fit ``stanza_bytes``.
"""

from __future__ import annotations

import hashlib
from xml.sax.saxutils import quoteattr

from automat import MethodicalMachine
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from guard.core.addressing import parse_jid
from guard.core.vocabulary import COMPONENT_NS, SERVER_NS, STANZA_NAMES, STREAM_ERRORS_NS, STREAMS_NS
from guard.edges.filters import ByteCount
from guard.edges.lifecycle import (StreamLifecycle, closed_state, ignore_when_closed, lifecycle_inputs,
                                   lifecycle_state)
from guard.edges.link.dialler import Backoff, LinkDialler
from guard.edges.xmlstream import OversizedStanza, ParserLimits, StreamFault, StreamParser, serialise

log = Logger()


STREAM_CLOSE = b"</stream:stream>"

# How long the header and the handshake may take before the gateway gives up on a connection.
OPEN_TIMEOUT_SECONDS = 30.0

# Bytes Prosody may leave unread (it stopped reading what the gateway writes) before the connection is cut off
# and dialled again: what waits in the transport is bounded too.
UNREAD_OUTPUT_BYTES = 4 * 1024 * 1024

# What the operator reads when Prosody ends the component stream with one of these conditions.
STREAM_ERROR_MEANINGS = {
    "conflict": "another connection is already attached as this component (a second gateway?)",
    "not-authorized": "the component secret was refused (check component_secret in Prosody and the gateway's)",
    "host-unknown": "Prosody has no Component of this name",
    "system-shutdown": "Prosody is stopping",
}


def handshake_digest(stream_id: str, secret: str) -> str:
    """XEP-0114: the lowercase hex SHA-1 of the stream id followed by the secret (both UTF-8)."""
    return hashlib.sha1((stream_id + secret).encode("utf-8")).hexdigest()


def stream_header(component: str) -> bytes:
    """The header the gateway opens the component stream with."""
    return (
        "<?xml version='1.0'?>"
        f"<stream:stream xmlns='{COMPONENT_NS}' xmlns:stream='{STREAMS_NS}' to={quoteattr(component)}>"
    ).encode("utf-8")


def handshake(stream_id: str, secret: str) -> bytes:
    return f"<handshake>{handshake_digest(stream_id, secret)}</handshake>".encode("ascii")


def stream_error(condition: str) -> bytes:
    """A stream error the gateway ends the stream with (its own condition, no text of a peer's)."""
    return (f"<stream:error><{condition} xmlns='{STREAM_ERRORS_NS}'/></stream:error>").encode("utf-8") + STREAM_CLOSE


def refuse_component_header(header, component: str) -> tuple[str, str] | None:
    """Whether Prosody's header is not that of a component stream for ``component``: (condition, text), or None."""
    if header.default_namespace != COMPONENT_NS:
        return ("invalid-namespace", "the component stream uses jabber:component:accept")
    if not header.attributes.get("id"):
        return ("invalid-xml", "the header gives no stream id")
    if header.attributes.get("from") != component:
        return ("host-unknown", "the header does not name the component")
    return None


def in_component_domain(address: str | None, component: str) -> bool:
    """Whether ``address`` is a valid JID whose domain is the component's."""
    parsed = parse_jid(address)
    return parsed is not None and parsed.host == component


def refuse_arriving_stanza(element, component: str) -> str | None:
    """Why a stanza from Prosody cannot be taken (the guard's own text), or None: it must be addressed to the
    component domain and come from a valid JID."""
    if not in_component_domain(element.getAttribute("to"), component):
        return "a stanza not addressed to the component domain"
    if parse_jid(element.getAttribute("from")) is None:
        return "a stanza without a valid sender"
    return None


def into_server_namespace(element) -> None:
    """Move ``element`` and its descendants in jabber:component:accept into jabber:server (in place)."""
    if element.uri == COMPONENT_NS:
        element.uri = SERVER_NS
    if element.defaultUri == COMPONENT_NS:
        element.defaultUri = SERVER_NS
    for child in element.elements():
        into_server_namespace(child)


class NotSent(Exception):
    """What the gateway asked to write cannot go on the component stream (``reason``: the guard's own text)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ComponentStream(StreamLifecycle, Protocol):
    """
    One connection of the gateway to Prosody as an external component.  ``owner`` hears
    ``component_opened(stream)``, ``stanza_arrived(stream, element, size)`` and
    ``component_closed(stream, condition)`` (``condition``: the stream error that ended it, or None).
    """

    _machine = MethodicalMachine()
    stream_kind = "component"

    unread_output_limit = UNREAD_OUTPUT_BYTES

    def __init__(self, owner, component: str, secret: str, clock, limits: ParserLimits = ParserLimits(),
                 open_timeout: float = OPEN_TIMEOUT_SECONDS):
        self.owner = owner
        self.component = component
        self._secret = secret
        self.limits = limits
        self.open_timeout = open_timeout
        self._begin_lifecycle(clock)
        self.byte_count = ByteCount().install(self.filters)
        self._parser = StreamParser(self._on_header, self._on_element, self._on_end, limits)
        self.reached_open = False  # the dialler reads it: an open stream resets the backoff
        self.peer_condition: str | None = None  # the stream error Prosody ended the stream with
        self.when_lost = []  # callables told when the connection is gone (the dialler)

    # -- transport events -------------------------------------------------

    def connectionMade(self):
        self._tell_events("stream_opened")
        self._register_producer()
        self._start_timer("open", self.open_timeout, "the component stream did not open in time")
        self._write(stream_header(self.component))

    def dataReceived(self, data):
        data = self._filter_in(data)
        if data is None:
            return
        try:
            self._parser.feed(data)
        except StreamFault as fault:
            log.info("{stream}: {condition}: {text} ({detail})", stream=self._describe(), condition=fault.condition,
                     text=fault.text, detail=fault.detail)
            self._input(self.fault, fault.condition, fault.text)

    def connectionLost(self, reason=None):
        self._cancel_all_timers()
        self._input(self.connection_lost)
        self._tell_closed(reason)
        try:
            self.owner.component_closed(self, self.peer_condition)
        finally:
            callbacks, self.when_lost = self.when_lost, []
            for callback in callbacks:
                callback(self)

    # -- what the gateway calls ---------------------------------------------

    @property
    def is_open(self) -> bool:
        return not self._dropped and self._lifecycle_state() == "open"

    def send(self, element) -> int:
        """
        Write one stanza (in jabber:server, from the component domain); the bytes written.  Raises
        ``NotSent`` when the stream is not open, the sender is not of the component domain, or the stanza
        does not serialise within ``stanza_bytes``: nothing is written then.
        """
        if not self.is_open:
            raise NotSent("the component stream is not open")
        if element.name not in STANZA_NAMES or element.uri != SERVER_NS:
            raise NotSent("only stanzas are written on the component stream")
        if not in_component_domain(element.getAttribute("from"), self.component):
            raise NotSent("a stanza not from the component domain")
        try:
            data = serialise(element, SERVER_NS, max_bytes=self.limits.stanza_bytes).encode("utf-8")
        except (OversizedStanza, ValueError) as problem:
            raise NotSent(f"the stanza cannot be written: {problem}") from None
        self.stanzas_out += 1
        self._write(data)
        return len(data)

    def close(self, condition: str = "system-shutdown", text: str = "the gateway is stopping") -> None:
        """End the stream (with a stream error once the header was exchanged)."""
        self._input(self.close_requested, condition, text)

    # -- parser callbacks -------------------------------------------------

    def _on_header(self, header):
        refusal = refuse_component_header(header, self.component)
        if refusal is not None:
            self._input(self.header_refused, header, *refusal)
        else:
            self._input(self.header_accepted, header)

    def _on_end(self):
        self._input(self.peer_closed)

    def _on_element(self, element, size):
        if element.uri == COMPONENT_NS and element.name == "handshake":
            if next(element.elements(), None) is not None or str(element).strip():
                self._input(self.fault, "invalid-xml", "a handshake reply that is not empty")
            else:
                self._input(self.handshake_accepted)
        elif element.uri == COMPONENT_NS and element.name in STANZA_NAMES:
            self._input(self.stanza_arrived, element, size)
        elif (element.uri, element.name) == (STREAMS_NS, "error"):
            condition = next((child.name for child in element.elements()
                              if child.uri == STREAM_ERRORS_NS and child.name != "text"), "undefined-condition")
            self._input(self.peer_failed, condition)
        else:
            self._input(self.fault, "unsupported-stanza-type", "an element the component stream does not take")

    # -- the lifecycle's hooks ----------------------------------------------

    def _describe(self):
        return f"component {self.component}"

    def _stream_events(self):
        return getattr(self.owner, "stream_events", None)

    def _refuse_unexpected(self, text):
        self.fault("undefined-condition", "unexpected at this point of the component stream")

    def _stop_reading_input(self):
        self._parser.stop()

    def describe(self) -> dict:
        """This connection as the status file and the management page report it."""
        facts = {"side": "xmpp", "direction": "component", "peer_domain": self.component,
                 "local_domain": self.component}
        facts.update(self._stream_facts())
        return facts

    # -- states -------------------------------------------------------------

    @_machine.state(initial=True)
    def awaiting_header(self):
        "Connected; the gateway sent its header and waits for Prosody's."

    @_machine.state()
    def awaiting_handshake(self):
        "Prosody's header gave the stream id; the gateway sent its handshake and waits for the empty reply."

    @_machine.state()
    def open(self):
        "The handshake was accepted: stanzas flow both ways."

    closed = closed_state(_machine)
    _lifecycle_state = lifecycle_state(_machine)

    # -- inputs ---------------------------------------------------------------

    fault, timed_out, peer_closed, shut_down, connection_lost = lifecycle_inputs(_machine)

    @_machine.input()
    def header_accepted(self, header):
        "Prosody opened a component stream for this component, with a stream id."

    @_machine.input()
    def header_refused(self, header, condition, text):
        "Prosody's header is not that of a component stream for this component."

    @_machine.input()
    def handshake_accepted(self):
        "Prosody answered the handshake with an empty <handshake/>."

    @_machine.input()
    def stanza_arrived(self, element, size):
        "A stanza from Prosody."

    @_machine.input()
    def peer_failed(self, condition):
        "Prosody ended the stream with a stream error."

    @_machine.input()
    def close_requested(self, condition, text):
        "The gateway ends the stream (stopping)."

    # -- outputs --------------------------------------------------------------

    @_machine.output()
    def _send_handshake(self, header):
        self._write(handshake(header.attributes["id"], self._secret))

    @_machine.output()
    def _opened(self):
        self._cancel_timer("open")
        self.reached_open = True
        self.authentication = "handshake"
        log.info("{stream}: attached to Prosody", stream=self._describe())
        self.owner.component_opened(self)

    @_machine.output()
    def _deliver(self, element, size):
        problem = refuse_arriving_stanza(element, self.component)
        if problem is not None:
            log.warn("{stream}: {problem}; closing", stream=self._describe(), problem=problem)
            self._send_error("improper-addressing")
            return
        self.stanzas_in += 1
        into_server_namespace(element)
        self.owner.stanza_arrived(self, element, size)

    @_machine.output()
    def _refuse_header(self, header, condition, text):
        self._end_with(condition, text)

    @_machine.output()
    def _refuse(self, condition, text):
        self._end_with(condition, text)

    @_machine.output()
    def _note_peer_error(self, condition):
        self.peer_condition = condition
        meaning = STREAM_ERROR_MEANINGS.get(condition, "")
        log.error("{stream}: Prosody ended the stream with {condition}{sep}{meaning}", stream=self._describe(),
                  condition=condition, sep=": " if meaning else "", meaning=meaning)
        self._closing_with("peer-error")
        self._stop_reading_input()
        self._write(STREAM_CLOSE)
        self._close_transport()

    @_machine.output()
    def _close_cleanly(self):
        self._closing_with("closed")
        self._stop_reading_input()
        self._write(STREAM_CLOSE)
        self._close_transport()

    @_machine.output()
    def _forget(self):
        self._stop_reading_input()

    def _end_with(self, condition, text):
        log.warn("{stream}: closing with {condition}: {text}", stream=self._describe(), condition=condition, text=text)
        self._send_error(condition)

    def _send_error(self, condition):
        self._closing_with(condition)
        self._stop_reading_input()
        self._write(stream_error(condition))
        self._close_transport()

    # -- transitions ----------------------------------------------------------

    awaiting_header.upon(header_accepted, enter=awaiting_handshake, outputs=[_send_handshake])
    awaiting_header.upon(header_refused, enter=closed, outputs=[_refuse_header])
    awaiting_handshake.upon(handshake_accepted, enter=open, outputs=[_opened])
    open.upon(stanza_arrived, enter=open, outputs=[_deliver])
    for _state in (awaiting_header, awaiting_handshake, open):
        _state.upon(fault, enter=closed, outputs=[_refuse])
        _state.upon(timed_out, enter=closed, outputs=[_refuse])
        _state.upon(close_requested, enter=closed, outputs=[_refuse])
        _state.upon(peer_failed, enter=closed, outputs=[_note_peer_error])
        _state.upon(peer_closed, enter=closed, outputs=[_close_cleanly])
        _state.upon(shut_down, enter=closed, outputs=[_close_cleanly])
        _state.upon(connection_lost, enter=closed, outputs=[_forget])
    ignore_when_closed(_machine, closed)
    del _state


class ComponentStreamFactory(Factory):
    """Builds the component streams the dialler connects (each with the arguments of ``ComponentStream``)."""

    def __init__(self, *arguments, **keywords):
        self.arguments = arguments
        self.keywords = keywords

    def buildProtocol(self, addr):
        stream = ComponentStream(*self.arguments, **self.keywords)
        stream.factory = self
        return stream


class ComponentDialler(LinkDialler):
    """
    Keeps the one component connection, dialling again after each loss or
    refusal with backoff and jitter (``guard.edges.link.dialler``: the same
    machine as the pair link's).  ``endpoint`` is a Twisted client endpoint
    (TCP on loopback, or TLS with ``component_tls_options``).
    """

    def __init__(self, endpoint, factory: ComponentStreamFactory, clock, random, backoff: Backoff = Backoff()):
        super().__init__(lambda: endpoint.connect(factory), clock, random, backoff, dialled="component")


def component_tls_options(cafile: str, server_name: str):
    """
    TLS client options toward Prosody's component port: its certificate must
    chain to ``cafile`` and name ``server_name`` (a connection that does not
    verify never carries the handshake, let alone a stanza).
    """
    from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates

    from guard.edges.tlsidentity import load_pem_chain

    authorities = [Certificate(certificate) for certificate in load_pem_chain(cafile)]
    if not authorities:
        raise ValueError(f"{cafile}: no certificates")
    return optionsForClientTLS(server_name, trustRoot=trustRootFromCertificates(authorities))


__all__ = ["COMPONENT_NS", "ComponentDialler", "ComponentStream", "ComponentStreamFactory", "NotSent",
           "component_tls_options", "handshake_digest"]
