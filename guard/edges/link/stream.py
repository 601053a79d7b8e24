"""
One connection of the pair link.  The protocol only parses and classifies;
the ``Link`` it belongs to keeps the counters and decides; the Automat
machine holds the lifecycle, named for facts:

    awaiting_identity -> awaiting_header -> awaiting_resume -> open
    any state -> closed

``awaiting_identity``: TCP is up, the TLS handshake is not yet done (or the
peer's certificate not yet judged).  As soon as the certificate proves the
peer, this half sends its header, its <resume/> and the stanzas waiting, all
at once (zero handshake), and expects the same from the peer.  An input a
state does not expect closes the connection (fail closed).
"""

from __future__ import annotations

from automat import MethodicalMachine
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from guard.edges.filters import ByteCount
from guard.edges.lifecycle import (StreamLifecycle, closed_state, ignore_when_closed, lifecycle_inputs,
                                   lifecycle_state)
from guard.core.vocabulary import STANZA_NAMES
from guard.edges.xmlstream import ParserLimits, StreamFault, StreamParser

from . import wire
from .ledger import LinkFault, StanzaNotTaken

log = Logger()

# Bytes a paused connection may still receive (what the transport had already
# read when it was paused); a transport that goes on delivering past this is
# not honouring the pause, and the connection is closed.
PAUSED_INPUT_BYTES = 1024 * 1024

# How a stanza the link writes begins (the link writes only the guard's own serialisations, never a peer's bytes):
# what tells a stanza from the link's own elements (header, resume, acks) when describe() counts them.
STANZA_OPENINGS = tuple(f"<{name}{after}".encode() for name in sorted(STANZA_NAMES) for after in (" ", ">", "/"))

# How long a link connection may take to open (TLS, headers, resume) unless the leg's configuration says otherwise.
OPEN_TIMEOUT_SECONDS = 30.0

# What the link says when the peer's first bytes cannot be read under the constrained profile's compression.
COMPRESSION_MISMATCH = "the link's first bytes cannot be read: both halves must use the same compression"


def refuse_link_header(header, own_name: str, peer_name: str) -> tuple[str, str] | None:
    """Whether the peer's stream header is not that of the peer half's link stream: (condition, text), or None."""
    if header.default_namespace != wire.SERVER_NS:
        return ("invalid-namespace", "the link stream uses jabber:server")
    if header.attributes.get("version") != "1.0":
        return ("unsupported-version", "the link stream is version 1.0")
    if header.attributes.get("from") != peer_name:
        return ("invalid-from", "the header does not name the peer half")
    if header.attributes.get("to") != own_name:
        return ("host-unknown", "the header does not name this half")
    return None


