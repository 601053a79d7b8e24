"""
The lifecycle base every stream shares (guard/edges/lifecycle.py), on a
stream with the smallest machine that uses it: fail closed, named timers on
the clock, the peer reading what we write, the filter chain, closing.
"""

from automat import MethodicalMachine
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from guard.edges.filters import IN, OUT, Refused
from guard.edges.lifecycle import (CLOSED, StreamLifecycle, closed_state, ignore_when_closed, lifecycle_inputs,
                                   lifecycle_state)


class EchoStream(StreamLifecycle, Protocol):
    """A stream whose machine opens on ``hello`` and then echoes lines; every step goes into ``events``."""

    _machine = MethodicalMachine()
    unread_output_limit = 10

    def __init__(self, clock):
        self._begin_lifecycle(clock)
        self.events = []
        self.broken_output = False

    def connectionMade(self):
        self._register_producer()
        self._start_timer("open", 5, "too slow")

    def dataReceived(self, data):
        data = self._filter_in(data)
        if data is None:
            return
        for line in data.split(b"\n"):
            if line == b"hello":
                self._input(self.hello)
            elif line == b"bye":
                self._input(self.peer_closed)
            elif line:
                self._input(self.line_arrived, line)

    def connectionLost(self, reason):
        self._cancel_all_timers()
        self._input(self.connection_lost, reason.getErrorMessage())

    def _describe(self):
        return "echo"

    def _refuse_unexpected(self, text):
        self.fault("policy-violation", text)

    @_machine.state(initial=True, serialized="awaiting_hello")
    def awaiting_hello(self):
        "Nothing said yet."

    @_machine.state(serialized="talking")
    def talking(self):
        "Lines are echoed."

    closed = closed_state(_machine)
    _lifecycle_state = lifecycle_state(_machine)

    @_machine.input()
    def hello(self):
        "The peer greets."

    @_machine.input()
    def line_arrived(self, line):
        "A line to echo."

    fault, timed_out, peer_closed, shut_down, connection_lost = lifecycle_inputs(_machine)

    @_machine.output()
    def _greet(self):
        self._cancel_timer("open")
        if self.broken_output:
            raise RuntimeError("a bug in an output")
        self._write(b"hi\n")

    @_machine.output()
    def _echo(self, line):
        self._write(line + b"\n")

    @_machine.output()
    def _refuse(self, condition, text):
        self.events.append(("refused", condition, text))
        self._write(f"error {condition}\n".encode())
        self._close_transport()

    @_machine.output()
    def _say_goodbye(self):
        self._write(b"bye\n")
        self._close_transport()

    @_machine.output()
    def _note_lost(self, text):
        self.events.append(("lost", text))

    awaiting_hello.upon(hello, enter=talking, outputs=[_greet])
    talking.upon(line_arrived, enter=talking, outputs=[_echo])
    for _live in (awaiting_hello, talking):
        _live.upon(fault, enter=closed, outputs=[_refuse])
        _live.upon(timed_out, enter=closed, outputs=[_refuse])
        _live.upon(peer_closed, enter=closed, outputs=[_say_goodbye])
        _live.upon(shut_down, enter=closed, outputs=[_say_goodbye])
        _live.upon(connection_lost, enter=closed, outputs=[_note_lost])
    ignore_when_closed(_machine, closed)
    del _live


def connected(**attributes):
    clock = Clock()
    stream = EchoStream(clock)
    for name, value in attributes.items():
        setattr(stream, name, value)
    transport = StringTransport()
    stream.makeConnection(transport)
    return stream, transport, clock


def test_inputs_move_the_machine_and_outputs_write():
    """A greeting opens the stream and lines are echoed; the state is read by its name."""
    stream, transport, _ = connected()
    stream.dataReceived(b"hello\nabc\n")
    assert transport.value() == b"hi\nabc\n"
    assert stream._lifecycle_state() == "talking" and not stream.closing


def test_an_unexpected_input_closes_the_stream_with_the_refusal():
    """A line before the greeting is an input the first state does not take: the stream closes with a policy-violation."""
    stream, transport, _ = connected()
    stream.dataReceived(b"abc\n")
    assert stream.events == [("refused", "policy-violation", "not expected now: line_arrived")]
    assert transport.value() == b"error policy-violation\n" and transport.disconnecting
    assert stream.closing and stream._lifecycle_state() == CLOSED


def test_a_fault_in_an_output_drops_the_connection_and_nothing_more_is_read_or_written():
    """An exception in an output closes the connection without a word, and the stream ignores what comes after."""
    stream, transport, _ = connected(broken_output=True)
    stream.dataReceived(b"hello\n")
    assert transport.disconnecting and transport.value() == b""
    assert stream.closing
    stream.dataReceived(b"abc\n")
    stream._write(b"late\n")
    assert transport.value() == b"" and stream.events == []


