"""The bearer schedule: classes, fairness, the byte rate, presence modes, coalescing, merging, bursts, IQ deadlines, bounds and expiry, on plain stanzas and simulated time."""

import zlib

import pytest

from guard.core.constrained.schedule import (
    FULL_BYTES, FULL_STANZAS, HELD, IQ_DEADLINE, MERGED, PRESENCE_MODE, QUEUED, REFUSED, STRIPPED, TOO_LATE,
    UNKNOWN_PRESENCE_TYPE, BearerSchedule, Due, Outgoing, ScheduleLimits, classify, merged_size,
)
from guard.edges.xmlstream import StreamParser

HEADER = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"

LABEL = (
    "<securitylabel xmlns='urn:xmpp:sec-label:0'>"
    "<displaymarking fgcolor='black' bgcolor='red'>SECRET</displaymarking>"
    "<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>MQYCAQQGASk=</esssecuritylabel></label>"
    "</securitylabel>"
)
FLASH = "<headers xmlns='http://jabber.org/protocol/shim'><header name='Urgency'>high</header></headers>"
TEXT_100 = "The convoy leaves the northern depot at dawn; hold the bridge until the second platoon reports back."


def stanza(xml: str):
    """The element and its wire size, as the guard's stream parser reads them."""
    found = []
    parser = StreamParser(lambda header: None, lambda element, size: found.append((element, size)), lambda: None)
    parser.feed(HEADER + xml.encode())
    (pair,) = found
    return pair


def outgoing(xml: str, parcel=None) -> Outgoing:
    element, size = stanza(xml)
    return Outgoing(parcel if parcel is not None else xml, element, size, element.getAttribute("from", ""),
                    element.getAttribute("to", ""), classify(element))


def chat(sender="romeo@red.example/orchard", to="juliet@blue.example/balcony", body="hi", id_="c"):
    return f"<message from='{sender}' to='{to}' type='chat' id='{id_}'><body>{body}</body></message>"


def presence(sender="nurse@red.example/house", to="juliet@blue.example", inside="", type_=None):
    kind = f" type='{type_}'" if type_ else ""
    return f"<presence from='{sender}' to='{to}'{kind}>{inside}</presence>"


def room_message(to, id_="r1", body="to the room"):
    return (f"<message from='hall@conference.red.example/friar' to='{to}' type='groupchat' id='{id_}'>"
            f"<body>{body}</body></message>")


def drain(schedule: BearerSchedule, now: float, rounds: int = 10_000):
    """Run the schedule as the link does: take what is due, else sleep to wake_at; (time, item) per write."""
    written = []
    for _ in range(rounds):
        due = schedule.next_due(now)
        if due.item is not None:
            written.append((now, due.item))
            continue
        if due.wake_at is None:
            return written
        assert due.wake_at > now
        now = due.wake_at
    raise AssertionError("the schedule did not drain")


def parcels_in_order(written):
    return [parcel for _, item in written for parcel in item.parcels]


# -- classes ------------------------------------------------------------------


@pytest.mark.parametrize("xml, kind", [
    (f"<message from='a@red.example' to='b@blue.example' type='chat'><body>x</body>{LABEL}</message>", "priority"),
    (f"<message from='a@red.example' to='b@blue.example'>{FLASH}<body>x</body></message>", "priority"),
    (f"<message from='h@conference.red.example/n' to='b@blue.example/r' type='groupchat'>{LABEL}</message>",
     "priority"),
    ("<message from='a@red.example' to='b@blue.example' type='chat'><body>x</body></message>", "chat"),
    ("<message from='a@red.example' to='b@blue.example'><body>x</body></message>", "chat"),
    ("<message from='a@red.example' to='b@blue.example' type='error'/>", "chat"),
    ("<message from='h@conference.red.example/n' to='b@blue.example/r' type='groupchat'/>", "groupchat"),
    ("<iq from='a@red.example/r' to='blue.example' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>", "iq"),
    ("<presence from='a@red.example/r' to='b@blue.example'/>", "presence"),
    (f"<presence from='a@red.example/r' to='b@blue.example'>{LABEL}</presence>", "presence"),
    (f"<message from='a@red.example' to='b@blue.example'><forwarded xmlns='urn:xmpp:forward:0'>{LABEL}"
     "</forwarded></message>", "chat"),
])
def test_each_stanza_falls_in_its_class(xml, kind):
    """A message with its own label or a flash header is priority; a label deeper down, or on presence, is not."""
    assert classify(stanza(xml)[0]) == kind


def test_flash_headers_are_configurable():
    """Which SHIM headers mark flash traffic is the operator's list (names and values without case); an empty list marks none."""
    xml = ("<message from='a@red.example' to='b@blue.example'><headers xmlns='http://jabber.org/protocol/shim'>"
           "<header name='precedence'> FLASH </header></headers></message>")
    element = stanza(xml)[0]
    assert classify(element) == "chat"
    assert classify(element, (("Precedence", "flash"),)) == "priority"
    assert classify(stanza(f"<message from='a@red.example' to='b@blue.example'>{FLASH}</message>")[0], ()) == "chat"
    schedule = BearerSchedule(1200, "all", 0, ScheduleLimits(flash_headers=[["Precedence", "Flash"]]))
    assert schedule.limits.flash_headers == (("Precedence", "Flash"),)
    assert schedule.classify(element) == "priority"


