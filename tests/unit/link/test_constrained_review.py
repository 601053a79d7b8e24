"""A hostile review of the constrained link (issue 13): each test is a hole found in review, shown on two halves
joined in memory by a bearer that carries bytes at its rate (not at once, as iosim's pump does)."""

import pytest
from twisted.test import iosim

from guard.edges.link.link import LinkSettings
from guard.edges.link.profile import ConstrainedProfile, stretched_settings
from guard.edges.link.stream import OPEN_TIMEOUT_SECONDS

from .constrained_pairs import TOPOLOGY, ConstrainedPair
from .test_constrained_config import CONSTRAINED as BEARER_HALF
from .test_constrained_config import NO_TLS_MATERIAL
from .test_half_config import tree, variant  # noqa: F401 - the fixture and the helper of the half's config tests
from .test_constrained_pair import chat


class SlowBearer:
    """Both directions of one connection between half A and half B, each carrying ``rate`` bits per second."""

    def __init__(self, pair, rate_bits_per_second):
        self.pair = pair
        self.bytes_per_second = rate_bits_per_second / 8.0
        client, server = pair.new_connection()
        self.transports = (iosim.makeFakeClient(client), iosim.makeFakeServer(server))
        client.makeConnection(self.transports[0])
        server.makeConnection(self.transports[1])
        pair.client, pair.server = client, server
        # (the transport written to, the protocol that reads it, bytes on the air, credit in bytes)
        self.directions = [[self.transports[0], server, bytearray(), 0.0],
                           [self.transports[1], client, bytearray(), 0.0]]
        self.carried = False  # False: nothing moves (a dead bearer)

    def run(self, seconds, step=0.1):
        """Let ``seconds`` pass, moving at most the rate's bytes each way at every step."""
        for _ in range(round(seconds / step)):
            self.pair.clock.advance(step)
            for direction in self.directions:
                writer, reader, air, credit = direction
                air += writer.getOutBuffer() or b""
                if not self.carried:
                    continue
                credit = min(credit + self.bytes_per_second * step, max(1.0, float(len(air))))
                count = int(credit)
                if count and air and not reader.transport.disconnected:
                    chunk = bytes(air[:count])
                    del air[:count]
                    credit -= len(chunk)
                    reader.dataReceived(chunk)
                direction[3] = credit


def stretched_pair(profile):
    """Two halves whose link timers are stretched as a half's configuration stretches them."""
    settings, _ = stretched_settings(LinkSettings(), OPEN_TIMEOUT_SECONDS, profile)
    return ConstrainedPair(profile, settings=settings)


def pair_on_a_slow_bearer(opened_for=2.0, **changes):
    """Two halves on a 1,200 bit/s bearer (round trip 2 s), timers stretched, the bearer carrying for ``opened_for`` s."""
    profile = ConstrainedProfile(security="bearer", compression="none", rate=1200, round_trip=2.0, **changes)
    pair = stretched_pair(profile)
    bearer = SlowBearer(pair, 1200)
    bearer.carried = True
    bearer.run(opened_for)
    return pair, bearer


