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
    any state -> closed

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
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from guard.core.bounce import peer_detail
from guard.core.dialback import dialback_key
from guard.edges.xmlstream import StreamFault, StreamParser, serialise

from . import wire
from .plumbing import MachinePlumbing
from .decisions import Refusal, refuse_outbound_header

log = Logger()

# What an owner hears when a stream fails before it was ready: the guard's own
# text for each condition, never anything the far side wrote (bounces carry it).
FAILURE_TEXTS = {
    "remote-server-not-found": "the far server could not be reached or did not accept the stream",
    "remote-server-timeout": "the far server did not answer in time",
}
STOPPING_TEXT = "the guard is stopping"


def _child(element, uri, name):
    for child in element.elements():
        if child.uri == uri and child.name == name:
            return child
    return None


def _offers_external(features) -> bool:
    mechanisms = _child(features, wire.SASL_NS, "mechanisms")
    if mechanisms is None:
        return False
    return any(
        mechanism.name == "mechanism" and str(mechanism).strip() == "EXTERNAL"
        for mechanism in mechanisms.elements()
    )


def _offers_dialback(features) -> bool:
    return _child(features, wire.DIALBACK_FEATURE_NS, "dialback") is not None


@implementer(IPushProducer)
class _Congestion:
    """Told by the transport when the far server stops reading (its buffer is full) and when it drains."""

    def __init__(self, stream):
        self.stream = stream
        self.congested = False

    def pauseProducing(self):
        # TLS pauses its producer during the handshake; only a ready stream's
        # full buffer means the far server is not reading.
        if not self.congested and self.stream.is_ready:
            self.congested = True
            self.stream.owner.congested(self.stream)

    def resumeProducing(self):
        if self.congested:
            self.congested = False
            self.stream.owner.decongested(self.stream)

    def stopProducing(self):
        self.resumeProducing()


