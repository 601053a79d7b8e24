"""Two halves with [link] profile = "constrained", in memory: chat both ways in every compression and security mode,
groupchat merged and fanned out, presence stripped and coalesced with audit records, IQs answered in time, outages."""

import pytest

from guard.edges.link.link import LinkSettings
from guard.edges.link.profile import ConstrainedProfile
from guard.lab.pki import CertificateAuthority

from .constrained_pairs import ConstrainedPair


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("constrained-pair-pki")
    ca = CertificateAuthority.create("link-ca")
    return {"a": ca.write_leaf(folder, "half-a", ["half-a"]), "b": ca.write_leaf(folder, "half-b", ["half-b"])}


def chat(number, sender="romeo@red.example/a", recipient="juliet@blue.example"):
    return (f"<message from='{sender}' to='{recipient}' type='chat' id='c{number}'>"
            f"<body>message {number} across the bearer</body></message>")


@pytest.mark.parametrize("security", ["bearer", "tls"])
@pytest.mark.parametrize("compression", ["none", "zlib", "dictionary"])
def test_chat_crosses_both_ways_and_every_stanza_is_delivered_once(material, security, compression):
    """Romeo and Juliet chat across the constrained link: each message arrives once, addresses intact, books balanced."""
    pair = ConstrainedPair(ConstrainedProfile(security=security, compression=compression, rate=1_000_000),
                           material)
    pair.connect()
    for number in range(3):
        pair.a.sends(chat(number))
        pair.b.sends(chat(100 + number, "juliet@blue.example/b", "romeo@red.example"))
    pair.run(3.0)
    assert pair.b.server.received == [
        f'<message from="romeo@red.example/a" to="juliet@blue.example" type="chat" id="c{n}">'
        f"<body>message {n} across the bearer</body></message>" for n in range(3)]
    assert len(pair.a.server.received) == 3 and 'from="juliet@blue.example/b"' in pair.a.server.received[0]
    for half in (pair.a, pair.b):
        assert half.books() == {"accepted": 6, "delivered": 6, "bounced": 0, "dropped": 0, "in_flight": 0}


def test_compression_lowers_the_bytes_on_the_bearer():
    """The same chat costs fewer bearer bytes with zlib than without, and fewer still with the dictionary."""
    costs = {}
    for compression in ("none", "zlib", "dictionary"):
        pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression=compression, rate=1_000_000))
        pair.connect()
        before = pair.bytes_on_bearer
        for number in range(20):
            pair.a.sends(chat(number))
        pair.run(3.0)
        assert len(pair.b.server.received) == 20
        costs[compression] = pair.bytes_on_bearer - before
    assert costs["dictionary"] < costs["zlib"] < costs["none"], costs
    print(f"bearer bytes for 20 chat messages and their acknowledgements: {costs}")


@pytest.mark.parametrize("mode_a, mode_b", [("zlib", "none"), ("none", "zlib"), ("dictionary", "none"),
                                             ("none", "dictionary"), ("dictionary", "zlib"), ("zlib", "dictionary")])
def test_a_compression_mismatch_closes_the_link_with_a_stream_error_not_a_hang(mode_a, mode_b):
    """Half A and half B use different compression: the first bytes cannot be read, the connection closes, and
    nothing is carried or lost."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression=mode_a, rate=1_000_000),
                           profile_b=ConstrainedProfile(security="bearer", compression=mode_b, rate=1_000_000))
    pair.a.sends(chat(1))
    pair.connect()
    assert pair.a.link.describe()["state"] != "up" or pair.b.link.describe()["state"] != "up"
    assert pair.client.closing and pair.server.closing
    assert pair.b.server.received == []
    assert pair.a.books()["in_flight"] == 1  # still waiting for a link that works, bounced at the deadline


def groupchat(recipient, stanza_id="g1", body="hello room"):
    return (f"<message from='room@conference.red.example/romeo' to='{recipient}' type='groupchat' id='{stanza_id}'>"
            f"<body>{body}</body></message>")


OCCUPANTS = [f"occupant{n}@blue.example/r" for n in range(5)]


def test_a_groupchat_message_to_five_occupants_crosses_once_and_is_fanned_out_and_settled_per_copy():
    """Five copies of one room message merge into one link stanza; B fans it out; both halves' books balance."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=1_000_000))
    pair.connect()
    for occupant in OCCUPANTS:
        pair.a.sends(groupchat(occupant))
    pair.run(2.0)
    assert pair.b.link.describe()["received"] == 1  # one link stanza
    assert [stanza.split(" to=")[1].split('"')[1] for stanza in pair.b.server.received] == OCCUPANTS
    assert all("recipients" not in stanza for stanza in pair.b.server.received)
    assert pair.a.books() == {"accepted": 5, "delivered": 5, "bounced": 0, "dropped": 0, "in_flight": 0}
    assert pair.b.books() == {"accepted": 5, "delivered": 5, "bounced": 0, "dropped": 0, "in_flight": 0}


