"""
The lifecycle every stream shares (the inbound and outbound S2S streams and
the pair link's stream): what surrounds its Automat machine.

- ``lifecycle_inputs(machine)``, called once in each stream's class body,
  declares the inputs every stream has: ``fault``, ``timed_out``,
  ``peer_closed``, ``shut_down``, ``connection_lost``; ``header_inputs(machine)``
  the two a stream header leads to (``header_accepted``, ``header_refused``).
  ``closed_state(machine)``
  declares the terminal state (named ``CLOSED``), ``lifecycle_state(machine)``
  reads the state's name and ``ignore_when_closed(machine, closed)`` makes the
  terminal state ignore every input.
- ``StreamLifecycle``, mixed into the Protocol: feeding the machine fail
  closed (an unexpected input or a fault in an output closes the stream),
  named timers on the injected clock, the producer the transport tells when
  the peer stops and resumes reading, the unread-output accounting (a peer
  that leaves more than a limit unread is cut off), the byte filter chain
  (``guard.edges.filters``) between the transport and the parser/serialiser,
  and closing.

Why MethodicalMachine and a declaring function rather than Automat's
TypeMachineBuilder: the three machines' outputs are methods of their
protocols that read the protocol's own facts; the typed builder would split
each stream into a protocol and a core and rewrite every transition of three
machines at once.  The declaring function gives the same thing the typed
input protocols would share: each common input is written once, with one
signature and one meaning, and each machine gets its own copy (Automat binds
an input to one machine).
"""

from __future__ import annotations

import itertools

from automat import NoTransition
from automat._methodical import _transitionerFromInstance
from OpenSSL import SSL
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from .filters import FilterChain, Refused

log = Logger()

CLOSED = "closed"

# Every stream of the process gets the next number: what the snapshot and SNMP name it by.
_stream_numbers = itertools.count(1)


def certificate_facts(certificate) -> tuple[str | None, float | None]:
    """(subject as RFC 4514, notAfter in epoch seconds) of a ``cryptography`` certificate, or (None, None)."""
    if certificate is None:
        return None, None
    return certificate.subject.rfc4514_string(), certificate.not_valid_after_utc.timestamp()


def lifecycle_inputs(machine):
    """
    Declare on ``machine`` the inputs every stream has; call it in the class
    body: ``fault, timed_out, peer_closed, shut_down, connection_lost = lifecycle_inputs(_machine)``.
    """

    @machine.input()
    def fault(self, condition, text):
        "The peer broke the protocol (or a filter refused its bytes); the stream ends with this error."

    @machine.input()
    def timed_out(self, condition, text):
        "A deadline passed."

    @machine.input()
    def peer_closed(self):
        "The peer closed its stream (or the guard closes an idle one)."

    @machine.input()
    def shut_down(self):
        "The guard is stopping."

    @machine.input()
    def connection_lost(self, text=""):
        "The TCP connection is gone (``text``: why, for the log)."

    return fault, timed_out, peer_closed, shut_down, connection_lost


def header_inputs(machine):
    """
    Declare on ``machine`` the inputs a peer's stream header leads to; call it in the class body:
    ``header_accepted, header_refused = header_inputs(_machine)`` (``_take_header`` feeds them).
    """

    @machine.input()
    def header_accepted(self, header):
        "The peer opened a stream the guard accepts."

    @machine.input()
    def header_refused(self, header, condition, text):
        "The peer opened a stream the guard must refuse with this error."

    return header_accepted, header_refused


def closed_state(machine):
    """Declare the terminal state; call it in the class body: ``closed = closed_state(_machine)``."""

    @machine.state(serialized=CLOSED)
    def closed(self):
        "The stream is over; everything is ignored."

    return closed


def lifecycle_state(machine):
    """
    A method that names the machine's current state: ``_lifecycle_state = lifecycle_state(_machine)``.
    The name is the state's ``serialized`` name, or else the name of its method (``open``, ``ready``).
    """

    def state(self):
        current = _transitionerFromInstance(self, machine._symbol, machine._automaton)._state
        return current.serialized if current.serialized is not None else current.method.__name__

    return state


def ignore_when_closed(machine, closed) -> None:
    """Once ``closed``, every input the machine knows is ignored; call it after every other transition."""
    for each in sorted(machine._automaton.inputAlphabet(), key=lambda one: one._name()):
        closed.upon(each, enter=closed, outputs=[])


def _is_tls_failure(reason) -> bool:
    """Whether a connection was lost to a TLS error (a failed handshake, a bad record)."""
    check = getattr(reason, "check", None)
    return check is not None and check(SSL.Error) is not None


@implementer(IPushProducer)
class PeerReading:
    """Told by the transport when the peer stops reading what the guard writes (its buffer is full), and when it drains."""

    def __init__(self, stream):
        self.stream = stream

    def pauseProducing(self):
        self.stream.peer_stopped_reading()

    def resumeProducing(self):
        self.stream.peer_resumed_reading()

    def stopProducing(self):
        self.stream.peer_resumed_reading()


