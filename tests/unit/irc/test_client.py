"""IrcConnection on bytes: registration, CAP/SASL, flood bucket, queue bounds, tokens, keepalive, reconnection."""

from __future__ import annotations

import base64

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from guard.edges.irc.client import (
    ConnectionLimits,
    FloodRate,
    IIrcEvents,
    IrcConnection,
    IrcIdentity,
    IrcServer,
    OutgoingLines,
    QueueFull,
    SaslCredentials,
    TokenBucket,
    sasl_chunks,
)
from guard.edges.link.dialler import Backoff

SERVER = IrcServer("lab", "irc.lab.example", 6697, backoff=Backoff(initial_delay=2.0, max_delay=60.0, jitter=0.5))
IDENTITY = IrcIdentity("gw", user="gwuser", realname="Gateway")


@implementer(IIrcEvents)
class Recorder:
    """Every event as a tuple, in order."""

    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.events.append((name, *args))


class Connector:
    """Opens an in-memory transport per attempt; ``refuse`` makes the next attempts fail."""

    def __init__(self):
        self.protocols = []
        self.refuse = False

    def __call__(self, server, factory):
        if self.refuse:
            return defer.fail(ConnectionRefusedError("refused"))
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return defer.succeed(protocol)


def started(server=SERVER, limits=ConnectionLimits(), random=lambda: 0.5, occupant=None):
    clock, connector, recorder = Clock(), Connector(), Recorder()
    connection = IrcConnection(server, IDENTITY, clock, connector, recorder, occupant=occupant, limits=limits,
                               random=random)
    connection.start()
    return connection, clock, connector, recorder


def written(protocol) -> bytes:
    value = protocol.transport.value()
    protocol.transport.clear()
    return value


def feed(protocol, *lines: bytes) -> None:
    protocol.dataReceived(b"".join(line + b"\r\n" for line in lines))


def drop(protocol, failure=None):
    """What the reactor does once the transport is gone."""
    protocol.connectionLost(failure or Failure(ConnectionLost("gone")))


def registered(server=SERVER, **options):
    """A connection through CAP (nothing offered) to 001, with its written bytes cleared and the bucket full."""
    connection, clock, connector, recorder = started(server, **options)
    protocol = connector.protocols[-1]
    feed(protocol, b":irc.lab.example CAP * LS :multi-prefix",
         b":irc.lab.example 001 gw :Welcome", b":irc.lab.example 005 gw NICKLEN=9 CASEMAPPING=ascii :are supported")
    for _ in range(200):
        if not len(protocol.lines):
            break
        clock.advance(0.25)
    clock.advance(server.flood.burst_lines * server.flood.seconds_per_line + 0.5)  # a full bucket
    written(protocol)
    recorder.events.clear()
    return connection, clock, connector, recorder, protocol


def test_registration_writes_cap_ls_nick_user_then_cap_end():
    """A new connection asks for capabilities, registers, and ends CAP when nothing it wants is offered."""
    connection, clock, connector, recorder = started()
    protocol = connector.protocols[0]
    assert written(protocol) == b"CAP LS 302\r\nNICK gw\r\nUSER gwuser 0 * Gateway\r\n"
    feed(protocol, b":irc.lab.example CAP * LS :multi-prefix")
    clock.advance(0.4)
    assert written(protocol) == b"CAP END\r\n"
    feed(protocol, b":irc.lab.example 001 gw :Welcome to the lab")
    assert recorder.events == [("connected", "lab", None, "gw")]
    assert connection.registered


def test_nick_in_use_retries_with_a_suffix_within_nicklen():
    """433 during registration makes the connection try the NickBook's next suffixed nick, within NICKLEN."""
    connection, clock, connector, recorder = started()
    protocol = connector.protocols[0]
    written(protocol)
    feed(protocol, b":irc.lab.example 005 * NICKLEN=3 :are supported",
         b":irc.lab.example 433 * gw :Nickname already in use")
    clock.advance(1)
    assert written(protocol) == b"NICK g|2\r\n"
    feed(protocol, b":irc.lab.example 433 * g|2 :Nickname already in use")
    clock.advance(1)
    assert written(protocol) == b"NICK g|3\r\n"