def test_a_merged_groupchat_message_the_link_gives_up_on_bounces_each_copy_once():
    """The link is cut before B acknowledges, then stays down past the deadline: each of the 3 copies bounces once."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="zlib", rate=1_000_000),
                           settings=LinkSettings(ack_every=1000, down_deadline=30.0))
    pair.connect()
    pair.cut()
    for occupant in OCCUPANTS[:3]:
        pair.a.sends(groupchat(occupant))
    pair.run(31.0, step=0.5)
    assert pair.a.books() == {"accepted": 3, "delivered": 0, "bounced": 3, "dropped": 0, "in_flight": 0}
    assert [record[0] for record in pair.a.audit.records] == ["bounce"] * 3


def presence(sender, recipient=None, kind=None, show=None):
    to = f" to='{recipient}'" if recipient else " to='juliet@blue.example'"
    type_ = f" type='{kind}'" if kind else ""
    child = f"<show>{show}</show>" if show else ""
    return f"<presence from='{sender}'{to}{type_}>{child}</presence>"


def test_presence_mode_none_drops_presence_with_an_audit_record_and_carries_chat():
    """presence = "none": no presence crosses, each one is settled dropped by the link profile and audited."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="dictionary", rate=1_000_000,
                                              presence="none"))
    pair.connect()
    pair.a.sends(presence("romeo@red.example/a"))
    pair.a.sends(chat(1))
    pair.run(2.0)
    assert len(pair.b.server.received) == 1 and "<message" in pair.b.server.received[0]
    assert pair.a.books() == {"accepted": 2, "delivered": 1, "bounced": 0, "dropped": 1, "in_flight": 0}
    assert ("drop", "guard:link-presence-stripped", None) in pair.a.audit.records


def test_presence_superseded_while_the_link_is_down_is_dropped_audited_and_only_the_latest_crosses():
    """While down, three presence changes from Romeo to Juliet wait as one: the two older are dropped and audited."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="zlib", rate=1_000_000))
    for show in ("away", "dnd", "chat"):
        pair.a.sends(presence("romeo@red.example/a", show=show))
    pair.connect()
    pair.run(2.0)
    assert len(pair.b.server.received) == 1 and "<show>chat</show>" in pair.b.server.received[0]
    assert pair.a.books() == {"accepted": 3, "delivered": 1, "bounced": 0, "dropped": 2, "in_flight": 0}
    assert [record[1] for record in pair.a.audit.records] == ["guard:link-presence-superseded"] * 2


def test_an_iq_that_cannot_be_answered_in_time_is_answered_at_once_from_this_side():
    """A bearer too slow for the IQ deadline: the requester gets remote-server-timeout now, from half A."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=75, round_trip=5.0,
                                              iq_deadline=4))
    pair.a.sends("<iq from='romeo@red.example/a' to='juliet@blue.example/b' type='get' id='q1'>"
                 "<query xmlns='jabber:iq:version'/></iq>")
    assert pair.a.books()["bounced"] == 1
    assert pair.a.server.received and "remote-server-timeout" in pair.a.server.received[0]
    assert pair.a.link.describe()["answered_too_late"] == 1


def test_stanzas_wait_across_an_outage_and_nothing_acknowledged_is_replayed():
    """Cut mid-traffic: what waited crosses after the link returns; B receives each stanza exactly once."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="dictionary", rate=1_000_000),
                           settings=LinkSettings(ack_every=2, down_deadline=120.0))
    pair.connect()
    for number in range(4):
        pair.a.sends(chat(number))
    pair.run(1.0)
    pair.cut()
    for number in range(4, 8):
        pair.a.sends(chat(number))
    pair.run(60.0, step=1.0)
    assert len(pair.b.server.received) == 4
    pair.connect()
    pair.run(3.0)
    assert [stanza.split("id=")[1][1:4].strip('"') for stanza in pair.b.server.received] == \
        [f"c{n}" for n in range(8)]
    assert pair.b.link.describe()["duplicates_dropped"] <= 4
    assert pair.a.books() == {"accepted": 8, "delivered": 8, "bounced": 0, "dropped": 0, "in_flight": 0}
    assert pair.b.books() == {"accepted": 8, "delivered": 8, "bounced": 0, "dropped": 0, "in_flight": 0}


def test_a_stanza_that_waited_past_max_wait_bounces():
    """The link never comes: after max_wait seconds the waiting chat bounces with remote-server-timeout."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=1_000_000, max_wait=20),
                           settings=LinkSettings(down_deadline=600.0))
    pair.a.sends(chat(1))
    pair.run(19.0, step=1.0)
    assert pair.a.books()["in_flight"] == 1
    pair.run(2.0, step=1.0)
    assert pair.a.books() == {"accepted": 1, "delivered": 0, "bounced": 1, "dropped": 0, "in_flight": 0}
    assert pair.a.link.describe()["expired"] == 1