def test_classify_refuses_what_is_not_a_stanza():
    """A nonza or an element outside the stanza namespaces has no class: classify raises."""
    with pytest.raises(ValueError):
        classify(stanza("<db:result xmlns:db='jabber:server:dialback' from='a' to='b'>k</db:result>")[0])
    with pytest.raises(ValueError):
        classify(stanza("<message xmlns='urn:example:other' from='a@red.example' to='b@blue.example'/>")[0])


def test_offer_refuses_a_kind_that_does_not_fit_the_element():
    """An offer whose kind does not match its element is a caller's mistake and raises rather than schedule it wrongly."""
    schedule = BearerSchedule(1200, "all", 0)
    element, size = stanza(presence())
    with pytest.raises(ValueError):
        schedule.offer(Outgoing("p", element, size, "a", "b", "chat"), 0.0)
    with pytest.raises(ValueError):
        schedule.offer(Outgoing("p", element, 0, "a", "b", "presence"), 0.0)


def test_classes_leave_in_priority_order():
    """Offered lowest class first, they leave labelled, chat, iq, groupchat, presence."""
    schedule = BearerSchedule(9600, "all", 0)
    offers = [
        ("presence", presence()),
        ("groupchat", room_message("juliet@blue.example/balcony")),
        ("iq", "<iq from='romeo@red.example/o' to='blue.example' type='get' id='q'><ping xmlns='urn:xmpp:ping'/></iq>"),
        ("chat", chat()),
        ("priority", f"<message from='tybalt@red.example/s' to='juliet@blue.example' type='chat'>{LABEL}</message>"),
    ]
    for name, xml in offers:
        assert schedule.offer(outgoing(xml, parcel=name), 0.0).outcome == QUEUED
    assert parcels_in_order(drain(schedule, 0.0)) == ["priority", "chat", "iq", "groupchat", "presence"]


def test_senders_take_turns_within_a_class():
    """Three chats from one sender and one each from two others leave round robin, each sender's in its own order."""
    schedule = BearerSchedule(9600, "all", 0)
    for parcel, sender in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c")]:
        schedule.offer(outgoing(chat(sender=f"{sender}@red.example/r", id_=parcel), parcel=parcel), 0.0)
    assert parcels_in_order(drain(schedule, 0.0)) == ["a1", "b1", "c1", "a2", "a3"]


# -- the byte rate --------------------------------------------------------------


def test_bytes_leave_at_the_rate():
    """Each write waits until the bearer has sent the bytes before it at the rate, so the bytes per simulated second equal the rate."""
    schedule = BearerSchedule(1200, "all", 0)
    for number in range(40):
        schedule.offer(outgoing(chat(body="x" * (number * 7 % 50), id_=str(number))), 0.0)
    written = drain(schedule, 0.0)
    sent = 0
    for when, item in written:
        assert when == pytest.approx(sent * 8 / 1200)
        sent += item.size
    # in the first 20 seconds: 20 s x 150 bytes/s, give or take the stanza on the air
    in_twenty = sum(item.size for when, item in written if when < 20.0)
    largest = max(item.size for _, item in written)
    assert 20 * 150 <= in_twenty < 20 * 150 + largest


def test_a_stanza_bigger_than_the_bucket_is_not_starved():
    """A 2,000-byte stanza leaves as soon as the bearer is free, and what follows waits the 13.3 s it takes at 1,200 bps."""
    schedule = BearerSchedule(1200, "all", 0, ScheduleLimits(burst_bytes=100))
    big = outgoing(chat(body="y" * 1900, id_="big"), parcel="big")
    assert big.size > 1900
    schedule.offer(big, 0.0)
    schedule.offer(outgoing(chat(id_="small"), parcel="small"), 0.0)
    written = drain(schedule, 0.0)
    assert [(item.parcels, when) for when, item in written] == [
        (["big"], 0.0), (["small"], pytest.approx((big.size - 100) * 8 / 1200)),
    ]


def test_the_bucket_saves_at_most_burst_bytes():
    """After a long idle time the bearer may take burst_bytes at once and no more."""
    schedule = BearerSchedule(800, "all", 0, ScheduleLimits(burst_bytes=300))
    sizes = []
    for number in range(4):
        offer = outgoing(chat(body="z" * 50, id_=str(number)))
        sizes.append(offer.size)
        schedule.offer(offer, 100.0)
    written = drain(schedule, 100.0)
    at_once = [item for when, item in written if when == 100.0]
    assert sum(item.size for item in at_once[:-1]) <= 300 < sum(item.size for item in at_once)