def long_chat(size):
    body = " ".join(f"word{number}" for number in range(size // 8))[:size]
    return f"<message from='romeo@red.example/a' to='juliet@blue.example' type='chat' id='long'><body>{body}</body></message>"


def test_a_stanza_longer_on_the_bearer_than_the_ack_timeout_is_delivered_on_the_first_connection():
    """A 15 KB stanza takes 100 s at 1,200 bit/s, longer than the stretched ack timeout (66 s): the link waits for
    the bearer to carry it before it counts the acknowledgement late, instead of dropping and resending it forever."""
    pair, bearer = pair_on_a_slow_bearer()
    assert pair.a.link.settings.ack_timeout < 100
    pair.a.sends(long_chat(15_000))
    bearer.run(200.0)
    assert len(pair.b.server.received) == 1
    assert pair.a.link.connections == 1 and pair.a.link.describe()["state"] == "up"
    assert pair.a.books()["delivered"] == 1


def test_a_dead_bearer_is_still_noticed_within_keepalive_plus_ack_interval_plus_ack_timeout():
    """With nothing written, a bearer that stops carrying is noticed within keepalive + ack_interval + ack_timeout."""
    pair, bearer = pair_on_a_slow_bearer(opened_for=10.0)
    settings = pair.a.link.settings
    assert pair.a.link.describe()["state"] == "up"
    bearer.carried = False
    bound = settings.keepalive + settings.ack_interval + settings.ack_timeout
    bearer.run(bound + 1.0)
    assert pair.client.closing


def test_a_dead_bearer_after_a_long_stanza_is_noticed_once_the_stanza_had_time_to_cross():
    """After a 15 KB write (100 s at 1,200 bit/s) the bearer dies: the link notices within the stanza's time on the
    bearer plus ack_interval plus ack_timeout, not never."""
    pair, bearer = pair_on_a_slow_bearer()
    settings = pair.a.link.settings
    bearer.carried = False
    pair.a.sends(long_chat(15_000))
    bearer.run(15_100 * 8 / 1200 + settings.ack_interval + settings.ack_timeout + 2.0)
    assert pair.client.closing and pair.b.server.received == []


def cut(pair):
    """The bearer drops the connection under both halves."""
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    for protocol in (pair.client, pair.server):
        protocol.transport.disconnecting = True
        protocol.connectionLost(Failure(ConnectionLost("the bearer dropped")))


def test_stanzas_written_again_after_a_reconnection_are_waited_for_as_the_bearer_carries_them():
    """Sixty 1 KB stanzas written and never acknowledged are written again at once on the next connection (400 s at
    1,200 bit/s): the ack timeout counts from when the bearer has carried them, so the second connection delivers them."""
    pair, bearer = pair_on_a_slow_bearer(max_wait=3600)
    bearer.carried = False  # the bearer dies: what A writes from now on never arrives
    for number in range(60):
        pair.a.sends(long_chat(1000).replace("id='long'", f"id='long{number}'"))
    bearer.run(500.0)
    assert pair.client.closing and pair.a.link.outbox.unacknowledged >= 50
    cut(pair)
    bearer = SlowBearer(pair, 1200)
    bearer.carried = True
    bearer.run(700.0)
    assert len(pair.b.server.received) == 60 and pair.a.books()["delivered"] == 60
    assert pair.a.link.connections == 2


class SmallerParserOnB(ConstrainedPair):
    """Half B's parser takes stanzas of at most ``stanza_bytes``; half A's takes the default (a config that looks
    right: each half's own limit, as for the standard link)."""

    def __init__(self, profile, stanza_bytes):
        from guard.edges.link.constrained import ConstrainedLink
        from guard.edges.xmlstream import ParserLimits

        super().__init__(profile)
        self.b_limits = ParserLimits(stanza_bytes=stanza_bytes)
        self.b.constrained = ConstrainedLink(profile, TOPOLOGY.hosted_on("blue"), TOPOLOGY.hosted_on("red"), stanza_bytes)
        self.b.link.constrained = self.b.constrained
        self.b.link.stanza_bytes = stanza_bytes

    def new_connection(self):
        from guard.edges.link.stream import LinkStreamFactory

        client, _ = super().new_connection()
        factory_b = LinkStreamFactory(self.b.link, self.checks[1], self.clock, self.b_limits,
                                      prepare=self.b.constrained.prepare_stream)
        return client, factory_b.buildProtocol(None)


DIAL = 'dial = "tcp:host=127.0.4.2:port=5299"'


def toml_string(text):
    return '"' + text.replace("\\", "\\\\") + '"'


def reconnect(pair):
    cut(pair)
    pair.connect()


@pytest.mark.parametrize("compression", ["zlib", "dictionary"])
@pytest.mark.parametrize("text", ["compressible", "incompressible"])
def test_a_stanza_larger_than_the_peers_frame_budget_is_refused_by_its_number_and_never_sent_again(compression, text):
    """Half B takes stanzas of 8 KiB, half A writes one of 20 KB: B refuses that stanza by its number (as its parser
    refuses an oversized stanza on the standard link), A bounces it once, and the next connection carries the rest
    instead of writing the same refused frame on every connection."""
    import random
    import re

    pair = SmallerParserOnB(ConstrainedProfile(security="bearer", compression=compression, rate=1_000_000), 8192)
    pair.connect()
    pair.a.sends(chat(1))
    pair.run(0.5)
    if text == "compressible":
        body = "x" * 20_000
    else:
        body = "".join(random.Random(13).choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(20_000))
    pair.a.sends(f"<message from='romeo@red.example/a' to='juliet@blue.example' type='chat' id='big'>"
                 f"<body>{body}</body></message>")
    pair.a.sends(chat(2))
    pair.run(1.0)
    assert pair.server.closing
    reconnect(pair)
    pair.run(1.0)
    reconnect(pair)
    pair.run(1.0)
    assert [re.search(r' id="(\w+)"', stanza).group(1) for stanza in pair.b.server.received] == ["c1", "c2"]
    assert pair.a.link.describe()["refused_by_peer"] == 1
    assert {key: pair.a.books()[key] for key in ("delivered", "bounced", "in_flight")} == \
        {"delivered": 2, "bounced": 1, "in_flight": 0}


def big_chat(text):
    import random

    if text == "compressible":
        body = "x" * 20_000
    else:
        body = "".join(random.Random(13).choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(20_000))
    return f"<message from='romeo@red.example/a' to='juliet@blue.example' type='chat' id='big'><body>{body}</body></message>"


@pytest.mark.parametrize("held", [False, True])
def test_the_stanzas_before_an_oversized_frame_in_the_same_read_are_taken_and_only_that_stanza_is_refused(held):
    """One read brings a chat, a frame too large for half B and another chat (B perhaps not reading while its side is
    congested): B takes the first chat, refuses the big one by its own number, and A bounces only that one."""
    import re

    pair = SmallerParserOnB(ConstrainedProfile(security="bearer", compression="zlib", rate=1_000_000), 8192)
    pair.connect()
    if held:
        pair.b.link.hold()
    pump, pair.pump = pair.pump, None  # the bearer holds what A writes, then delivers it in one read
    pair.a.sends(chat(1))
    pair.a.sends(big_chat("compressible"))
    pair.a.sends(chat(2))
    pair.run(0.5)
    pair.server.dataReceived(pair.client.transport.getOutBuffer())
    pair.pump = pump
    pair.run(0.5)
    if held:
        assert pair.b.server.received == []
        pair.b.link.release()
        pair.run(0.5)
    assert pair.server.closing
    reconnect(pair)
    pair.run(1.0)
    assert [re.search(r' id="(\w+)"', stanza).group(1) for stanza in pair.b.server.received] == ["c1", "c2"]
    assert {key: pair.a.books()[key] for key in ("delivered", "bounced", "in_flight")} == \
        {"delivered": 2, "bounced": 1, "in_flight": 0}


def test_what_waits_in_the_bearer_schedule_counts_in_the_guards_memory_budget():
    """Stanzas waiting for the bearer count in the bytes the guard holds, as an S2S queue's do: past the memory budget
    the half stops reading (the link included), and once the bearer has carried them the count is back to zero."""
    from guard.core.books import HeldBytes
    from guard.edges.feeders import MEMORY_HOLD

    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=1_000_000))
    pair.a.relay.held = HeldBytes.for_budget(4096)
    for number in range(40):
        pair.a.sends(chat(number))
    waiting = pair.a.link.schedule.queued_bytes
    assert waiting > 4096 and pair.a.relay.held.held == waiting
    assert MEMORY_HOLD in pair.a.relay.link_holds
    pair.connect()
    pair.run(3.0)
    assert len(pair.b.server.received) == 40
    assert pair.a.relay.held.held == 0 and MEMORY_HOLD not in pair.a.relay.link_holds