@pytest.mark.parametrize("bound", [{"fan_out_recipients": 2}, {"fan_out_bytes": 600}])
def test_a_merged_message_over_the_receivers_fan_out_bounds_is_refused_and_each_copy_bounces_once(bound):
    """Half B fans out at most 2 recipients (or 600 bytes of copies): A's 3-copy message is refused by its number,
    and A bounces each copy once."""
    profile = ConstrainedProfile(security="bearer", compression="dictionary", rate=1_000_000)
    pair = ConstrainedPair(profile, settings=LinkSettings(ack_every=1, **bound))
    pair.connect()
    for occupant in OCCUPANTS[:3]:
        pair.a.sends(groupchat(occupant))
    pair.run(2.0)
    assert pair.b.server.received == [] and pair.b.books()["accepted"] == 0
    assert pair.a.link.describe()["refused_by_peer"] == 1  # one link stanza
    assert pair.a.books() == {"accepted": 3, "delivered": 0, "bounced": 3, "dropped": 0, "in_flight": 0}


def test_each_fanned_out_copy_is_addressing_checked_on_its_own():
    """A recipient half B does not serve is dropped as misaddressed at B; the other copies are delivered."""
    from guard.app.half import LINK_MISADDRESSED_RULE

    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=1_000_000))
    pair.connect()
    for occupant in ("one@blue.example/r", "two@blue.example/r"):
        pair.a.sends(groupchat(occupant))
    # What a compromised half A could write: a second recipient outside B's domains, in the link's own list.
    inject(pair, "<message from='room@conference.red.example/romeo' to='one@blue.example/r' type='groupchat'"
                 " id='g9'><body>x</body><recipients xmlns='urn:xmpp-guard:link:0'><to jid='one@blue.example/r'/>"
                 "<to jid='mallory@evil.example/x'/></recipients></message>")
    pair.run(2.0)
    assert ("drop", LINK_MISADDRESSED_RULE, "g9") in pair.b.audit.records
    assert sum('id="g9"' in stanza for stanza in pair.b.server.received) == 1


def inject(pair, xml):
    """Write a stanza on half A's link connection as A's link would (addresses abbreviated), outside its numbering."""
    from guard.edges.release import reparse_stanza
    from guard.edges.xmlstream import serialise

    pair.client.write(serialise(pair.a.constrained.written_form(reparse_stanza(xml))).encode("utf-8"))


@pytest.mark.parametrize("listing", [
    b"<recipients xmlns='urn:xmpp-guard:link:0'><to/></recipients>",
    b"<recipients xmlns='urn:xmpp-guard:link:0'><to jid='a@blue.example'/><to jid='a@blue.example'/></recipients>",
    b"<recipients xmlns='urn:xmpp-guard:link:0'>text<to jid='a@blue.example'/></recipients>",
    b"<recipients xmlns='urn:xmpp-guard:link:0' extra='1'><to jid='a@blue.example'/></recipients>",
    b"<recipients xmlns='urn:xmpp-guard:link:0'/>",
    b"<other xmlns='urn:xmpp-guard:link:0'/>",
])
def test_a_malformed_recipients_list_is_a_stream_error(listing):
    """Half B refuses a link stanza whose recipients list it cannot read: stream error, nothing accepted."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="zlib", rate=1_000_000))
    pair.connect()
    inject(pair, "<message from='room@conference.red.example/romeo' to='a@blue.example' type='groupchat' id='g1'>"
                 "<body>x</body>" + listing.decode() + "</message>")
    pair.run(1.0)
    assert pair.server.closing and pair.b.link.describe()["state"] == "down"
    assert pair.b.books()["accepted"] == 0 and pair.b.server.received == []


def test_a_stanza_from_this_side_holding_link_elements_is_not_carried():
    """A local stanza carrying the link's own namespace (a forged recipients list) bounces at the sending half."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=1_000_000))
    pair.connect()
    pair.a.sends("<message from='romeo@red.example/a' to='juliet@blue.example' id='x1'><body>x</body>"
                 "<recipients xmlns='urn:xmpp-guard:link:0'><to jid='nurse@blue.example'/></recipients></message>")
    pair.run(1.0)
    assert pair.b.server.received == [] and pair.a.books()["bounced"] == 1


