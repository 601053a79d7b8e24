"""The bearer simulator (guard/lab/bearer.py): rate, delay, outages, one connection, books and turns."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from guard.lab.bearer import (DIRECTION_BUFFER_BYTES, BearerSimulator, ShapedDirection, TokenBucket,
                              bucket_capacity, main, tick_bytes)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Wired:
    """A simulator on a MemoryReactorClock with its dialer and target connections as StringTransports."""

    def __init__(self, rate=1200, delay=1.0, outages=(), marker=None):
        self.reactor = MemoryReactorClock()
        self.simulator = BearerSimulator(self.reactor, "127.0.0.1", 5272, "127.0.0.2", 5271, rate, delay,
                                         outages=outages, marker=marker)
        self.simulator.start()

    def dial(self):
        """A dialer connects; returns (near protocol, near transport)."""
        _, factory, _, _ = self.reactor.tcpServers[0]
        near = factory.buildProtocol(None)
        transport = StringTransport()
        near.makeConnection(transport)
        return near, transport

    def answer(self, index=-1):
        """The target accepts the simulator's connection; returns (far protocol, far transport)."""
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        far = factory.buildProtocol(None)
        transport = StringTransport()
        far.makeConnection(transport)
        return far, transport

    def run_for(self, seconds, step=0.01):
        for _ in range(int(round(seconds / step))):
            self.reactor.advance(step)


def test_token_bucket_grants_no_more_than_its_rate():
    """A 1,200 bit/s bucket grants 150 bytes a second after its first capacity, never more, and none lost."""
    bucket = TokenBucket(1200, capacity=10, now=0.0)
    assert bucket.take(100, 0.0) == 10
    assert bucket.take(100, 0.0) == 0
    granted = sum(bucket.take(100, step / 100) for step in range(1, 101))
    assert granted == 150


def test_token_bucket_says_how_long_to_wait_for_tokens():
    """An empty bucket at 80 bit/s (10 bytes a second) needs half a second for five bytes."""
    bucket = TokenBucket(80, capacity=5, now=0.0)
    bucket.take(5, 0.0)
    assert bucket.seconds_until(5, 0.0) == pytest.approx(0.5)
    assert bucket.seconds_until(5, 0.5) == 0.0


@pytest.mark.parametrize("rate", [75, 1200, 9600, 64_000, 2_000_000])
def test_every_rate_the_issue_names_paces_bytes_to_that_rate(rate):
    """At each of 75 bit/s, 1,200, 9,600, 64k and 2M, ten seconds' worth of bytes take ten seconds (less the full bucket) plus the delay."""
    clock = MemoryReactorClock()
    arrived: list[tuple[float, int]] = []
    direction = ShapedDirection(clock, rate, 0.25, lambda data: arrived.append((clock.seconds(), len(data))),
                                lambda: None, lambda n: None, lambda: None, lambda: None,
                                buffer_bytes=10 * 1024 * 1024)
    total = int(rate / 8 * 10)
    direction.send(b"x" * total)
    step = 0.01
    for _ in range(int(11 / step)):
        clock.advance(step)
    assert sum(size for _, size in arrived) == total
    last = arrived[-1][0]
    expected = (total - bucket_capacity(rate)) / (rate / 8)  # the bucket starts full
    assert expected - 0.1 <= last - 0.25 <= expected + 0.1
    assert arrived[0][0] >= 0.25


def test_bytes_arrive_one_way_delay_late_and_in_order():
    """Two writes at 2 Mbit/s arrive in order, each 2.5 s after it was sent."""
    clock = MemoryReactorClock()
    arrived = []
    direction = ShapedDirection(clock, 2_000_000, 2.5, lambda data: arrived.append((clock.seconds(), data)),
                                lambda: None, lambda n: None, lambda: None, lambda: None)
    direction.send(b"first ")
    clock.advance(1.0)
    direction.send(b"second")
    clock.advance(1.49)
    assert arrived == []
    clock.advance(0.01)
    assert arrived == [(2.5, b"first ")]
    clock.advance(1.0)
    assert arrived == [(2.5, b"first "), (3.5, b"second")]


