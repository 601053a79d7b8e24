"""guard-irc's composition root, bytes in and bytes out: the component on a StringTransport, the IRC connections on StringTransports, a real bridge policy, the audit trail in a file."""

import json
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from guard.app.irc import IrcGateway, gateway_snapshot, irc_registry, irc_server, main, read_room_presence
from guard.app.irc_config import load_irc_config
from guard.app.management.pages import status_page
from guard.core.policy.elements import parse_stanza_text
from guard.edges.audit import AuditLog

PROJECT = Path(__file__).resolve().parents[3]
POLICY = PROJECT / "policies" / "irc-bridge.toml"
PROSODY_HEADER = (b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' "
                  b"xmlns='jabber:component:accept' id='s1' from='irc.red.example'>")
LISTENER = "irc.red.example/ops"
SECRET = "MQgCAQQGA4g3AQ=="
RESTRICTED = "MQgCAQIGA4g3AQ=="


def write_config(folder, occupant_connections=0):
    path = folder / "irc.toml"
    path.write_text(f"""
[gateway]
audit = "{folder / 'audit.jsonl'}"
status = "{folder / 'status.json'}"

[xmpp]
component = "irc.red.example"
connect = "tcp:host=127.0.5.2:port=15347"
secret = "s3cret"
room_service = "conference.red.example"

[networks.lab]
host = "127.0.5.1"
port = 16697
nick = "xmppgw"

[[bridges]]
room = "ops@conference.red.example"
network = "lab"
channel = "#ops"
policy = "{POLICY}"
max_occupant_connections = {occupant_connections}
""")
    return path


class ComponentEndpoint:
    """Prosody's component port: each connect gives a stream over a StringTransport."""

    def __init__(self):
        self.streams = []

    def connect(self, factory):
        stream = factory.buildProtocol(None)
        stream.makeConnection(StringTransport())
        self.streams.append(stream)
        return defer.succeed(stream)


class IrcServerSide:
    """Every IRC connection the gateway opens, each on a StringTransport: what it wrote, and lines fed to it."""

    def __init__(self):
        self.protocols = []

    def connect(self, server, factory):
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return defer.succeed(protocol)

    def feed(self, protocol, *lines):
        for line in lines:
            protocol.dataReceived(line.encode() + b"\r\n")

    def written(self, protocol) -> list[str]:
        return protocol.transport.value().decode().split("\r\n")


@pytest.fixture
def lab(tmp_path):
    """A gateway whose component stream is open and whose bot is registered in #ops."""
    return open_lab(tmp_path, write_config(tmp_path))


def open_lab(tmp_path, config_path):
    """The gateway of the configuration ``config_path``, its component stream open, its bot registered in #ops."""
    config = load_irc_config(str(config_path))
    clock, component, irc = MemoryReactorClock(), ComponentEndpoint(), IrcServerSide()
    audit = AuditLog(str(tmp_path / "audit.jsonl"))
    gateway = IrcGateway(config, clock, irc.connect, component, audit)
    gateway.start()
    stream = component.streams[0]
    stream.dataReceived(PROSODY_HEADER + b"<handshake/>")
    bot = irc.protocols[0]
    irc.feed(bot, ":irc.lab.example 001 xmppgw :Welcome", ":irc.lab.example 005 xmppgw NICKLEN=9 CASEMAPPING=ascii :ok",
             ":xmppgw!~x@h JOIN #ops", ":irc.lab.example 353 xmppgw = #ops :@xmppgw carol",
             ":irc.lab.example 366 xmppgw #ops :End")
    clock.advance(5)
    return gateway, clock, stream, irc, bot, tmp_path


def written(stream) -> bytes:
    value = stream.transport.value()
    stream.transport.clear()
    return value


def alice_joins(stream, with_real_jid=True):
    item = "<item affiliation='none' role='participant' jid='alice@red.example/phone'/>" if with_real_jid else \
        "<item affiliation='none' role='participant'/>"
    stream.dataReceived(f"<presence from='ops@conference.red.example/alice' to='{LISTENER}'>"
                        f"<x xmlns='http://jabber.org/protocol/muc#user'>{item}</x></presence>".encode())