def test_what_the_link_really_wrote_corrects_the_charge():
    """When the link reports a compressed size, the next stanza waits for those bytes, not the plain size; spend charges the link's own bytes."""
    schedule = BearerSchedule(800, "all", 0)
    schedule.offer(outgoing(chat(body="a" * 200, id_="1"), parcel="1"), 0.0)
    schedule.offer(outgoing(chat(id_="2"), parcel="2"), 0.0)
    first = schedule.next_due(0.0).item
    schedule.wrote(first, 50, 0.0)
    schedule.spend(50, 0.0)
    assert schedule.next_due(0.0) == Due(None, pytest.approx(1.0))  # 100 bytes at 100 bytes per second
    assert schedule.next_due(1.0).item.parcels == ["2"]


# -- presence modes -------------------------------------------------------------

SUBSCRIBE = presence(to="juliet@blue.example", type_="subscribe")
ERROR = presence(type_="error", inside="<error type='cancel'><gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>")
BROADCAST = presence(to="juliet@blue.example", inside="<show>away</show>")
DIRECTED = presence(to="juliet@blue.example/balcony", inside="<show>away</show>")
UNAVAILABLE_BROADCAST = presence(to="juliet@blue.example", type_="unavailable")
PROBE = presence(sender="red.example", to="juliet@blue.example", type_="probe")
MUC_JOIN = "<presence from='juliet@blue.example/b' to='hall@conference.red.example/juliet'><x xmlns='http://jabber.org/protocol/muc'/></presence>"


@pytest.mark.parametrize("mode, xml, outcome", [
    ("all", BROADCAST, QUEUED), ("all", PROBE, QUEUED), ("all", SUBSCRIBE, QUEUED),
    ("available", BROADCAST, QUEUED), ("available", UNAVAILABLE_BROADCAST, QUEUED), ("available", PROBE, QUEUED),
    ("available", SUBSCRIBE, QUEUED), ("available", ERROR, QUEUED),
    ("directed", BROADCAST, STRIPPED), ("directed", UNAVAILABLE_BROADCAST, STRIPPED), ("directed", PROBE, STRIPPED),
    ("directed", DIRECTED, QUEUED), ("directed", MUC_JOIN, QUEUED), ("directed", SUBSCRIBE, QUEUED),
    ("directed", ERROR, QUEUED),
    ("none", BROADCAST, STRIPPED), ("none", DIRECTED, STRIPPED), ("none", SUBSCRIBE, STRIPPED),
    ("none", ERROR, STRIPPED), ("none", PROBE, STRIPPED),
])
def test_each_presence_mode_lets_its_presence_cross(mode, xml, outcome):
    """Subscriptions and errors cross in every mode but none; directed keeps presence to a full JID only; none keeps nothing."""
    offered = BearerSchedule(1200, mode, 0).offer(outgoing(xml), 0.0)
    assert offered.outcome == outcome
    if outcome == STRIPPED:
        assert offered.reason == PRESENCE_MODE


def test_available_mode_keeps_only_the_state_the_label_and_the_occupant():
    """In available mode a presence crosses as a new element with its attributes, label and MUC occupant item; show, status, priority and caps stay behind."""
    xml = (
        "<presence from='hall@conference.red.example/nurse' to='juliet@blue.example/balcony' id='p1' xml:lang='en'>"
        "<show>away</show><status>At the market</status><priority>5</priority>"
        "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/>"
        f"{LABEL}<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant'/></x>"
        "</presence>"
    )
    offer = outgoing(xml)
    offered = BearerSchedule(1200, "available", 0).offer(offer, 0.0)
    assert offered.outcome == QUEUED
    assert offered.item.element is not offer.element
    assert offered.item.element.toXml() == (
        "<presence xmlns='jabber:server' from='hall@conference.red.example/nurse' to='juliet@blue.example/balcony'"
        " id='p1' xml:lang='en'>" + LABEL +
        "<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant'/></x></presence>"
    )
    removed = len("<show>away</show><status>At the market</status><priority>5</priority>"
                  "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/>")
    assert offered.item.size == offer.size - removed


def test_a_presence_type_outside_the_rfc_is_refused():
    """A presence whose type RFC 6121 does not define is refused whatever the mode (fail closed)."""
    offered = BearerSchedule(1200, "all", 0).offer(outgoing(presence(type_="invisible")), 0.0)
    assert (offered.outcome, offered.reason) == (REFUSED, UNKNOWN_PRESENCE_TYPE)


# -- coalescing -----------------------------------------------------------------


def test_the_latest_presence_per_pair_wins_and_keeps_its_place():
    """A newer presence from one sender to one receiver replaces the queued one in its place; the older parcel comes back as superseded."""
    schedule = BearerSchedule(1200, "all", 0)
    schedule.offer(outgoing(presence(sender="nurse@red.example/h", inside="<show>away</show>"), parcel="nurse-away"), 0.0)
    schedule.offer(outgoing(presence(sender="friar@red.example/c"), parcel="friar"), 0.0)
    offered = schedule.offer(outgoing(presence(sender="nurse@red.example/h", type_="unavailable"), parcel="nurse-gone"), 1.0)
    assert (offered.outcome, offered.superseded) == (QUEUED, ("nurse-away",))
    assert schedule.queued_stanzas == 2
    written = drain(schedule, 1.0)
    assert parcels_in_order(written) == ["nurse-gone", "friar"]
    assert written[0][1].element.getAttribute("type") == "unavailable"