def test_nick_attempts_are_bounded():
    """Past ``nick_attempts`` refusals the connection quits with the reason nick-in-use."""
    connection, clock, connector, recorder = started(limits=ConnectionLimits(nick_attempts=2))
    protocol = connector.protocols[0]
    for _ in range(3):
        feed(protocol, b":irc.lab.example 433 * x :Nickname already in use")
        clock.advance(1)
    assert protocol.transport.disconnecting
    drop(protocol)
    assert ("connection_lost", "lab", None, "nick-in-use") in recorder.events


def test_cap_requests_sasl_message_tags_and_server_time_and_sasl_plain_authenticates():
    """CAP LS 302 offering sasl, message-tags and server-time: REQ all three, SASL PLAIN, 903, then CAP END."""
    server = IrcServer("lab", "irc.lab.example", 6697, sasl=SaslCredentials("PLAIN", "gw", "s3cret"))
    connection, clock, connector, recorder = started(server)
    protocol = connector.protocols[0]
    written(protocol)
    feed(protocol, b":irc.lab.example CAP * LS * :multi-prefix sasl=PLAIN,EXTERNAL",
         b":irc.lab.example CAP * LS :message-tags server-time away-notify")
    clock.advance(1)
    assert written(protocol) == b"CAP REQ :sasl message-tags server-time\r\n"
    feed(protocol, b":irc.lab.example CAP gw ACK :sasl message-tags server-time")
    clock.advance(1)
    assert written(protocol) == b"AUTHENTICATE PLAIN\r\n"
    feed(protocol, b"AUTHENTICATE +")
    clock.advance(1)
    assert written(protocol) == b"AUTHENTICATE " + base64.b64encode(b"\0gw\0s3cret") + b"\r\n"
    feed(protocol, b":irc.lab.example 900 gw gw!gw@h gw :You are now logged in",
         b":irc.lab.example 903 gw :SASL authentication successful")
    clock.advance(1)
    assert written(protocol) == b"CAP END\r\n"
    feed(protocol, b":irc.lab.example 001 gw :Welcome")
    assert recorder.events == [("connected", "lab", None, "gw")]


def test_sasl_external_sends_an_empty_response(tmp_path):
    """SASL EXTERNAL answers the server's '+' with '+' (the identity is the TLS client certificate)."""
    server = IrcServer("lab", "irc.lab.example", 6697, sasl=SaslCredentials("EXTERNAL"),
                       client_certificate=str(tmp_path / "c.pem"), client_key=str(tmp_path / "c.key"))
    connection, clock, connector, recorder = started(server)
    protocol = connector.protocols[0]
    written(protocol)
    feed(protocol, b":s CAP * LS :sasl=EXTERNAL", b":s CAP * ACK :sasl", b"AUTHENTICATE +")
    clock.advance(2)
    assert written(protocol) == b"CAP REQ sasl\r\nAUTHENTICATE EXTERNAL\r\nAUTHENTICATE +\r\n"


def test_sasl_payloads_are_cut_in_400_byte_chunks_with_a_final_plus_after_a_full_chunk():
    """A 300-byte payload (400 base64 bytes) is one full chunk and '+'; 301 bytes make two chunks; nothing is '+'."""
    assert sasl_chunks(b"x" * 300) == [base64.b64encode(b"x" * 300).decode(), "+"]
    two = sasl_chunks(b"x" * 301)
    assert [len(chunk) for chunk in two] == [400, 4] and "".join(two) == base64.b64encode(b"x" * 301).decode()
    assert sasl_chunks(b"") == ["+"]


@pytest.mark.parametrize("answer", [
    b":s 904 gw :SASL authentication failed",
    b":s 902 gw :You must use a nick assigned to you",
    b":s 906 gw :SASL authentication aborted",
])
def test_sasl_failure_quits_with_a_clear_reason_and_never_ends_cap(answer):
    """A SASL failure numeric closes the connection (sasl-failed); no CAP END, so no unauthenticated registration."""
    server = IrcServer("lab", "irc.lab.example", 6697, sasl=SaslCredentials("PLAIN", "gw", "wrong"))
    connection, clock, connector, recorder = started(server)
    protocol = connector.protocols[0]
    feed(protocol, b":s CAP * LS :sasl", b":s CAP * ACK :sasl", b"AUTHENTICATE +", answer)
    clock.advance(5)
    out = written(protocol)
    assert b"CAP END" not in out and out.endswith(b"QUIT :SASL failed\r\n")
    assert protocol.transport.disconnecting
    drop(protocol)
    assert recorder.events == [("connection_lost", "lab", None, "sasl-failed")]