def room_message(stream, body, label=None, stanza_id="m1"):
    labelled = "" if label is None else (
        "<securitylabel xmlns='urn:xmpp:sec-label:0'><label>"
        f"<esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>{label}</esssecuritylabel></label></securitylabel>")
    stream.dataReceived(f"<message from='ops@conference.red.example/alice' to='{LISTENER}' type='groupchat' "
                        f"id='{stanza_id}'><body>{body}</body>{labelled}</message>".encode())


def audit_records(folder):
    return [json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines()]


def test_on_attaching_the_gateway_joins_the_room_without_history_and_as_each_irc_user():
    """The component opens: the listener joins ops as 'irc' asking for no history, and carol (seen in #ops) joins too."""
    # The fixture is not used: what is written before the fixture clears anything is what matters here.
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        config = load_irc_config(str(write_config(Path(folder))))
        clock, component, irc = MemoryReactorClock(), ComponentEndpoint(), IrcServerSide()
        gateway = IrcGateway(config, clock, irc.connect, component, AuditLog(None))
        gateway.start()
        bot = irc.protocols[0]
        irc.feed(bot, ":irc.lab.example 001 xmppgw :Welcome", ":xmppgw!~x@h JOIN #ops",
                 ":irc.lab.example 353 xmppgw = #ops :@xmppgw carol", ":irc.lab.example 366 xmppgw #ops :End")
        stream = component.streams[0]
        stream.transport.clear()
        stream.dataReceived(PROSODY_HEADER)
        stream.transport.clear()
        stream.dataReceived(b"<handshake/>")
        out = stream.transport.value().decode()
        assert (f'<presence from="{LISTENER}" to="ops@conference.red.example/irc">'
                "<x xmlns=\"http://jabber.org/protocol/muc\"><history maxstanzas=\"0\"/></x></presence>") in out
        assert 'to="ops@conference.red.example/carol"' in out and 'from="carol%lab@irc.red.example' in out


def test_a_released_room_message_is_said_on_irc_with_its_flot_and_settles_as_delivered(lab):
    """A RESTRICTED message: the bot relays '<alice> Protective Marking: RESTRICTED' then the text, then a checkpoint
    PING; its PONG (no 404 before it) settles the message delivered."""
    gateway, clock, stream, irc, bot, _ = lab
    alice_joins(stream)
    bot.transport.clear()
    room_message(stream, "the rota", RESTRICTED)
    clock.advance(5)
    lines = irc.written(bot)
    assert lines[:3] == ["PRIVMSG #ops :<alice> Protective Marking: RESTRICTED", "PRIVMSG #ops :<alice> the rota",
                         "PING guard-1"]
    assert gateway.books.summary()["delivered"] == 0
    irc.feed(bot, ":irc.lab.example PONG irc.lab.example :guard-1")
    assert gateway.books.summary()["delivered"] == 1 and gateway.books.balanced()


def test_a_secret_room_message_bounces_to_the_senders_real_jid_and_is_audited(lab):
    """SECRET: nothing on IRC; policy-violation from the listener to alice's real JID (not her occupant JID); an audit record."""
    gateway, clock, stream, irc, bot, folder = lab
    alice_joins(stream)
    written(stream)
    bot.transport.clear()
    room_message(stream, "the plan", SECRET, "s1")
    clock.advance(5)
    assert "the plan" not in bot.transport.value().decode()
    reply = written(stream).decode()
    assert reply.startswith(f'<message type="error" from="{LISTENER}" to="alice@red.example/phone" id="s1">')
    assert "<policy-violation " in reply and "the plan" not in reply
    bounce = [record for record in audit_records(folder) if record["event"] == "bounce"]
    assert [(record["id"], record["condition"], record["rule"]) for record in bounce] == [
        ("s1", "policy-violation", "label-not-releasable")]
    assert gateway.books.summary()["bounced"] == 1 and gateway.books.balanced()


