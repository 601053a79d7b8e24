"""
IrcConnection against a real ngIRCd (guard/lab/ngircd.py) on 127.0.5.1: TLS
verified against the lab's IRC authority (and refused with another one),
join and PRIVMSG both ways with a raw IRC client written here on a plain
socket, a flood of lines within ngIRCd's flood rules in order, and ngIRCd killed
and restarted mid-way (reconnect, rejoin, every token sent or lost once).

The client runs on Twisted's global reactor in a daemon thread (TLS flushes
its writes through the global reactor, so a private one would not do),
started once per process and driven from the test through
``ReactorThread.call``.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from twisted.internet import defer
from zope.interface import implementer

from guard.edges.irc.client import (
    ConnectionLimits,
    FloodRate,
    IIrcEvents,
    IrcConnection,
    IrcIdentity,
    IrcServer,
    endpoint_connector,
)
from guard.edges.link.dialler import Backoff
from guard.lab.ngircd import IRC_ADDRESS, IRC_SERVER_NAME, NgircdLab

from .labs import started

CHANNEL = "#lab"
WAIT = 30.0  # seconds any single expected thing may take


class ReactorThread:
    """The global reactor running in a daemon thread; ``call`` runs a function there and waits (bounded) for it."""

    _running: "ReactorThread | None" = None

    @classmethod
    def shared(cls) -> "ReactorThread":
        """The one reactor thread of this process (a reactor cannot be started twice)."""
        if cls._running is None:
            cls._running = cls()
        return cls._running

    def __init__(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                                       name="irc-test-reactor", daemon=True)
        self.thread.start()

    def call(self, function, *args, timeout: float = WAIT):
        done, box = threading.Event(), {}

        def run():
            result = defer.maybeDeferred(function, *args)
            result.addCallbacks(lambda value: box.setdefault("value", value),
                                lambda failure: box.setdefault("failure", failure))
            result.addBoth(lambda _: done.set())

        self.reactor.callFromThread(run)
        if not done.wait(timeout):
            raise TimeoutError(f"{function!r} did not finish within {timeout} s")
        if "failure" in box:
            box["failure"].raiseException()
        return box.get("value")


@implementer(IIrcEvents)
class Events:
    """Every event as a tuple, appended from the reactor thread; ``wait_for`` waits (bounded) for one."""

    def __init__(self):
        self.events: list[tuple] = []
        self._changed = threading.Condition()

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def record(*args):
            with self._changed:
                self.events.append((name, *args))
                self._changed.notify_all()

        return record

    def wait_for(self, predicate, timeout: float = WAIT, what: str = "an event"):
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout} s; events: {self.events[-20:]}")
                self._changed.wait(left)

    def named(self, name: str) -> list[tuple]:
        with self._changed:
            return [event for event in self.events if event[0] == name]


class RawIrc:
    """A plain-socket IRC client: the other side of the channel, as a person would be."""

    def __init__(self, nick: str, port: int):
        self.nick = nick
        self.socket = socket.create_connection((IRC_ADDRESS, port), timeout=WAIT)
        self.buffer = b""
        self.send(f"NICK {nick}", f"USER {nick} 0 * :raw client")
        self.expect(lambda line: line.split()[1:2] == ["001"], "001")

    def send(self, *lines: str) -> None:
        self.socket.sendall(b"".join(line.encode("utf-8") + b"\r\n" for line in lines))

    def lines(self, timeout: float = WAIT):
        """Lines as they come, answering PINGs, until ``timeout`` passes without the caller stopping."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\r\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                text = line.decode("utf-8", "replace")
                if text.startswith("PING"):
                    self.send("PONG" + text[4:])
                    continue
                yield text
            self.socket.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.socket.recv(65536)
            except socket.timeout:
                continue
            if not data:
                return
            self.buffer += data

    def expect(self, predicate, what: str, timeout: float = WAIT) -> str:
        seen = []
        for line in self.lines(timeout):
            if predicate(line):
                return line
            seen.append(line)
        raise AssertionError(f"raw client {self.nick}: no {what} within {timeout} s; last lines: {seen[-10:]}")

    def close(self) -> None:
        try:
            self.send("QUIT :done")
        except OSError:
            pass
        self.socket.close()


@pytest.fixture(scope="module")
def ngircd(tmp_path_factory):
    """A running ngIRCd for this module (its own lock: one IRC lab at a time)."""
    laboratory = NgircdLab(tmp_path_factory.mktemp("ngircd"))
    yield started(laboratory, "ngircd")
    laboratory.stop()


@pytest.fixture(scope="module")
def reactor_thread():
    return ReactorThread.shared()


def tls_server(lab: NgircdLab, ca: Path | None = None) -> IrcServer:
    return IrcServer("lab", IRC_ADDRESS, lab.tls_port, tls=True, ca_file=str(ca or lab.pki.ca),
                     server_name=IRC_SERVER_NAME, backoff=Backoff(initial_delay=0.5, max_delay=2.0))


