"""
Two constrained gateways with real Prosody on both ends, real clients, and the
bearer simulator between the gateways (tests/integration/constrained_lab.py):
chat and labelled chat, presence stripped as configured, a room on red fanned
out to occupants on blue (one crossing per message), an outage in the middle
of traffic with the books balanced after, a compression bomb refused, and the
policy of each end applied.

The lab's bearer is 64 kbit/s with 0.25 s one way (the slow rates are the
benchmark's, bench/bench_constrained.py).  The gateways run in two modes:
security = "bearer" with the dictionary and presence = "directed" (no TLS: the
raw bomb can reach the inflater), and security = "tls" with zlib and presence
= "available" (a room join keeps its <x xmlns='http://jabber.org/protocol/muc'/>,
without which Prosody refuses it: the room test runs in both modes).
"""

from __future__ import annotations

import socket
import sys
import time
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guard.edges.constrained.compression import DEFLATED, SYNC_FLUSH_TAIL, frame  # noqa: E402
from constrained_lab import BLUE_OCCUPANTS, LINK_ADDRESS, LINK_PORT, ConstrainedLab  # noqa: E402

from .labs import started  # noqa: E402

ROOM = "watch@conference.red.example"
RELEASABLE = (  # RESTRICTED REL BLUE under red-national: deploy/constrained/red-export.toml lets it out
    "<message to='juliet@blue.example' type='chat' id='{id}'><body>{body}</body>"
    "<securitylabel xmlns='urn:xmpp:sec-label:0'>"
    "<displaymarking fgcolor='black' bgcolor='yellow'>RESTRICTED REL BLUE</displaymarking>"
    "<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>MRoCAQIGA4g3ATEQMA6ABIg3AQmBBgwEQkxVRQ==</esssecuritylabel></label>"
    "</securitylabel></message>"
)
SECRET = (  # SECRET under red-national: red's export policy keeps it home
    "<message to='juliet@blue.example' type='chat' id='{id}'><body>{body}</body>"
    "<securitylabel xmlns='urn:xmpp:sec-label:0'>"
    "<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>MQgCAQQGA4g3AQ==</esssecuritylabel></label>"
    "</securitylabel></message>"
)
TIMEOUT = 30
# Romeo and Juliet are each other's contacts: each login broadcasts presence across the boundary.
ROSTERS = {"romeo@red.example": {"juliet@blue.example": "both"}, "juliet@blue.example": {"romeo@red.example": "both"}}


# The gateways' [link.constrained] modes each lab runs with.
BEARER = pytest.param({"security": "bearer", "compression": "dictionary", "presence": "directed"},
                      id="bearer-dictionary-directed")
TLS = pytest.param({"security": "tls", "compression": "zlib", "presence": "available"}, id="tls-zlib-available")


@pytest.fixture(scope="module", params=[BEARER, TLS])
def lab(request, tmp_path_factory):
    """The constrained lab: 64 kbit/s, 0.25 s one way, with one of the gateways' modes.
    (Named ``lab`` so that conftest's romeo and juliet fixtures connect to it.)"""
    laboratory = ConstrainedLab(tmp_path_factory.mktemp("constrained-lab"), rate=64_000, delay=0.25,
                                outage_on_signal=4.0, roster=ROSTERS, **request.param)
    yield started(laboratory, "the constrained lab", ready=lambda: laboratory.wait_link_up("a"))
    laboratory.stop()


def received_over_link(lab: ConstrainedLab, half: str) -> int:
    return lab.status_of(half)["pair_link"]["received"]


def wait_balanced(lab: ConstrainedLab, half: str, timeout: float = TIMEOUT) -> dict:
    """Wait (bounded) until ``half`` holds nothing in flight and its link nothing unsettled; its status."""
    deadline = time.monotonic() + timeout
    while True:
        status = lab.status_of(half)
        link = status["pair_link"]
        settled = (status["books"]["in_flight"] == 0 and link["queued"] == 0 and link["unacknowledged"] == 0
                   and link.get("scheduled", 0) == 0)
        if settled or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def test_chat_crosses_both_ways(lab, romeo, juliet):
    """A chat message from red reaches blue over the bearer, and the answer comes back."""
    romeo.send_message("juliet@blue.example", "radio check")
    juliet.wait_for_body("romeo@red.example", "radio check", timeout=TIMEOUT)
    juliet.send_message("romeo@red.example", "loud and clear")
    romeo.wait_for_body("juliet@blue.example", "loud and clear", timeout=TIMEOUT)
    books = lab.bearer_books()
    assert books["bytes_forward"] > 0 and books["bytes_back"] > 0