def test_sasl_configured_but_not_offered_fails_closed():
    """A server that offers no sasl capability gets no registration from a connection configured for SASL."""
    server = IrcServer("lab", "irc.lab.example", 6697, sasl=SaslCredentials("PLAIN", "gw", "pw"))
    connection, clock, connector, recorder = started(server)
    protocol = connector.protocols[0]
    feed(protocol, b":s CAP * LS :multi-prefix")
    assert protocol.transport.disconnecting and protocol.loss_reason == "sasl-failed"


def test_registration_without_sasl_when_sasl_was_configured_fails_closed():
    """A server that ignores CAP and sends 001 straight away is left: SASL was required."""
    server = IrcServer("lab", "irc.lab.example", 6697, sasl=SaslCredentials("PLAIN", "gw", "pw"))
    connection, clock, connector, recorder = started(server)
    protocol = connector.protocols[0]
    feed(protocol, b":s 001 gw :Welcome")
    assert protocol.transport.disconnecting and not connection.registered
    assert recorder.events == []


def test_sasl_plain_over_plain_tcp_is_refused_by_the_configuration():
    """SASL PLAIN without TLS would send the password in clear: the configuration refuses it."""
    with pytest.raises(ValueError, match="only over TLS"):
        IrcServer("lab", "h", 6667, tls=False, sasl=SaslCredentials("PLAIN", "gw", "pw"))


def test_token_bucket_allows_three_lines_at_once_then_one_per_0_4_seconds():
    """ngIRCd's default rate: a burst of 3 lines, then one line every 0.4 s."""
    bucket = TokenBucket(FloodRate(), now=0.0)
    for _ in range(3):
        assert bucket.wait(0.0, 100) == 0
        bucket.take(0.0, 100)
    assert bucket.wait(0.0, 100) == pytest.approx(0.4)
    assert bucket.wait(0.3, 100) == pytest.approx(0.1)
    bucket.take(0.4, 100)
    assert bucket.wait(10.0, 100) == 0  # refilled, but never above the burst
    for _ in range(3):
        bucket.take(10.0, 100)
    assert bucket.wait(10.0, 100) == pytest.approx(0.4)


def test_token_bucket_counts_bytes_when_a_byte_rate_is_set():
    """With a byte budget of 1024 and 512 bytes/s, a third 512-byte line waits one second."""
    bucket = TokenBucket(FloodRate(burst_lines=10, seconds_per_line=0.01, burst_bytes=1024, bytes_per_second=512), 0.0)
    bucket.take(0.0, 512)
    bucket.take(0.0, 512)
    assert bucket.wait(0.0, 512) == pytest.approx(1.0)


def test_messages_leave_at_the_flood_rate_in_order():
    """Ten messages: three at once, then one every 0.4 s, in the order taken, then one checkpoint PING; each is
    reported sent once, when its PONG comes back."""
    connection, clock, connector, recorder, protocol = registered()
    for number in range(10):
        assert connection.say("#ops", [f"line {number}"], token=number) is None
    assert written(protocol) == b"".join(b"PRIVMSG #ops :line %d\r\n" % n for n in range(3))
    start, times, pings = clock.seconds(), [], []
    for _ in range(400):
        clock.advance(0.01)
        out = written(protocol)
        if out.startswith(b"PING"):
            pings.append(out)
        elif out:
            assert out == b"PRIVMSG #ops :line %d\r\n" % (len(times) + 3)
            times.append(clock.seconds() - start)
    gaps = [later - earlier for earlier, later in zip([0.0] + times, times)]
    assert len(times) == 7 and all(0.39 <= gap <= 0.415 for gap in gaps), gaps
    assert pings == [b"PING guard-1\r\n"] and recorder.events == []
    feed(protocol, b":irc.lab.example PONG irc.lab.example :guard-1")
    assert recorder.events == [("sent", number) for number in range(10)]


