"""
The guard as originating server: it connects to a server on one side, on
behalf of a far-side domain, secures the stream with TLS, authenticates
(SASL EXTERNAL, or dialback on a side that uses it) and then carries
stanzas.  The same machine also makes the short-lived connections that ask a
side's authoritative server to verify a dialback key (``purpose="verify"``).

    awaiting_header -> awaiting_features -> awaiting_proceed -> awaiting_secure_header
      -> awaiting_secure_features -> awaiting_sasl_result -> awaiting_authenticated_header
           -> awaiting_authenticated_features -> ready
      -> awaiting_secure_features -> awaiting_dialback_result -> ready
      -> awaiting_secure_features -> verifying (purpose "verify": db:verify out, answers in)
    awaiting_header -> awaiting_secure_header (a XEP-0368 target: TLS before the first byte, guard.edges.s2s.srv)
    ready <-> congested (the far server stops and resumes reading)
    any state -> closed

Every fact about the stream is its state: whether it is secured, proven by
its certificate, authenticated, reported ready, congested or over.  The
protocol only parses and classifies; the machine consults the no-I/O
decisions of ``decisions`` (``refuse_outbound_header``, ``refuse_far_server``,
``refuse_clear_offer``, ``choose_mechanism``, ``judge_dialback_answer``,
``refuse_verify_answer``) and feeds itself their answer.  What every stream
shares (fail-closed input, timers, the producer, the byte filters, closing)
is ``guard.edges.lifecycle``.

The owner learns what happened through three calls: ``stream_ready(stream)``,
``stream_failed(stream, condition, text)`` (before it was ready) and
``stream_lost(stream)`` (after); a verification stream's owner also gets
``verification_answered(stream, stream_id, verdict)`` and is asked
``asked(stream_id)`` whether an answer is expected; and of back-pressure through
``congested(stream)``/``decongested(stream)`` when the far server stops and
resumes reading.
"""

from __future__ import annotations

from automat import MethodicalMachine
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from guard.core.bounce import peer_detail
from guard.core.dialback import dialback_key
from guard.edges.filters import ByteCount
from guard.edges.lifecycle import (StreamLifecycle, closed_state, ignore_when_closed, lifecycle_inputs,
                                   lifecycle_state)
from guard.edges.xmlstream import StreamFault, StreamParser, serialise

from . import wire
from .srv import direct_tls_options
from .decisions import (
    DIALBACK, EXTERNAL, VERIFY, KeyNotAccepted, Refusal, choose_mechanism, first_child, judge_dialback_answer,
    read_offer, refuse_clear_offer, refuse_far_server, refuse_outbound_header, refuse_verify_answer,
)

log = Logger()

# What an owner hears when a stream fails before it was ready: the guard's own
# text for each condition, never anything the far side wrote (bounces carry it).
FAILURE_TEXTS = {
    "remote-server-not-found": "the far server could not be reached or did not accept the stream",
    "remote-server-timeout": "the far server did not answer in time",
}
STOPPING_TEXT = "the guard is stopping"

# Stanzas sent in one turn of the event loop leave in one write (one TLS
# record per write instead of one per stanza), at the end of the turn or as
# soon as this many bytes wait, whichever comes first: a TLS record holds at
# most 16 KiB, so a larger batch would save nothing.
BATCH_BYTES = 16 * 1024