class OutboundStream(MachinePlumbing, Protocol):
    """One connection the guard opened to a server on ``side`` as ``sender``."""

    _machine = MethodicalMachine()

    def __init__(self, owner, side, sender, receiver, purpose="relay"):
        self.owner = owner
        self.side = side
        self.clock = side.clock
        self.sender = sender
        self.receiver = receiver
        self.purpose = purpose
        self.stream_id = None
        self.first_header = None
        self._parser = None
        self._timers = {}
        self._closing = False
        self._reported = False
        self._secure = False
        self._authenticated = False
        self.is_ready = False
        self._server_proven = False
        self.header_sent = False  # our header on the current stream (each restart sends a new one)

    # -- transport events -------------------------------------------------

    def connectionMade(self):
        self._start_timer("auth", self.side.limits.auth_timeout, "authentication took too long")
        # Congestion is signalled when more than unread_output_bytes wait for the far server.
        self.transport.bufferSize = self.side.limits.unread_output_bytes
        self._register_producer(_Congestion(self))
        self._open_stream()

    def dataReceived(self, data):
        if self._closing:
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

    # -- sending stanzas --------------------------------------------------

    def send(self, element):
        """
        Serialise ``element`` onto the stream.  A stanza that would be larger
        than this side's stanza_bytes raises OversizedStanza (a ValueError) and
        nothing is written: the caller settles it.
        """
        data = serialise(element, max_bytes=self.side.limits.stanza_bytes).encode("utf-8")
        self.transport.write(data)
        self._restart_idle()

    def send_verify(self, stream_id, key):
        """Ask the authoritative server whether ``key`` is genuine for the stream ``stream_id`` (purpose "verify")."""
        self.transport.write(wire.dialback_verify(self.sender, self.receiver, stream_id, key))
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

    # -- parser callbacks -------------------------------------------------

    def _open_stream(self):
        self._parser = StreamParser(self._on_header, self._on_element, self._on_end, self.side.limits.parser_limits())
        self.transport.write(wire.stream_header(self.sender, self.receiver))
        self.header_sent = True

    def _on_header(self, header):
        refusal = refuse_outbound_header(header, self.receiver, previous=self.first_header)
        if refusal is None and self._secure and not self._server_proven:
            # Twisted's verify callback logs, but does not fail on, some identity
            # errors (a certificate without subjectAltName): prove it ourselves.
            verdict = self.side.anchors.judge_server(self.transport.getHandle())
            if not verdict.proves(self.receiver):
                problem = verdict.problem or f"its subjectAltName does not name {self.receiver}"
                refusal = Refusal("undefined-condition", f"the server certificate is refused: {problem}")
            else:
                self._server_proven = True
        if refusal is not None:
            log.info("outbound {sender}->{receiver}: header refused, {condition}: {text} ({detail})",
                     sender=self.sender, receiver=self.receiver, condition=refusal.condition, text=refusal.text,
                     detail=refusal.detail or "-")
            self._input(self.header_refused, header, refusal.condition, refusal.text)
        else:
            self._input(self.header_accepted, header)

    def _on_end(self):
        self._input(self.peer_closed)

    def _on_element(self, element, size):
        kind = (element.uri, element.name)
        if kind == (wire.STREAMS_NS, "features"):
            self._features(element)
        elif kind == (wire.TLS_NS, "proceed"):
            self._input(self.proceed_arrived)
        elif kind == (wire.SASL_NS, "success"):
            self._input(self.sasl_succeeded)
        elif kind == (wire.SASL_NS, "failure"):
            self._input(self.sasl_failed, "the far server refused our certificate")
        elif kind == (wire.DIALBACK_NS, "result") and element.getAttribute("type"):
            if (element.getAttribute("from"), element.getAttribute("to")) != (self.receiver, self.sender):
                self._input(self.fault, "invalid-from", "dialback answer for another domain pair")
            elif element.getAttribute("type") == "valid":
                self._input(self.dialback_valid)
            elif element.getAttribute("type") == "error":
                # XEP-0220: the far server could not check our key (its reason is logged, never relayed).
                error = _child(element, wire.SERVER_NS, "error") or _child(element, wire.DIALBACK_NS, "error")
                reason = next((child.name for child in error.elements()), None) if error is not None else None
                self._input(self.dialback_invalid, f"dialback error from the far server: {peer_detail(reason)}")
            else:
                self._input(self.dialback_invalid, "the far server did not accept our dialback key")
        elif kind == (wire.DIALBACK_NS, "verify") and element.getAttribute("type"):
            stream_id = element.getAttribute("id")
            matches = (
                self.purpose == "verify"
                and element.getAttribute("from") == self.receiver
                and element.getAttribute("to") == self.sender
                and self.owner.asked(stream_id)
            )
            if not matches:
                self._input(self.fault, "invalid-id", "a verification answer we did not ask for")
            else:
                self._input(self.verify_answered, stream_id, element.getAttribute("type"))
        elif kind == (wire.STREAMS_NS, "error"):
            condition = next((child.name for child in element.elements()
                              if child.uri == wire.STREAM_ERRORS_NS and child.name != "text"), "undefined-condition")
            self._input(self.peer_failed, f"stream error from the far server: {peer_detail(condition)}")
        else:
            log.info("outbound {sender}->{receiver}: unexpected element {name}", sender=self.sender,
                     receiver=self.receiver, name=peer_detail(f"{{{element.uri}}}{element.name}"))
            self._input(self.fault, "unsupported-stanza-type", "this element is not accepted on this stream")

    def _features(self, features):
        # Which features these are follows from facts of the stream; the
        # machine refuses them if they arrive out of order.
        if self._authenticated:
            self._input(self.authenticated_features_arrived)
        elif self._secure:
            self._secure_features(features)
        else:
            self._clear_features(features)

    def _clear_features(self, features):
        if _child(features, wire.TLS_NS, "starttls") is None:
            self._input(self.unusable, "policy-violation", "the far server does not offer TLS")
        else:
            self._input(self.tls_offered)

    def _secure_features(self, features):
        if self.purpose == "verify":
            self._input(self.verify_chosen)
        elif self.side.authentication == "certificate":
            if _offers_external(features):
                self._input(self.external_chosen)
            else:
                self._input(self.unusable, "not-authorized", "the far server does not accept our certificate")
        elif _offers_dialback(features) or not _offers_external(features):
            self._input(self.dialback_chosen)
        else:
            self._input(self.unusable, "not-authorized", "the far server does not offer dialback")

    # -- machine plumbing -------------------------------------------------

    def _refuse_unexpected(self, text):
        self.fault("policy-violation", text)

    def _describe(self):
        return f"outbound {self.sender}->{self.receiver}"

    def _restart_idle(self):
        timer = self._timers.get("idle")
        if timer is not None and timer.active():
            timer.reset(self.side.limits.idle_timeout)

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
        "TLS is up and our new header sent."

    @_machine.state()
    def awaiting_secure_features(self):
        "The secured stream is open; its features decide how we authenticate."

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
        "A verification stream: db:verify requests go out, their answers come in."

    @_machine.state()
    def ready(self):
        "Authenticated: stanzas may be sent."

    @_machine.state()
    def closed(self):
        "The stream is over."

    # -- inputs ---------------------------------------------------------------

    @_machine.input()
    def header_accepted(self, header):
        "The far server opened an acceptable stream."

    @_machine.input()
    def header_refused(self, header, condition, text):
        "The far server's header is not acceptable."

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
        "The stream exists to verify one key."

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
    def authenticated_features_arrived(self):
        "The restarted stream is ready."

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
    def fault(self, condition, text):
        "The far server broke the protocol."

    @_machine.input()
    def peer_failed(self, text):
        "The far server sent a stream error."

    @_machine.input()
    def timed_out(self, condition, text):
        "A deadline passed."

    @_machine.input()
    def peer_closed(self):
        "The far server closed its stream, or we close an idle one."

    @_machine.input()
    def shut_down(self):
        "The guard is stopping."

    @_machine.input()
    def connection_lost(self, text):
        "The TCP connection is gone."

    # -- outputs --------------------------------------------------------------

    @_machine.output()
    def _note_header(self, header):
        if self.first_header is None:
            self.first_header = header
        self.stream_id = header.attributes.get("id")

    @_machine.output()
    def _ask_for_tls(self):
        self.transport.write(wire.STARTTLS)

    @_machine.output()
    def _start_tls(self):
        identity = self.side.identities[self.sender]
        self._secure = True
        self._parser.stop()
        self.transport.startTLS(identity.client_options(self.receiver))
        self._start_timer("tls", self.side.limits.tls_timeout, "TLS negotiation took too long")
        self._open_stream()

    @_machine.output()
    def _tls_done(self, header):
        self._cancel_timer("tls")

    @_machine.output()
    def _send_external(self):
        self.transport.write(wire.sasl_external_auth(self.sender))

    @_machine.output()
    def _restart_stream(self):
        self._authenticated = True
        self._parser.stop()
        self._open_stream()

    @_machine.output()
    def _send_dialback_key(self):
        key = dialback_key(self.side.dialback_secret, self.receiver, self.sender, self.stream_id)
        self.transport.write(wire.dialback_result(self.sender, self.receiver, key=key))

    @_machine.output()
    def _become_verifier(self):
        self._cancel_timer("auth")
        self._timers["idle"] = self.clock.callLater(
            self.side.limits.idle_timeout, self._input, self.peer_closed
        )
        self._reported = True
        self.owner.stream_ready(self)

    @_machine.output()
    def _become_ready(self):
        self._cancel_timer("auth")
        self._timers["idle"] = self.clock.callLater(
            self.side.limits.idle_timeout, self._input, self.peer_closed
        )
        log.info("outbound {sender}->{receiver}: ready", sender=self.sender, receiver=self.receiver)
        self._reported = True
        self.is_ready = True
        self.owner.stream_ready(self)

    @_machine.output()
    def _report_verification(self, stream_id, verdict):
        self.owner.verification_answered(self, stream_id, verdict)

    @_machine.output()
    def _fail_with_error(self, condition, text):
        self._send_error(condition, text)
        self._report_failure("remote-server-not-found", text)

    @_machine.output()
    def _fail_header(self, header, condition, text):
        self._send_error(condition, text)
        self._report_failure("remote-server-not-found", text)

    @_machine.output()
    def _fail_unusable(self, condition, text):
        self._send_error(condition, text)
        self._report_failure("remote-server-not-found", text)

    @_machine.output()
    def _fail_refused(self, text):
        self._closing = True
        self.transport.write(wire.STREAM_CLOSE)
        self._close_transport()
        self._report_failure("remote-server-not-found", text)

    @_machine.output()
    def _fail_timeout(self, condition, text):
        self._send_error(condition, text)
        self._report_failure("remote-server-timeout", text)

    @_machine.output()
    def _close_cleanly(self):
        self._closing = True
        self.transport.write(wire.STREAM_CLOSE)
        self._close_transport()
        self._report_failure("remote-server-not-found", "the far server closed the stream")

    @_machine.output()
    def _announce_shutdown(self):
        self._closing = True
        self.transport.write(wire.STREAM_CLOSE)
        self._close_transport()
        self._report_failure("remote-server-timeout", "the guard is stopping", text=STOPPING_TEXT)

    @_machine.output()
    def _lost(self, text):
        self._closing = True
        self._report_failure("remote-server-not-found", text or "connection lost")

    def _send_error(self, condition, text):
        log.info("outbound {sender}->{receiver}: closing with {condition}: {text}",
                 sender=self.sender, receiver=self.receiver, condition=condition, text=peer_detail(text))
        self._closing = True
        if not self.header_sent:
            self.transport.write(wire.stream_header(self.sender, self.receiver))
            self.header_sent = True
        self.transport.write(wire.stream_error(condition, text) + wire.STREAM_CLOSE)
        self._close_transport()

    def _report_failure(self, condition, detail, text=None):
        """
        Tell the owner once.  What it hears is the guard's own text for the
        condition (it may end up in bounces); ``detail``, which may carry what
        the far side said, goes only to the log, bounded and escaped.
        """
        if self._reported is None:
            return
        log.info("outbound {sender}->{receiver}: ended ({condition}): {detail}", sender=self.sender,
                 receiver=self.receiver, condition=condition, detail=peer_detail(detail))
        if self._reported:
            self.owner.stream_lost(self)
            self._reported = None
            return
        self._reported = None
        self.owner.stream_failed(self, condition, text or FAILURE_TEXTS[condition])

    # -- transitions ------------------------------------------------------------

    awaiting_header.upon(header_accepted, enter=awaiting_features,
                         outputs=[_note_header])
    awaiting_features.upon(tls_offered, enter=awaiting_proceed, outputs=[_ask_for_tls])
    awaiting_proceed.upon(proceed_arrived, enter=awaiting_secure_header,
                          outputs=[_start_tls])
    awaiting_secure_header.upon(header_accepted, enter=awaiting_secure_features,
                                outputs=[_note_header, _tls_done])
    awaiting_secure_features.upon(external_chosen, enter=awaiting_sasl_result,
                                  outputs=[_send_external])
    awaiting_secure_features.upon(dialback_chosen, enter=awaiting_dialback_result,
                                  outputs=[_send_dialback_key])
    awaiting_secure_features.upon(verify_chosen, enter=verifying,
                                  outputs=[_become_verifier])
    awaiting_sasl_result.upon(sasl_succeeded, enter=awaiting_authenticated_header,
                              outputs=[_restart_stream])
    awaiting_sasl_result.upon(sasl_failed, enter=closed, outputs=[_fail_refused])
    awaiting_authenticated_header.upon(header_accepted, enter=awaiting_authenticated_features,
                                       outputs=[_note_header])
    awaiting_authenticated_features.upon(authenticated_features_arrived, enter=ready,
                                         outputs=[_become_ready])
    awaiting_dialback_result.upon(dialback_valid, enter=ready, outputs=[_become_ready])
    awaiting_dialback_result.upon(dialback_invalid, enter=closed, outputs=[_fail_refused])
    verifying.upon(verify_answered, enter=verifying, outputs=[_report_verification])

    _live = (awaiting_header, awaiting_features, awaiting_proceed, awaiting_secure_header,
             awaiting_secure_features, awaiting_sasl_result, awaiting_authenticated_header,
             awaiting_authenticated_features, awaiting_dialback_result, verifying, ready)
    for _state in _live:
        _state.upon(fault, enter=closed, outputs=[_fail_with_error])
        _state.upon(peer_failed, enter=closed, outputs=[_fail_refused])
        _state.upon(timed_out, enter=closed, outputs=[_fail_timeout])
        _state.upon(peer_closed, enter=closed, outputs=[_close_cleanly])
        _state.upon(shut_down, enter=closed, outputs=[_announce_shutdown])
        _state.upon(connection_lost, enter=closed, outputs=[_lost])
    for _state in (awaiting_header, awaiting_secure_header, awaiting_authenticated_header):
        _state.upon(header_refused, enter=closed, outputs=[_fail_header])
    for _state in (awaiting_features, awaiting_secure_features):
        _state.upon(unusable, enter=closed, outputs=[_fail_unusable])
    for _each in (header_accepted, header_refused, tls_offered, proceed_arrived, external_chosen,
                   dialback_chosen, verify_chosen, unusable, sasl_succeeded, sasl_failed,
                   authenticated_features_arrived, dialback_valid, dialback_invalid, verify_answered,
                   fault, peer_failed, timed_out, peer_closed, shut_down, connection_lost):
        closed.upon(_each, enter=closed, outputs=[])
    del _state, _each, _live
