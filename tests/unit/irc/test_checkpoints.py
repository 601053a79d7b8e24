"""What the IRC server took: checkpoint PINGs after messages, a 4xx naming the channel before the PONG refuses them,
a PONG that never comes settles them in doubt; bytes in, bytes out."""

from guard.edges.irc.client import ConnectionLimits, FloodRate, IrcServer
from tests.unit.irc.test_client import drop, feed, registered, written

SLOW = IrcServer("lab", "h", 1, flood=FloodRate(burst_lines=1, seconds_per_line=5.0))


def elapse(clock, seconds: float, step: float = 0.5) -> None:
    """Advance the clock in steps (a task.Clock runs every call due at the end time, with that time as now)."""
    for _ in range(round(seconds / step)):
        clock.advance(step)


def settled(recorder):
    return [event for event in recorder.events if event[0] in ("sent", "refused", "unconfirmed", "lost")]


def test_a_404_before_the_pong_refuses_the_messages_to_that_channel_and_the_others_are_sent():
    """#ops answers 404 (a moderated channel), #dev nothing: at the PONG the #ops message is refused, #dev sent."""
    connection, clock, connector, recorder, protocol = registered()
    connection.say("#ops", ["to a moderated channel"], token="ops")
    connection.say("#dev", ["to an open one"], token="dev")
    clock.advance(0)
    assert written(protocol) == (b"PRIVMSG #ops :to a moderated channel\r\nPRIVMSG #dev :to an open one\r\n"
                                 b"PING guard-1\r\n")
    feed(protocol, b":irc.lab.example 404 gw #ops :Cannot send to channel")
    assert settled(recorder) == []
    feed(protocol, b":irc.lab.example PONG irc.lab.example :guard-1")
    assert settled(recorder) == [("refused", "ops", "404 #ops"), ("sent", "dev")]
    assert connection.describe()["refused"] == 1 and connection.describe()["sent"] == 1


def test_only_a_4xx_naming_a_channel_refuses_and_a_pong_not_ours_settles_nothing():
    """A 401 naming a nick, a 433 and a keepalive PONG leave the message waiting; a 482 naming #ops refuses it."""
    connection, clock, connector, recorder, protocol = registered()
    connection.say("#ops", ["hello"], token="m")
    clock.advance(0)
    assert written(protocol) == b"PRIVMSG #ops hello\r\nPING guard-1\r\n"
    feed(protocol, b":irc.lab.example 401 gw bob :No such nick", b":irc.lab.example 433 gw bob :in use",
         b":irc.lab.example PONG irc.lab.example :xmpp-guard")
    assert settled(recorder) == []
    feed(protocol, b":irc.lab.example 482 gw #OPS :You're not channel operator",
         b":irc.lab.example PONG irc.lab.example :guard-1")
    assert settled(recorder) == [("refused", "m", "482 #OPS")]


def test_a_404_answers_only_lines_written_before_the_checkpoint_it_precedes():
    """A message half written when a checkpoint goes is not settled by its PONG, and a 404 before that PONG is not
    its (its lines after the PING are answered after the PONG): it is sent at the next checkpoint."""
    connection, clock, connector, recorder, protocol = registered(server=SLOW)
    connection.say("#ops", ["first"], token="a")
    clock.advance(5.0)
    assert written(protocol) == b"PRIVMSG #ops first\r\nPING guard-1\r\n"
    connection.say("#ops", ["one", "two"], token="b")
    clock.advance(5.0)
    assert written(protocol) == b"PRIVMSG #ops one\r\n"
    feed(protocol, b":h 404 gw #ops :Cannot send to channel")  # answers "first", written before guard-1
    feed(protocol, b":h PONG h :guard-1")
    assert settled(recorder) == [("refused", "a", "404 #ops")]
    elapse(clock, 10.5)
    assert written(protocol) == b"PRIVMSG #ops two\r\nPING guard-2\r\n"
    feed(protocol, b":h PONG h :guard-2")
    assert settled(recorder)[-1] == ("sent", "b")