def test_subscriptions_are_never_coalesced():
    """Two subscription stanzas of one pair both cross: only available and unavailable presence are state."""
    schedule = BearerSchedule(1200, "all", 0)
    assert schedule.offer(outgoing(presence(type_="subscribe"), parcel="s1"), 0.0).superseded == ()
    assert schedule.offer(outgoing(presence(type_="subscribed"), parcel="s2"), 0.0).superseded == ()
    assert parcels_in_order(drain(schedule, 0.0)) == ["s1", "s2"]


def test_fifty_changes_during_an_outage_leave_one_presence():
    """While the bearer is down, 50 changes of one contact leave one presence (the last), so the link resends a snapshot, not a replay."""
    schedule = BearerSchedule(1200, "all", 0.25)
    shows = ["away", "xa", "dnd", "chat"]
    superseded = []
    for number in range(50):
        xml = presence(sender="nurse@red.example/h", inside=f"<show>{shows[number % 4]}</show><status>{number}</status>")
        superseded.extend(schedule.offer(outgoing(xml, parcel=number), number * 6.0).superseded)
    assert superseded == list(range(49))
    (item,) = schedule.snapshot_after_outage()
    assert item.parcels == [49]
    assert schedule.queued_stanzas == 1
    assert item.offered_at == 294.0
    assert schedule.queued_bytes == item.size == outgoing(
        presence(sender="nurse@red.example/h", inside="<show>xa</show><status>49</status>")).size
    assert parcels_in_order(drain(schedule, 300.0)) == [49]


# -- merging ---------------------------------------------------------------------


def test_copies_of_a_room_message_merge_into_one_item():
    """Three copies of one room message to three occupants offered within the window are one item, one recipient per copy, and it waits for the window to close."""
    schedule = BearerSchedule(1200, "all", 0.25)
    occupants = ["juliet@blue.example/balcony", "nurse@blue.example/h", "paris@blue.example/p"]
    first = schedule.offer(outgoing(room_message(occupants[0]), parcel="c0"), 10.0)
    outcomes = [schedule.offer(outgoing(room_message(to), parcel=f"c{n}"), 10.1) for n, to in enumerate(occupants[1:], 1)]
    assert first.outcome == QUEUED
    assert [(offered.outcome, offered.item) for offered in outcomes] == [(MERGED, first.item)] * 2
    item = first.item
    assert (item.recipients, item.parcels) == (occupants, ["c0", "c1", "c2"])
    assert item.size == merged_size(outgoing(room_message(occupants[0])).size, occupants)
    assert schedule.queued_stanzas == 3 and schedule.queued_bytes == item.size
    assert schedule.next_due(10.2) == Due(None, pytest.approx(10.25))
    assert drain(schedule, 10.2) == [(pytest.approx(10.25), item)]


def test_what_is_not_a_copy_does_not_merge():
    """A different body, a different id, a repeat to the same occupant, or a copy after the window are items of their own."""
    schedule = BearerSchedule(1200, "all", 0.25)
    first = schedule.offer(outgoing(room_message("juliet@blue.example/b")), 0.0).item
    for xml, when in [
        (room_message("nurse@blue.example/h", body="something else"), 0.1),
        (room_message("nurse@blue.example/h", id_="r2"), 0.1),
        (room_message("juliet@blue.example/b"), 0.1),
        (room_message("paris@blue.example/p"), 0.35),
    ]:
        offered = schedule.offer(outgoing(xml), when)
        assert offered.outcome == QUEUED and offered.item is not first
    assert first.recipients == ["juliet@blue.example/b"]


def test_a_copy_never_overtakes_a_later_message_to_its_recipient():
    """When an occupant already has the room's next message queued, a late copy of the previous one does not join its earlier item."""
    schedule = BearerSchedule(1200, "all", 1.0)
    first = schedule.offer(outgoing(room_message("a@blue.example/r", id_="m1"), parcel="m1-a"), 0.0).item
    schedule.offer(outgoing(room_message("b@blue.example/r", id_="m2"), parcel="m2-b"), 0.1)
    late = schedule.offer(outgoing(room_message("b@blue.example/r", id_="m1"), parcel="m1-b"), 0.2)
    assert late.outcome == QUEUED and late.item is not first
    assert parcels_in_order(drain(schedule, 0.2)) == ["m1-a", "m2-b", "m1-b"]


def test_occupant_presence_merges_and_coalesces():
    """One occupant's presence to several far occupants is one item; when the occupant changes, each recipient leaves the old item for the new one."""
    schedule = BearerSchedule(1200, "all", 0.25)
    occupants = ["juliet@blue.example/b", "nurse@blue.example/h", "paris@blue.example/p"]

    def occupant(to, show):
        return (f"<presence from='hall@conference.red.example/friar' to='{to}'><show>{show}</show>"
                "<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='member' role='participant'/></x>"
                "</presence>")

    here = [schedule.offer(outgoing(occupant(to, "chat"), parcel=f"here-{n}"), 0.0) for n, to in enumerate(occupants)]
    assert [offered.outcome for offered in here] == [QUEUED, MERGED, MERGED]
    away = [schedule.offer(outgoing(occupant(to, "away"), parcel=f"away-{n}"), 0.1) for n, to in enumerate(occupants)]
    assert [offered.superseded for offered in away] == [("here-0",), ("here-1",), ("here-2",)]
    assert [offered.outcome for offered in away] == [QUEUED, MERGED, MERGED]
    assert all(offered.item is away[0].item for offered in away)
    assert here[0].item.recipients == []
    assert schedule.queued_stanzas == 3
    written = drain(schedule, 0.1)
    assert len(written) == 1
    assert written[0][1].parcels == ["away-0", "away-1", "away-2"]
    assert written[0][1].element.firstChildElement().children == ["away"]