class OutboundStream(StreamLifecycle, Protocol):
    """One connection the guard opened to a server on ``side`` as ``sender``."""

    _machine = MethodicalMachine()
    stream_kind = "outbound"
    direct_tls = False  # set by the endpoint (guard.edges.s2s.srv) for a XEP-0368 target: TLS from the first byte

    def __init__(self, owner, side, sender, receiver, purpose="relay"):
        self.owner = owner
        self.side = side
        self._begin_lifecycle(side.clock)
        self.sender = sender
        self.receiver = receiver
        self.purpose = purpose
        self.stream_id = None  # the far server's id of the current stream (dialback keys are bound to it)
        self.first_header = None  # the far server's first header: a restarted stream must not change it
        self._parser = None
        self.byte_count = ByteCount().install(self.filters)
        self._mechanism = None  # how the stream is authenticating ("certificate", "dialback"), until it is ready
        self._batch: list[bytes] = []  # stanzas serialised this turn, not yet written (at most BATCH_BYTES)
        self._batch_bytes = 0

    # -- transport events -------------------------------------------------

    def connectionMade(self):
        self._tell_events("stream_opened")
        self._start_timer("auth", self.side.limits.auth_timeout, "authentication took too long")
        # Congestion is signalled when more than unread_output_bytes wait for the far server.
        self.transport.bufferSize = self.side.limits.unread_output_bytes
        self._register_producer()
        if self.direct_tls:
            self._input(self.connected_for_direct_tls)
            return
        self._open_stream()

    def dataReceived(self, data):
        data = self._filter_in(data)
        if data is None:
            return
        self._restart_idle()
        try:
            self._parser.feed(data)
        except StreamFault as fault:
            log.info("outbound {sender}->{receiver}: {condition}: {text} ({detail})", sender=self.sender,
                     receiver=self.receiver, condition=fault.condition, text=fault.text, detail=fault.detail or "-")
            self._input(self.fault, fault.condition, fault.text)

    def connectionLost(self, reason):
        self._cancel_all_timers()
        self._input(self.connection_lost, reason.getErrorMessage())
        self._tell_closed(reason)

    def _peer_stopped_reading(self):
        """The transport's buffer for the far server is full (TLS also pauses us during its handshake)."""
        self._input(self.stopped_reading)

    def _peer_resumed_reading(self):
        self._input(self.resumed_reading)

    def _stop_reading_input(self):
        if self._parser is not None:
            self._parser.stop()

    # -- sending stanzas --------------------------------------------------

    def send(self, element):
        """
        Serialise ``element`` onto the stream.  A stanza that would be larger
        than this side's stanza_bytes raises OversizedStanza (a ValueError) and
        nothing is written: the caller settles it.
        """
        data = serialise(element, max_bytes=self.side.limits.stanza_bytes).encode("utf-8")
        if self._dropped or self.transport is None:
            return
        self._batch.append(data)
        self._batch_bytes += len(data)
        self.stanzas_out += 1
        if self._batch_bytes >= BATCH_BYTES:
            self._write_batch()
        elif not self._timer_running("batch"):
            self.schedule("batch", 0, self._write_batch)

    def _write_batch(self):
        """Write the stanzas sent this turn, in one write (the idle timer starts again from now)."""
        self._cancel_timer("batch")
        if not self._batch:
            return
        data = b"".join(self._batch) if len(self._batch) > 1 else self._batch[0]
        self._batch.clear()
        self._batch_bytes = 0
        StreamLifecycle._write(self, data)
        self._restart_idle()

    def _write(self, data: bytes):
        """Anything else the stream writes goes after the stanzas sent before it."""
        if self._batch:
            self._write_batch()
        StreamLifecycle._write(self, data)

    def send_verify(self, stream_id, key):
        """Ask the authoritative server whether ``key`` is genuine for the stream ``stream_id`` (purpose "verify")."""
        self._write(wire.dialback_verify(self.sender, self.receiver, stream_id, key))
        self._restart_idle()

    def close_for_shutdown(self):
        if self.transport is None:
            # Still connecting: abandon the attempt (the owner hears stream_failed).
            attempt = getattr(self, "connect_attempt", None)
            if attempt is not None and not attempt.called:
                attempt.cancel()
            return
        self._input(self.shut_down)

    def close_idle(self):
        self._input(self.peer_closed)

    # -- parser callbacks: classify, and feed the machine ------------------

    def _open_stream(self):
        self._parser = StreamParser(self._on_header, self._on_element, self._on_end, self.side.limits.parser_limits())
        self._write(wire.stream_header(self.sender, self.receiver))

    def _on_header(self, header):
        self._input(self.header_arrived, header)

    def _on_end(self):
        self._input(self.peer_closed)

    def _on_element(self, element, size):
        kind = (element.uri, element.name)
        if kind == (wire.STREAMS_NS, "features"):
            self._input(self.features_arrived, read_offer(element))
        elif kind == (wire.TLS_NS, "proceed"):
            self._input(self.proceed_arrived)
        elif kind == (wire.SASL_NS, "success"):
            self._input(self.sasl_succeeded)
        elif kind == (wire.SASL_NS, "failure"):
            self._tell_events("authentication_failed", "certificate-refused")
            self._input(self.sasl_failed, "the far server refused our certificate")
        elif kind == (wire.DIALBACK_NS, "result") and element.getAttribute("type"):
            self._dialback_answer(element)
        elif kind == (wire.DIALBACK_NS, "verify") and element.getAttribute("type"):
            stream_id = element.getAttribute("id")
            refusal = refuse_verify_answer(element.getAttribute("from"), element.getAttribute("to"), stream_id,
                                           self.purpose, self.sender, self.receiver, self.owner.asked)
            if refusal is not None:
                self._input(self.fault, refusal.condition, refusal.text)
            else:
                self._input(self.verify_answered, stream_id, element.getAttribute("type"))
        elif kind == (wire.STREAMS_NS, "error"):
            condition = next((child.name for child in element.elements()
                              if child.uri == wire.STREAM_ERRORS_NS and child.name != "text"), "undefined-condition")
            self._closing_with("peer-error")
            self._input(self.peer_failed, f"stream error from the far server: {peer_detail(condition)}")
        else:
            log.info("outbound {sender}->{receiver}: unexpected element {name}", sender=self.sender,
                     receiver=self.receiver, name=peer_detail(f"{{{element.uri}}}{element.name}"))
            self._input(self.fault, "unsupported-stanza-type", "this element is not accepted on this stream")

    def _dialback_answer(self, element):
        error = first_child(element, wire.SERVER_NS, "error") or first_child(element, wire.DIALBACK_NS, "error")
        reason = next((child.name for child in error.elements()), None) if error is not None else None
        answer = judge_dialback_answer(element.getAttribute("from"), element.getAttribute("to"),
                                       element.getAttribute("type"), reason, self.sender, self.receiver)
        if isinstance(answer, Refusal):
            self._input(self.fault, answer.condition, answer.text)
        elif isinstance(answer, KeyNotAccepted):
            self._tell_events("authentication_failed", "dialback-denied")
            self._input(self.dialback_invalid, answer.detail)
        else:
            self._input(self.dialback_valid)

    # -- the lifecycle's hooks ----------------------------------------------

    def _refuse_unexpected(self, text):
        self.fault("policy-violation", text)

    def _describe(self):
        return f"outbound {self.sender}->{self.receiver}"

    def _stream_events(self):
        return getattr(self.side, "events", None)

    def describe(self) -> dict:
        """This stream as the snapshot reports it (guard.app.snapshot): see InboundStream.describe."""
        facts = {"side": self.side.name, "direction": "outbound", "peer_domain": self.receiver,
                 "local_domain": self.sender, "pairs": [[self.sender, self.receiver]], "purpose": self.purpose}
        facts.update(self._stream_facts())
        return facts

    def _restart_idle(self):
        self._reset_timer("idle", self.side.limits.idle_timeout)

    # -- states -------------------------------------------------------------

    @_machine.state(initial=True)
    def awaiting_header(self):
        "Connected and our header sent; the far server must answer with its own."

    @_machine.state()
    def awaiting_features(self):
        "The far server opened its stream; its features must offer STARTTLS."

    @_machine.state()
    def awaiting_proceed(self):
        "We asked for TLS."

    @_machine.state()
    def awaiting_secure_header(self):
        "TLS is up and our new header sent; the far server's certificate is not yet proven."

    @_machine.state()
    def awaiting_secure_features(self):
        "The secured stream is open and the certificate proves the far server; its features decide how we authenticate."

    @_machine.state()
    def awaiting_sasl_result(self):
        "We sent SASL EXTERNAL."

    @_machine.state()
    def awaiting_authenticated_header(self):
        "SASL succeeded and the stream restarted."

    @_machine.state()
    def awaiting_authenticated_features(self):
        "The authenticated stream is open."

    @_machine.state()
    def awaiting_dialback_result(self):
        "We sent a dialback key; the far server is checking it with us."

    @_machine.state()
    def verifying(self):
        "A verification stream, reported ready: db:verify requests go out, their answers come in."

    @_machine.state()
    def ready(self):
        "Authenticated and reported ready: stanzas may be sent."

    @_machine.state()
    def congested(self):
        "Ready, but the far server leaves what we write unread (reported congested)."

    closed = closed_state(_machine)  # the owner has been told how the stream ended
    _lifecycle_state = lifecycle_state(_machine)

    # -- inputs ---------------------------------------------------------------

    @_machine.input()
    def header_arrived(self, header):
        "The far server opened its stream (again)."

    @_machine.input()
    def header_accepted(self, header):
        "The far server opened an acceptable stream."

    @_machine.input()
    def header_refused(self, header, condition, text):
        "The far server's header (or, on the secured stream, its certificate) is not acceptable."

    @_machine.input()
    def features_arrived(self, offer):
        "The far server's <stream:features/>, read as an Offer."

    @_machine.input()
    def connected_for_direct_tls(self):
        "Connected to a XEP-0368 target: TLS starts before the first byte."

    @_machine.input()
    def tls_offered(self):
        "The far server offers STARTTLS."

    @_machine.input()
    def proceed_arrived(self):
        "The far server agreed to TLS."

    @_machine.input()
    def external_chosen(self):
        "We authenticate with our certificate."

    @_machine.input()
    def dialback_chosen(self):
        "We authenticate with a dialback key."

    @_machine.input()
    def verify_chosen(self):
        "The stream exists to verify keys."

    @_machine.input()
    def unusable(self, condition, text):
        "The far server offers nothing we may use."

    @_machine.input()
    def sasl_succeeded(self):
        "The far server accepted our certificate."

    @_machine.input()
    def sasl_failed(self, text):
        "The far server refused our certificate."

    @_machine.input()
    def dialback_valid(self):
        "The far server accepted our dialback key."

    @_machine.input()
    def dialback_invalid(self, text):
        "The far server refused our dialback key."

    @_machine.input()
    def verify_answered(self, stream_id, verdict):
        "The authoritative server answered a verification."

    @_machine.input()
    def stopped_reading(self):
        "The far server leaves what we write unread (or TLS pauses us during its handshake)."

    @_machine.input()
    def resumed_reading(self):
        "The far server reads again."

    @_machine.input()
    def peer_failed(self, text):
        "The far server sent a stream error."

    fault, timed_out, peer_closed, shut_down, connection_lost = lifecycle_inputs(_machine)

    # -- outputs that consult the decisions and feed the machine their answer --

    @_machine.output()
    def _judge_header(self, header):
        self._answer_header(header, refuse_outbound_header(header, self.receiver, previous=self.first_header))

    @_machine.output()
    def _judge_secure_header(self, header):
        """The first header on the secured stream: the far server's certificate must prove it is the receiver."""
        refusal = refuse_outbound_header(header, self.receiver, previous=self.first_header)
        if refusal is None:
            verdict = self.side.anchors.judge_server(self.transport.getHandle())
            refusal = refuse_far_server(verdict, self.receiver)
            if refusal is None:
                self._note_verdict(verdict)
            else:
                self._tell_events("tls_failed", "untrusted-certificate")
        self._answer_header(header, refusal)

    def _answer_header(self, header, refusal):
        if refusal is None:
            self._input(self.header_accepted, header)
            return
        log.info("outbound {sender}->{receiver}: header refused, {condition}: {text} ({detail})",
                 sender=self.sender, receiver=self.receiver, condition=refusal.condition, text=refusal.text,
                 detail=refusal.detail or "-")
        self._input(self.header_refused, header, refusal.condition, refusal.text)

    @_machine.output()
    def _judge_clear_features(self, offer):
        refusal = refuse_clear_offer(offer)
        if refusal is not None:
            self._input(self.unusable, refusal.condition, refusal.text)
        else:
            self._input(self.tls_offered)

    @_machine.output()
    def _judge_secure_features(self, offer):
        choice = choose_mechanism(offer, self.purpose, self.side.authentication)
        if isinstance(choice, Refusal):
            self._tell_events("authentication_failed", "no-mechanism")
            self._input(self.unusable, choice.condition, choice.text)
        else:
            self._input({EXTERNAL: self.external_chosen, DIALBACK: self.dialback_chosen,
                         VERIFY: self.verify_chosen}[choice])

    # -- outputs on the wire --------------------------------------------------

    @_machine.output()
    def _note_header(self, header):
        if self.first_header is None:
            self.first_header = header
        self.stream_id = header.attributes.get("id")

    @_machine.output()
    def _ask_for_tls(self):
        self._write(wire.STARTTLS)

    @_machine.output()
    def _start_tls(self):
        identity = self.side.identities[self.sender]
        self._parser.stop()
        self.transport.startTLS(identity.client_options(self.receiver))
        self._start_timer("tls", self.side.limits.tls_timeout, "TLS negotiation took too long")
        self._open_stream()

    @_machine.output()
    def _start_direct_tls(self):
        identity = self.side.identities[self.sender]
        self.transport.startTLS(direct_tls_options(identity.client_options(self.receiver)))
        self._start_timer("tls", self.side.limits.tls_timeout, "TLS negotiation took too long")
        self._open_stream()

    @_machine.output()
    def _tls_done(self, header):
        self._cancel_timer("tls")

    @_machine.output()
    def _send_external(self):
        self._mechanism = "certificate"
        self._write(wire.sasl_external_auth(self.sender))

    @_machine.output()
    def _restart_stream(self):
        self._parser.stop()
        self._open_stream()

    @_machine.output()
    def _send_dialback_key(self):
        key = dialback_key(self.side.dialback_secret, self.receiver, self.sender, self.stream_id)
        self._mechanism = "dialback"
        self._write(wire.dialback_result(self.sender, self.receiver, key=key))

    @_machine.output()
    def _start_idle_timer(self):
        self._cancel_timer("auth")
        self.schedule("idle", self.side.limits.idle_timeout, self._input, self.peer_closed)

    @_machine.output()
    def _log_ready(self):
        log.info("outbound {sender}->{receiver}: ready", sender=self.sender, receiver=self.receiver)

    @_machine.output()
    def _tell_ready(self):
        self.authentication = self._mechanism  # None on a verification stream: it does not authenticate
        self.owner.stream_ready(self)

    @_machine.output()
    def _report_verification(self, stream_id, verdict):
        self.owner.verification_answered(self, stream_id, verdict)

    @_machine.output()
    def _tell_congested(self):
        self.owner.congested(self)

    @_machine.output()
    def _tell_decongested(self):
        self.owner.decongested(self)

    @_machine.output()
    def _write_error(self, condition, text):
        log.info("outbound {sender}->{receiver}: closing with {condition}: {text}",
                 sender=self.sender, receiver=self.receiver, condition=condition, text=peer_detail(text))
        self._closing_with(condition)
        self._hang_up(wire.stream_error(condition, text) + wire.STREAM_CLOSE)

    @_machine.output()
    def _write_close(self):
        self._closing_with("closed")
        self._hang_up(wire.STREAM_CLOSE)

    def _hang_up(self, last_words):
        """Read nothing more, write ``last_words`` and close (our header is always on the stream: it opens each one)."""
        self._stop_reading_input()
        self._write(last_words)
        self._close_transport()

    # -- outputs that tell the owner how the stream ended (once: closed ignores everything) --

    @_machine.output()
    def _fail_not_found(self, text):
        self._tell_failed("remote-server-not-found", text)

    @_machine.output()
    def _fail_far_closed(self):
        self._tell_failed("remote-server-not-found", "the far server closed the stream")

    @_machine.output()
    def _fail_lost(self, text):
        self._tell_failed("remote-server-not-found", text or "connection lost")

    @_machine.output()
    def _fail_timeout(self, text):
        self._tell_failed("remote-server-timeout", text)

    @_machine.output()
    def _fail_stopping(self):
        self._tell_failed("remote-server-timeout", "the guard is stopping", text=STOPPING_TEXT)

    @_machine.output()
    def _tell_lost(self):
        log.info("outbound {sender}->{receiver}: ended", sender=self.sender, receiver=self.receiver)
        self.owner.stream_lost(self)

    def _tell_failed(self, condition, detail, text=None):
        """
        The stream failed before it was ready.  What the owner hears is the
        guard's own text for the condition (it may end up in bounces);
        ``detail``, which may carry what the far side said, goes only to the
        log, bounded and escaped.
        """
        log.info("outbound {sender}->{receiver}: ended ({condition}): {detail}", sender=self.sender,
                 receiver=self.receiver, condition=condition, detail=peer_detail(detail))
        self.owner.stream_failed(self, condition, text or FAILURE_TEXTS[condition])

    # -- transitions ------------------------------------------------------------

    awaiting_header.upon(header_arrived, enter=awaiting_header, outputs=[_judge_header])
    awaiting_header.upon(header_accepted, enter=awaiting_features, outputs=[_note_header])
    awaiting_header.upon(connected_for_direct_tls, enter=awaiting_secure_header, outputs=[_start_direct_tls])
    awaiting_features.upon(features_arrived, enter=awaiting_features, outputs=[_judge_clear_features])
    awaiting_features.upon(tls_offered, enter=awaiting_proceed, outputs=[_ask_for_tls])
    awaiting_proceed.upon(proceed_arrived, enter=awaiting_secure_header, outputs=[_start_tls])
    awaiting_secure_header.upon(header_arrived, enter=awaiting_secure_header, outputs=[_judge_secure_header])
    awaiting_secure_header.upon(header_accepted, enter=awaiting_secure_features, outputs=[_note_header, _tls_done])
    awaiting_secure_features.upon(features_arrived, enter=awaiting_secure_features,
                                  outputs=[_judge_secure_features])
    awaiting_secure_features.upon(external_chosen, enter=awaiting_sasl_result, outputs=[_send_external])
    awaiting_secure_features.upon(dialback_chosen, enter=awaiting_dialback_result, outputs=[_send_dialback_key])
    awaiting_secure_features.upon(verify_chosen, enter=verifying, outputs=[_start_idle_timer, _tell_ready])
    awaiting_sasl_result.upon(sasl_succeeded, enter=awaiting_authenticated_header, outputs=[_restart_stream])
    awaiting_authenticated_header.upon(header_arrived, enter=awaiting_authenticated_header,
                                       outputs=[_judge_header])
    awaiting_authenticated_header.upon(header_accepted, enter=awaiting_authenticated_features,
                                       outputs=[_note_header])
    awaiting_authenticated_features.upon(features_arrived, enter=ready,
                                         outputs=[_start_idle_timer, _log_ready, _tell_ready])
    awaiting_dialback_result.upon(dialback_valid, enter=ready, outputs=[_start_idle_timer, _log_ready, _tell_ready])
    verifying.upon(verify_answered, enter=verifying, outputs=[_report_verification])
    ready.upon(stopped_reading, enter=congested, outputs=[_tell_congested])
    congested.upon(resumed_reading, enter=ready, outputs=[_tell_decongested])

    # Before it was ready the owner hears stream_failed with the condition of how it ended; after, stream_lost.
    _before_ready = (awaiting_header, awaiting_features, awaiting_proceed, awaiting_secure_header,
                     awaiting_secure_features, awaiting_sasl_result, awaiting_authenticated_header,
                     awaiting_authenticated_features, awaiting_dialback_result)
    _after_ready = (verifying, ready, congested)
    # How each ending closes the wire, and what the owner hears of it before the stream was ready.
    _endings = (
        (fault, [_write_error], _fail_not_found),
        (peer_failed, [_write_close], _fail_not_found),
        (timed_out, [_write_error], _fail_timeout),
        (peer_closed, [_write_close], _fail_far_closed),
        (shut_down, [_write_close], _fail_stopping),
        (connection_lost, [], _fail_lost),
    )
    for _ending, _on_the_wire, _failure in _endings:
        for _state in _before_ready:
            _state.upon(_ending, enter=closed, outputs=_on_the_wire + [_failure])
        for _state in _after_ready:
            _state.upon(_ending, enter=closed, outputs=_on_the_wire + [_tell_lost])
    for _state in (awaiting_header, awaiting_secure_header, awaiting_authenticated_header):
        _state.upon(header_refused, enter=closed, outputs=[_write_error, _fail_not_found])
    for _state in (awaiting_features, awaiting_secure_features):
        _state.upon(unusable, enter=closed, outputs=[_write_error, _fail_not_found])
    awaiting_sasl_result.upon(sasl_failed, enter=closed, outputs=[_write_close, _fail_not_found])
    awaiting_dialback_result.upon(dialback_invalid, enter=closed, outputs=[_write_close, _fail_not_found])
    # TLS pauses its producer during the handshake: only a ready stream's full buffer is congestion.
    for _state in _before_ready + _after_ready:
        if _state is not ready:
            _state.upon(stopped_reading, enter=_state, outputs=[])
        if _state is not congested:
            _state.upon(resumed_reading, enter=_state, outputs=[])
    ignore_when_closed(_machine, closed)
    del _state, _before_ready, _after_ready, _endings, _ending, _on_the_wire, _failure
