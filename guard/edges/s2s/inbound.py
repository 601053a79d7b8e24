"""
The guard as receiving server: one side's server connects, the guard
negotiates TLS and authentication standing in for a far-side domain, then
hands every well-addressed stanza to the relay.

The protocol only parses and classifies; the functions of ``decisions``
(header, mechanism offer, SASL, stream and connection limits, dialback and
db:verify) and ``check_addressing`` decide; the Automat machine holds the
lifecycle, named for facts:

    awaiting_header -> awaiting_starttls -> awaiting_secure_header
      -> awaiting_authentication -> (SASL EXTERNAL) awaiting_authenticated_header -> open
                                 -> (dialback verified) open
    any state -> closed

The states ``awaiting_*header`` are those in which our header is not yet on
the stream (an error there is preceded by one).  What every stream shares
(fail-closed inputs, timers, the unread-output bound, the byte filters: the
byte count and the rate budget) is ``guard.edges.lifecycle``'s.
"""

from __future__ import annotations

from automat import MethodicalMachine
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from guard.core.addressing import Misaddressed, check_addressing
from guard.core.vocabulary import SERVER_NS, STANZA_NAMES
from guard.edges.filters import IN, ByteCount, PreauthBudget, RateBudget
from guard.edges.lifecycle import (StreamLifecycle, closed_state, header_inputs, ignore_when_closed,
                                   lifecycle_inputs, lifecycle_state)
from guard.edges.xmlstream import StreamFault, StreamParser

from . import wire
from .decisions import (NotServed, Refusal, authentication_offer, dialback_settled, external_identity,
                        judge_dialback_request, refuse_another_stream, refuse_connection, refuse_inbound_header,
                        refuse_sasl_mechanism, refuse_verify_request, verify_verdict)
from .verification import NOT_SERVED, UNREACHABLE, as_answer

log = Logger()


def _text_of(element) -> str:
    return "".join(child for child in element.children if isinstance(child, str))