@implementer(IHandshakeListener)
class LinkStream(StreamLifecycle, Protocol):
    """One TCP (TLS) connection between the two halves."""

    _machine = MethodicalMachine()
    stream_kind = "link"

    def __init__(self, link, peer_check, clock, limits: ParserLimits = ParserLimits(), open_timeout: float = OPEN_TIMEOUT_SECONDS):
        self.link = link
        self.peer_check = peer_check
        self._begin_lifecycle(clock)
        self.limits = limits
        self.open_timeout = open_timeout
        self.peer_fingerprint: str | None = None  # noted when the certificate proves the peer
        self.reached_open = False  # noted when the peer's <resume/> opened this connection (the dialler reads it after)
        self.when_lost = []  # callables told when the connection is gone
        self.when_open = []  # callables told when the peer's <resume/> opened the connection
        self.lost_reason = None  # why the connection was lost (the when_lost callables may read it)
        self.compression: str | None = None  # the constrained profile's compression mode, once installed
        self._header_seen = False
        self.byte_count = ByteCount().install(self.filters)
        self._parser = StreamParser(self._on_header, self._on_element, self._on_end, limits)
        self._link_fault: LinkFault | None = None  # what the link refused during the last input
        # Reading: the link pauses it while this half's side is congested;
        # what arrives meanwhile (or while a chunk is being parsed) waits unparsed.
        self._paused = False
        self._feeding = False
        self._unread: list[bytes] = []
        self._unread_bytes = 0

    # -- transport events -------------------------------------------------

    def connectionMade(self):
        self._tell_events("stream_opened")
        self._start_timer("open", self.open_timeout, "the link did not open in time")
        if self._without_tls:
            from .profile import BEARER_IDENTITY, BEARER_WARNING

            log.warn("link connection to {peer}: {warning}; {identity}", peer=self.link.peer_name,
                     warning=BEARER_WARNING, identity=BEARER_IDENTITY)
            self.handshakeCompleted()
            return
        # Stanzas and acknowledgements are small writes: do not let Nagle's
        # algorithm hold them back waiting for a delayed ACK.
        tcp = getattr(self.transport, "transport", self.transport)
        if hasattr(tcp, "setTcpNoDelay"):
            try:
                tcp.setTcpNoDelay(True)
            except OSError:
                pass

    def handshakeCompleted(self):
        try:
            fingerprint, problem = self.peer_check.judge(self.transport)
        except Exception as error:  # noqa: BLE001 - a check that fails proves nothing
            fingerprint, problem = None, f"the peer check failed: {error!r}"
        if problem is not None or fingerprint is None:
            self._tell_events("tls_failed", "untrusted-certificate")
            self._input(self.identity_refused, problem or "no identity")
        else:
            if not self._without_tls:
                self._note_peer_certificate()
            self._input(self.identity_proved, fingerprint)

    @property
    def _without_tls(self) -> bool:
        """security = "bearer": plain TCP, no handshake; the peer check proves it by the header names only."""
        return getattr(self.peer_check, "without_tls", False)

    def dataReceived(self, data):
        data = self._filter_in(data)
        if data is not None:
            self._read(data)

    def _read(self, data):
        """Parse ``data`` after what waits, unless reading is paused (or a chunk is being parsed: it waits)."""
        self._unread.append(data)
        self._unread_bytes += len(data)
        if self._paused or self._feeding:
            if self._unread_bytes > PAUSED_INPUT_BYTES:
                self._input(self.fault, "resource-constraint", "input kept coming while paused")
            return
        self._feeding = True
        try:
            while self._unread and not self._paused and not self.closing:
                chunk = b"".join(self._unread)
                self._unread, self._unread_bytes = [], 0
                self._parser.feed(chunk)
        except StreamFault as fault:
            self._input(self.parse_failed, fault.condition, fault.text)
        finally:
            self._feeding = False

    def connectionLost(self, reason=None):
        self.lost_reason = reason
        self._cancel_all_timers()
        self._input(self.connection_lost)
        self._tell_closed(reason)
        self.link.stream_closed(self)
        callbacks, self.when_lost = self.when_lost, []
        for callback in callbacks:
            callback(self)

    # -- what the link calls ----------------------------------------------

    def write(self, data: bytes) -> None:
        """Put link bytes (resume, acks, serialised stanzas) on the wire, unless closing."""
        if not self.closing:
            if data.startswith(STANZA_OPENINGS):
                self.stanzas_out += 1
            self._write(data)

    def close(self, condition: str, text: str) -> None:
        """End this connection with a stream error (replaced, shut down, unresponsive)."""
        self._input(self.close_requested, condition, text)

    def pause_reading(self) -> None:
        """Read nothing more from the peer until ``resume_reading`` (input already read waits unparsed)."""
        if not self._paused:
            self._paused = True
            if self.transport is not None:
                self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """Read the peer again, starting with the input that waited."""
        if self._paused:
            self._paused = False
            if self.transport is not None and not self.closing:
                self.transport.resumeProducing()
            if not self._feeding and not self.closing:
                self._read(b"")

    # -- parser callbacks -------------------------------------------------

    def _on_header(self, header):
        self._header_seen = True
        refusal = refuse_link_header(header, self.link.own_name, self.link.peer_name)
        if refusal is not None:
            self._input(self.header_refused, *refusal)
        else:
            self._input(self.header_accepted, header)

    def _on_end(self):
        self._input(self.peer_closed)

    def _on_element(self, element, size):
        kind = (element.uri, element.name)
        if element.uri == wire.SERVER_NS and element.name in STANZA_NAMES:
            self._input(self.stanza_arrived, element, size)
        elif kind == (wire.SM_NS, "r"):
            self._input(self.ack_requested)
        elif kind == (wire.SM_NS, "a"):
            received = wire.counter(element.getAttribute("h"))
            if received is None:
                self._input(self.fault, "invalid-xml", "an acknowledgement without a valid h")
            else:
                self._input(self.ack_arrived, received)
        elif kind == (wire.LINK_NS, "resume"):
            resume = wire.read_resume(element)
            if resume is None:
                self._input(self.fault, "invalid-xml", "a malformed <resume/>")
            else:
                self._input(self.resume_arrived, resume)
        elif kind == (wire.STREAMS_NS, "error"):
            condition = next((child.name for child in element.elements()
                              if child.uri == wire.STREAM_ERRORS_NS and child.name != "text"), "undefined-condition")
            self._input(self.peer_failed, condition, wire.read_refused(element))
        else:
            self._input(self.fault, "unsupported-stanza-type", f"{element.uri} {element.name} is not accepted here")

    # -- the lifecycle's hooks ----------------------------------------------

    def _describe(self):
        return f"link to {self.link.peer_name}"

    def _stream_events(self):
        return getattr(self.link, "stream_events", None)

    def _note_peer_certificate(self):
        """The proved peer's certificate, as describe() reports it (nothing if the transport cannot tell)."""
        connection = self.transport.getHandle() if hasattr(self.transport, "getHandle") else None
        leaf = connection.get_peer_certificate() if connection is not None else None
        if leaf is not None:
            self.authentication = "certificate"
            self._note_certificate(leaf.to_cryptography())

    def describe(self) -> dict:
        """This connection of the pair link as the snapshot reports it (guard.app.snapshot)."""
        facts = {"side": "link", "direction": "link", "peer_domain": self.link.peer_name,
                 "local_domain": self.link.own_name, "peer_fingerprint": self.peer_fingerprint}
        facts.update(self._stream_facts())
        return facts

    def _refuse_unexpected(self, text):
        self.fault("undefined-condition", "unexpected at this point of the link stream")

    def _after_input(self):
        """What the link refused while the machine took the last input is the machine's next input."""
        fault, self._link_fault = self._link_fault, None
        if isinstance(fault, StanzaNotTaken):
            self._input(self.parse_failed, fault.condition, fault.text)  # refused by its number, as unparseable ones are
        elif fault is not None:
            self._input(self.fault, fault.condition, fault.text)

    def _stop_reading_input(self):
        self._parser.stop()
        self._unread, self._unread_bytes = [], 0

    def _ask_link(self, call, *args):
        try:
            call(*args)
        except LinkFault as fault:
            self._link_fault = fault

    # -- states -------------------------------------------------------------

    @_machine.state(initial=True)
    def awaiting_identity(self):
        "Connected; the peer's certificate has not been judged."

    @_machine.state()
    def awaiting_header(self):
        "The certificate proved the peer; its stream header has not arrived."

    @_machine.state()
    def awaiting_resume(self):
        "The peer's header arrived; its <resume/> must come next."

    @_machine.state()
    def open(self):
        "Both numberings are known; stanzas and acknowledgements flow."

    closed = closed_state(_machine)
    _lifecycle_state = lifecycle_state(_machine)

    # -- inputs ---------------------------------------------------------------

    fault, timed_out, peer_closed, shut_down, connection_lost = lifecycle_inputs(_machine)

    @_machine.input()
    def identity_proved(self, fingerprint):
        "The peer's certificate is the pinned one (or chains to the link CA and names the peer)."

    @_machine.input()
    def identity_refused(self, text):
        "The peer's certificate does not prove it is the peer half."

    @_machine.input()
    def header_accepted(self, header):
        "The peer opened its link stream."

    @_machine.input()
    def header_refused(self, condition, text):
        "The peer's header is not that of the peer half's link stream."

    @_machine.input()
    def resume_arrived(self, resume):
        "The peer said where its numbering resumes and what it has seen of ours."

    @_machine.input()
    def stanza_arrived(self, element, size):
        "A stanza of the peer's numbering."

    @_machine.input()
    def ack_requested(self):
        "The peer asked how many of its stanzas we have counted."

    @_machine.input()
    def ack_arrived(self, received):
        "The peer has counted our stanzas up to ``received``."

    @_machine.input()
    def parse_failed(self, condition, text):
        "The parser refused what the peer wrote (in the open stream: the stanza being read)."

    @_machine.input()
    def peer_failed(self, condition, refused):
        "The peer sent a stream error (``refused``: the number of our stanza it could not take, or None)."

    @_machine.input()
    def close_requested(self, condition, text):
        "This half ends the connection (replaced, stopping, unresponsive)."

    # -- outputs --------------------------------------------------------------

    @_machine.output()
    def _begin(self, fingerprint):
        self.peer_fingerprint = fingerprint
        self._write(wire.stream_header(self.link.own_name, self.link.peer_name))
        self._ask_link(self.link.stream_authenticated, self)

    @_machine.output()
    def _refuse_identity(self, text):
        log.warn("link: peer refused: {text}", text=text)
        self._close_transport()

    @_machine.output()
    def _resumed(self, resume):
        self._cancel_timer("open")
        self.reached_open = True
        self._ask_link(self.link.peer_resumed, self, resume)
        for callback in self.when_open:
            callback(self)

    @_machine.output()
    def _deliver(self, element, size):
        self.stanzas_in += 1
        self._ask_link(self.link.stanza_arrived, self, element, size)

    @_machine.output()
    def _answer_ack_request(self):
        self._write(wire.ack(self.link.received_count()))

    @_machine.output()
    def _take_ack(self, received):
        self._ask_link(self.link.acknowledged, self, received)

    @_machine.output()
    def _refuse(self, condition, text):
        if self.compression is not None and not self._header_seen and condition not in (
                "connection-timeout", "system-shutdown", "conflict"):
            log.error("link: the peer's first bytes cannot be read ({condition}: {text}); is its [link.constrained] "
                      "compression {mode!r} as this half's?", condition=condition, text=text, mode=self.compression)
            text = COMPRESSION_MISMATCH
        log.info("link: closing with {condition}: {text}", condition=condition, text=text)
        self._send_error(condition, text)

    @_machine.output()
    def _refuse_stanza(self, condition, text):
        sequence = self.link.expected_sequence()
        log.warn("link: refusing the peer's stanza {n} ({condition}: {text}); closing",
                 n=sequence, condition=condition, text=text)
        self._send_error(condition, text, refused=sequence)

    @_machine.output()
    def _note_peer_error(self, condition, refused):
        log.info("link: the peer ended the stream with {condition}", condition=condition)
        self._closing_with("peer-error")
        if refused is not None:
            self._ask_link(self.link.peer_refused, self, refused)
        self._write(wire.STREAM_CLOSE)
        self._close_transport()

    @_machine.output()
    def _close_cleanly(self):
        self._closing_with("closed")
        self._write(wire.STREAM_CLOSE)
        self._close_transport()

    @_machine.output()
    def _drop_connection(self):
        self._close_transport()

    @_machine.output()
    def _forget(self):
        self._stop_reading_input()

    def _send_error(self, condition, text, refused=None):
        self._closing_with(condition)
        self._stop_reading_input()
        self._write(wire.stream_error(condition, text, refused))
        self._close_transport()

    # -- transitions ----------------------------------------------------------

    awaiting_identity.upon(identity_proved, enter=awaiting_header, outputs=[_begin])
    awaiting_identity.upon(identity_refused, enter=closed, outputs=[_refuse_identity])
    for _each in (fault, parse_failed, timed_out, close_requested):
        awaiting_identity.upon(_each, enter=closed, outputs=[_drop_connection])
    awaiting_identity.upon(connection_lost, enter=closed, outputs=[_forget])
    awaiting_header.upon(header_accepted, enter=awaiting_resume, outputs=[])
    awaiting_header.upon(header_refused, enter=closed, outputs=[_refuse])
    awaiting_resume.upon(resume_arrived, enter=open, outputs=[_resumed])
    open.upon(stanza_arrived, enter=open, outputs=[_deliver])
    open.upon(ack_requested, enter=open, outputs=[_answer_ack_request])
    open.upon(ack_arrived, enter=open, outputs=[_take_ack])
    open.upon(parse_failed, enter=closed, outputs=[_refuse_stanza])
    awaiting_header.upon(parse_failed, enter=closed, outputs=[_refuse])
    awaiting_resume.upon(parse_failed, enter=closed, outputs=[_refuse])

    for _state in (awaiting_header, awaiting_resume, open):
        _state.upon(fault, enter=closed, outputs=[_refuse])
        _state.upon(timed_out, enter=closed, outputs=[_refuse])
        _state.upon(close_requested, enter=closed, outputs=[_refuse])
        _state.upon(peer_failed, enter=closed, outputs=[_note_peer_error])
        _state.upon(peer_closed, enter=closed, outputs=[_close_cleanly])
        _state.upon(connection_lost, enter=closed, outputs=[_forget])
    ignore_when_closed(_machine, closed)
    del _state, _each


class LinkStreamFactory(Factory):
    """Builds the link's streams, for the listening half or for the dialler."""

    def __init__(self, link, peer_check, clock, limits: ParserLimits = ParserLimits(), open_timeout: float = OPEN_TIMEOUT_SECONDS,
                 prepare=None):
        """``prepare(stream)``, when given, is called on every new stream (the constrained profile's compression)."""
        self.link = link
        self.peer_check = peer_check
        self.clock = clock
        self.limits = limits
        self.open_timeout = open_timeout
        self.prepare = prepare

    def buildProtocol(self, addr):
        stream = LinkStream(self.link, self.peer_check, self.clock, self.limits, self.open_timeout)
        stream.factory = self
        if self.prepare is not None:
            self.prepare(stream)
        return stream