def test_what_the_schedule_gives_up_is_no_longer_counted_as_held():
    """Stopping with stanzas in the schedule bounces them and frees their bytes in the memory count."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=1_000_000))
    for number in range(5):
        pair.a.sends(chat(number))
    assert pair.a.relay.held.held == pair.a.link.schedule.queued_bytes > 0
    pair.a.link.stop()
    assert pair.a.relay.held.held == 0 and pair.a.books()["bounced"] == 5


class Broken(Exception):
    """A fault planted in one of the constrained profile's pieces."""


def fail(*args, **kwargs):
    raise Broken("planted")


@pytest.mark.parametrize("where, connected_first", [
    ("schedule.offer", True),  # the relay's own catch settles it (a regression guard: sound on main)
    ("written_form", False),  # when the link comes up, outside any call of the relay's (it was never settled)
])
def test_a_fault_in_the_constrained_pieces_bounces_the_stanza_once_and_the_link_goes_on(where, connected_first):
    """The schedule raising on an offer, or abbreviating a stanza the schedule let go raising, lets nothing through:
    that stanza bounces once, and the next one crosses."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=1_000_000))
    owner, name = (pair.a.link.schedule, "offer") if where == "schedule.offer" else (pair.a.constrained, "written_form")
    working = getattr(owner, name)
    if connected_first:
        pair.connect()
    setattr(owner, name, fail)
    pair.a.sends(chat(1))
    if not connected_first:
        pair.connect()
    setattr(owner, name, working)
    pair.a.sends(chat(2))
    pair.run(1.0)
    assert len(pair.b.server.received) == 1
    assert {key: pair.a.books()[key] for key in ("delivered", "bounced", "in_flight")} == \
        {"delivered": 1, "bounced": 1, "in_flight": 0}


def test_a_presence_of_a_type_outside_rfc_6121_is_refused_as_such_not_as_a_full_queue():
    """The schedule refuses a presence type it does not know: the link bounces it with its own words for that, not
    "too many stanzas waiting"."""
    from guard.edges.link.link import REFUSED_CONDITION, UNKNOWN_TYPE

    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=1_000_000))
    bounced = []
    undeliverable = pair.a.relay.link_undeliverable
    pair.a.relay.link_undeliverable = lambda parcel, condition, text: (bounced.append((condition, text)),
                                                                       undeliverable(parcel, condition, text))
    pair.a.sends("<presence from='romeo@red.example/a' to='juliet@blue.example' type='bogus'/>")
    assert bounced == [(REFUSED_CONDITION, UNKNOWN_TYPE)] and pair.a.books()["bounced"] == 1


@pytest.mark.parametrize("listen", ["tcp:5299", "tcp:port=5299", "tcp:5299:interface=0.0.0.0", "tcp6:5299:interface=\\:\\:",
                                    "tcp:5299:interface=", "tcp:5299:0.0.0.0"])
def test_a_bearer_half_listening_on_every_interface_is_refused(tree, listen):  # noqa: F811
    """Without TLS whoever reaches the link port is taken for the peer half (it gets every stanza waiting): a listening
    half with security = "bearer" must name the bearer's own interface, not every address of the host."""
    from guard.app.config import ConfigError
    from guard.app.half_config import load_half_config

    bearer = BEARER_HALF.replace("security = \"tls\"", "security = \"bearer\"")
    with pytest.raises(ConfigError, match="link.listen: .*interface"):
        load_half_config(variant(tree, NO_TLS_MATERIAL + [(DIAL, f"listen = {toml_string(listen)}")], bearer))