def test_a_message_of_several_lines_is_sent_when_its_last_line_is_written():
    """The token of a three-line message is reported after its third line and the checkpoint after it, not before."""
    connection, clock, connector, recorder, protocol = registered(
        server=IrcServer("lab", "h", 1, flood=FloodRate(burst_lines=2, seconds_per_line=1.0)))
    connection.say("#ops", ["one", "two", "three"], token="m")
    clock.advance(1.0)
    assert written(protocol) == b"PRIVMSG #ops one\r\nPRIVMSG #ops two\r\nPRIVMSG #ops three\r\n"
    feed(protocol, b":h PONG h :guard-1")  # no checkpoint was written yet: not ours
    clock.advance(1.0)
    assert written(protocol) == b"PING guard-1\r\n" and recorder.events == []
    feed(protocol, b":h PONG h :guard-1")
    assert recorder.events == [("sent", "m")]


def test_action_and_notice_are_written_as_ctcp_action_and_notice():
    """An action is a CTCP ACTION in a PRIVMSG; a notice is a NOTICE."""
    connection, clock, connector, recorder, protocol = registered()
    connection.say("#ops", ["waves"], token=1, kind="action")
    connection.say("#ops", ["hello all"], token=2, kind="notice")
    assert written(protocol) == b"PRIVMSG #ops :\x01ACTION waves\x01\r\nNOTICE #ops :hello all\r\n"


def test_the_queue_refuses_past_its_lines_and_reports_nothing_for_what_it_refused():
    """Bounded in lines: a message past the bound is refused whole, with the reason, and never reported."""
    connection, clock, connector, recorder, protocol = registered(
        limits=ConnectionLimits(queue_lines=4), server=IrcServer("lab", "h", 1, flood=FloodRate(1, 5.0)))
    assert connection.say("#ops", ["a"], token=1) is None  # written at once (the burst)
    assert connection.say("#ops", ["b", "c", "d"], token=2) is None
    assert connection.say("#ops", ["e", "f"], token=3) == "queue-lines"
    assert connection.say("#ops", ["g"], token=4) is None
    assert connection.describe()["queue_lines"] == 4
    assert connection.describe()["refusals"] == {"queue-lines": 1}
    assert recorder.events == []  # "a" was written; no checkpoint yet (more waits): not known taken


def test_the_queue_refuses_past_its_bytes():
    """Bounded in bytes: 16 + 165 bytes wait, 46 more would pass 200: refused (queue-bytes)."""
    connection, clock, connector, recorder, protocol = registered(
        limits=ConnectionLimits(queue_bytes=200), server=IrcServer("lab", "h", 1, flood=FloodRate(1, 5.0)))
    connection.say("#ops", ["a"], token=1)
    assert connection.say("#ops", ["b"], token=2) is None
    assert connection.say("#ops", ["x" * 150], token=3) is None
    assert connection.describe()["queue_bytes"] == 16 + 165
    assert connection.say("#ops", ["y" * 30], token=4) == "queue-bytes"
    assert connection.say("#ops", ["z"], token=5) is None


def test_outgoing_lines_refuse_a_flood_of_urgent_lines():
    """More urgent lines than the bound is QueueFull: a server making us PONG without end."""
    lines = OutgoingLines(max_lines=10, max_bytes=1000, max_urgent=2)
    lines.urgent(b"PONG a\r\n")
    lines.urgent(b"PONG b\r\n")
    with pytest.raises(QueueFull):
        lines.urgent(b"PONG c\r\n")


def test_a_ping_flood_closes_the_connection():
    """A server that sends PINGs faster than the flood rate lets us answer fills the urgent queue: closed (protocol)."""
    connection, clock, connector, recorder, protocol = registered(limits=ConnectionLimits(urgent_lines=4))
    feed(protocol, *[b"PING :x%d" % n for n in range(10)])
    assert protocol.transport.disconnecting and protocol.loss_reason == "protocol"


def test_invalid_text_is_refused_before_it_is_queued():
    """A line with CR or LF in it is refused (invalid-line), never written."""
    connection, clock, connector, recorder, protocol = registered()
    assert connection.say("#ops", ["evil\r\nQUIT :bye"], token=1) == "invalid-line"
    assert written(protocol) == b""