def test_labelled_chat_arrives_with_the_label_gateway_a_encoded(lab, romeo, juliet):
    """A RESTRICTED REL BLUE message crosses with its label, re-encoded by red's gateway, and nothing else."""
    romeo.send_xml(RELEASABLE.format(id="lab1", body="grid 3141 clear"))
    received = juliet.wait_for_body("romeo@red.example", "grid 3141 clear", timeout=TIMEOUT)
    assert "MRoCAQIGA4g3ATEQMA6ABIg3AQmBBgwEQkxVRQ==" in received.xml


def test_a_secret_message_is_refused_by_red_export_policy_and_never_crosses(lab, romeo, juliet):
    """SECRET bounces to romeo (policy-violation, red's rule), the bearer carries nothing of it, blue sees nothing."""
    wait_balanced(lab, "a")  # the presence of romeo's login has crossed (presence = "available")
    before = received_over_link(lab, "b")
    romeo.send_xml(SECRET.format(id="sec1", body="the plan"))
    bounce = romeo.wait_for_error("juliet@blue.example", timeout=TIMEOUT)
    assert "<policy-violation" in bounce.xml, bounce.xml
    romeo.send_message("juliet@blue.example", "after the secret")
    juliet.wait_for_body("romeo@red.example", "after the secret", timeout=TIMEOUT)
    assert not [m for m in juliet.messages if m.body == "the plan"]
    assert received_over_link(lab, "b") == before + 1  # only the message after it crossed
    audited = [r for r in lab.audit_records("a") if r.get("rule") == "label-not-releasable"]
    assert audited, "gateway A audits its refusal"


def test_contraband_red_lets_out_is_refused_by_blue_import_policy(lab, romeo, juliet):
    """Blue's own import policy (deploy/pair/blue-import.toml) bounces contraband that red's export let out."""
    romeo.send_message("juliet@blue.example", "some contraband")
    bounce = romeo.wait_for_error("juliet@blue.example", timeout=TIMEOUT)
    assert "<policy-violation" in bounce.xml, bounce.xml
    audited = [r for r in lab.audit_records("b") if r.get("rule") == "no-contraband"]
    assert audited, "gateway B audits its refusal"
    assert not [m for m in juliet.messages if "contraband" in m.body]


@pytest.mark.parametrize("lab", [BEARER], indirect=True)
def test_presence_is_stripped_as_configured(lab, romeo, juliet):
    """With presence = "directed", presence to juliet's bare JID (red's broadcast of romeo's login to his roster,
    and one romeo sends) stays on red, audited; presence to one of her resources crosses whole."""
    romeo.send_xml("<presence to='juliet@blue.example'><status>broadcast to the roster</status></presence>")
    romeo.send_xml(f"<presence to='{juliet.full_jid}'><show>away</show><status>to one resource</status></presence>")
    presence = juliet.wait_for_presence("romeo@red.example", type="away", timeout=TIMEOUT)  # slixmpp: show as type
    assert "to one resource" in presence.xml and "<show>away</show>" in presence.xml
    time.sleep(1.0)
    assert not [p for p in juliet.presences if "broadcast to the roster" in p.xml]
    stripped = [r for r in lab.audit_records("a") if r.get("rule") == "guard:link-presence-stripped"
                and r.get("recipient") == "juliet@blue.example"]
    assert stripped, "gateway A audits the presence its link profile kept off the bearer"
    assert any(r.get("type") == "probe" for r in stripped), "the probe red sends at romeo's login stays on red too"


@pytest.mark.parametrize("lab", [TLS], indirect=True)
def test_presence_crosses_reduced_to_available_as_configured(lab, romeo, juliet):
    """With presence = "available", romeo's show, status and priority stay on red: juliet sees him available, bare."""
    romeo.send_xml("<presence to='juliet@blue.example'><show>away</show><status>on patrol</status>"
                   "<priority>5</priority></presence>")
    presence = juliet.wait_for_presence("romeo@red.example", timeout=TIMEOUT)
    assert "on patrol" not in presence.xml and "<show" not in presence.xml and "<priority" not in presence.xml
    assert not [p for p in juliet.presences if "on patrol" in p.xml]