def test_a_direction_pauses_its_sender_past_its_buffer_and_resumes_below_half():
    """A sender that writes more than the buffer is paused once, then resumed when half has drained."""
    clock = MemoryReactorClock()
    events = []
    direction = ShapedDirection(clock, 8000, 0.0, lambda data: None, lambda: None, lambda n: None,
                                lambda: events.append("pause"), lambda: events.append("resume"), buffer_bytes=1000)
    direction.send(b"x" * 1001)
    direction.send(b"y" * 10)
    assert events == ["pause"]
    for _ in range(100):
        clock.advance(0.1)
    assert events == ["pause", "resume"]
    assert direction.held_bytes == 0


def test_the_end_of_stream_follows_the_bytes_before_it():
    """A sender that closes after writing: its bytes arrive first, then the end, one delay after the last byte."""
    clock = MemoryReactorClock()
    events = []
    direction = ShapedDirection(clock, 800, 1.0, lambda data: events.append(("data", len(data))),
                                lambda: events.append(("end", clock.seconds())), lambda n: None,
                                lambda: None, lambda: None)
    direction.send(b"z" * 200)  # 2 s at 100 bytes a second
    direction.finish()
    for _ in range(400):
        clock.advance(0.01)
    assert sum(n for kind, n in events if kind == "data") == 200
    assert events[-1][0] == "end"
    assert 2.9 <= events[-1][1] <= 3.1


def test_the_simulator_carries_both_ways_and_counts_bytes_each_way():
    """Bytes from the dialer reach the target and back, a delay later each way, and the books count each way."""
    wired = Wired(rate=9600, delay=0.5)
    near, near_transport = wired.dial()
    assert near_transport.producerState == "paused"  # nothing is read until the target answers
    assert wired.reactor.tcpClients[0][:2] == ("127.0.0.2", 5271)
    far, far_transport = wired.answer()
    assert near_transport.producerState == "producing"
    near.dataReceived(b"<stream>")
    wired.run_for(0.6)
    assert far_transport.value() == b"<stream>"
    far.dataReceived(b"<stream/><features/>")
    wired.run_for(0.6)
    assert near_transport.value() == b"<stream/><features/>"
    assert (wired.simulator.books.bytes_forward, wired.simulator.books.bytes_back) == (8, 20)


def test_turns_count_each_change_of_direction_before_the_marker():
    """A four-flight exchange before the marker counts three turns; the marker's arrival time is the delay after."""
    wired = Wired(rate=2_000_000, delay=1.0, marker=b"<message")
    near, _ = wired.dial()
    far, _ = wired.answer()
    near.dataReceived(b"hello")
    wired.run_for(1.0)
    far.dataReceived(b"hello back")
    wired.run_for(1.0)
    near.dataReceived(b"one more")
    wired.run_for(1.0)
    far.dataReceived(b"ok: <mess")
    far.dataReceived(b"age to='x'/>")
    wired.run_for(1.5)
    books = wired.simulator.books
    assert books.turns == 3
    assert books.turns_before_marker == 3
    assert books.seconds_to_marker == pytest.approx(4.0, abs=0.05)
    assert books.turn_times == pytest.approx([1.0, 2.0, 3.0], abs=0.05)


def test_a_zero_handshake_sender_has_no_turn_before_its_first_stanza():
    """A dialer that sends its header and a stanza at once crosses with zero turns before the marker."""
    wired = Wired(rate=1200, delay=1.0, marker=b"<message")
    near, _ = wired.dial()
    far, _ = wired.answer()
    near.dataReceived(b"<stream/><message to='b'>hi</message>")
    wired.run_for(3.0)
    assert wired.simulator.books.turns_before_marker == 0
    # The marker ends at byte 17: 17 bytes at 150 bytes a second (two sends' worth at once), then one second.
    assert wired.simulator.books.seconds_to_marker == pytest.approx(1.0 + (17 - 14) / 150, abs=0.06)


def test_a_second_connection_while_one_is_up_is_refused():
    """The bearer carries one connection: a second dialer is aborted and counted as refused."""
    wired = Wired()
    wired.dial()
    wired.answer()
    _, second = wired.dial()
    assert second.disconnecting
    assert wired.simulator.books.refused_busy == 1
    assert len(wired.reactor.tcpClients) == 1