def test_a_404_for_a_half_written_message_refuses_it_at_a_later_checkpoint():
    """A 404 for a line written before the checkpoint of a message still half written marks that message; when its
    last line and the next checkpoint are answered, it is refused."""
    connection, clock, connector, recorder, protocol = registered(
        server=IrcServer("lab", "h", 1, flood=FloodRate(burst_lines=1, seconds_per_line=8.0)))
    connection.say("#ops", ["first"], token="a")
    connection.say("#ops", ["one", "two"], token="b")
    clock.advance(8.0)
    assert written(protocol) == b"PRIVMSG #ops first\r\nPRIVMSG #ops one\r\n"
    clock.advance(8.0)  # "a" waited CHECKPOINT_SECONDS (10): a checkpoint goes before "two"
    assert written(protocol) == b"PING guard-1\r\n"
    feed(protocol, b":h 404 gw #ops :Cannot send to channel", b":h PONG h :guard-1")
    assert settled(recorder) == [("refused", "a", "404 #ops")]
    elapse(clock, 16.5)
    assert written(protocol) == b"PRIVMSG #ops two\r\nPING guard-2\r\n"
    feed(protocol, b":h PONG h :guard-2")
    assert settled(recorder)[-1] == ("refused", "b", "404 #ops")


def test_a_pong_that_never_comes_settles_what_the_checkpoint_covers_in_doubt_and_the_next_one_goes():
    """No PONG within pong_seconds: the covered message is unconfirmed ("timeout"); the next message gets a new
    checkpoint and is sent when it answers."""
    connection, clock, connector, recorder, protocol = registered(limits=ConnectionLimits(pong_seconds=10.0))
    connection.say("#ops", ["lost in the server"], token="a")
    clock.advance(0)
    assert written(protocol).endswith(b"PING guard-1\r\n")
    clock.advance(9.9)
    assert settled(recorder) == []
    clock.advance(0.2)
    assert settled(recorder) == [("unconfirmed", "a", "timeout")]
    feed(protocol, b":h PONG h :guard-1")  # too late: nothing is settled twice
    connection.say("#ops", ["next"], token="b")
    clock.advance(0)
    assert written(protocol) == b"PRIVMSG #ops next\r\nPING guard-2\r\n"
    feed(protocol, b":h PONG h :guard-2")
    assert settled(recorder) == [("unconfirmed", "a", "timeout"), ("sent", "b")]


def test_messages_written_and_unconfirmed_are_bounded_in_count_and_bytes():
    """With queue_lines = 2, two written messages wait for their PONG and the third stays queued until it comes;
    with queue_bytes = 40 a message written past 40 unconfirmed bytes waits the same way."""
    connection, clock, connector, recorder, protocol = registered(limits=ConnectionLimits(queue_lines=2))
    for token in ("a", "b"):
        connection.say("#ops", [token], token=token)
    clock.advance(0)
    assert written(protocol) == b"PRIVMSG #ops a\r\nPRIVMSG #ops b\r\nPING guard-1\r\n"
    assert connection.say("#ops", ["c"], token="c") is None
    clock.advance(5)
    assert written(protocol) == b"" and connection.describe()["unanswered"] == 2
    feed(protocol, b":h PONG h :guard-1")
    clock.advance(0)
    assert written(protocol) == b"PRIVMSG #ops c\r\nPING guard-2\r\n"
    assert settled(recorder) == [("sent", "a"), ("sent", "b")]

    connection, clock, connector, recorder, protocol = registered(limits=ConnectionLimits(queue_bytes=40))
    connection.say("#ops", ["x" * 20], token="big")  # 35 bytes written
    connection.say("#ops", ["y"], token="small")  # 35 < 40: written too
    connection.say("#ops", ["z"], token="waits")  # 51 bytes unconfirmed: waits for the PONG
    clock.advance(5)
    assert written(protocol) == b"PRIVMSG #ops xxxxxxxxxxxxxxxxxxxx\r\nPRIVMSG #ops y\r\nPING guard-1\r\n"
    assert connection.describe()["unanswered_bytes"] == 51
    feed(protocol, b":h PONG h :guard-1")
    clock.advance(0)
    assert written(protocol) == b"PRIVMSG #ops z\r\nPING guard-2\r\n"