@pytest.mark.parametrize("listen", ["tcp:5299:interface=192.0.2.7", "tcp6:5299:interface=fd00\\:\\:7",
                                    "systemd:domain=INET:index=0", "unix:/run/xmpp-guard/link.sock"])
def test_a_bearer_half_listening_on_one_interface_or_a_passed_socket_loads(tree, listen):  # noqa: F811
    """One named interface, a socket systemd passes, or a Unix socket is what the operator meant: it loads."""
    from guard.app.half_config import load_half_config

    bearer = BEARER_HALF.replace("security = \"tls\"", "security = \"bearer\"")
    config = load_half_config(variant(tree, NO_TLS_MATERIAL + [(DIAL, f"listen = {toml_string(listen)}")], bearer))
    assert config.link.leg.listen == listen and config.link.leg.without_tls


def test_a_tls_half_may_still_listen_on_every_interface(tree):  # noqa: F811
    """With TLS the peer proves itself by its certificate: listening on every interface stays allowed."""
    from guard.app.half_config import load_half_config

    config = load_half_config(variant(tree, [(DIAL, 'listen = "tcp:5299"')], BEARER_HALF))
    assert config.link.leg.listen == "tcp:5299"


@pytest.mark.parametrize("compression", ["none", "zlib", "dictionary"])
def test_halves_that_imply_different_default_domains_refuse_the_link_in_every_compression_mode(compression):
    """Half B lists one more red domain, shorter than red.example, so it reads "romeo@/a" as romeo@r.example/a: every
    address half A abbreviates would name another domain.  The headers compare the domains behind the abbreviation in
    every compression mode (not only inside the dictionary's digest), and the link is refused."""
    from guard.edges.link.constrained import ConstrainedLink
    from guard.edges.xmlstream import ParserLimits

    profile = ConstrainedProfile(security="bearer", compression=compression, rate=1_000_000)
    pair = ConstrainedPair(profile)
    misread = ConstrainedLink(profile, ["blue.example"], ["red.example", "conference.red.example", "r.example"],
                              ParserLimits().stanza_bytes)
    assert misread.abbreviation.far_domain == "r.example" != pair.a.constrained.abbreviation.near_domain
    pair.b.constrained = pair.b.link.constrained = misread
    pair.a.sends(chat(1))
    pair.connect()
    assert pair.client.closing and pair.server.closing
    assert pair.b.server.received == [] and pair.b.books()["accepted"] == 0
    assert pair.a.books()["in_flight"] == 1  # still waiting for a link that works, bounced at the deadline