def test_a_compression_bomb_through_the_link_is_refused_before_it_inflates_past_the_budget():
    """A deflate frame that would inflate to four times half B's frame budget closes the link (policy-violation)."""
    import zlib

    from guard.edges.constrained.compression import DEFLATED, LINK_ELEMENT_ALLOWANCE, frame
    from guard.edges.xmlstream import ParserLimits

    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="zlib", rate=1_000_000))
    pair.connect()
    budget = ParserLimits().stanza_bytes + LINK_ELEMENT_ALLOWANCE
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = compressor.compress(b"<message><body>" + b"A" * (4 * budget)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    bomb = frame(DEFLATED, payload[:-4])
    assert len(bomb) < budget // 100
    pair.client.transport.write(bomb)
    pair.run(1.0)
    assert pair.server.closing and pair.b.link.describe()["state"] == "down"
    assert pair.b.books()["accepted"] == 0


def test_an_address_that_is_no_valid_abbreviation_is_a_stream_error():
    """Half B expands the implied domains before its addressing check: what it cannot expand closes the link."""
    from guard.edges.link.constrained import NOT_AN_ABBREVIATION, ConstrainedLink

    class Refusing:
        def expand(self, element):
            return None

        def shorten(self, element):
            return element

    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=1_000_000))
    pair.b.constrained.abbreviation = Refusing()
    pair.connect()
    pair.a.sends(chat(1))
    pair.run(1.0)
    assert pair.server.closing and pair.b.server.received == []
    assert pair.a.link.describe()["refused_by_peer"] == 1 and pair.a.books()["bounced"] == 1
    assert NOT_AN_ABBREVIATION and ConstrainedLink


@pytest.mark.parametrize("security, resumed, flights_to_b, flights_to_a", [
    ("bearer", False, 1, 2),  # the first write after TCP carries header, resume and stanza, both ways
    ("tls", False, 3, 4),  # TLS 1.3: ClientHello; ServerHello..Finished; client Finished + header + stanza
    ("tls", True, 3, 4),  # resumed: the same flights, without certificates
])
def test_no_xmpp_round_trip_comes_before_the_first_stanza(material, security, resumed, flights_to_b, flights_to_a):
    """Count the flights on a new connection until each side's first stanza arrives: only TCP and TLS come first."""
    from .constrained_pairs import flights_before_first_stanzas

    pair = ConstrainedPair(ConstrainedProfile(security=security, compression="dictionary", rate=1_000_000),
                           material)
    if resumed:
        pair.connect()
        pair.tls[0].sessions.watch(pair.client.wrappedProtocol)
        pair.client.transport.loseConnection()
        pair.run(0.2)
    pair.a.sends(chat(1))
    pair.b.sends(chat(2, "juliet@blue.example/b", "romeo@red.example"))
    first = flights_before_first_stanzas(pair)
    assert (first["b"][0], first["a"][0]) == (flights_to_b, flights_to_a)
    if resumed:
        assert pair.tls[0].sessions.offered == 1
    print(f"{security}{' resumed' if resumed else ''}: first stanza at B after flight {first['b']}, "
          f"at A after flight {first['a']} (bytes written by each half so far)")


def test_a_compression_mismatch_says_so_in_the_log():
    """The half that cannot read its peer's first bytes logs that both halves must use the same compression."""
    from twisted.logger import globalLogPublisher

    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        test_a_compression_mismatch_closes_the_link_with_a_stream_error_not_a_hang("zlib", "none")
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert any(event["log_level"].name == "error" and "compression" in event.get("log_format", "")
               for event in seen)