def test_tokens_not_written_when_the_connection_drops_are_lost_once_with_the_reason():
    """Written messages no checkpoint confirmed are reported unconfirmed (in doubt); the rest are reported lost
    (netsplit); exactly once each."""
    connection, clock, connector, recorder, protocol = registered()
    for number in range(6):
        connection.say("#ops", [f"m{number}"], token=number)
    clock.advance(0.4)
    drop(protocol)
    clock.advance(100)
    unconfirmed = [event for event in recorder.events if event[0] == "unconfirmed"]
    lost = [event for event in recorder.events if event[0] == "lost"]
    assert unconfirmed == [("unconfirmed", number, "netsplit") for number in range(4)]
    assert lost == [("lost", 4, "netsplit"), ("lost", 5, "netsplit")]
    assert ("connection_lost", "lab", None, "netsplit") in recorder.events


def test_a_nick_change_is_a_nick_line_after_what_waits_and_the_nick_of_later_registrations():
    """change_nick writes NICK behind the queued messages (none lost, no reconnection) and registers as it later."""
    connection, clock, connector, recorder, protocol = registered()
    assert connection.say("#ops", ["before the rename"], token="m1") is None
    assert connection.change_nick("alicia") is None
    assert connection.change_nick("bad nick") == "invalid-line"
    clock.advance(1.0)
    assert written(protocol) == b"PRIVMSG #ops :before the rename\r\nNICK alicia\r\nPING guard-1\r\n"
    feed(protocol, b":gw!u@h NICK alicia")
    assert connection.nick == "alicia" and len(connector.protocols) == 1
    drop(protocol)
    clock.advance(10)
    assert b"NICK alicia\r\n" in written(connector.protocols[-1])
    assert [event for event in recorder.events if event[0] in ("sent", "lost", "unconfirmed")] == [
        ("unconfirmed", "m1", "netsplit")]


def test_a_topic_taken_with_a_token_is_reported_sent_when_written_or_lost_when_the_connection_drops():
    """A room subject is settled like a message: in doubt when its TOPIC line left unconfirmed, lost (once) when it
    never did."""
    connection, clock, connector, recorder, protocol = registered()
    for number in range(4):
        connection.say("#ops", [f"m{number}"], token=number)
    assert connection.set_topic("#ops", "rota week 49", token="topic-1") is None
    assert connection.set_topic("#ops", "rota week 50", token="topic-2") is None
    clock.advance(0.4)
    assert written(protocol).endswith(b"PRIVMSG #ops m3\r\n")
    clock.advance(0.4)
    assert written(protocol) == b"TOPIC #ops :rota week 49\r\n"
    drop(protocol)
    assert [event for event in recorder.events if event[0] in ("sent", "lost", "unconfirmed")] == [
        ("unconfirmed", 0, "netsplit"), ("unconfirmed", 1, "netsplit"), ("unconfirmed", 2, "netsplit"),
        ("unconfirmed", 3, "netsplit"), ("unconfirmed", "topic-1", "netsplit"), ("lost", "topic-2", "netsplit")]


@pytest.mark.parametrize("farewell, reason", [
    (b"ERROR :Closing connection: gw[127.0.0.1] (Killed (oper (go away)))", "kill"),
    (b":oper!o@h KILL gw :go away", "kill"),
    (b"ERROR :Server going down", "restart"),
    (b"ERROR :Closing Link: gw (Banned)", "closed"),
])
def test_the_reason_a_connection_ended_is_what_the_server_said(farewell, reason):
    """A kill, a restart and another closing are told apart for the lost tokens."""
    connection, clock, connector, recorder, protocol = registered(
        server=IrcServer("lab", "h", 1, flood=FloodRate(1, 5.0)))
    connection.say("#ops", ["one"], token="a")
    connection.say("#ops", ["two"], token="b")
    feed(protocol, farewell)
    drop(protocol, Failure(ConnectionDone()))
    assert ("lost", "b", reason) in recorder.events and ("unconfirmed", "a", reason) in recorder.events


def test_nothing_is_taken_while_disconnected():
    """Between a loss and the next connection a message is refused (not-connected), never held."""
    connection, clock, connector, recorder, protocol = registered()
    drop(protocol)
    assert connection.say("#ops", ["late"], token="x") == "not-connected"
    assert ("lost", "x", "netsplit") not in recorder.events