def test_mirrored_halves_agree_on_the_domains_behind_the_abbreviation():
    """Half A (red near, blue far) and half B (blue near, red far) compute the same agreement in every mode."""
    from guard.edges.link.constrained import ConstrainedLink
    from guard.edges.xmlstream import ParserLimits

    for compression in ("none", "zlib", "dictionary"):
        profile = ConstrainedProfile(security="bearer", compression=compression)
        red, blue = TOPOLOGY.hosted_on("red"), TOPOLOGY.hosted_on("blue")
        a = ConstrainedLink(profile, red, blue, ParserLimits().stanza_bytes)
        b = ConstrainedLink(profile, blue, red, ParserLimits().stanza_bytes)
        assert a.agreement == b.agreement and a.agreement.startswith(compression)


@pytest.mark.parametrize("iq_deadline, round_trip", [(2, 2.0), (1, 2.5)])
def test_an_iq_deadline_no_longer_than_the_round_trip_is_refused(tree, iq_deadline, round_trip):  # noqa: F811
    """An IQ cannot be answered across the bearer in less than its round trip: such an iq_deadline would answer every
    request at once with an error, so the file is refused with the key named."""
    from guard.app.config import ConfigError
    from guard.app.half_config import load_half_config

    broken = BEARER_HALF.replace("iq_deadline = 60", f"iq_deadline = {iq_deadline}").replace(
        "round_trip = 2.0", f"round_trip = {round_trip}")
    with pytest.raises(ConfigError, match="link.constrained.iq_deadline: must be longer than round_trip"):
        load_half_config(variant(tree, [], broken))


