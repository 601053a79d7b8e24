"""
The shipped policies enforced on real traffic between two Prosody servers:
labelled messages released folded or bounced with a clear error, presence
folded, a blocked domain receiving nothing, labels translated between two
nations' label policies.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.lab.clients import ClientError, ClientLoop

from .policylab import PolicyLab, wait_for
from .labs import started

POLICIES = Path(__file__).resolve().parents[2] / "policies"

RELEASABLE = (  # RESTRICTED REL-BLUE under red-national (see policies/high-to-low.tests.toml)
    "<message to='juliet@blue.example' type='chat' id='{id}'><body>{body}</body>"
    "<html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>{body}</body></html>"
    "<securitylabel xmlns='urn:xmpp:sec-label:0'>"
    "<displaymarking fgcolor='black' bgcolor='yellow'>RESTRICTED REL BLUE</displaymarking>"
    "<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>MRoCAQIGA4g3ATEQMA6ABIg3AQmBBgwEQkxVRQ==</esssecuritylabel></label>"
    "</securitylabel></message>"
)
SECRET = (
    "<message to='juliet@blue.example' type='chat' id='{id}'><body>{body}</body>"
    "<securitylabel xmlns='urn:xmpp:sec-label:0'>"
    "<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>MQgCAQQGA4g3AQ==</esssecuritylabel></label>"
    "</securitylabel></message>"
)


def start(folder, red_policy, blue_policy):
    return started(PolicyLab(folder, red_policy, blue_policy))


@pytest.fixture(scope="module")
def release_lab(tmp_path_factory):
    """red->blue judged by high-to-low (with conference.blue.example blocked), blue->red by low-to-high."""
    high_to_low = (POLICIES / "high-to-low.toml").read_text().replace(
        'blocked = ["quarantine.blue.example"]', 'blocked = ["conference.blue.example"]')
    assert 'blocked = ["conference.blue.example"]' in high_to_low
    laboratory = start(tmp_path_factory.mktemp("release-lab"), high_to_low,
                       (POLICIES / "low-to-high.toml").read_text())
    yield laboratory
    laboratory.stop()


def test_releasable_message_arrives_folded_with_its_label(release_lab):
    """A RESTRICTED REL BLUE message from red reaches blue with its label, its XHTML-IM stripped."""
    with ClientLoop() as loop, release_lab.client(loop, "romeo@red.example") as romeo, \
            release_lab.client(loop, "juliet@blue.example") as juliet:
        romeo.send_xml(RELEASABLE.format(id="r1", body="meet at noon"))
        received = juliet.wait_for_body("romeo@red.example", "meet at noon", timeout=20)
    assert "MRoCAQIGA4g3ATEQMA6ABIg3AQmBBgwEQkxVRQ==" in received.xml
    assert "xhtml-im" not in received.xml


def test_secret_message_bounces_with_a_clear_error(release_lab):
    """A SECRET message bounces to Romeo with policy-violation; Juliet receives nothing; the bounce is audited."""
    with ClientLoop() as loop, release_lab.client(loop, "romeo@red.example") as romeo, \
            release_lab.client(loop, "juliet@blue.example") as juliet:
        romeo.send_xml(SECRET.format(id="s1", body="the plan"))
        bounce = romeo.wait_for_error("juliet@blue.example", timeout=20)
        # slixmpp 1.17 knows RFC 3920's conditions only, so read RFC 6120's policy-violation from the XML.
        assert "<policy-violation xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"" in bounce.xml
        assert "the plan" not in bounce.xml
        with pytest.raises(ClientError):
            juliet.wait_for_body("romeo@red.example", "the plan", timeout=3)
    assert wait_for(lambda: any(r["event"] == "bounce" and r["rule"] == "label-not-releasable"
                                for r in release_lab.audit_records()), 5)


def test_presence_arrives_folded(release_lab):
    """Romeo's presence reaches Juliet reduced to its show state: no status text, no priority, no caps."""
    with ClientLoop() as loop, release_lab.client(loop, "romeo@red.example") as romeo, \
            release_lab.client(loop, "juliet@blue.example") as juliet:
        romeo.send_xml("<presence to='juliet@blue.example'><show>xa</show><status>At the ministry</status>"
                       "<priority>5</priority><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' "
                       "ver='v'/></presence>")
        assert wait_for(lambda: any("<show>away</show>" in p.xml for p in list(juliet.presences)
                                    if p.sender.startswith("romeo@red.example")), 20)
        folded = [p for p in list(juliet.presences) if p.sender.startswith("romeo@red.example")]
    assert folded, "no presence from Romeo arrived"
    for presence in folded:
        assert "ministry" not in presence.xml
        assert "<priority>" not in presence.xml
        assert "http://jabber.org/protocol/caps" not in presence.xml


def test_blocked_domain_gets_nothing(release_lab):
    """Nothing from red reaches the blocked conference.blue.example: each stanza is dropped and audited."""
    with ClientLoop() as loop, release_lab.client(loop, "romeo@red.example") as romeo:
        romeo.send_xml(RELEASABLE.format(id="b1", body="to the room").replace(
            "juliet@blue.example", "room@conference.blue.example"))
        romeo.send_xml("<presence to='room@conference.blue.example/romeo'>"
                       "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
        assert wait_for(lambda: len([r for r in release_lab.audit_records()
                                     if r["rule"] == "blocked-destination"]) >= 2, 20)
    records = [r for r in release_lab.audit_records() if r["rule"] == "blocked-destination"]
    assert {r["event"] for r in records} == {"drop"}
    assert {r["recipient"].split("@")[1].split("/")[0] for r in records} == {"conference.blue.example"}