def test_a_scheduled_outage_drops_the_connection_loses_what_is_in_flight_and_refuses_new_ones():
    """An outage at 5 s for 10 s: the connection is cut, in-flight bytes never arrive, dialers are refused, then carried."""
    wired = Wired(rate=1200, delay=1.0, outages=[(5.0, 10.0)])
    near, near_transport = wired.dial()
    far, far_transport = wired.answer()
    wired.run_for(4.5)
    near.dataReceived(b"in flight")
    wired.run_for(1.0)  # crosses 5.0: the bytes left the bucket but had not arrived
    assert near_transport.disconnecting and far_transport.disconnecting
    assert far_transport.value() == b""
    assert wired.simulator.books.dropped_by_outage == 1
    _, refused = wired.dial()
    assert refused.disconnecting
    assert wired.simulator.books.refused_outage == 1
    wired.run_for(10.0)
    _, carried = wired.dial()
    assert not carried.disconnecting
    assert len(wired.reactor.tcpClients) == 2
    assert wired.simulator.books.connections == 2


def test_an_outage_begun_on_demand_behaves_as_a_scheduled_one():
    """begin_outage cuts the connection now and refuses dialers for its duration."""
    wired = Wired()
    wired.dial()
    wired.answer()
    wired.simulator.begin_outage(3.0)
    assert wired.simulator.current is None
    assert wired.simulator.in_outage
    wired.run_for(3.1)
    assert not wired.simulator.in_outage


def test_a_closed_dialer_closes_the_target_after_its_last_bytes_then_admits_the_next():
    """The dialer writes and closes: the target gets the bytes, then the close; both ends closed frees the bearer."""
    wired = Wired(rate=64_000, delay=0.25)
    near, near_transport = wired.dial()
    far, far_transport = wired.answer()
    near.dataReceived(b"bye")
    near.connectionLost(None)
    wired.run_for(0.3)
    assert far_transport.value() == b"bye" and far_transport.disconnecting
    far.connectionLost(None)
    wired.run_for(0.3)
    assert near_transport.disconnecting
    assert wired.simulator.current is None
    _, next_transport = wired.dial()
    assert not next_transport.disconnecting


def test_a_target_that_refuses_drops_the_dialer():
    """When the target cannot be reached the dialer's connection is aborted and the bearer is free again."""
    wired = Wired()
    _, near_transport = wired.dial()
    _, _, factory, _, _ = wired.reactor.tcpClients[0]
    factory.clientConnectionFailed(None, None)
    assert near_transport.disconnecting
    assert wired.simulator.current is None


@pytest.mark.parametrize("arguments", [dict(rate_bits_per_second=10), dict(one_way_delay=-1),
                                       dict(outages=[(1.0, 0.0)]), dict(marker=b"")])
def test_values_that_model_no_bearer_are_refused(arguments):
    """A rate under 75 bit/s, a negative delay, an empty outage or an empty marker is refused at construction."""
    values = dict(rate_bits_per_second=1200, one_way_delay=1.0) | arguments
    with pytest.raises(ValueError):
        BearerSimulator(MemoryReactorClock(), "127.0.0.1", 1, "127.0.0.1", 2, **values)


def test_a_send_is_one_tick_of_the_rate_and_at_least_a_byte():
    """75 bit/s sends a byte at a time; 2 Mbit/s sends 12,500 bytes a tick; the bucket holds two sends."""
    assert tick_bytes(75) == 1
    assert tick_bytes(2_000_000) == 12_500
    assert bucket_capacity(2_000_000) == 25_000
    assert DIRECTION_BUFFER_BYTES > bucket_capacity(100_000_000)