def test_a_sender_with_many_resources_gets_one_turn_not_one_per_resource():
    """Within a class the bearer is shared by account (bare JID): a user writing from five resources at once does not
    get five turns for every one of another user's, so Juliet's chat leaves second, not sixth."""
    import re

    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=1_000_000))
    for number in range(10):
        pair.a.sends(chat(number, sender=f"mallory@red.example/r{number % 5}"))
    pair.a.sends(chat(99, sender="romeo@red.example/a"))
    pair.connect()
    pair.run(1.0)
    order = [re.search(r' id="(\w+)"', stanza).group(1) for stanza in pair.b.server.received]
    assert len(order) == 11 and order[:2] == ["c0", "c99"]
    assert order[2:] == [f"c{number}" for number in range(1, 10)]  # one account's stanzas keep their order


def test_while_a_long_stanza_is_on_the_bearer_the_link_asks_for_its_acknowledgement_once_not_every_tick():
    """A 15 KB stanza is 100 s on a 1,200 bit/s bearer: the link asks once and waits for the answer, instead of
    writing <r/> every ack_interval (fifty requests and fifty answers, a quarter of a 75 bit/s bearer)."""
    from guard.edges.link import wire

    pair, bearer = pair_on_a_slow_bearer()
    requests = []
    write = pair.client.write
    pair.client.write = lambda data: (requests.append(data) if data == wire.ACK_REQUEST else None, write(data))
    pair.a.sends(long_chat(15_000))
    bearer.run(200.0)
    assert pair.a.books()["delivered"] == 1 and pair.a.link.connections == 1
    assert 1 <= len(requests) <= 3


def test_a_held_half_tells_the_peer_it_is_there_a_few_times_per_ack_timeout_not_every_tick():
    """Half B's side is congested for 120 s: B keeps the link by writing its count a few times per ack_timeout
    (the peer counts it as progress), not every ack_interval, and the link stays up."""
    pair, bearer = pair_on_a_slow_bearer()
    acks = []
    write = pair.server.write
    pair.server.write = lambda data: (acks.append(data) if data.startswith(b"<a ") else None, write(data))
    pair.b.link.hold()
    pair.a.sends(chat(1))
    bearer.run(120.0)
    settings = pair.b.link.settings
    assert pair.client.reached_open and not pair.client.closing and not pair.server.closing
    assert len(acks) <= 3 * 120 / settings.ack_timeout + 1 < 120 / settings.ack_interval
    pair.b.link.release()
    bearer.run(10.0)
    assert len(pair.b.server.received) == 1 and pair.a.books()["delivered"] == 1


def test_a_policy_reload_does_not_restart_the_wait_of_what_waits_in_the_schedule():
    """A chat waits for a bearer that is down (max_wait 10 s); a reload at 8 s judges it again and it passes: it still
    bounces at 10 s, not 10 s after the reload (a reload every few seconds would keep it waiting for ever)."""
    from guard.core.pipeline import Direction

    from .test_half import PassAll

    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=1_000_000, max_wait=10))
    pair.a.sends(chat(1))
    pair.run(8.0)
    pair.a.relay.policies.swap(Direction("red", "blue"), PassAll())
    pair.a.relay.rejudge_link_buffer()
    assert pair.a.link.describe()["scheduled"] == 1
    pair.run(2.5)
    assert pair.a.link.describe()["scheduled"] == 0 and pair.a.link.expired == 1
    assert pair.a.books()["bounced"] == 1


def test_what_the_bearer_carried_stays_counted_until_the_peer_acknowledges_it_and_nothing_twice():
    """Under the constrained profile a stanza counts in the memory budget while it waits in the schedule, then, once
    written, in the retransmission buffer until half B acknowledges it: the count is always the sum of both (each
    byte once), and returns to zero when B acknowledges everything."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=20_000))
    pair.connect()
    pair.b.link.hold()  # half B reads nothing, so acknowledges nothing
    for number in range(20):
        pair.a.sends(chat(number))
    pair.run(0.5)
    link = pair.a.link
    assert link.outbox.bytes > 0 and link.schedule.queued_bytes > 0
    assert pair.a.relay.held.held == link.outbox.bytes + link.schedule.queued_bytes
    pair.b.link.release()
    pair.run(30.0)
    assert len(pair.b.server.received) == 20 and pair.a.relay.held.held == 0