def test_stop_quits_and_loses_what_was_not_written_as_closed():
    """Stopping writes QUIT at once and reports what waited as lost (closed)."""
    connection, clock, connector, recorder, protocol = registered(
        server=IrcServer("lab", "h", 1, flood=FloodRate(1, 5.0)))
    connection.say("#ops", ["one"], token="a")
    connection.say("#ops", ["two"], token="b")
    connection.stop()
    assert written(protocol).endswith(b"QUIT :xmpp-guard gateway closing\r\n")
    drop(protocol, Failure(ConnectionDone()))
    clock.advance(1000)
    assert ("lost", "b", "closed") in recorder.events
    assert len(connector.protocols) == 1


def test_reconnects_after_a_backoff_with_jitter_within_its_bounds():
    """After a loss the next attempt comes after initial_delay*(1±jitter); failures double it up to the maximum."""
    for random, low_or_high in ((lambda: 0.0, 1.0), (lambda: 1.0, 3.0)):
        connection, clock, connector, recorder, protocol = registered(random=random)
        drop(protocol)
        clock.advance(low_or_high - 0.01)
        assert len(connector.protocols) == 1
        clock.advance(0.02)
        assert len(connector.protocols) == 2
    connection, clock, connector, recorder, protocol = registered(random=lambda: 1.0)
    connector.refuse = True
    drop(protocol)
    delays = []
    for _ in range(6):
        delays.append(connection.dialler.last_delay)
        clock.advance(connection.dialler.last_delay)
    assert delays == [3.0, 6.0, 12.0, 24.0, 48.0, 90.0]


def test_a_refused_connection_is_logged_as_irc_not_link():
    """The IRC connection's dialler names what it dials: its failures are logged as "irc: dial attempt ..."."""
    from twisted.logger import capturedLogs, formatEvent

    connection, clock, connector, recorder, protocol = registered(random=lambda: 0.0)
    connector.refuse = True
    with capturedLogs() as events:
        drop(protocol)
        clock.advance(connection.dialler.last_delay)
    logged = [formatEvent(event) for event in events if "dial attempt" in event.get("log_format", "")]
    assert len(logged) == 1 and logged[0].startswith("irc: dial attempt 2 failed")


def test_rejoins_its_channels_after_reconnecting():
    """Channels joined before a loss are joined again, first thing after the new registration."""
    connection, clock, connector, recorder, protocol = registered()
    assert connection.join("#ops") is None
    assert connection.join("#dev", key="k") is None
    assert written(protocol) == b"JOIN #ops\r\nJOIN #dev k\r\n"
    drop(protocol)
    clock.advance(10)
    again = connector.protocols[-1]
    feed(again, b":s CAP * LS :x", b":s 001 gw :Welcome")
    clock.advance(5)
    assert written(again).endswith(b"CAP END\r\nJOIN #ops\r\nJOIN #dev k\r\n")
    assert recorder.events[-1] == ("connected", "lab", None, "gw")


def test_a_kick_is_reported_and_the_channel_is_not_rejoined():
    """After our own kick the channel leaves the rejoin list: the bridge decides what happens next."""
    connection, clock, connector, recorder, protocol = registered()
    connection.join("#ops")
    feed(protocol, b":gw!u@h JOIN #ops", b":op!o@h KICK #ops gw :out")
    assert recorder.events[-1] == ("kicked", "lab", "#ops", "gw", "op", "out")
    assert connection.describe()["channels"] == []