def test_a_bounce_whose_sender_the_room_hid_is_never_sent_to_the_occupant_jid(lab):
    """No real JID shown: the bounce is counted and audited as lost, nothing is written (a room kicks occupants that bounce)."""
    gateway, clock, stream, irc, bot, folder = lab
    alice_joins(stream, with_real_jid=False)
    written(stream)
    room_message(stream, "the plan", SECRET, "s2")
    assert written(stream) == b""
    assert gateway.settlement.counts["bounce-lost"] == 1
    assert [record["event"] for record in audit_records(folder)][-2:] == ["bounce", "bounce-lost"]


def test_a_room_message_lost_with_its_irc_connection_bounces_to_its_sender(lab):
    """The bot's connection drops before the line is written (a netsplit): alice gets remote-server-timeout, not silence."""
    gateway, clock, stream, irc, bot, _ = lab
    alice_joins(stream)
    written(stream)
    for number in range(8):  # more than the flood burst: the last ones wait in the queue
        room_message(stream, f"line {number}", None, f"n{number}")
    bot.connectionLost(Failure(ConnectionError("netsplit")))
    replies = written(stream).decode()
    assert "<remote-server-timeout " in replies and 'to="alice@red.example/phone"' in replies
    summary = gateway.books.summary()
    assert summary["accepted"] == 8 and summary["in_flight"] == 0 and summary["bounced"] >= 1


def test_an_irc_message_reaches_the_room_labelled_and_settles_as_delivered(lab):
    """carol says hi in #ops: a groupchat from her occupant JID with the IRC side's UNCLASSIFIED label."""
    gateway, clock, stream, irc, bot, _ = lab
    written(stream)
    irc.feed(bot, ":carol!~c@h PRIVMSG #ops :hi there")
    clock.advance(1)
    out = written(stream).decode()
    assert out.startswith('<message from="carol%lab@irc.red.example/ops~1" to="ops@conference.red.example" '
                          'type="groupchat" id="irc-gw-1"><body>hi there</body><securitylabel')
    assert ">UNCLASSIFIED</displaymarking>" in out
    assert gateway.books.summary()["delivered"] == 1


def test_an_irc_message_while_prosody_is_away_is_bounced_to_the_irc_user_with_a_notice(lab):
    """The component stream is gone: carol's message settles as bounced and the bot tells her with the gateway's text."""
    gateway, clock, stream, irc, bot, _ = lab
    stream.connectionLost(Failure(ConnectionError("prosody restarted")))
    bot.transport.clear()
    irc.feed(bot, ":carol!~c@h PRIVMSG #ops :anyone?")
    clock.advance(5)
    assert gateway.books.summary()["bounced"] == 1 and gateway.books.balanced()
    assert "NOTICE carol :The gateway could not deliver your message to the XMPP room." in irc.written(bot)