class StreamLifecycle:
    """
    Mixed into a stream Protocol whose machine has the ``lifecycle_inputs``
    and a ``closed_state``; the stream provides ``_describe()`` (for the log)
    and ``_refuse_unexpected(text)`` (which input an unexpected input
    becomes), calls ``_begin_lifecycle(clock)`` in ``__init__``, and declares
    ``_lifecycle_state = lifecycle_state(_machine)``.
    """

    # Bytes a peer may leave unread after it stopped reading before it is cut
    # off; None: never cut off (the stream only hears that the peer stopped).
    unread_output_limit: int | None = None

    def _begin_lifecycle(self, clock):
        self.clock = clock
        # What describe() reports: a number for the stream, when it started (on the injected clock),
        # how it authenticated, the peer's certificate, and the stanzas each way.
        self.number = next(_stream_numbers)
        self.started = clock.seconds()
        self.authentication: str | None = None  # "certificate" or "dialback", once authenticated
        self.certificate_subject: str | None = None
        self.certificate_not_after: float | None = None
        self.stanzas_in = 0
        self.stanzas_out = 0
        # How the stream ended, for the stream-events listener: the stream error the guard sent, or
        # "closed", "peer-error", "dropped", "cut-off"; None until then ("connection-lost" if nothing said).
        self.close_condition: str | None = None
        self._timers = {}
        self.filters = FilterChain()
        # Bytes written since the peer stopped reading; None while it reads.
        self._unread_since_pause: int | None = None
        self._producer_registered = False
        # The guard dropped the connection outside the machine (a fault in the
        # guard, a peer that does not read): nothing more is read or written.
        self._dropped = False

    def _note_certificate(self, certificate):
        """The peer's certificate (a ``cryptography`` certificate, or None), as describe() reports it."""
        self.certificate_subject, self.certificate_not_after = certificate_facts(certificate)

    def _note_verdict(self, verdict):
        """The facts of the certificate a ``PeerVerdict`` judged (it keeps them, not the certificate), as
        describe() reports them."""
        self.certificate_subject = getattr(verdict, "subject", None)
        self.certificate_not_after = getattr(verdict, "not_after", None)

    # -- what the stream-events listener (the metrics) hears ---------------------

    # What a stream is, for the listener: "inbound", "outbound" or "link".
    stream_kind = "stream"

    def _stream_events(self):
        """Who hears this stream's events (``guard.edges.metrics.StreamEvents``), or None."""
        return None

    def _tell_events(self, event, *args):
        """Tell the listener ``event(stream, *args)``; a fault there is logged and never touches the stream."""
        listener = self._stream_events()
        if listener is None:
            return
        try:
            getattr(listener, event)(self, *args)
        except Exception:  # noqa: BLE001 - counting must not change what the stream does
            log.failure("{stream}: a stream-events listener failed on {event}", stream=self._describe(), event=event)

    def _closing_with(self, condition: str):
        """Note how the stream ends (the first reason given stands)."""
        if self.close_condition is None:
            self.close_condition = condition

    def _tell_closed(self, reason=None):
        """The connection is gone: tell the listener how the stream ended (a TLS failure first, if it was one)."""
        if self._stream_events() is None:
            return
        if reason is not None and _is_tls_failure(reason):
            self._tell_events("tls_failed", "handshake")
        self._tell_events("stream_closed", self.close_condition or "connection-lost")

    def _stream_facts(self) -> dict:
        """What every stream's describe() shares: number, start, age, state, authentication, certificate, counts."""
        now = self.clock.seconds()
        facts = {"id": self.number, "started": self.started, "age": max(0.0, now - self.started),
                 "state": CLOSED if self._dropped else self._lifecycle_state(),
                 "authentication": self.authentication, "certificate_subject": self.certificate_subject,
                 "certificate_not_after": self.certificate_not_after,
                 "stanzas_in": self.stanzas_in, "stanzas_out": self.stanzas_out}
        facts.update(self.byte_count.describe())
        return facts

    # -- the machine, fail closed --------------------------------------------

    @property
    def closing(self) -> bool:
        """The stream is over (its machine is closed) or the guard dropped its connection."""
        return self._dropped or self._lifecycle_state() == CLOSED

    def _input(self, method, *args):
        """Feed the machine; an input the state does not expect, or any fault in an output, closes the stream."""
        try:
            method(*args)
        except NoTransition as problem:
            log.info("{stream}: unexpected {problem}", stream=self._describe(), problem=problem)
            try:
                self._refuse_unexpected(f"not expected now: {method.__name__}")
            except NoTransition:
                self._close_transport()
        except Exception:  # noqa: BLE001 - a fault in the guard closes the stream: fail closed
            log.failure("{stream}: internal fault on {input}", stream=self._describe(), input=method.__name__)
            self._drop()
        else:
            self._after_input()

    def _after_input(self):
        """Called after each input the machine took (a stream may act on what its outputs noted)."""

    # -- what the parser reports that every stream treats alike --------------------

    def _take_header(self, header, refusal):
        """The peer's header, judged (``refusal``: a decisions.Refusal or None), goes to the machine."""
        if refusal is not None:
            self._input(self.header_refused, header, refusal.condition, refusal.text)
        else:
            self._input(self.header_accepted, header)

    def _on_end(self):
        """The parser read the end of the peer's stream."""
        self._input(self.peer_closed)

    # -- named timers on the injected clock --------------------------------------

    def _start_timer(self, name, seconds, text):
        """After ``seconds``, the machine gets timed_out(connection-timeout, text) (and the listener hears which timer)."""
        self.schedule(name, seconds, self._timer_fired, name, text)

    def _timer_fired(self, name, text):
        self._tell_events("timer_fired", name)
        self._input(self.timed_out, "connection-timeout", text)

    def schedule(self, name, seconds, function, *args):
        """Call ``function(*args)`` after ``seconds`` on the stream's clock, replacing the timer ``name``."""
        self._cancel_timer(name)
        self._timers[name] = self.clock.callLater(seconds, function, *args)

    _start_timer_call = schedule

    def _reset_timer(self, name, seconds):
        """Push the timer ``name`` (if running) back to ``seconds`` from now."""
        timer = self._timers.get(name)
        if timer is not None and timer.active():
            timer.reset(seconds)

    def _timer_running(self, name) -> bool:
        return name in self._timers

    def _forget_timer(self, name):
        """The timer ``name`` fired: it is no longer running."""
        self._timers.pop(name, None)

    def _cancel_timer(self, name):
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _cancel_all_timers(self):
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    # -- the peer reading what we write ----------------------------------------

    def _register_producer(self, producer=None):
        """Hear from the transport when the peer stops reading what we write (and when it drains)."""
        self.transport.registerProducer(producer if producer is not None else PeerReading(self), True)
        self._producer_registered = True

    @property
    def peer_reading(self) -> bool:
        return self._unread_since_pause is None

    def peer_stopped_reading(self):
        """The peer leaves what we wrote unread: count what is still written, and tell the stream."""
        if self._unread_since_pause is None:
            self._unread_since_pause = 0
            self._peer_stopped_reading()

    def peer_resumed_reading(self):
        if self._unread_since_pause is not None:
            self._unread_since_pause = None
            self._peer_resumed_reading()

    def _peer_stopped_reading(self):
        """What the stream does when its peer stops reading (hold its input, tell its owner)."""

    def _peer_resumed_reading(self):
        """What the stream does when its peer reads again."""

    # -- bytes in and out, through the filter chain ------------------------------

    def _filter_in(self, data: bytes) -> bytes | None:
        """
        What the parser gets of ``data``: the "in" filters' result, or None
        (held back, refused, or the stream is over).  A refusal closes the
        stream with the stream error it names.
        """
        if self.closing:
            return None
        try:
            data = self.filters.incoming(data)
        except Refused as refusal:
            log.info("{stream}: refused by a filter, {condition}: {text}", stream=self._describe(),
                     condition=refusal.condition, text=refusal.text)
            self._input(self.fault, refusal.condition, refusal.text)
            return None
        except Exception:  # noqa: BLE001 - a fault in a filter closes the stream: fail closed
            log.failure("{stream}: internal fault in an incoming filter", stream=self._describe())
            self._drop()
            return None
        return data

    def _write(self, data: bytes):
        """
        Write to the peer through the "out" filters.  A peer that stopped
        reading gets at most ``unread_output_limit`` more bytes, then is cut
        off.  An "out" filter that refuses drops the connection: nothing more
        can be written through it, not even a stream error.
        """
        if self._dropped or self.transport is None:
            return
        try:
            data = self.filters.outgoing(data)
        except Exception as problem:  # noqa: BLE001 - Refused or a fault: nothing more can be written
            log.info("{stream}: an outgoing filter refused: {problem!r}; connection dropped",
                     stream=self._describe(), problem=problem)
            self._drop()
            return
        if data is None:
            return
        if self._unread_since_pause is not None:
            self._unread_since_pause += len(data)
            if self.unread_output_limit is not None and self._unread_since_pause > self.unread_output_limit:
                log.info("{stream}: does not read what the guard writes; connection aborted", stream=self._describe())
                self._cut_off()
                return
        self.transport.write(data)

    # -- closing --------------------------------------------------------------------

    def _close_transport(self):
        if self.transport is None:
            return
        if self._producer_registered:
            # TLS does not close while a producer is registered: unregister first.
            self._producer_registered = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _drop(self):
        """Close the connection outside the machine (a fault in the guard): nothing more is read or written."""
        self._closing_with("dropped")
        self._dropped = True
        self._stop_reading_input()
        self._close_transport()

    def _cut_off(self):
        """Abort the connection without a word (the peer does not read): nothing more is read or written."""
        self._closing_with("cut-off")
        self._dropped = True
        self._stop_reading_input()
        self.transport.abortConnection()

    def _stop_reading_input(self):
        """Nothing more of what the peer sent is parsed (the stream discards what waits)."""