def test_the_program_explains_itself():
    """python -m guard.lab.bearer --help names its options."""
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def test_a_real_socket_at_64_kbps_carries_at_about_the_rate_and_delay():
    """Through the program on 127.0.0.1 at 64 kbit/s and 0.25 s one way: bytes/second and delay are measured, loosely."""
    host = "127.0.0.1"
    target_port, listen_port = _free_port(host), _free_port(host)
    received = bytearray()
    times: list[float] = []
    target = socket.socket()
    target.bind((host, target_port))
    target.listen(1)
    target.settimeout(10)

    def sink():
        connection, _ = target.accept()
        connection.settimeout(10)
        with connection:
            while len(received) < 40_000:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                received.extend(chunk)
                times.append(time.monotonic())

    thread = threading.Thread(target=sink, daemon=True)
    thread.start()
    process = subprocess.Popen([sys.executable, "-m", "guard.lab.bearer", "--listen", f"{host}:{listen_port}",
                                "--target", f"{host}:{target_port}", "--rate", "64000", "--delay", "0.25"],
                               cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert process.stdout.readline().startswith(b"bearer:")
        with socket.create_connection((host, listen_port), timeout=10) as dialer:
            started = time.monotonic()
            dialer.sendall(b"a" * 40_000)  # 5 s at 8,000 bytes a second
            thread.join(timeout=20)
    finally:
        process.terminate()
        process.wait(timeout=10)
        target.close()
    assert len(received) == 40_000
    first, last = times[0] - started, times[-1] - started
    rate = 40_000 / (last - first) if last > first else float("inf")
    print(f"64 kbit/s bearer: first byte after {first:.3f} s, {rate:.0f} bytes/s (8,000 expected)")
    assert 0.2 <= first <= 1.0
    assert 5_000 <= rate <= 9_000


def shared_bearer(max_connections: int):
    """A 1,200 bit/s simulator without delay carrying up to ``max_connections``: (reactor, simulator, dialer factory)."""
    reactor = MemoryReactorClock()
    simulator = BearerSimulator(reactor, "127.0.0.1", 5269, "127.0.0.2", 5269, 1200, 0.0,
                                max_connections=max_connections)
    simulator.start()
    return reactor, simulator, reactor.tcpServers[0][1]


def test_connections_sharing_the_bearer_share_its_rate():
    """Two connections at once (plain S2S needs several) get 1,200 bit/s between them, not each."""
    reactor, simulator, factory = shared_bearer(2)
    sinks = []
    for index in range(2):
        near = factory.buildProtocol(None)
        near.makeConnection(StringTransport())
        _, _, far_factory, _, _ = reactor.tcpClients[index]
        far = far_factory.buildProtocol(None)
        sink = StringTransport()
        far.makeConnection(sink)
        sinks.append(sink)
        near.dataReceived(b"x" * 600)
    for _ in range(400):
        reactor.advance(0.01)  # 4 s: 600 bytes at 150 bytes a second, plus the full bucket
    delivered = sum(len(sink.value()) for sink in sinks)
    assert 600 <= delivered <= 600 + 2 * bucket_capacity(1200)
    assert simulator.books.bytes_forward == delivered


def test_a_third_connection_past_max_connections_is_refused():
    """max_connections = 2 carries two connections and refuses the third."""
    _, simulator, factory = shared_bearer(2)
    transports = []
    for _ in range(3):
        near = factory.buildProtocol(None)
        transport = StringTransport()
        near.makeConnection(transport)
        transports.append(transport)
    assert [t.disconnecting for t in transports] == [False, False, True]
    assert simulator.books.refused_busy == 1


def test_a_reverse_route_carries_the_far_end_dialling_back_over_the_same_bearer():
    """A connection dialled from blue's end toward red is counted the bearer's back way, and its reply forward."""
    reactor = MemoryReactorClock()
    simulator = BearerSimulator(reactor, "127.0.0.1", 5269, "127.0.0.2", 5269, 64_000, 0.25, max_connections=2,
                                reverse_routes=[("127.0.0.3", 5269, "127.0.0.4", 5269)])
    simulator.start()
    assert [(host, port) for port, _, _, host in reactor.tcpServers] == [("127.0.0.1", 5269), ("127.0.0.3", 5269)]
    _, factory, _, _ = reactor.tcpServers[1]
    near = factory.buildProtocol(None)
    near.makeConnection(StringTransport())
    assert reactor.tcpClients[0][:2] == ("127.0.0.4", 5269)
    _, _, far_factory, _, _ = reactor.tcpClients[0]
    far = far_factory.buildProtocol(None)
    far.makeConnection(StringTransport())
    near.dataReceived(b"from blue")
    reactor.advance(0.3)
    far.dataReceived(b"red answers")
    reactor.advance(0.3)
    assert (simulator.books.bytes_forward, simulator.books.bytes_back) == (11, 9)
    assert simulator.books.turns == 1