def test_iqs_to_the_component_are_answered_with_service_unavailable(lab):
    """Nothing is served to IQs: a get gets service-unavailable, a result gets nothing."""
    gateway, clock, stream, irc, bot, _ = lab
    written(stream)
    stream.dataReceived(b"<iq type='get' id='q1' from='alice@red.example/phone' to='irc.red.example'>"
                        b"<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    reply = written(stream).decode()
    assert reply.startswith('<iq type="error" from="irc.red.example" to="alice@red.example/phone" id="q1">')
    assert "<service-unavailable " in reply
    stream.dataReceived(b"<iq type='result' id='q2' from='alice@red.example/phone' to='irc.red.example'/>")
    assert written(stream) == b""


def test_the_metrics_and_the_management_page_show_bridges_connections_and_refusals_by_rule(lab):
    """After a refusal: xmpp_guard_irc_refusals_total names the rule; the page has an IRC section with the bridge."""
    from prometheus_client import generate_latest

    gateway, clock, stream, irc, bot, _ = lab
    alice_joins(stream)
    room_message(stream, "the plan", SECRET, "s3")
    text = generate_latest(irc_registry(gateway)).decode()
    assert 'xmpp_guard_irc_refusals_total{rule="label-not-releasable"} 1.0' in text
    assert 'xmpp_guard_irc_connections{kind="bot",network="lab",registered="yes"} 1.0' in text
    assert "xmpp_guard_irc_component_up 1.0" in text and "xmpp_guard_irc_bridges 1.0" in text
    page = status_page(gateway_snapshot(gateway), [], False, clock.seconds()).decode()
    assert '<section id="irc"><h2>IRC bridges</h2>' in page and "ops@conference.red.example" in page
    assert "label-not-releasable" in page


def test_the_real_jid_of_an_occupant_is_read_from_the_rooms_presence():
    """A non-anonymous room shows the real JID in muc#user; a nick change (303) names the new nick."""
    presence = parse_stanza_text(
        "<presence xmlns='jabber:server' from='ops@conference.red.example/alice' to='irc.red.example/ops' "
        "type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'>"
        "<item jid='alice@red.example/phone' nick='alicia'/><status code='303'/></x></presence>")
    read = read_room_presence(presence, "conference.red.example")
    assert (read.room, read.nick, read.available, read.real_jid, read.new_nick) == (
        "ops@conference.red.example", "alice", False, "alice@red.example/phone", "alicia")
    other = parse_stanza_text("<presence xmlns='jabber:server' from='x@elsewhere.example/a' to='irc.red.example/ops'/>")
    assert read_room_presence(other, "conference.red.example") is None


def test_check_says_ok_for_a_good_configuration_and_names_the_key_of_a_bad_one(tmp_path, capsys):
    """--check: exit 0 and OK; a bad key: exit 2 with file, line and key."""
    good = write_config(tmp_path)
    assert main(["--config", str(good), "--check"]) == 0
    assert "OK (1 bridge(s), 1 network(s), component irc.red.example)" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('channel = "#ops"', 'channel = "ops"'))
    assert main(["--config", str(bad), "--check"]) == 2
    assert "bridges[0].channel" in capsys.readouterr().err


def test_a_networks_flood_settings_and_server_name_reach_its_connections(tmp_path):
    """flood_burst/flood_interval replace ngIRCd's burst and rate; unset, the connection keeps ngIRCd's; server_name is the name verified."""
    from guard.edges.irc.client import NGIRCD_RATE

    text = write_config(tmp_path).read_text()
    tuned = tmp_path / "tuned.toml"
    tuned.write_text(text.replace('nick = "xmppgw"', 'nick = "xmppgw"\nflood_burst = 5\nflood_interval = 2.0\n'
                                                     'server_name = "irc.lab.example"'))
    server = irc_server(load_irc_config(str(tuned)).networks["lab"])
    assert (server.flood.burst_lines, server.flood.seconds_per_line) == (5, 2.0)
    assert server.server_name == "irc.lab.example"
    assert server.network == "lab"  # the network's table name (it once became "server_name": a shadowed loop variable)
    assert irc_server(load_irc_config(str(write_config(tmp_path))).networks["lab"]).flood == NGIRCD_RATE


def test_the_sample_configuration_checks_once_the_files_it_names_exist(tmp_path, capsys):
    """deploy/irc/irc.toml, beside a policies/ folder and a run/irc-pki CA as its relative paths say: --check OK."""
    import shutil

    from guard.lab.pki import CertificateAuthority

    (tmp_path / "deploy" / "irc").mkdir(parents=True)
    (tmp_path / "run" / "irc-pki").mkdir(parents=True)
    shutil.copy(PROJECT / "deploy" / "irc" / "irc.toml", tmp_path / "deploy" / "irc")
    shutil.copytree(PROJECT / "policies", tmp_path / "policies")
    (tmp_path / "run" / "irc-pki" / "irc-ca.pem").write_bytes(CertificateAuthority.create("irc-ca").certificate_pem())
    assert main(["--config", str(tmp_path / "deploy" / "irc" / "irc.toml"), "--check"]) == 0
    assert "OK (1 bridge(s), 1 network(s), component irc.red.example)" in capsys.readouterr().out