def test_a_room_message_crosses_once_for_every_occupant_behind_the_bearer(lab, client_loop, romeo):
    """A room on red with four occupants on blue: each message reaches all four, and crosses the link once."""
    romeo.join_room(ROOM, "romeo", timeout=TIMEOUT)
    occupants = []
    try:
        for name in BLUE_OCCUPANTS:
            client = lab.client(client_loop, f"{name}@blue.example").connect()
            occupants.append(client)
            client.join_room(ROOM, name, timeout=TIMEOUT)
        wait_balanced(lab, "a")
        crossings, bytes_per_message = [], []
        for number in range(3):
            body = f"sitrep {number}: all stations report in"
            link_before = received_over_link(lab, "b")
            bearer_before = lab.bearer_books()["bytes_forward"]
            romeo.send_xml(f"<message to='{ROOM}' type='groupchat' id='room{number}'><body>{body}</body></message>")
            for client in occupants:
                client.wait_for_groupchat(ROOM, "romeo", body, timeout=TIMEOUT)
            wait_balanced(lab, "a")
            crossings.append(received_over_link(lab, "b") - link_before)
            bytes_per_message.append(lab.bearer_books()["bytes_forward"] - bearer_before)
    finally:
        for client in occupants:
            client.disconnect()
    assert crossings == [1, 1, 1], crossings
    print(f"room message to {len(BLUE_OCCUPANTS)} occupants: {bytes_per_message} bytes forward on the bearer")


def test_an_outage_in_the_middle_of_traffic_loses_nothing_and_the_books_balance(lab, romeo, juliet):
    """Twenty messages with a 4 s outage after the fifth: all twenty arrive once, in order; both halves balance."""
    bodies = [f"traffic {n:02d}" for n in range(20)]
    outages_before = lab.bearer_books()["outages_begun"]
    for number, body in enumerate(bodies):
        romeo.send_message("juliet@blue.example", body)
        if number == 4:
            lab.begin_outage()
        time.sleep(0.1)
    for body in bodies:
        juliet.wait_for_body("romeo@red.example", body, timeout=60)
    arrived = [m.body for m in juliet.messages if m.body.startswith("traffic ")]
    assert arrived == bodies
    books = lab.bearer_books()
    assert books["outages_begun"] == outages_before + 1
    assert books["dropped_by_outage"] >= 1  # the link's connection was cut with traffic waiting
    for half in ("a", "b"):
        status = wait_balanced(lab, half)
        books_of_half = status["books"]
        assert books_of_half["in_flight"] == 0, (half, books_of_half)
        assert books_of_half["accepted"] == (books_of_half["delivered"] + books_of_half["bounced"]
                                             + books_of_half["dropped"]), (half, books_of_half)
        assert status["pair_link"]["unacknowledged"] == 0 and status["pair_link"]["queued"] == 0
    traffic_bounces = [r for r in lab.audit_records("a") if "traffic" in str(r)]
    assert not traffic_bounces


@pytest.mark.parametrize("lab", [BEARER], indirect=True)  # no TLS: the raw frame reaches the inflater
def test_a_compression_bomb_on_the_link_port_is_refused_and_the_link_carries_on(lab, romeo, juliet):
    """One deflate frame of 1 KiB that inflates to 16 MiB, sent raw to gateway B's link port: refused, not inflated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = compressor.compress(b"<" + b"a" * (16 * 1024 * 1024)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert payload.endswith(SYNC_FLUSH_TAIL)
    bomb = frame(DEFLATED, payload[:-len(SYNC_FLUSH_TAIL)])
    assert len(bomb) < 32 * 1024
    with socket.create_connection((LINK_ADDRESS, LINK_PORT), timeout=10) as raw:
        raw.sendall(bomb)
        raw.settimeout(10)
        closed = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if not raw.recv(65536):
                    closed = True
                    break
            except ConnectionResetError:
                closed = True
                break
    assert closed, "gateway B closes a connection whose frame inflates past its budget"
    assert "inflates past the frame budget" in lab.log_of("half-b")
    romeo.send_message("juliet@blue.example", "still here")
    juliet.wait_for_body("romeo@red.example", "still here", timeout=60)