def start_connection(reactor_thread, server: IrcServer, nick: str, events: Events) -> IrcConnection:
    def make():
        connection = IrcConnection(server, IrcIdentity(nick), reactor_thread.reactor,
                                   endpoint_connector(reactor_thread.reactor, timeout=10), events)
        connection.start()
        return connection

    return reactor_thread.call(make)


def test_tls_verified_join_and_privmsg_both_ways(ngircd, reactor_thread):
    """Over TLS checked against the lab CA, the gateway joins, is heard by a raw client, and hears it (text and /me)."""
    events = Events()
    connection = start_connection(reactor_thread, tls_server(ngircd), "gw", events)
    raw = RawIrc("alice", ngircd.port)
    try:
        events.wait_for(lambda event: event[0] == "connected", what="registration")
        raw.send(f"JOIN {CHANNEL}")
        raw.expect(lambda line: f"JOIN :{CHANNEL}" in line or f"JOIN {CHANNEL}" in line, "own join")
        assert reactor_thread.call(connection.join, CHANNEL) is None
        events.wait_for(lambda event: event[:4] == ("joined", "lab", CHANNEL, "gw"), what="our join")
        names = events.wait_for(lambda event: event[0] == "names", what="names")
        assert {name.lstrip("~&@%+") for name in names[3]} == {"gw", "alice"}  # as listed: with prefixes
        assert "@alice" in names[3]  # alice made #lab's channel first: ngIRCd made her its operator
        assert reactor_thread.call(connection.say, CHANNEL, ["hello from the room"], "token-1") is None
        line = raw.expect(lambda text: "PRIVMSG" in text, "the gateway's PRIVMSG")
        assert line.startswith(":gw!") and line.endswith(f"PRIVMSG {CHANNEL} :hello from the room")
        events.wait_for(lambda event: event == ("sent", "token-1"), what="sent(token-1)")
        raw.send(f"PRIVMSG {CHANNEL} :hello from irc", f"PRIVMSG {CHANNEL} :\x01ACTION waves\x01")
        events.wait_for(lambda event: event[:6] == ("message", "lab", CHANNEL, "alice", "privmsg", "hello from irc"),
                        what="alice's message")
        events.wait_for(lambda event: event[:6] == ("message", "lab", CHANNEL, "alice", "action", "waves"),
                        what="alice's action")
    finally:
        raw.close()
        reactor_thread.call(connection.stop)


def test_a_server_certificate_from_another_authority_is_refused(ngircd, reactor_thread):
    """With a CA that did not sign ngIRCd's certificate, the connection ends in the TLS handshake (tls), unregistered."""
    events = Events()
    connection = start_connection(reactor_thread, tls_server(ngircd, ca=ngircd.pki.wrong_ca), "gwbad", events)
    try:
        lost = events.wait_for(lambda event: event[0] == "connection_lost", what="the refused connection")
        assert lost == ("connection_lost", "lab", None, "tls")
        assert events.named("connected") == []
    finally:
        reactor_thread.call(connection.stop)


# The gateway's own test (test_irc_gateway.py) carries the 500 room messages end to end; here a shorter
# run (a minute at ngIRCd's rate) shows the connection alone keeps within the server's flood rules.
FLOOD_LINES = 150


def test_a_flood_of_lines_arrives_in_order_within_ngircd_flood_rules(ngircd, reactor_thread):
    """FLOOD_LINES messages leave at the default rate; a raw client gets them all in order, never more than a few seconds late, and the connection is never cut."""
    events = Events()
    limits = ConnectionLimits(queue_lines=FLOOD_LINES + 100, queue_bytes=128 * 1024)
    server = tls_server(ngircd)
    connection = reactor_thread.call(lambda: _started(IrcConnection(
        server, IrcIdentity("flood"), reactor_thread.reactor, endpoint_connector(reactor_thread.reactor, timeout=10),
        events, limits=limits)))
    raw = RawIrc("reader", ngircd.port)
    try:
        events.wait_for(lambda event: event[0] == "connected", what="registration")
        raw.send("JOIN #flood")
        raw.expect(lambda line: "JOIN" in line and "reader" in line, "own join")
        reactor_thread.call(connection.join, "#flood")
        events.wait_for(lambda event: event[:4] == ("joined", "lab", "#flood", "flood"), what="our join")
        texts = [f"flood line {number:03d} " + "x" * 100 for number in range(FLOOD_LINES)]

        def say_all():
            return [connection.say("#flood", [text], number) for number, text in enumerate(texts)]

        started_at = time.monotonic()
        assert reactor_thread.call(say_all) == [None] * FLOOD_LINES
        received, lags = [], []
        for line in raw.lines(timeout=FLOOD_LINES * 0.4 + 60):
            if " PRIVMSG #flood :" in line:
                received.append(line.split(" PRIVMSG #flood :", 1)[1])
                number = len(received) - 1
                lags.append(time.monotonic() - started_at - number * 0.4)
                if len(received) == FLOOD_LINES:
                    break
        elapsed = time.monotonic() - started_at
        assert received == texts
        events.wait_for(lambda event: event == ("sent", FLOOD_LINES - 1), what="the last checkpoint answered")
        assert [event[1] for event in events.named("sent")] == list(range(FLOOD_LINES))
        assert events.named("lost") == [] and events.named("connection_lost") == []
        print(f"\n{FLOOD_LINES} lines in {elapsed:.1f} s; latest line behind the 0.4 s schedule by at most {max(lags):.2f} s")
        assert max(lags) < 5.0, "lines piled up at ngIRCd: the bucket is faster than the server takes them"
    finally:
        raw.close()
        reactor_thread.call(connection.stop)