def test_when_the_audit_trail_cannot_be_written_nothing_more_reaches_irc(lab):
    """audit_failure = stop: a refusal the trail cannot record halts the gateway; the next room message bounces, IRC hears nothing."""
    gateway, clock, stream, irc, bot, _ = lab
    alice_joins(stream)
    gateway.audit.close()  # every record now fails, as on a full disk
    room_message(stream, "the plan", SECRET, "h0")
    assert gateway.settlement.halted_reason is not None
    written(stream)
    bot.transport.clear()
    room_message(stream, "after the disk filled", None, "h1")
    clock.advance(5)
    assert "after the disk filled" not in bot.transport.value().decode()
    reply = written(stream).decode()
    assert "<service-unavailable " in reply and 'to="alice@red.example/phone"' in reply and 'id="h1"' in reply
    assert gateway.books.balanced()


def test_a_fault_carrying_out_a_room_message_bounces_it_instead_of_leaving_it_in_flight(lab, monkeypatch):
    """carrier.carry raises: alice gets internal-server-error and the books show it bounced, none in flight."""
    gateway, clock, stream, irc, bot, _ = lab
    alice_joins(stream)
    written(stream)

    def faulty_carry(parcel):
        raise RuntimeError("a fault in the carrier")

    monkeypatch.setattr(gateway.carrier, "carry", faulty_carry)
    room_message(stream, "the rota", None, "f1")
    reply = written(stream).decode()
    assert "<internal-server-error " in reply and 'to="alice@red.example/phone"' in reply and 'id="f1"' in reply
    summary = gateway.books.summary()
    assert (summary["in_flight"], summary["bounced"], summary["delivered"]) == (0, 1, 0) and gateway.books.balanced()


def room_subject(stream, subject, stanza_id="t1"):
    stream.dataReceived(f"<message from='ops@conference.red.example/alice' to='{LISTENER}' type='groupchat' "
                        f"id='{stanza_id}'><subject>{subject}</subject></message>".encode())


def fill_the_bots_burst(gateway):
    """The gateway's own notices (nothing accepted rides on them) use up the bot's flood burst: what follows waits."""
    bot_connection = gateway.connections[gateway.bridges[0].bot_key]
    assert bot_connection.say("#ops", [f"filler {number}" for number in range(12)], None, "notice") is None


def test_a_room_subject_whose_topic_line_never_left_bounces_instead_of_settling_delivered(lab):
    """The TOPIC line is queued, then the bot's connection drops: alice gets remote-server-not-found; bounced 1, delivered 0."""
    gateway, clock, stream, irc, bot, _ = lab
    alice_joins(stream)
    written(stream)
    fill_the_bots_burst(gateway)
    room_subject(stream, "the new rota", "t1")
    assert gateway.books.summary()["in_flight"] == 1  # only queued: not settled yet
    bot.connectionLost(Failure(ConnectionError("netsplit")))
    reply = written(stream).decode()
    assert "<remote-server-not-found " in reply and 'to="alice@red.example/phone"' in reply and 'id="t1"' in reply
    summary = gateway.books.summary()
    assert (summary["bounced"], summary["delivered"], summary["in_flight"]) == (1, 0, 0) and gateway.books.balanced()


def test_a_room_subject_settles_delivered_once_its_topic_line_is_written(lab):
    """The TOPIC line waits behind the burst, then leaves: delivered 1, and the line is on the wire."""
    gateway, clock, stream, irc, bot, _ = lab
    alice_joins(stream)
    fill_the_bots_burst(gateway)
    bot.transport.clear()
    room_subject(stream, "the new rota", "t2")
    assert gateway.books.summary()["delivered"] == 0
    clock.pump([1.0] * 60)  # the flood control's one line every few seconds
    assert [line for line in irc.written(bot) if line.startswith("TOPIC")] == ["TOPIC #ops :Protective Marking: UNCLASSIFIED the new rota"]
    summary = gateway.books.summary()
    assert (summary["delivered"], summary["bounced"], summary["in_flight"]) == (1, 0, 0) and gateway.books.balanced()


