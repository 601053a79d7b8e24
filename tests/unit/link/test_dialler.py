"""The dialling half reconnects with backoff and jitter, on an injected clock and random source."""

from twisted.internet import defer
from twisted.internet.task import Clock

from guard.edges.link.dialler import Backoff, LinkDialler


class FakeStream:
    def __init__(self, reached_open=False):
        self.when_lost = []
        self.reached_open = reached_open
        self.closed_with = None

    def close(self, condition, text):
        self.closed_with = condition

    def lose(self):
        for callback in list(self.when_lost):
            callback(self)


class Attempts:
    """connect() hands out Deferreds the test settles; every call is recorded."""

    def __init__(self):
        self.pending = []

    def __call__(self):
        attempt = defer.Deferred()
        self.pending.append(attempt)
        return attempt


def test_backoff_grows_to_its_cap_and_jitter_spreads_it():
    """Delays double per failure up to max_delay; the random source moves each by up to +-jitter."""
    backoff = Backoff(initial_delay=1.0, max_delay=8.0, factor=2.0, jitter=0.5)
    assert [backoff.delay(n, lambda: 0.5) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff.delay(3, lambda: 0.0) == 2.0 and backoff.delay(3, lambda: 1.0) == 6.0


def test_failed_attempts_are_retried_after_growing_delays():
    """Three failures in a row wait 1, 2 and 4 seconds (no jitter at random()=0.5) before the next try."""
    clock, attempts = Clock(), Attempts()
    dialler = LinkDialler(attempts, clock, lambda: 0.5, Backoff(initial_delay=1.0, max_delay=30.0))
    dialler.start()
    delays = []
    for _ in range(3):
        attempts.pending[-1].errback(ConnectionRefusedError("refused"))
        delays.append(dialler.last_delay)
        clock.advance(dialler.last_delay)
    assert delays == [1.0, 2.0, 4.0]
    assert len(attempts.pending) == 4


def test_a_connection_that_opened_resets_the_backoff():
    """After a link stream that reached open is lost, the next wait is the initial delay again."""
    clock, attempts = Clock(), Attempts()
    dialler = LinkDialler(attempts, clock, lambda: 0.5, Backoff(initial_delay=1.0))
    dialler.start()
    attempts.pending[-1].errback(ConnectionRefusedError())
    clock.advance(1.0)
    attempts.pending[-1].errback(ConnectionRefusedError())
    clock.advance(2.0)
    stream = FakeStream(reached_open=True)
    attempts.pending[-1].callback(stream)
    stream.lose()
    assert dialler.last_delay == 1.0


def test_connections_that_never_open_keep_backing_off():
    """A peer that accepts TCP but never proves itself does not reset the backoff."""
    clock, attempts = Clock(), Attempts()
    dialler = LinkDialler(attempts, clock, lambda: 0.5, Backoff(initial_delay=1.0))
    dialler.start()
    delays = []
    for _ in range(3):
        stream = FakeStream(reached_open=False)
        attempts.pending[-1].callback(stream)
        stream.lose()
        delays.append(dialler.last_delay)
        clock.advance(dialler.last_delay)
    assert delays == [1.0, 2.0, 4.0]


def test_stop_cancels_the_timer_and_closes_the_connection():
    """Stopping while waiting schedules nothing more; stopping while connected closes the stream."""
    clock, attempts = Clock(), Attempts()
    dialler = LinkDialler(attempts, clock, lambda: 0.5)
    dialler.start()
    attempts.pending[-1].errback(ConnectionRefusedError())
    dialler.stop()
    clock.advance(100)
    assert len(attempts.pending) == 1 and clock.getDelayedCalls() == []

    clock, attempts = Clock(), Attempts()
    dialler = LinkDialler(attempts, clock, lambda: 0.5)
    dialler.start()
    stream = FakeStream()
    attempts.pending[-1].callback(stream)
    dialler.stop()
    assert stream.closed_with == "system-shutdown"
    stream.lose()
    assert clock.getDelayedCalls() == []


def test_stop_during_an_attempt_cancels_it():
    """A pending connection attempt is cancelled and never retried after stop."""
    clock, attempts = Clock(), Attempts()
    dialler = LinkDialler(attempts, clock, lambda: 0.5)
    dialler.start()
    dialler.stop()
    assert attempts.pending[0].called
    clock.advance(100)
    assert len(attempts.pending) == 1


def dial_failures_logged(make_dialler):
    """The log events of one failed attempt of the dialler ``make_dialler(connect, clock)`` builds."""
    from twisted.logger import capturedLogs

    attempts, clock = Attempts(), Clock()
    dialler = make_dialler(attempts, clock)
    with capturedLogs() as events:
        dialler.start()
        attempts.pending[0].errback(ConnectionRefusedError("refused"))
    dialler.stop()
    from twisted.logger import formatEvent

    return [formatEvent(event) for event in events if "dial attempt" in event.get("log_format", "")]


def test_a_failed_attempt_is_logged_under_the_name_of_what_is_dialled():
    """The pair link, an IRC server and the component port each log their own failures under their own name."""
    from guard.edges.irc.component import ComponentDialler

    class Endpoint:
        def __init__(self, connect):
            self.connect = lambda factory: connect()

    assert dial_failures_logged(lambda connect, clock: LinkDialler(connect, clock, lambda: 0.5)) == [
        "link: dial attempt 1 failed: refused"]
    assert dial_failures_logged(lambda connect, clock: LinkDialler(connect, clock, lambda: 0.5, dialled="irc")) == [
        "irc: dial attempt 1 failed: refused"]
    assert dial_failures_logged(lambda connect, clock: ComponentDialler(Endpoint(connect), None, clock,
                                                                       lambda: 0.5)) == [
        "component: dial attempt 1 failed: refused"]