# -- roster bursts ---------------------------------------------------------------


def roster(count, to="juliet@blue.example"):
    """The presence of ``count`` contacts coming online, as their server broadcasts it."""
    return [
        presence(sender=f"contact{number:02d}@red.example/desk", to=to,
                 inside="<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://psi-im.org' ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/>")
        for number in range(count)
    ]


def test_presence_beyond_the_roster_burst_waits_behind_everything():
    """Past roster_burst new presence items in the window, presence is held: later groupchat and chat go first, and the held ones after."""
    schedule = BearerSchedule(1200, "all", 0, ScheduleLimits(roster_burst=3, roster_window_seconds=10.0))
    offered = [schedule.offer(outgoing(xml, parcel=f"p{n}"), 0.0) for n, xml in enumerate(roster(6))]
    assert [item.item.lane for item in offered] == ["presence"] * 3 + [HELD] * 3
    schedule.offer(outgoing(room_message("juliet@blue.example/b"), parcel="room"), 0.0)
    schedule.offer(outgoing(chat(), parcel="chat"), 0.0)
    assert parcels_in_order(drain(schedule, 0.0)) == ["chat", "room", "p0", "p1", "p2", "p3", "p4", "p5"]
    # a window later the count starts again
    assert schedule.offer(outgoing(roster(7)[6]), 10.0).item.lane == "presence"


def test_a_held_burst_takes_no_more_than_its_share_of_the_rate():
    """Held presence leaves no faster than roster_share of the rate even with nothing else waiting, leaving the rest of the bearer free."""
    schedule = BearerSchedule(1200, "all", 0, ScheduleLimits(roster_burst=0, roster_share=0.25))
    for xml in roster(10):
        schedule.offer(outgoing(xml), 0.0)
    written = drain(schedule, 0.0)
    assert len(written) == 10
    sent = 0
    for when, item in written:
        assert when == pytest.approx(sent * 8 / (1200 * 0.25))
        sent += item.size


# -- IQ deadline -------------------------------------------------------------------

PING = "<iq from='romeo@red.example/o' to='blue.example' type='get' id='q1'><ping xmlns='urn:xmpp:ping'/></iq>"
RESULT = "<iq from='romeo@red.example/o' to='juliet@blue.example/b' type='result' id='q0'/>"


def test_an_iq_that_cannot_be_answered_in_time_is_too_late_at_once():
    """With more chat queued than the bearer sends within the IQ deadline, a get is too late at offer; a result is queued anyway."""
    limits = ScheduleLimits(iq_deadline_seconds=20.0, round_trip_seconds=2.0)
    schedule = BearerSchedule(1200, "all", 0, limits)
    ping = outgoing(PING)
    budget = (20.0 - 2.0) * 150 - 2 * ping.size  # bytes that may go ahead of the ping
    queued = 0
    number = 0
    while queued + 200 < budget:
        queued += schedule.offer(outgoing(chat(body="w" * 120, id_=str(number))), 0.0).item.size
        number += 1
    assert schedule.offer(ping, 0.0).outcome == QUEUED
    schedule.offer(outgoing(chat(body="w" * 300, id_="more")), 0.0)
    offered = schedule.offer(outgoing(PING.replace("q1", "q2")), 0.0)
    assert (offered.outcome, offered.reason) == (TOO_LATE, IQ_DEADLINE)
    assert schedule.offer(outgoing(RESULT), 0.0).outcome == QUEUED


def test_an_iq_that_becomes_late_while_waiting_expires_early():
    """A get overtaken by later priority traffic comes out of expired once it can no longer be answered in time, long before max_wait."""
    limits = ScheduleLimits(iq_deadline_seconds=10.0, round_trip_seconds=2.0, max_wait_seconds=600.0)
    schedule = BearerSchedule(1200, "all", 0, limits)
    ping = schedule.offer(outgoing(PING), 0.0).item
    answer_by = 10.0 - 2.0 - 2 * ping.size / 150
    for number in range(20):
        schedule.offer(outgoing(f"<message from='t@red.example/s' to='j@blue.example' id='{number}'>{LABEL}</message>"),
                       0.0)
    assert schedule.next_expiry() == pytest.approx(answer_by)
    assert schedule.expired(answer_by - 0.01) == []
    assert schedule.expired(answer_by) == [ping]
    result = schedule.offer(outgoing(RESULT), 0.0).item
    assert schedule.next_expiry() == pytest.approx(600.0)
    assert result.answer_by is None