def test_channel_events_reach_the_listener():
    """Joins, names (with their prefixes), channel modes, topic, messages, actions, notices, nick changes, parts,
    kicks and quits, in order (a MODE on another channel or on our nick is not one)."""
    connection, clock, connector, recorder, protocol = registered()
    connection.join("#ops")
    feed(protocol,
         b":gw!u@h JOIN #ops",
         b":s 332 gw #ops :Today: backups",
         b":s 353 gw = #ops :gw @alice +bob",
         b":s 366 gw #ops :End of NAMES list",
         b":alice!a@h MODE #ops +ov gw bob",
         b":alice!a@h MODE #elsewhere +o gw",
         b":alice!a@h MODE gw +i",
         b":alice!a@h PRIVMSG #ops :hello",
         b"@time=2026-12-01T10:00:00.000Z :bob!b@h PRIVMSG #ops :\x01ACTION waves\x01",
         b":bob!b@h PRIVMSG #ops :\x01VERSION\x01",
         b":alice!a@h NOTICE #ops :note",
         b":alice!a@h TOPIC #ops :new topic",
         b":bob!b@h NICK robert",
         b":robert!b@h PART #ops :later",
         b":carol!c@h JOIN #ops",
         b":alice!a@h KICK #ops carol :behave",
         b":alice!a@h QUIT :Quit: bye",
         b":alice!a@h PRIVMSG gw :private",
         b":s NOTICE gw :server notice")
    assert recorder.events == [
        ("joined", "lab", "#ops", "gw"),
        ("topic", "lab", "#ops", "Today: backups", None),
        ("names", "lab", "#ops", ("gw", "@alice", "+bob")),
        ("mode", "lab", "#ops", "+ov", ("gw", "bob")),
        ("message", "lab", "#ops", "alice", "privmsg", "hello", {}),
        ("message", "lab", "#ops", "bob", "action", "waves", {"time": "2026-12-01T10:00:00.000Z"}),
        ("message", "lab", "#ops", "alice", "notice", "note", {}),
        ("topic", "lab", "#ops", "new topic", "alice"),
        ("nick_changed", "lab", "bob", "robert"),
        ("parted", "lab", "#ops", "robert", "later"),
        ("joined", "lab", "#ops", "carol"),
        ("kicked", "lab", "#ops", "carol", "alice", "behave"),
        ("quit", "lab", "alice", "Quit: bye"),
        ("message", "lab", "gw", "alice", "privmsg", "private", {}),
    ]


def test_events_for_channels_we_did_not_ask_for_are_ignored():
    """A server forcing us into a channel, or talking about one we are not in, is not believed."""
    connection, clock, connector, recorder, protocol = registered()
    feed(protocol, b":gw!u@h JOIN #forced", b":x!x@h PRIVMSG #forced :hi", b":x!x@h JOIN #other",
         b":x!x@h PRIVMSG someone_else :hi")
    assert recorder.events == []


def test_names_are_bounded():
    """A NAMES reply longer than names_per_channel keeps only the first nicks."""
    connection, clock, connector, recorder, protocol = registered(limits=ConnectionLimits(names_per_channel=3))
    connection.join("#ops")
    feed(protocol, b":gw!u@h JOIN #ops", b":s 353 gw = #ops :a b c d e", b":s 353 gw = #ops :f g",
         b":s 366 gw #ops :End")
    assert recorder.events[-1] == ("names", "lab", "#ops", ("a", "b", "c"))


def test_capabilities_acknowledged_are_bounded_over_many_acks():
    """A server acknowledging new capability names again and again keeps at most ``capabilities`` of them."""
    connection, clock, connector, recorder, protocol = registered(limits=ConnectionLimits(capabilities=8))
    for round_ in range(50):
        names = " ".join(f"cap{round_}-{n}" for n in range(8))
        feed(protocol, f":irc.lab.example CAP gw ACK :{names}".encode())
        clock.advance(1.0)
    assert len(protocol._acked) == 8
    assert connection.registered


def test_channels_joined_are_bounded():
    """A connection joins at most max_channels channels; the next join is refused."""
    connection, clock, connector, recorder, protocol = registered(limits=ConnectionLimits(max_channels=2))
    assert connection.join("#a") is None and connection.join("#b") is None
    assert connection.join("#c") == "too-many-channels"


def test_an_overlong_line_from_the_server_closes_the_connection():
    """Unparsed input beyond the bound (no line end in sight) closes the connection (protocol)."""
    connection, clock, connector, recorder, protocol = registered(limits=ConnectionLimits(unparsed_bytes=1024))
    protocol.dataReceived(b":s NOTICE gw :" + b"x" * 2000)
    assert protocol.transport.disconnecting and protocol.loss_reason == "protocol"


def test_bad_lines_are_counted_and_skipped():
    """A line parse_line refuses (NUL) is skipped and counted; the next line is read."""
    connection, clock, connector, recorder, protocol = registered()
    connection.join("#ops")
    feed(protocol, b":gw!u@h JOIN #ops", b":x!x@h PRIVMSG #ops :a\0b", b":x!x@h PRIVMSG #ops :fine")
    assert recorder.events[-1] == ("message", "lab", "#ops", "x", "privmsg", "fine", {})
    assert connection.describe()["bad_lines"] == 1


def test_ping_is_answered_with_pong():
    """The server's PING is answered with PONG and its token."""
    connection, clock, connector, recorder, protocol = registered()
    feed(protocol, b"PING :irc.lab.example")
    assert written(protocol) == b"PONG irc.lab.example\r\n"


