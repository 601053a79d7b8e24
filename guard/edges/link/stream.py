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

from automat import MethodicalMachine, NoTransition
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from guard.edges.xmlstream import ParserLimits, StreamFault, StreamParser

from . import wire
from .ledger import LinkFault, StanzaNotTaken

log = Logger()

# Bytes a paused connection may still receive (what the transport had already
# read when it was paused); a transport that goes on delivering past this is
# not honouring the pause, and the connection is closed.
PAUSED_INPUT_BYTES = 1024 * 1024

STANZA_NAMES = frozenset({"message", "presence", "iq"})


@implementer(IHandshakeListener)
class LinkStream(Protocol):
    """One TCP (TLS) connection between the two halves."""

    _machine = MethodicalMachine()

    def __init__(self, link, peer_check, clock, limits: ParserLimits = ParserLimits(), open_timeout: float = 30.0):
        self.link = link
        self.peer_check = peer_check
        self.clock = clock
        self.limits = limits
        self.open_timeout = open_timeout
        self.peer_fingerprint: str | None = None
        self.reached_open = False
        self.when_lost = []  # callables told when the connection is gone
        self.stanzas_written = 0
        self._parser = StreamParser(self._on_header, self._on_element, self._on_end, limits)
        self._timer = None
        self._closing = False
        self._pending_fault: LinkFault | None = None
        self._paused = False  # this half's side is congested: input waits unparsed
        self._feeding = False
        self._unread: list[bytes] = []
        self._unread_bytes = 0

    # -- transport events -------------------------------------------------

    def connectionMade(self):
        self._timer = self.clock.callLater(self.open_timeout, self._open_timed_out)
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
            self._input(self.identity_refused, problem or "no identity")
        else:
            self._input(self.identity_proved, fingerprint)

    def dataReceived(self, data):
        if self._closing:
            return
        self._unread.append(data)
        self._unread_bytes += len(data)
        if self._paused or self._feeding:
            if self._unread_bytes > PAUSED_INPUT_BYTES:
                self._input(self.fault, "resource-constraint", "input kept coming while paused")
            return
        self._feeding = True
        try:
            while self._unread and not self._paused and not self._closing:
                chunk = b"".join(self._unread)
                self._unread, self._unread_bytes = [], 0
                self._parser.feed(chunk)
        except StreamFault as fault:
            self._input(self.parse_failed, fault.condition, fault.text)
        finally:
            self._feeding = False

    def connectionLost(self, reason=None):
        self._cancel_timer()
        self._input(self.connection_lost)
        self.link.stream_closed(self)
        callbacks, self.when_lost = self.when_lost, []
        for callback in callbacks:
            callback(self)

    # -- what the link calls ----------------------------------------------

    def write(self, data: bytes) -> None:
        """Put link bytes (resume, acks, serialised stanzas) on the wire, unless closing."""
        if not self._closing and self.transport is not None:
            self.transport.write(data)

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
            if self.transport is not None and not self._closing:
                self.transport.resumeProducing()
            if not self._feeding:
                self.dataReceived(b"")

    # -- parser callbacks -------------------------------------------------

    def _on_header(self, header):
        if header.default_namespace != wire.SERVER_NS:
            self._input(self.header_refused, "invalid-namespace", "the link stream uses jabber:server")
        elif header.attributes.get("version") != "1.0":
            self._input(self.header_refused, "unsupported-version", "the link stream is version 1.0")
        elif header.attributes.get("from") != self.link.peer_name:
            self._input(self.header_refused, "invalid-from", "the header does not name the peer half")
        elif header.attributes.get("to") != self.link.own_name:
            self._input(self.header_refused, "host-unknown", "the header does not name this half")
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

    # -- machine plumbing -------------------------------------------------

    def _input(self, method, *args):
        try:
            method(*args)
        except NoTransition as problem:
            log.info("link: unexpected {problem}; closing", problem=problem)
            self._input(self.fault, "undefined-condition", "unexpected at this point of the link stream")
            return
        fault, self._pending_fault = self._pending_fault, None
        if isinstance(fault, StanzaNotTaken):
            self._input(self.parse_failed, fault.condition, fault.text)  # refused by its number, as unparseable ones are
        elif fault is not None:
            self._input(self.fault, fault.condition, fault.text)

    def _ask_link(self, call, *args):
        try:
            call(*args)
        except LinkFault as fault:
            self._pending_fault = fault

    def _open_timed_out(self):
        self._timer = None
        self._input(self.timed_out, "connection-timeout", "the link did not open in time")

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

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

    @_machine.state()
    def closed(self):
        "The connection is over; everything is ignored."

    # -- inputs ---------------------------------------------------------------

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
    def fault(self, condition, text):
        "The peer broke the link protocol."

    @_machine.input()
    def parse_failed(self, condition, text):
        "The parser refused what the peer wrote (in the open stream: the stanza being read)."

    @_machine.input()
    def timed_out(self, condition, text):
        "The link did not open in time."

    @_machine.input()
    def peer_failed(self, condition, refused):
        "The peer sent a stream error (``refused``: the number of our stanza it could not take, or None)."

    @_machine.input()
    def peer_closed(self):
        "The peer closed its stream."

    @_machine.input()
    def close_requested(self, condition, text):
        "This half ends the connection."

    @_machine.input()
    def connection_lost(self):
        "The TCP connection is gone."

    # -- outputs --------------------------------------------------------------

    @_machine.output()
    def _begin(self, fingerprint):
        self.peer_fingerprint = fingerprint
        self.transport.write(wire.stream_header(self.link.own_name, self.link.peer_name))
        self._ask_link(self.link.stream_authenticated, self)

    @_machine.output()
    def _refuse_identity(self, text):
        log.warn("link: peer refused: {text}", text=text)
        self._closing = True
        self.transport.loseConnection()

    @_machine.output()
    def _resumed(self, resume):
        self._cancel_timer()
        self.reached_open = True
        self._ask_link(self.link.peer_resumed, self, resume)

    @_machine.output()
    def _deliver(self, element, size):
        self._ask_link(self.link.stanza_arrived, self, element, size)

    @_machine.output()
    def _answer_ack_request(self):
        self.transport.write(wire.ack(self.link.received_count()))

    @_machine.output()
    def _take_ack(self, received):
        self._ask_link(self.link.acknowledged, self, received)

    @_machine.output()
    def _refuse(self, condition, text):
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
        if refused is not None:
            self._ask_link(self.link.peer_refused, self, refused)
        self._closing = True
        self.transport.write(wire.STREAM_CLOSE)
        self.transport.loseConnection()

    @_machine.output()
    def _close_cleanly(self):
        self._closing = True
        self.transport.write(wire.STREAM_CLOSE)
        self.transport.loseConnection()

    @_machine.output()
    def _drop_connection(self, condition, text):
        self._closing = True
        self.transport.loseConnection()

    @_machine.output()
    def _forget(self):
        self._closing = True
        self._parser.stop()

    def _send_error(self, condition, text, refused=None):
        self._closing = True
        self._parser.stop()
        self.transport.write(wire.stream_error(condition, text, refused))
        self.transport.loseConnection()

    # -- transitions ----------------------------------------------------------

    awaiting_identity.upon(identity_proved, enter=awaiting_header, outputs=[_begin])
    awaiting_identity.upon(identity_refused, enter=closed, outputs=[_refuse_identity])
    awaiting_identity.upon(fault, enter=closed, outputs=[_drop_connection])
    awaiting_identity.upon(parse_failed, enter=closed, outputs=[_drop_connection])
    awaiting_identity.upon(timed_out, enter=closed, outputs=[_drop_connection])
    awaiting_identity.upon(close_requested, enter=closed, outputs=[_drop_connection])
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

    for _each in (identity_proved, identity_refused, header_accepted, header_refused, resume_arrived,
                  stanza_arrived, ack_requested, ack_arrived, fault, parse_failed, timed_out, peer_failed, peer_closed,
                  close_requested, connection_lost):
        closed.upon(_each, enter=closed, outputs=[])
    del _state, _each


class LinkStreamFactory(Factory):
    """Builds the link's streams, for the listening half or for the dialler."""

    def __init__(self, link, peer_check, clock, limits: ParserLimits = ParserLimits(), open_timeout: float = 30.0):
        self.link = link
        self.peer_check = peer_check
        self.clock = clock
        self.limits = limits
        self.open_timeout = open_timeout

    def buildProtocol(self, addr):
        stream = LinkStream(self.link, self.peer_check, self.clock, self.limits, self.open_timeout)
        stream.factory = self
        return stream