def gateway_with_own_connections(tmp_path, *isupport_lines):
    """A gateway that gives one room occupant its own IRC connection; its component is open and its bot, told
    ``isupport_lines`` after its welcome, is in #ops with carol."""
    config = load_irc_config(str(write_config(tmp_path, occupant_connections=1)))
    clock, component, irc = MemoryReactorClock(), ComponentEndpoint(), IrcServerSide()
    gateway = IrcGateway(config, clock, irc.connect, component, AuditLog(None))
    gateway.start()
    stream = component.streams[0]
    stream.dataReceived(PROSODY_HEADER + b"<handshake/>")
    bot = irc.protocols[0]
    irc.feed(bot, ":irc.lab.example 001 xmppgw :Welcome", *isupport_lines, ":xmppgw!~x@h JOIN #ops",
             ":irc.lab.example 353 xmppgw = #ops :@xmppgw carol", ":irc.lab.example 366 xmppgw #ops :End")
    return gateway, clock, stream, irc, bot


def test_the_nick_book_follows_the_isupport_the_server_sent_after_its_welcome(tmp_path):
    """005 (NICKLEN=30, CASEMAPPING=ascii) comes after 001: alexandrina's own connection registers as NICK alexandrina,
    not the 9-character default's alexandri."""
    gateway, clock, stream, irc, bot = gateway_with_own_connections(
        tmp_path, ":irc.lab.example 005 xmppgw NICKLEN=30 CASEMAPPING=ascii LINELEN=1024 :are supported")
    clock.advance(5)
    isupport = gateway.bridges[0].nicks.isupport
    assert (isupport.nicklen, isupport.casemapping, isupport.linelen) == (30, "ascii", 1024)
    stream.dataReceived(f"<presence from='ops@conference.red.example/alexandrina' to='{LISTENER}'>"
                        "<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant' "
                        "jid='alexandrina@red.example/phone'/></x></presence>".encode())
    clock.advance(1)
    assert len(irc.protocols) == 2
    assert "NICK alexandrina" in irc.written(irc.protocols[1])


def test_an_occupants_messages_go_through_the_bot_until_its_own_connection_is_registered(tmp_path):
    """alice's connection is registering, then registered, then lost in a netsplit: the bot relays her messages
    while it is not registered (none bounces), her own connection says them once it is."""
    gateway, clock, stream, irc, bot = gateway_with_own_connections(tmp_path)
    clock.advance(5)
    alice_joins(stream)
    alice = irc.protocols[1]
    bot.transport.clear()
    room_message(stream, "while registering", None, "r1")
    clock.advance(5)
    assert "PRIVMSG #ops :<alice> while registering" in irc.written(bot)
    irc.feed(bot, ":irc.lab.example PONG irc.lab.example :guard-1")
    irc.feed(alice, ":irc.lab.example 001 alice :Welcome", ":alice!~a@h JOIN #ops")
    alice.transport.clear()
    room_message(stream, "registered now", None, "r2")
    clock.advance(5)
    assert "PRIVMSG #ops :registered now" in irc.written(alice)
    alice.connectionLost(Failure(ConnectionError("netsplit")))
    bot.transport.clear()
    room_message(stream, "after the split", None, "r3")
    clock.advance(1)
    assert "PRIVMSG #ops :<alice> after the split" in irc.written(bot)
    irc.feed(bot, ":irc.lab.example PONG irc.lab.example :guard-2")
    summary = gateway.books.summary()
    assert (summary["delivered"], summary["bounced"], summary["in_flight"]) == (3, 0, 0)
    # r2 was written on alice's connection and its checkpoint never answered: delivered in doubt.
    assert gateway.carrier.describe()["unconfirmed"] == 1