def test_the_connection_ending_settles_written_messages_in_doubt_and_unwritten_ones_lost():
    """A netsplit with one message written (unconfirmed) and one queued: the first in doubt, the second lost."""
    connection, clock, connector, recorder, protocol = registered(server=SLOW)
    connection.say("#ops", ["written"], token="a")
    connection.say("#ops", ["queued"], token="b")
    drop(protocol)
    assert settled(recorder) == [("unconfirmed", "a", "netsplit"), ("lost", "b", "netsplit")]


def test_a_checkpoint_goes_after_thirty_two_messages_even_while_more_wait():
    """Under a backlog a checkpoint is written after CHECKPOINT_MESSAGES (32) messages, not only when the queue
    empties."""
    connection, clock, connector, recorder, protocol = registered(
        server=IrcServer("lab", "h", 1, flood=FloodRate(burst_lines=60, seconds_per_line=0.01)))
    for number in range(40):
        connection.say("#ops", [f"m{number}"], token=number)
    lines = written(protocol).split(b"\r\n")
    assert lines.index(b"PING guard-1") == 32


def test_a_room_message_the_irc_server_refuses_bounces_to_its_sender_and_is_audited(tmp_path):
    """The bot's relay of alice's message is answered 404: alice's real JID gets the guard's own error (forbidden),
    the audit trail the bounce with the numeric, the books one bounced; IRC's words never reach the stanza."""
    from tests.unit.irc.test_irc_app import alice_joins, audit_records, open_lab, room_message, write_config
    from tests.unit.irc.test_irc_app import written as component_written

    gateway, clock, stream, irc, bot, folder = open_lab(tmp_path, write_config(tmp_path))
    alice_joins(stream)
    component_written(stream)
    bot.transport.clear()
    room_message(stream, "hello moderated", stanza_id="h1")
    clock.advance(1)
    assert irc.written(bot)[-2:] == ["PING guard-1", ""]
    irc.feed(bot, ":irc.lab.example 404 xmppgw #ops :Cannot send to channel (+m) secret words",
             ":irc.lab.example PONG irc.lab.example :guard-1")
    reply = component_written(stream).decode()
    assert reply == ('<message type="error" from="irc.red.example/ops" to="alice@red.example/phone" id="h1">'
                     '<error type="auth"><forbidden xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
                     '<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">the guard could not deliver this stanza</text>'
                     '</error></message>')
    (bounce,) = [r for r in audit_records(folder) if r["event"] == "bounce"]
    assert (bounce["id"], bounce["condition"], bounce["detail"]) == (
        "h1", "forbidden", "the IRC server refused it: 404 #ops")
    summary = gateway.books.summary()
    assert (summary["delivered"], summary["bounced"], summary["in_flight"]) == (0, 1, 0)


def test_a_room_message_whose_checkpoint_never_answers_is_delivered_in_doubt_and_audited(tmp_path):
    """No PONG within pong_seconds (30 s): the message counts delivered (it left) and the audit says unconfirmed."""
    from tests.unit.irc.test_irc_app import alice_joins, audit_records, open_lab, room_message, write_config

    gateway, clock, stream, irc, bot, folder = open_lab(tmp_path, write_config(tmp_path))
    alice_joins(stream)
    room_message(stream, "into the void", stanza_id="v1")
    clock.advance(1)
    assert gateway.books.summary()["in_flight"] == 1
    clock.advance(30)
    assert (gateway.books.summary()["delivered"], gateway.books.summary()["in_flight"]) == (1, 0)
    (record,) = [r for r in audit_records(folder) if r["event"] == "delivery-unconfirmed"]
    assert (record["rule"], record["id"], record["detail"]) == ("irc:delivery-unconfirmed", "v1", "timeout")