def test_a_silent_server_is_pinged_then_dropped_as_timeout():
    """After idle_seconds of silence we PING; after pong_seconds more without a word the connection drops."""
    limits = ConnectionLimits(idle_seconds=60, pong_seconds=20)
    connection, clock, connector, recorder, protocol = registered(limits=limits)
    clock.advance(59.9 - clock.seconds())  # the server last spoke at 0
    assert written(protocol) == b""
    clock.advance(0.2)
    assert written(protocol) == b"PING xmpp-guard\r\n"
    clock.advance(19)
    assert not protocol.transport.disconnecting
    clock.advance(1.1)
    assert protocol.transport.disconnecting and protocol.loss_reason == "timeout"


def test_a_server_that_answers_the_ping_keeps_the_connection():
    """A PONG (any line) within pong_seconds keeps the connection up."""
    limits = ConnectionLimits(idle_seconds=60, pong_seconds=20)
    connection, clock, connector, recorder, protocol = registered(limits=limits)
    clock.advance(60.1 - clock.seconds())
    clock.advance(1)
    feed(protocol, b":s PONG s :xmpp-guard")
    clock.advance(25)
    assert not protocol.transport.disconnecting


def test_registration_must_finish_in_time():
    """A server that never sends 001 is left after register_seconds (timeout)."""
    connection, clock, connector, recorder = started(limits=ConnectionLimits(register_seconds=30))
    protocol = connector.protocols[0]
    clock.advance(30.1)
    assert protocol.transport.disconnecting and protocol.loss_reason == "timeout"


def test_a_nicklen_too_short_for_any_suffix_gives_up_as_nick_in_use():
    """When the NickBook's suffix rule has no nick within NICKLEN, the connection quits (nick-in-use), never loops."""
    connection, clock, connector, recorder = started()
    protocol = connector.protocols[0]
    feed(protocol, b":s 005 * NICKLEN=1 :are supported", b":s 433 * gw :Nickname already in use")
    assert protocol.transport.disconnecting and protocol.loss_reason == "nick-in-use"


def test_tls_options_verify_against_the_configured_authority_and_present_the_client_certificate(tmp_path):
    """With a CA file the options verify the server's name against it; a configured client certificate is loaded."""
    from guard.edges.irc.client import tls_options
    from guard.lab.pki import CertificateAuthority

    authority = CertificateAuthority.create("irc-test-ca")
    ca = authority.write(tmp_path)
    client = authority.write_leaf(tmp_path, "gateway", ["gateway.example"])
    server = IrcServer("lab", "127.0.5.1", 6697, ca_file=str(ca), server_name="irc.lab.example",
                       client_certificate=str(client.certificate), client_key=str(client.key))
    from OpenSSL import SSL
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.tls import TLSMemoryBIOFactory

    tls = TLSMemoryBIOFactory(tls_options(server), True, Factory.forProtocol(Protocol)).buildProtocol(None)
    tls.makeConnection(StringTransport())
    connection = tls._tlsConnection
    assert connection.get_context().get_verify_mode() & SSL.VERIFY_PEER
    assert "gateway.example" in connection.get_certificate().to_cryptography().subject.rfc4514_string()
    assert connection.get_servername() == b"irc.lab.example"


def test_tls_verify_false_is_logged_as_an_error(tmp_path):
    """tls_verify = false is honoured only as configured, and said loudly (an error in the log)."""
    from twisted.logger import LogLevel, globalLogPublisher

    from guard.edges.irc.client import tls_options

    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        options = tls_options(IrcServer("lab", "127.0.5.1", 6697, tls_verify=False))
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert options.verify is False
    assert any(event.get("log_level") == LogLevel.error and "NOT verified" in event.get("log_format", "")
               for event in seen)


def test_a_line_whose_handling_fails_closes_the_connection(monkeypatch):
    """An exception while handling a server line ends the connection (protocol) instead of leaving it half-handled."""
    connection, clock, connector, recorder, protocol = registered()

    def broken(message):
        raise RuntimeError("boom")

    monkeypatch.setattr(protocol, "_on_TOPIC", broken)
    feed(protocol, b":x!x@h TOPIC #ops :anything")
    assert protocol.transport.disconnecting and protocol.loss_reason == "protocol"