def test_a_named_timer_on_the_clock_times_the_stream_out():
    """The open timer fires on the injected clock as timed_out(connection-timeout) with its text."""
    stream, transport, clock = connected()
    clock.advance(4.9)
    assert not stream.closing
    clock.advance(0.2)
    assert stream.events == [("refused", "connection-timeout", "too slow")]


def test_a_cancelled_timer_never_fires_and_a_reset_one_fires_later():
    """Greeting cancels the open timer; a rescheduled timer is pushed back by a reset."""
    stream, _, clock = connected()
    stream.dataReceived(b"hello\n")
    fired = []
    stream.schedule("ping", 2, fired.append, "ping")
    clock.advance(1.5)
    stream._reset_timer("ping", 2)
    clock.advance(1.9)
    assert fired == [] and stream._timer_running("ping")
    clock.advance(0.2)
    assert fired == ["ping"]
    clock.advance(10)
    assert stream.events == []


def test_every_input_is_ignored_once_closed():
    """After the peer closed, later inputs of every kind change nothing and write nothing."""
    stream, transport, _ = connected()
    stream.dataReceived(b"hello\nbye\n")
    transport.clear()
    for each in (stream.hello, stream.shut_down, stream.peer_closed):
        stream._input(each)
    stream._input(stream.line_arrived, b"x")
    stream._input(stream.fault, "bad-format", "late")
    assert transport.value() == b"" and stream.events == []


def test_connection_lost_carries_its_text_to_the_outputs_that_take_it():
    """connection_lost(text) is one input for every stream: outputs that take ``text`` get it."""
    stream, _, _ = connected()
    stream._input(stream.connection_lost, "gone")
    assert stream.events == [("lost", "gone")]


def test_the_producer_reports_the_peer_not_reading_and_bounds_what_is_written_meanwhile():
    """Once the peer stops reading, more than unread_output_limit bytes written cuts it off; nothing more is written."""
    stream, transport, _ = connected()
    stream.dataReceived(b"hello\n")
    transport.clear()
    transport.producer.pauseProducing()
    assert not stream.peer_reading
    stream.dataReceived(b"12345\n")  # 6 bytes unread: within the limit of 10
    assert transport.value() == b"12345\n"
    stream.dataReceived(b"67890\n")  # 12 bytes unread: over it
    assert transport.value() == b"12345\n" and transport.disconnecting and stream.closing
    stream.dataReceived(b"more\n")
    assert transport.value() == b"12345\n"


def test_the_count_of_unread_bytes_restarts_when_the_peer_reads_again():
    """A peer that drains its buffer may again leave unread_output_limit bytes unread."""
    stream, transport, _ = connected()
    stream.dataReceived(b"hello\n")
    transport.producer.pauseProducing()
    stream.dataReceived(b"12345\n")
    transport.producer.resumeProducing()
    assert stream.peer_reading
    transport.producer.pauseProducing()
    stream.dataReceived(b"12345\n")
    assert not stream.closing


def test_closing_unregisters_the_producer_first():
    """TLS does not close while a producer is registered: closing unregisters it, then loses the connection."""
    stream, transport, _ = connected()
    stream.dataReceived(b"bye\n")
    assert transport.producer is None and transport.disconnecting


def test_an_incoming_filter_refusal_closes_the_stream_with_its_stream_error():
    """A filter that refuses the bytes closes the stream with the condition it names; the bytes are not parsed."""
    stream, transport, _ = connected()

    def refuse_shouting(data):
        if data.isupper():
            raise Refused("policy-violation", "no shouting")
        return data

    stream.filters.add(IN, refuse_shouting)
    stream.dataReceived(b"hello\n")
    stream.dataReceived(b"ABC\n")
    assert stream.events == [("refused", "policy-violation", "no shouting")]
    assert transport.value() == b"hi\nerror policy-violation\n"


def test_a_filter_that_holds_bytes_back_stops_them_silently():
    """A filter returning None: the parser gets nothing, the stream stays open, nothing is written."""
    stream, transport, _ = connected()
    stream.filters.add(IN, lambda data: None if data.startswith(b"#") else data)
    stream.dataReceived(b"# a comment\n")
    assert transport.value() == b"" and stream._lifecycle_state() == "awaiting_hello"


def test_an_outgoing_filter_refusal_drops_the_connection():
    """An outgoing filter that refuses: nothing more can be written through it, the connection is dropped."""
    stream, transport, _ = connected()

    def refuse_everything(data):
        raise Refused("policy-violation", "nothing leaves")

    stream.filters.add(OUT, refuse_everything)
    stream.dataReceived(b"hello\n")
    assert transport.value() == b"" and transport.disconnecting and stream.closing


def test_a_fault_in_an_incoming_filter_drops_the_connection():
    """A filter that raises something other than Refused is a fault in the guard: the connection is dropped."""
    stream, transport, _ = connected()
    stream.filters.add(IN, lambda data: 1 / 0)
    stream.dataReceived(b"hello\n")
    assert transport.value() == b"" and transport.disconnecting and stream.closing