def _started(connection: IrcConnection) -> IrcConnection:
    connection.start()
    return connection


def test_ngircd_restarted_midway_reconnects_rejoins_and_reports_every_token_once(ngircd, reactor_thread):
    """ngIRCd killed while 40 messages wait: each token is sent, unconfirmed (written, no answer) or lost (netsplit)
    once; the client reconnects and rejoins."""
    events = Events()
    connection = start_connection(reactor_thread, tls_server(ngircd), "gwr", events)
    try:
        events.wait_for(lambda event: event[0] == "connected", what="registration")
        reactor_thread.call(connection.join, "#restart")
        events.wait_for(lambda event: event[:4] == ("joined", "lab", "#restart", "gwr"), what="our join")

        def say_all():
            return [connection.say("#restart", [f"before {number}"], number) for number in range(40)]

        assert reactor_thread.call(say_all) == [None] * 40
        events.wait_for(lambda event: event == ("sent", 5), what="the sixth message written")
        ngircd.restart()
        events.wait_for(lambda event: event[0] == "connection_lost", what="the loss")
        reported = [event for event in events.named("sent") + events.named("unconfirmed") + events.named("lost")]
        assert sorted(event[1] for event in reported) == list(range(40)), reported
        assert {event[2] for event in events.named("lost")} == {"netsplit"}
        assert len(events.named("lost")) > 0
        count = len(events.named("joined"))
        events.wait_for(lambda event: len(events.named("connected")) == 2, what="the reconnection", timeout=60)
        events.wait_for(lambda event: len(events.named("joined")) > count, what="the rejoin")
        assert events.named("joined")[-1][:4] == ("joined", "lab", "#restart", "gwr")
        raw = RawIrc("after", ngircd.port)
        try:
            raw.send("JOIN #restart")
            raw.expect(lambda line: "JOIN" in line and "after" in line, "own join")
            assert reactor_thread.call(connection.say, "#restart", ["after the restart"], "again") is None
            raw.expect(lambda line: line.endswith("PRIVMSG #restart :after the restart"), "the message after restart")
            events.wait_for(lambda event: event == ("sent", "again"), what="sent(again)")
        finally:
            raw.close()
    finally:
        reactor_thread.call(connection.stop)


def test_a_kill_loses_what_waited_with_the_reason_kill(ngircd, reactor_thread):
    """An IRC operator kills the gateway's nick while messages wait: they are reported lost (kill), then it reconnects."""
    events = Events()
    server = IrcServer("lab", IRC_ADDRESS, ngircd.port, tls=False, flood=FloodRate(burst_lines=3, seconds_per_line=5.0),
                       backoff=Backoff(initial_delay=0.5, max_delay=2.0))
    connection = start_connection(reactor_thread, server, "victim", events)
    operator = RawIrc("oper", ngircd.port)
    try:
        events.wait_for(lambda event: event[0] == "connected", what="registration")
        name, password = ngircd.settings.operator
        operator.send(f"OPER {name} {password}")
        operator.expect(lambda line: line.split()[1:2] == ["381"], "RPL_YOUREOPER")
        time.sleep(16)  # the slow bucket refills (3 lines, 5 s each)

        def say_all():
            return [connection.say("oper", [f"waiting {number}"], number) for number in range(6)]

        assert reactor_thread.call(say_all) == [None] * 6
        operator.expect(lambda line: "waiting 2" in line, "the burst")
        operator.send("KILL victim :enough")
        lost = events.wait_for(lambda event: event[0] == "connection_lost", what="the kill")
        assert lost == ("connection_lost", "lab", None, "kill")
        assert [event[1:] for event in events.named("lost")] == [(3, "kill"), (4, "kill"), (5, "kill")]
        # Written before the kill, the server's answer to their checkpoint cut short by it: in doubt.
        assert [event[1] for event in events.named("sent") + events.named("unconfirmed")] == [0, 1, 2]
        events.wait_for(lambda event: len(events.named("connected")) == 2, what="the reconnection")
    finally:
        operator.close()
        reactor_thread.call(connection.stop)