class InboundStream(StreamLifecycle, Protocol):
    """One TCP connection from a server on ``side``."""

    _machine = MethodicalMachine()
    stream_kind = "inbound"
    # An idle stream lives long: its own fields in slots take about 150 bytes, and the lifecycle's stay
    # few enough (at most 30) for Python's compact instance dictionary, where 35 names took 1,584 bytes.
    __slots__ = (
        "side", "stream_id", "first_header", "authenticated_pairs", "peer_verdict", "_parser", "_preauth_elements",
        "peer_address", "refusal_at_connect", "_holds", "byte_count", "_backlog", "_parsed_this_turn",
        "_elements_received", "_stanza_input", "_preauth_budget", "authentication",
        "_fronted",  # the side's fronted domains, read at the first stanza
    )  # fmt: skip

    def __init__(self, side):
        self.side = side
        self._fronted = None
        self._begin_lifecycle(side.clock)
        self.stream_id = wire.new_stream_id()
        self.first_header = None
        self.authenticated_pairs: set[tuple[str, str]] = set()
        self.peer_verdict = None
        self._parser = None
        self._preauth_elements = 0
        self.peer_address = None
        self.refusal_at_connect = None  # (condition, text) when the factory refuses this connection
        self._holds: set[str] = set()
        self.byte_count = ByteCount().install(self.filters)
        self._backlog = b""  # bytes received and not yet parsed (more than one turn's worth arrived)
        self._parsed_this_turn = 0
        self._elements_received = 0  # top-level elements (stanzas and nonzas) parsed, all restarts included
        # Automat builds a new wrapper at every access to an input; the one
        # input taken for every stanza is looked up once.
        self._stanza_input = self.stanza_arrived

    # -- transport events -------------------------------------------------

    def connectionMade(self):
        self.peer_address = self.transport.getPeer()
        self._new_parser()
        limits = self.side.limits
        # The transport tells the producer when more than unread_output_bytes
        # wait for the peer to read them; reading stops until they drain.
        self.transport.bufferSize = limits.unread_output_bytes
        self.unread_output_limit = limits.unread_output_bytes
        self._register_producer()
        RateBudget(self, self.clock, limits.rate_bytes_per_second, limits.rate_burst_bytes,
                   limits.rate_grace).install(self.filters)
        self._preauth_budget = PreauthBudget(limits.preauth_bytes).install(self.filters)
        self._start_timer("auth", limits.auth_timeout, "authentication took too long")
        self.side.inbound_streams.add(self)
        self.side.inbound_counts.connected(getattr(self.peer_address, "host", None))
        self._tell_events("stream_opened")
        if self.refusal_at_connect is not None:
            self._input(self.fault, *self.refusal_at_connect)

    def dataReceived(self, data):
        data = self._filter_in(data)
        if data is None:
            return
        self._reset_timer("idle", self.side.limits.idle_timeout)
        if self._backlog:
            # A turn is already waiting: these bytes queue behind it (a
            # transport may still deliver what it had read before the hold).
            self._backlog += data
            return
        self._parse_a_turn(bytes(data))

    # -- fairness: at most read_turn_bytes are parsed per turn of the event loop --

    def _parse_a_turn(self, data):
        """
        Parse what is left of this turn's read_turn_bytes (shared by every
        delivery in the turn: TLS hands over one record at a time); keep the
        rest, stop reading, and go on at the next turn of the reactor.
        """
        if not self._timer_running("turn"):
            self.schedule("turn", 0, self._next_turn)
        allowance = max(0, self.side.limits.read_turn_bytes - self._parsed_this_turn)
        piece, rest = data[:allowance], data[allowance:]
        self._parsed_this_turn += len(piece)
        parser_before = self._parser
        if piece:
            elements_before = self._elements_received
            try:
                self._parser.feed(piece)
            except StreamFault as fault:
                self._log_refusal(fault)
                self._input(self.fault, fault.condition, fault.text)
            else:
                if not rest and self._elements_received == elements_before and self._parser is parser_before:
                    # No element came (a header, a whitespace keepalive; part of a stanza, where
                    # the parser declines): the stream may stay idle long, its parser lets go of expat.
                    self._parser.rest()
        if self._parser is not parser_before:
            # The stream restarted (STARTTLS, SASL) inside this piece: the rest
            # belonged to the old stream and is ignored, as the parser would.
            rest = b""
        if rest and not self.closing:
            self._backlog = rest
            self.hold("turn")

    def _next_turn(self):
        """A new turn: the budget is whole again; parse what waits (if anything), unless
        something else holds the stream (then ``release`` brings the next turn)."""
        self._forget_timer("turn")
        self._parsed_this_turn = 0
        if self._backlog and self._holds - {"turn"}:
            return
        data, self._backlog = self._backlog, b""
        if data and not self.closing:
            self._parse_a_turn(data)
        if not self._backlog:
            self.release("turn")

    # -- flow control: the stream stops reading while anything holds it ----

    def hold(self, reason: str):
        """Stop reading from the peer until ``reason`` is released (rate limit, congestion downstream)."""
        if not self._holds and self.transport is not None and not self.closing:
            self.transport.pauseProducing()
        self._holds.add(reason)

    def release(self, reason: str):
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        if self._holds == {"turn"} and self._backlog and not self._timer_running("turn") and not self.closing:
            # Only the waiting input holds the stream now: parse it on the next turn.
            self.schedule("turn", 0, self._next_turn)
        if not self._holds and self.transport is not None and not self.closing:
            self.transport.resumeProducing()

    def _peer_stopped_reading(self):
        """The peer leaves what we wrote unread: stop reading from it (the base counts what is still written)."""
        self.hold("peer not reading")

    def _peer_resumed_reading(self):
        self.release("peer not reading")

    def _stop_reading_input(self):
        """Nothing more of what this peer sent is parsed: the rest of the piece is abandoned, as at a restart."""
        self._backlog = b""
        if self._parser is not None:
            self._parser.stop()

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._holds)

    def connectionLost(self, reason):
        self._cancel_all_timers()
        if self in self.side.inbound_streams:
            self.side.inbound_streams.discard(self)
            self.side.inbound_counts.disconnected(getattr(self.peer_address, "host", None))
            self.side.inbound_counts.closed_proving({sender for sender, _ in self.authenticated_pairs})
        self._input(self.connection_lost)
        self._tell_closed(reason)

    # -- parser callbacks: classify, decide, feed the machine -----------

    def _restart_stream(self):
        """The peer opens a new stream (after STARTTLS or SASL): nothing of the old one is kept, not even our header."""
        self._parser.stop()
        self._new_parser()
        self.stream_id = wire.new_stream_id()
        self._backlog = b""

    def _new_parser(self):
        self._parser = StreamParser(self._on_header, self._on_element, self._on_end, self.side.limits.parser_limits())

    def _on_header(self, header):
        refusal = refuse_inbound_header(
            header, self.side.fronted, self.side.hosted, previous=self.first_header
        )
        if refusal is not None:
            self._log_refusal(refusal)
        self._take_header(header, refusal)

    def _on_element(self, element, size):
        self._elements_received += 1
        if not self.authenticated_pairs:
            self._preauth_elements += 1
            if self._preauth_elements > self.side.limits.preauth_elements:
                self._input(self.fault, "policy-violation", "too many elements before authentication")
                return
        elif element.uri == SERVER_NS and element.name in STANZA_NAMES:
            # The common case, taken first: a stanza on an authenticated stream.
            self._authenticated_stanza(element, size)
            return
        kind = (element.uri, element.name)
        if kind == (wire.SERVER_NS, "message") or kind == (wire.SERVER_NS, "presence") or kind == (wire.SERVER_NS, "iq"):
            self._stanza(element, size)
        elif kind == (wire.TLS_NS, "starttls"):
            self._input(self.starttls_requested)
        elif kind == (wire.SASL_NS, "auth"):
            self._sasl_auth(element)
        elif kind == (wire.DIALBACK_NS, "result") and not element.getAttribute("type"):
            self._dialback_request(element)
        elif kind == (wire.DIALBACK_NS, "verify") and not element.getAttribute("type"):
            self._verify_request(element)
        else:
            log.info("inbound {peer}: unexpected element {name}", peer=self.peer_address,
                     name=repr(f"{{{element.uri}}}{element.name}")[:300])
            self._input(self.fault, "unsupported-stanza-type", "this element is not accepted here")

    def _stanza(self, element, size):
        if not self.authenticated_pairs:
            self._input(self.fault, "not-authorized", "stanza before authentication")
            return
        self._authenticated_stanza(element, size)

    def _authenticated_stanza(self, element, size):
        """A stanza on a stream that authenticated at least one pair: addressed, then to the machine (or straight
        to the relay while the stream is open, see ``_stanza_while_open``)."""
        fronted = self._fronted
        if fronted is None:
            fronted = self._fronted = self.side.fronted  # the side's domains do not change
        verdict = check_addressing(element, self.authenticated_pairs, fronted)
        if verdict.__class__ is Misaddressed:
            self._input(self.fault, verdict.condition, verdict.text)
        else:
            self._input(self._stanza_input, element, verdict, size)

    def _sasl_auth(self, element):
        refusal = refuse_sasl_mechanism(self.side.authentication, element.getAttribute("mechanism"))
        if refusal is not None:
            self._input(self.external_refused, refusal.condition, refusal.text)
            return
        authzid = wire.decode_sasl_external(_text_of(element))
        identity = external_identity(authzid, self.first_header, self.peer_verdict, self.side.hosted)
        if isinstance(identity, Refusal):
            self._input(self.external_refused, identity.condition, identity.text)
            return
        refusal = self._refuse_another_stream(identity)
        if refusal is not None:
            self._input(self.fault, refusal.condition, refusal.text)
        else:
            self._input(self.external_accepted, identity)

    def _dialback_request(self, element):
        decision = judge_dialback_request(element, self.side.authentication, self.side.fronted, self.side.hosted)
        if isinstance(decision, NotServed):
            self._log_refusal(decision.refusal)
            self._input(self.dialback_failed, decision.sender, decision.receiver, NOT_SERVED)
            return
        if isinstance(decision, Refusal):
            self._log_refusal(decision)
            self._input(self.fault, decision.condition, decision.text)
            return
        refusal = self._refuse_another_stream(decision.sender)
        if refusal is not None:
            self._input(self.fault, refusal.condition, refusal.text)
            return
        self._input(self.dialback_requested, decision)

    def _verify_request(self, element):
        asking, claimed = element.getAttribute("from"), element.getAttribute("to")
        stream_id = element.getAttribute("id") or ""
        refusal = refuse_verify_request(asking, claimed, stream_id, self.side.fronted, self.side.hosted)
        if refusal is not None:
            self._input(self.fault, refusal.condition, refusal.text)
        else:
            self._input(self.verify_requested, element, asking, claimed, stream_id)

    def _refuse_another_stream(self, domain) -> Refusal | None:
        """Whether streams_per_domain allows this stream to authenticate ``domain`` too."""
        streams_from = self.side.inbound_counts.sending_as[domain] - (1 if self._sends_as(domain) else 0)
        return refuse_another_stream(domain, self._sends_as(domain), streams_from, self.side.limits.streams_per_domain)

    def _log_refusal(self, refusal):
        """What the peer said that was refused (a StreamFault's or a Refusal's detail: bounded, escaped) goes to the log."""
        log.info("inbound {peer}: {condition}: {text} ({detail})", peer=self.peer_address,
                 condition=refusal.condition, text=refusal.text, detail=getattr(refusal, "detail", "") or "-")

    def _authenticated(self, sender, receiver):
        """``sender`` may now send to ``receiver`` on this stream; the pre-authentication byte budget is over."""
        if not self._sends_as(sender) and self in self.side.inbound_streams:
            self.side.inbound_counts.proved(sender)
        self.authenticated_pairs.add((sender, receiver))
        self.filters.remove(IN, self._preauth_budget)

    def _sends_as(self, domain) -> bool:
        return any(sender == domain for sender, _ in self.authenticated_pairs)

    # -- machine plumbing ---------------------------------------------------

    def _refuse_unexpected(self, text):
        self.unexpected("policy-violation", text)

    def _describe(self):
        return f"inbound {self.peer_address}"

    def _stream_events(self):
        return getattr(self.side, "events", None)

    def describe(self) -> dict:
        """
        This stream as the snapshot reports it (guard.app.snapshot): the
        domains it is authenticated for (none before), how, the peer's
        certificate, its age and state, stanzas and bytes each way.
        """
        pairs = sorted(self.authenticated_pairs)
        facts = {"side": self.side.name, "direction": "inbound",
                 "peer_domain": pairs[0][0] if pairs else None, "local_domain": pairs[0][1] if pairs else None,
                 "pairs": [list(pair) for pair in pairs]}
        facts.update(self._stream_facts())
        return facts

    # -- states -------------------------------------------------------------

    @_machine.state(initial=True)
    def awaiting_header(self):
        "Connected; the peer has not opened its stream."

    @_machine.state()
    def awaiting_starttls(self):
        "Stream open in the clear; only <starttls/> is acceptable."

    @_machine.state()
    def awaiting_secure_header(self):
        "TLS started; the peer must open a new stream over it."

    @_machine.state()
    def awaiting_authentication(self):
        "Stream secured; the peer must authenticate by SASL EXTERNAL or dialback."

    @_machine.state()
    def awaiting_authenticated_header(self):
        "SASL EXTERNAL succeeded; the peer must restart the stream."

    @_machine.state()
    def open(self):
        "At least one domain pair is authenticated; stanzas flow to the relay."

    closed = closed_state(_machine)
    _lifecycle_state = lifecycle_state(_machine)

    # -- inputs ---------------------------------------------------------------

    header_accepted, header_refused = header_inputs(_machine)

    @_machine.input()
    def starttls_requested(self):
        "The peer asked for TLS."

    @_machine.input()
    def external_accepted(self, domain):
        "SASL EXTERNAL proved the peer is ``domain``."

    @_machine.input()
    def external_refused(self, condition, text):
        "SASL EXTERNAL did not prove the peer's identity."

    @_machine.input()
    def dialback_requested(self, request):
        "The peer asked to be verified by dialback (<db:result/> with a key): a KeyToCheck."

    @_machine.input()
    def dialback_confirmed(self, sender, receiver):
        "The authoritative server confirmed the peer's dialback key."

    @_machine.input()
    def dialback_denied(self, sender, receiver, text):
        "The authoritative server denied the key, or could not be asked."

    @_machine.input()
    def dialback_failed(self, sender, receiver, answer):
        "The key could not be checked (authoritative server unreachable or silent, or a cap): an XEP-0220 error."

    @_machine.input()
    def verify_requested(self, element, asking, claimed, stream_id):
        "A far server asks whether a key the guard issued is genuine."

    @_machine.input()
    def stanza_arrived(self, element, addressed, size):
        "A well-addressed stanza from an authenticated domain."

    @_machine.input()
    def unexpected(self, condition, text):
        "Something arrived that the current state does not allow."

    fault, timed_out, peer_closed, shut_down, connection_lost = lifecycle_inputs(_machine)

    # -- outputs --------------------------------------------------------------

    @_machine.output()
    def _answer_header(self, header):
        if self.first_header is None:
            self.first_header = header
        attributes = header.attributes
        self._write(wire.stream_header(attributes.get("to"), attributes.get("from"), self.stream_id))

    @_machine.output()
    def _refuse_header(self, header, condition, text):
        self._send_error(condition, text)

    @_machine.output()
    def _send_our_header(self):
        """Our header is not yet sent on this stream (the state awaits the peer's): an error needs one first."""
        fronted = sorted(self.side.fronted)
        self._write(wire.stream_header(fronted[0] if fronted else None, None, self.stream_id))

    @_machine.output()
    def _offer_starttls(self, header):
        self._write(wire.features_starttls_required())

    @_machine.output()
    def _start_tls(self):
        receiver = self.first_header.attributes.get("to")
        identity = self.side.identities[receiver]
        self._write(wire.PROCEED)
        self.transport.startTLS(identity.server_options())
        self._restart_stream()
        self._start_timer("tls", self.side.limits.tls_timeout, "TLS negotiation took too long")

    @_machine.output()
    def _offer_authentication(self, header):
        self._cancel_timer("tls")
        self.peer_verdict = self.side.anchors.judge_peer(self.transport.getHandle())
        if getattr(self.peer_verdict, "chain_valid", False):  # only a certificate the side's CA issued is described
            self._note_verdict(self.peer_verdict)
        offer = authentication_offer(self.side.authentication, self.peer_verdict, header.attributes.get("from"))
        if offer.problem is not None:
            log.info("inbound {peer}: certificate does not authenticate {domain}: {problem}",
                     peer=self.peer_address, domain=header.attributes.get("from"), problem=offer.problem)
            if not offer.dialback:  # nothing else the peer could authenticate with
                self._tell_events("authentication_failed", "certificate-refused")
        self._write(wire.features_authentication(external=offer.external, dialback=offer.dialback))

    @_machine.output()
    def _succeed_external(self, domain):
        self.authentication = "certificate"
        self._authenticated(domain, self.first_header.attributes.get("to"))
        self._write(wire.SASL_SUCCESS)
        self._restart_stream()
        log.info("inbound {peer}: {domain} authenticated by certificate", peer=self.peer_address, domain=domain)

    @_machine.output()
    def _fail_external(self, condition, text):
        log.info("inbound {peer}: SASL EXTERNAL refused: {text}", peer=self.peer_address, text=text)
        self._tell_events("authentication_failed", "certificate-refused")
        self._write(wire.sasl_failure(condition))

    @_machine.output()
    def _offer_nothing(self, header):
        self._cancel_timer("auth")
        self._start_timer("idle", self.side.limits.idle_timeout, "idle")
        self._write(wire.features_empty())

    @_machine.output()
    def _check_dialback(self, request):
        sender, receiver = request.sender, request.receiver
        checking = self.side.verifier.check_dialback(self, sender, receiver, self.stream_id, request.key)
        if checking is None:
            log.info("inbound {peer}: dialback for {sender} is already being checked", peer=self.peer_address,
                     sender=sender)
            return

        def checked(value):
            answer = as_answer(value)
            settled = dialback_settled(answer.verdict)
            if settled == "confirmed":
                self._input(self.dialback_confirmed, sender, receiver)
            elif settled == "denied":
                self._input(self.dialback_denied, sender, receiver, "key not confirmed")
            else:
                self._input(self.dialback_failed, sender, receiver, answer)

        def failed(failure):
            log.info("inbound {peer}: dialback check failed: {f}", peer=self.peer_address, f=failure.getErrorMessage())
            self._input(self.dialback_failed, sender, receiver, UNREACHABLE)

        checking.addCallbacks(checked, failed)

    @_machine.output()
    def _confirm_dialback(self, sender, receiver):
        if not self.authenticated_pairs:
            self._cancel_timer("auth")
            self._start_timer("idle", self.side.limits.idle_timeout, "idle")
            self.authentication = "dialback"
        self._authenticated(sender, receiver)
        self._write(wire.dialback_result(receiver, sender, verdict="valid"))
        log.info("inbound {peer}: {sender} authenticated by dialback for {receiver}",
                 peer=self.peer_address, sender=sender, receiver=receiver)

    @_machine.output()
    def _deny_dialback(self, sender, receiver, text):
        log.info("inbound {peer}: dialback for {sender} denied: {text}", peer=self.peer_address, sender=sender, text=text)
        self._tell_events("authentication_failed", "dialback-denied")
        self._write(wire.dialback_result(receiver, sender, verdict="invalid"))

    @_machine.output()
    def _report_dialback_error(self, sender, receiver, answer):
        log.info("inbound {peer}: dialback for {sender} not settled: {condition}", peer=self.peer_address,
                 sender=sender, condition=answer.condition)
        self._tell_events("authentication_failed", "dialback-unsettled")
        self._write(wire.dialback_result_error(receiver, sender, answer.condition, answer.error_type))

    @_machine.output()
    def _answer_verify(self, element, asking, claimed, stream_id):
        verdict = verify_verdict(self.side.dialback_secret, asking, claimed, stream_id, _text_of(element))
        log.info("inbound {peer}: verify for {claimed} asked by {asking}: {verdict}",
                 peer=self.peer_address, claimed=claimed, asking=asking, verdict=verdict)
        self._write(wire.dialback_verify(claimed, asking, stream_id, "", verdict))

    @_machine.output()
    def _relay(self, element, addressed, size):
        self._relay_stanza(element, addressed, size)

    @_machine.output()
    def _let_stanzas_through(self):
        """Entering ``open``: stanzas take the short route (the machine is not consulted per stanza)."""
        self._stanza_input = self._stanza_while_open

    def _stanza_while_open(self, element, addressed, size):
        """
        The per-stanza route while the machine is ``open``: every transition
        out of ``open`` marks the stream closing, and then the machine itself
        is asked again (it ignores stanzas once closed).
        """
        if self.closing:
            self._stanza_input = self.stanza_arrived
            self.stanza_arrived(element, addressed, size)
            return
        self._relay_stanza(element, addressed, size)

    def _relay_stanza(self, element, addressed, size):
        self.stanzas_in += 1
        self.side.relay.stanza_received(self.side, element, addressed, size)

    @_machine.output()
    def _refuse(self, condition, text):
        log.info("inbound {peer}: closing with {condition}: {text}", peer=self.peer_address, condition=condition, text=text)
        self._send_error(condition, text)

    @_machine.output()
    def _close_cleanly(self):
        self._closing_with("closed")
        self._write(wire.STREAM_CLOSE)
        self._close_transport()

    @_machine.output()
    def _hang_up(self):
        """The peer closed before we answered its header: there is no stream of ours to close."""
        self._closing_with("closed")
        self._close_transport()

    @_machine.output()
    def _announce_shutdown(self):
        self._send_error("system-shutdown", "the guard is stopping")

    def _send_error(self, condition, text):
        self._closing_with(condition)
        self._write(wire.stream_error(condition, text) + wire.STREAM_CLOSE)
        self._close_transport()

    def close_for_shutdown(self):
        """Tell the peer the guard is stopping and close."""
        self._input(self.shut_down)

    # -- transitions ------------------------------------------------------------

    awaiting_header.upon(header_accepted, enter=awaiting_starttls, outputs=[_answer_header, _offer_starttls])
    awaiting_starttls.upon(starttls_requested, enter=awaiting_secure_header, outputs=[_start_tls])
    awaiting_secure_header.upon(header_accepted, enter=awaiting_authentication,
                                outputs=[_answer_header, _offer_authentication])
    awaiting_authentication.upon(external_accepted, enter=awaiting_authenticated_header, outputs=[_succeed_external])
    awaiting_authentication.upon(external_refused, enter=awaiting_authentication, outputs=[_fail_external])
    awaiting_authentication.upon(dialback_requested, enter=awaiting_authentication, outputs=[_check_dialback])
    awaiting_authentication.upon(dialback_confirmed, enter=open, outputs=[_confirm_dialback, _let_stanzas_through])
    awaiting_authentication.upon(dialback_denied, enter=awaiting_authentication, outputs=[_deny_dialback])
    awaiting_authentication.upon(dialback_failed, enter=awaiting_authentication, outputs=[_report_dialback_error])
    awaiting_authentication.upon(verify_requested, enter=awaiting_authentication, outputs=[_answer_verify])
    awaiting_authenticated_header.upon(header_accepted, enter=open,
                                       outputs=[_answer_header, _offer_nothing, _let_stanzas_through])
    open.upon(stanza_arrived, enter=open, outputs=[_relay])
    open.upon(dialback_requested, enter=open, outputs=[_check_dialback])
    open.upon(dialback_confirmed, enter=open, outputs=[_confirm_dialback])
    open.upon(dialback_denied, enter=open, outputs=[_deny_dialback])
    open.upon(dialback_failed, enter=open, outputs=[_report_dialback_error])
    open.upon(verify_requested, enter=open, outputs=[_answer_verify])

    # Whether our header is on the stream follows from the state: the states that
    # await the peer's header have not answered it yet, and an error needs ours first.
    for _state in (awaiting_header, awaiting_secure_header, awaiting_authenticated_header):
        _state.upon(header_refused, enter=closed, outputs=[_send_our_header, _refuse_header])
        _state.upon(fault, enter=closed, outputs=[_send_our_header, _refuse])
        _state.upon(unexpected, enter=closed, outputs=[_send_our_header, _refuse])
        _state.upon(timed_out, enter=closed, outputs=[_send_our_header, _refuse])
        _state.upon(peer_closed, enter=closed, outputs=[_hang_up])
        _state.upon(shut_down, enter=closed, outputs=[_send_our_header, _announce_shutdown])
        _state.upon(connection_lost, enter=closed, outputs=[])
    for _state in (awaiting_starttls, awaiting_authentication, open):
        _state.upon(fault, enter=closed, outputs=[_refuse])
        _state.upon(unexpected, enter=closed, outputs=[_refuse])
        _state.upon(timed_out, enter=closed, outputs=[_refuse])
        _state.upon(peer_closed, enter=closed, outputs=[_close_cleanly])
        _state.upon(shut_down, enter=closed, outputs=[_announce_shutdown])
        _state.upon(connection_lost, enter=closed, outputs=[])
    ignore_when_closed(_machine, closed)
    del _state


class InboundFactory(Factory):
    """Makes an InboundStream for each connection from ``side``'s servers."""

    noisy = False

    def __init__(self, side):
        self.side = side

    def buildProtocol(self, addr):
        stream = InboundStream(self.side)
        stream.factory = self
        refusal = refuse_connection(self.side.inbound_counts.from_address[getattr(addr, "host", None)],
                                    self.side.limits.connections_per_address)
        if refusal is not None:
            stream.refusal_at_connect = (refusal.condition, refusal.text)
        return stream