def test_notices_to_irc_users_while_prosody_is_away_are_rate_limited_and_every_one_still_audited(lab):
    """Prosody away: carol's five messages get one notice (four bounces lost, each audited), dave's right after gets
    none (one notice per bridge in 2 s), bob's 3 s later gets his own, carol is told again only after a minute."""
    gateway, clock, stream, irc, bot, folder = lab
    irc.feed(bot, ":bob!~b@h JOIN #ops", ":dave!~d@h JOIN #ops")
    stream.connectionLost(Failure(ConnectionError("prosody restarted")))
    bot.transport.clear()
    for number in range(5):
        irc.feed(bot, f":carol!~c@h PRIVMSG #ops :anyone {number}?")
    clock.advance(1)
    irc.feed(bot, ":dave!~d@h PRIVMSG #ops :me too")
    clock.advance(2)
    irc.feed(bot, ":bob!~b@h PRIVMSG #ops :hello?")
    clock.advance(30)
    irc.feed(bot, ":carol!~c@h PRIVMSG #ops :still nobody?")
    clock.advance(31)
    irc.feed(bot, ":carol!~c@h PRIVMSG #ops :a minute later")
    clock.pump([1.0] * 30)
    notices = [line for line in irc.written(bot) if line.startswith("NOTICE ")]
    told = f" :{'The gateway could not deliver your message to the XMPP room.'}"
    assert notices == ["NOTICE carol" + told, "NOTICE bob" + told, "NOTICE carol" + told]
    summary = gateway.books.summary()
    assert (summary["bounced"], summary["in_flight"]) == (9, 0) and gateway.books.balanced()
    assert gateway.settlement.counts["bounce-lost"] == 6
    assert [record["event"] for record in audit_records(folder)].count("bounce-lost") == 6


def test_an_occupants_rename_is_a_nick_line_on_its_own_connection_not_a_reconnection(tmp_path):
    """alice becomes alicia in the room: her registered connection writes NICK alicia; no second connection is opened."""
    gateway, clock, stream, irc, bot = gateway_with_own_connections(tmp_path)
    alice_joins(stream)
    alice = irc.protocols[1]
    irc.feed(alice, ":irc.lab.example 001 alice :Welcome", ":alice!~a@h JOIN #ops")
    alice.transport.clear()
    stream.dataReceived(f"<presence from='ops@conference.red.example/alice' to='{LISTENER}' type='unavailable'>"
                        "<x xmlns='http://jabber.org/protocol/muc#user'><item jid='alice@red.example/phone' "
                        "nick='alicia'/><status code='303'/></x></presence>".encode())
    clock.advance(5)
    lines = irc.written(alice)
    assert "NICK alicia" in lines and not any(line.startswith("QUIT") for line in lines)
    assert len(irc.protocols) == 2 and alice.transport.connected


def room_kick(stream, nick):
    stream.dataReceived(f"<presence from='ops@conference.red.example/{nick}' to='{LISTENER}' type='unavailable'>"
                        "<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='none'/>"
                        "<status code='307'/></x></presence>".encode())


def test_the_bot_listed_as_an_operator_by_names_or_made_one_by_mode_kicks_whom_a_moderator_kicks(lab):
    """NAMES listed @xmppgw: a moderator's kick of carol is a KICK on IRC; after MODE -o the next is refused;
    after MODE +lvo 10 bob xmppgw (a limit takes an argument when set) it is a KICK again."""
    gateway, clock, stream, irc, bot, _ = lab
    irc.feed(bot, ":bob!~b@h JOIN #ops", ":dave!~d@h JOIN #ops")
    bot.transport.clear()
    room_kick(stream, "carol")
    clock.advance(5)
    assert "KICK #ops carol :kicked from the XMPP room" in irc.written(bot)
    irc.feed(bot, ":op!~o@h MODE #ops -o xmppgw")
    bot.transport.clear()
    room_kick(stream, "bob")
    clock.advance(5)
    assert not any(line.startswith("KICK") for line in irc.written(bot))
    irc.feed(bot, ":op!~o@h MODE #ops +lvo 10 bob xmppgw")
    room_kick(stream, "dave")
    clock.advance(5)
    assert "KICK #ops dave :kicked from the XMPP room" in irc.written(bot)