# -- bounds and expiry ------------------------------------------------------------


def test_the_queue_refuses_past_its_stanza_count():
    """Past queue_stanzas (copies of a merged item included) an offer is refused, naming the bound."""
    schedule = BearerSchedule(1200, "all", 0.25, ScheduleLimits(queue_stanzas=3))
    assert schedule.offer(outgoing(chat(id_="1")), 0.0).outcome == QUEUED
    assert schedule.offer(outgoing(room_message("a@blue.example/r")), 0.0).outcome == QUEUED
    assert schedule.offer(outgoing(room_message("b@blue.example/r")), 0.0).outcome == MERGED
    refused = schedule.offer(outgoing(room_message("c@blue.example/r")), 0.0)
    assert (refused.outcome, refused.reason) == (REFUSED, FULL_STANZAS)
    assert schedule.offer(outgoing(chat(id_="2")), 0.0).reason == FULL_STANZAS
    assert schedule.queued_stanzas == 3


def test_a_presence_replacing_another_fits_a_full_queue():
    """At the stanza bound, a newer presence of a queued pair is still taken: it replaces one rather than adding one."""
    schedule = BearerSchedule(1200, "all", 0, ScheduleLimits(queue_stanzas=1))
    schedule.offer(outgoing(presence(inside="<show>away</show>"), parcel="old"), 0.0)
    offered = schedule.offer(outgoing(presence(), parcel="new"), 1.0)
    assert (offered.outcome, offered.superseded, schedule.queued_stanzas) == (QUEUED, ("old",), 1)


def test_the_queue_refuses_past_its_bytes():
    """Past queue_bytes an offer is refused naming the bound; a single stanza larger than the bound never fits."""
    one = outgoing(chat(body="b" * 100, id_="1"))
    schedule = BearerSchedule(1200, "all", 0, ScheduleLimits(queue_bytes=2 * one.size + 10))
    assert schedule.offer(one, 0.0).outcome == QUEUED
    assert schedule.offer(outgoing(chat(body="b" * 100, id_="2")), 0.0).outcome == QUEUED
    refused = schedule.offer(outgoing(chat(body="b" * 20, id_="3")), 0.0)
    assert (refused.outcome, refused.reason) == (REFUSED, FULL_BYTES)
    assert schedule.queued_bytes == 2 * one.size
    lone = BearerSchedule(1200, "all", 0, ScheduleLimits(queue_bytes=50))
    assert lone.offer(one, 0.0).reason == FULL_BYTES


def test_a_merged_copy_counts_its_recipient_bytes():
    """A copy joining a merged item adds its recipient's bytes to the queue, and is refused when they do not fit."""
    first = outgoing(room_message("a@blue.example/r"))
    two = merged_size(first.size, ["a@blue.example/r", "b@blue.example/r"])
    schedule = BearerSchedule(1200, "all", 0.25, ScheduleLimits(queue_bytes=two))
    schedule.offer(first, 0.0)
    assert schedule.offer(outgoing(room_message("b@blue.example/r")), 0.0).outcome == MERGED
    assert schedule.queued_bytes == two
    assert schedule.offer(outgoing(room_message("c@blue.example/r")), 0.0).reason == FULL_BYTES


def test_what_waits_past_max_wait_expires():
    """An item that has waited max_wait_seconds comes out of expired, once, and no longer counts in the queue."""
    schedule = BearerSchedule(1200, "all", 0, ScheduleLimits(max_wait_seconds=30.0))
    early = schedule.offer(outgoing(chat(id_="early")), 0.0).item
    late = schedule.offer(outgoing(presence()), 5.0).item
    assert schedule.next_expiry() == 30.0
    assert schedule.expired(29.9) == []
    assert schedule.expired(30.0) == [early]
    assert schedule.expired(30.0) == []
    assert (schedule.queued_stanzas, schedule.queued_bytes) == (1, late.size)
    assert schedule.expired(35.0) == [late]
    assert schedule.next_due(35.0).wake_at is None


def test_limits_and_settings_are_checked():
    """A schedule refuses settings it could not honour: no rate, an unknown presence mode, a share above the rate, no bound."""
    for bad in [dict(queue_stanzas=0), dict(queue_bytes=-1), dict(roster_share=1.5), dict(roster_share=0),
                dict(max_wait_seconds=0), dict(round_trip_seconds=-1), dict(flash_headers=(("Urgency",),)),
                dict(flash_headers="Urgency: high"), dict(flash_headers=[["Urgency", " "]]),
                dict(burst_bytes=-1), dict(roster_burst=True)]:
        with pytest.raises(ValueError):
            ScheduleLimits(**bad)
    with pytest.raises(ValueError):
        BearerSchedule(0, "all", 0.25)
    with pytest.raises(ValueError):
        BearerSchedule(1200, "some", 0.25)
    with pytest.raises(ValueError):
        BearerSchedule(1200, "all", -1)


# -- the goal, simulated -------------------------------------------------