def test_a_presence_to_many_recipients_crosses_once_and_is_fanned_out():
    """Romeo's presence to 6 friends behind the link is one link stanza; half B makes one presence per friend."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="dictionary", rate=1_000_000))
    pair.connect()
    for number in range(6):
        pair.a.sends(presence("romeo@red.example/a", f"friend{number}@blue.example", show="away"))
    pair.run(2.0)
    assert pair.b.link.describe()["received"] == 1
    assert sorted(stanza.split('to="')[1].split('"')[0] for stanza in pair.b.server.received) == \
        [f"friend{number}@blue.example" for number in range(6)]
    assert pair.b.books() == {"accepted": 6, "delivered": 6, "bounced": 0, "dropped": 0, "in_flight": 0}


def test_the_link_paces_its_writes_to_the_rate_and_chat_overtakes_waiting_presence():
    """At 2,400 bit/s, 12 presences wait their turn: a chat message offered after them crosses first, and after
    one second no more bytes than the rate allows have been written."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=2400))
    pair.connect()
    for number in range(12):  # directed presences with different status texts: nothing to merge or coalesce
        pair.a.sends(f"<presence from='romeo@red.example/a' to='friend{number}@blue.example'>"
                     f"<status>status number {number}</status></presence>")
    pair.a.sends(chat(1))
    written = pair.a.link.stream.byte_count.bytes_out
    pair.run(1.0, step=0.01)
    assert (pair.a.link.stream.byte_count.bytes_out - written) * 8 <= 2400 * 1.0 + 8 * 200  # one stanza of slack
    assert "<message" in pair.b.server.received[0]
    assert 1 < len(pair.b.server.received) < 13
    pair.run(10.0, step=0.05)
    assert len(pair.b.server.received) == 13
    assert pair.a.books() == {"accepted": 13, "delivered": 13, "bounced": 0, "dropped": 0, "in_flight": 0}


def test_a_policy_reload_judges_the_stanzas_waiting_in_the_schedule_again():
    """While the bearer is down, the export policy becomes stricter: the waiting chat is judged again and bounced."""
    from guard.core.pipeline import Direction, Judgement

    class BounceAll:
        def judge(self, stanza, direction):
            return Judgement.bounced(stanza, "no-export", "policy-violation")

    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=1_000_000))
    pair.a.sends(chat(1))
    pair.a.sends(presence("romeo@red.example/a"))
    assert pair.a.link.describe()["scheduled"] == 2
    pair.a.relay.policies.swap(Direction("red", "blue"), BounceAll())
    pair.a.relay.rejudge_link_buffer()
    assert pair.a.link.describe()["scheduled"] == 0
    assert pair.a.books() == {"accepted": 2, "delivered": 0, "bounced": 2, "dropped": 0, "in_flight": 0}
    assert [record[1] for record in pair.a.audit.records] == ["no-export", "no-export"]


def test_a_stopping_half_bounces_what_waits_in_the_schedule():
    """The half stops with stanzas waiting for the bearer: each bounces (remote-server-timeout), none is lost."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="none", rate=1_000_000))
    for number in range(3):
        pair.a.sends(chat(number))
    pair.a.relay.shut_down()
    assert pair.a.books() == {"accepted": 3, "delivered": 0, "bounced": 3, "dropped": 0, "in_flight": 0}
    assert pair.a.link.describe()["scheduled"] == 0


@pytest.mark.parametrize("mode, crosses", [
    ("all", ["broadcast", "directed", "probe"]),
    ("available", ["broadcast", "directed", "probe"]),
    ("directed", ["directed"]),
    ("none", []),
])
def test_presence_is_stripped_as_the_mode_says_and_each_stripped_one_is_audited(mode, crosses):
    """Broadcast, directed and probe presence against each presence mode: what stays behind is dropped, audited."""
    pair = ConstrainedPair(ConstrainedProfile(security="bearer", compression="zlib", rate=1_000_000, presence=mode))
    pair.connect()
    sent = {
        "broadcast": "<presence from='romeo@red.example/a' to='juliet@blue.example' id='broadcast'>"
                     "<status>in Verona</status></presence>",
        "directed": "<presence from='romeo@red.example/a' to='room@blue.example/romeo' id='directed'/>",
        "probe": "<presence from='romeo@red.example' to='nurse@blue.example' type='probe' id='probe'/>",
    }
    for xml in sent.values():
        pair.a.sends(xml)
    pair.run(2.0)
    assert sorted(stanza.split('id="')[1].split('"')[0] for stanza in pair.b.server.received) == sorted(crosses)
    stripped = len(sent) - len(crosses)
    assert pair.a.books() == {"accepted": 3, "delivered": len(crosses), "bounced": 0, "dropped": stripped,
                              "in_flight": 0}
    assert [record[:2] for record in pair.a.audit.records] == [("drop", "guard:link-presence-stripped")] * stripped
    if mode == "available":
        assert "<status>" not in "".join(pair.b.server.received)  # reduced to the state