def test_a_labelled_chat_crosses_a_roster_burst_within_three_seconds():
    """At 1,200 bps with a 1 s one-way delay, a 100-character labelled chat offered while 50 contacts come online leaves as soon as the presence on the air is sent and arrives in under 3 s."""
    rate, delay = 1200, 1.0
    schedule = BearerSchedule(rate, "all", 0.25)
    for number, xml in enumerate(roster(50)):
        schedule.offer(outgoing(xml, parcel=f"contact{number:02d}"), 0.0)
    labelled = outgoing(
        f"<message from='romeo@red.example/orchard' to='juliet@blue.example/balcony' type='chat' id='m1'>"
        f"<body>{TEXT_100}</body>{LABEL}</message>", parcel="labelled")
    assert len(TEXT_100) == 100 and labelled.kind == "priority"
    offered_at = 4.0

    # The link: one deflate stream with a sync flush per stanza; the schedule is told the compressed size.
    deflate = zlib.compressobj(9)
    written, now, offered = [], 0.0, False
    for _ in range(1000):
        if not offered and now >= offered_at:
            schedule.offer(labelled, offered_at)
            now, offered = offered_at, True
        due = schedule.next_due(now)
        if due.item is not None:
            frame = deflate.compress(due.item.element.toXml().encode()) + deflate.flush(zlib.Z_SYNC_FLUSH)
            schedule.wrote(due.item, len(frame), now)
            written.append((now, due.item.parcels[0], len(frame)))
            continue
        if due.wake_at is None:
            break
        now = min(due.wake_at, offered_at) if not offered else due.wake_at

    order = [parcel for _, parcel, _ in written]
    position = order.index("labelled")
    assert len(order) == 51 and 0 < position < 50
    assert order[:position] + order[position + 1:] == [f"contact{number:02d}" for number in range(50)]
    before_when, _, before_bytes = written[position - 1]
    left_at, _, labelled_bytes = written[position]
    assert before_when < offered_at <= before_when + before_bytes * 8 / rate
    assert left_at == pytest.approx(before_when + before_bytes * 8 / rate)
    arrived_at = left_at + labelled_bytes * 8 / rate + delay
    assert arrived_at - offered_at < 3.0


# -- order across classes -----------------------------------------------------------


def test_a_message_to_a_room_never_overtakes_the_join():
    """A groupchat message sent after a MUC join waits for the join presence, which leaves in the message's turn, ahead of other presence."""
    schedule = BearerSchedule(1200, "all", 0)
    schedule.offer(outgoing(presence(sender="nurse@blue.example/h", to="friar@red.example"), parcel="nurse"), 0.0)
    join = ("<presence from='juliet@blue.example/b' to='hall@conference.red.example/juliet'>"
            "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
    schedule.offer(outgoing(join, parcel="join"), 0.0)
    said = ("<message from='juliet@blue.example/b' to='hall@conference.red.example' type='groupchat' id='g1'>"
            "<body>hello all</body></message>")
    schedule.offer(outgoing(said, parcel="said"), 0.0)
    schedule.offer(outgoing(chat(sender="romeo@blue.example/o", to="friar@red.example"), parcel="chat"), 0.0)
    assert parcels_in_order(drain(schedule, 0.0)) == ["chat", "join", "said", "nurse"]


def test_a_room_subject_waits_for_the_occupant_presence_before_it():
    """The room's occupant presence to a joining user leaves before the room's subject to that user, even inside the merge window."""
    schedule = BearerSchedule(1200, "all", 0.25)
    occupant = ("<presence from='hall@conference.red.example/friar' to='juliet@blue.example/b'>"
                "<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' role='moderator'/></x></presence>")
    subject = ("<message from='hall@conference.red.example/friar' to='juliet@blue.example/b' type='groupchat' id='s'>"
               "<subject>Vigil</subject></message>")
    first = schedule.offer(outgoing(occupant, parcel="occupant"), 0.0).item
    schedule.offer(outgoing(subject, parcel="subject"), 0.1)
    written = drain(schedule, 0.1)
    assert [(when, item.parcels) for when, item in written] == [
        (pytest.approx(0.25), ["occupant"]), (pytest.approx(0.25 + first.size * 8 / 1200), ["subject"]),
    ]


def test_a_roster_broadcast_holds_no_message_back():
    """Presence to a bare JID (a roster broadcast) does not make the contact's chat wait."""
    schedule = BearerSchedule(1200, "all", 0)
    schedule.offer(outgoing(presence(sender="romeo@red.example/orchard", to="juliet@blue.example"), parcel="here"), 0.0)
    schedule.offer(outgoing(chat(), parcel="chat"), 0.0)
    schedule.offer(outgoing(room_message("juliet@blue.example/balcony"), parcel="room"), 0.0)
    assert parcels_in_order(drain(schedule, 0.0)) == ["chat", "room", "here"]


# -- nothing lost ---------------------------------------------------------------------


def test_every_parcel_comes_out_exactly_once_and_the_counts_hold():
    """Across random offers, writes and expiries in every mode, each accepted parcel leaves once (written, expired or superseded) and the stanza and byte counts match what waits."""
    import random

    senders = ["hall@conference.red.example/friar", "nurse@red.example/h", "romeo@red.example/o", "red.example"]
    receivers = ["juliet@blue.example/b", "juliet@blue.example", "paris@blue.example/p", "hall@conference.blue.example/j"]
    templates = [
        lambda f, t, n: f"<message from='{f}' to='{t}' type='chat' id='{n}'><body>{'x' * (n % 40)}</body></message>",
        lambda f, t, n: f"<message from='{senders[0]}' to='{t}' type='groupchat' id='{n // 4}'><body>{n // 4}</body></message>",
        lambda f, t, n: f"<message from='{f}' to='{t}' id='{n}'>{LABEL}</message>",
        lambda f, t, n: f"<iq from='{f}' to='{t}' type='get' id='{n}'><ping xmlns='urn:xmpp:ping'/></iq>",
        lambda f, t, n: f"<iq from='{f}' to='{t}' type='result' id='{n}'/>",
        lambda f, t, n: f"<presence from='{f}' to='{t}'><show>{['away', 'xa', 'dnd'][n % 3]}</show></presence>",
        lambda f, t, n: f"<presence from='{f}' to='{t}'/>",
        lambda f, t, n: f"<presence from='{f}' to='{t}' type='unavailable'/>",
        lambda f, t, n: f"<presence from='{f}' to='{t}' type='subscribe'/>",
    ]
    seen = set()
    for seed, mode in enumerate(["all", "available", "directed", "none"] * 2):
        chance = random.Random(seed)
        limits = ScheduleLimits(queue_stanzas=60, queue_bytes=chance.choice([3000, 9000]), max_wait_seconds=20.0, roster_burst=3,
                                iq_deadline_seconds=15.0, round_trip_seconds=1.0, burst_bytes=chance.choice([0, 200]))
        schedule = BearerSchedule(chance.choice([300, 1200, 9600]), mode, chance.choice([0, 0.25, 1.0]), limits)
        accepted, out = set(), []
        now = 0.0
        for number in range(600):
            now += chance.choice([0.0, 0.0, 0.0, 0.05, 0.3, 1.0])
            if chance.random() < 0.75:
                xml = chance.choice(templates)(chance.choice(senders), chance.choice(receivers), number)
                offered = schedule.offer(outgoing(xml, parcel=number), now)
                seen.add(offered.reason or offered.outcome)
                out.extend(offered.superseded)
                if offered.outcome in (QUEUED, MERGED):
                    accepted.add(number)
            else:
                for item in schedule.expired(now):
                    out.extend(item.parcels)
                due = schedule.next_due(now)
                if due.item is not None:
                    out.extend(due.item.parcels)
                    schedule.wrote(due.item, max(1, due.item.size // 2), now)
            waiting = schedule.queued_items()
            assert schedule.queued_stanzas == sum(len(item.parcels) for item in waiting)
            assert schedule.queued_bytes == sum(item.size for item in waiting) <= limits.queue_bytes
            assert schedule.queued_stanzas <= limits.queue_stanzas
            assert all(len(item.parcels) == len(item.recipients) >= 1 for item in waiting)
            assert all(item.element.getAttribute("to") == item.recipients[0] for item in waiting)
        for _ in range(10_000):
            for item in schedule.expired(now):
                out.extend(item.parcels)
            due = schedule.next_due(now)
            if due.item is not None:
                out.extend(due.item.parcels)
            elif due.wake_at is None:
                break
            else:
                now = due.wake_at
        assert sorted(out) == sorted(accepted)
        assert (schedule.queued_stanzas, schedule.queued_bytes) == (0, 0)
        # nothing the schedule remembers outlives what it holds
        assert (schedule._presence_slots, schedule._open_groups, schedule._directed) == ({}, {}, {})
    assert seen == {QUEUED, MERGED, PRESENCE_MODE, FULL_STANZAS, FULL_BYTES, IQ_DEADLINE}


def test_take_all_empties_the_schedule_in_class_order():
    """take_all hands back every waiting item, class by class, and leaves nothing counted."""
    schedule = BearerSchedule(1200, "all", 0.25)
    schedule.offer(outgoing(presence(), parcel="presence"), 0.0)
    schedule.offer(outgoing(room_message("a@blue.example/r"), parcel="room-a"), 0.0)
    schedule.offer(outgoing(room_message("b@blue.example/r"), parcel="room-b"), 0.0)
    schedule.offer(outgoing(chat(), parcel="chat"), 0.0)
    assert [item.parcels for item in schedule.take_all()] == [["chat"], ["room-a", "room-b"], ["presence"]]
    assert (schedule.queued_stanzas, schedule.queued_bytes) == (0, 0)
    assert schedule.next_due(1.0) == Due(None, None)


def test_the_roster_window_remembers_no_more_than_it_needs():
    """However many presence items a window sees, the schedule keeps roster_burst + 1 times to count them."""
    schedule = BearerSchedule(1200, "all", 0, ScheduleLimits(roster_burst=2))
    for number in range(50):
        schedule.offer(outgoing(presence(sender=f"c{number}@red.example/r")), 0.0)
    assert len(schedule._new_presence_times) == 3
    assert [item.lane for item in schedule.snapshot_after_outage()].count("presence") == 2
