"""
Back-to-back pair between real Prosody servers, written like a play:
Romeo on red.example, Juliet on blue.example, and between them half A (red's
operator), the pair link (through the reference HAG in the ``hag`` lab) and
half B (blue's operator, with its own import policy).

Run: .venv/bin/pytest tests/integration/test_back_to_back.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guard.lab.clients import ClientLoop  # noqa: E402
from pair_lab import PairLab, started  # noqa: E402

ROMEO = "romeo@red.example"
JULIET = "juliet@blue.example"


def unique(word: str) -> str:
    return f"{word}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module", params=[(False, "certificate"), (True, "certificate"), (False, "dialback")],
                ids=["pair", "pair-with-hag", "pair-dialback"])
def pair(request, tmp_path_factory):
    """A running pair lab: with or without the reference HAG in the link's path, S2S by certificate or dialback."""
    with_hag, authentication = request.param
    name = "pair-hag" if with_hag else f"pair-{authentication}"
    laboratory = started(PairLab(tmp_path_factory.mktemp(name), with_hag=with_hag, down_deadline=20.0,
                                 authentication=authentication))
    yield laboratory
    laboratory.stop()


@pytest.fixture(scope="module")
def client_loop():
    loop = ClientLoop()
    yield loop
    loop.close()


@pytest.fixture
def romeo(pair, client_loop):
    client = pair.client(client_loop, ROMEO).connect()
    yield client
    client.disconnect()


@pytest.fixture
def juliet(pair, client_loop):
    client = pair.client(client_loop, JULIET).connect()
    yield client
    client.disconnect()


def test_message_red_to_blue_through_the_pair(romeo, juliet):
    """Romeo's message leaves red, crosses half A, the link and half B, and reaches Juliet intact."""
    body = unique("But soft, what light through yonder window breaks?")
    romeo.send_xml(f"<message to='{JULIET}' type='chat' id='p1'><body>{body}</body></message>")

    assert juliet.wait_for_body(ROMEO, body, timeout=30).type == "chat"


def test_message_blue_to_red_through_the_pair(romeo, juliet):
    """Juliet's answer takes the pair the other way."""
    body = unique("Wherefore art thou Romeo?")
    juliet.send_xml(f"<message to='{ROMEO}' type='chat' id='p2'><body>{body}</body></message>")

    assert romeo.wait_for_body(JULIET, body, timeout=30).type == "chat"


def test_presence_subscription_and_presence_both_ways(romeo, juliet):
    """Romeo and Juliet subscribe to each other across the pair and then see each other online."""
    romeo.send_xml(f"<presence to='{JULIET}' type='subscribe'/>")

    # slixmpp approves and subscribes back automatically on both sides.
    romeo.wait_for_subscription(JULIET, "both", timeout=30)
    juliet.wait_for_subscription(ROMEO, "both", timeout=30)
    romeo.wait_for_presence(JULIET, "available", timeout=30)
    juliet.wait_for_presence(ROMEO, "available", timeout=30)


def test_iq_round_trip_to_the_far_server(romeo):
    """Romeo pings blue.example: the iq crosses and the result comes back."""
    assert romeo.ping("blue.example", timeout=30) >= 0


def test_iq_to_a_nonexistent_user_bounces_back_across(romeo):
    """An iq to a user blue does not have comes back to Romeo as service-unavailable."""
    assert romeo.iq_error_condition("nobody@blue.example", timeout=30) == "service-unavailable"


def test_half_b_refuses_what_half_a_lets_out(pair, romeo, juliet):
    """Half A's export policy passes contraband; half B's own import policy bounces it, audited by half B."""
    body = unique("contraband")
    romeo.send_xml(f"<message to='{JULIET}' type='chat' id='p3'><body>{body}</body></message>")

    romeo.wait_for_error(JULIET, timeout=30)  # slixmpp does not name policy-violation: the audit does

    assert not any(message.body == body for message in juliet.messages)
    refusals = [record for record in pair.audit_records("b") if record.get("rule") == "no-contraband"]
    assert refusals and refusals[-1]["event"] == "bounce" and refusals[-1]["direction"] == "red->blue"
    assert refusals[-1]["condition"] == "policy-violation"
    assert not any(record.get("rule") == "no-contraband" for record in pair.audit_records("a"))


def test_a_cut_link_mid_blast_loses_nothing_and_doubles_nothing(pair, romeo, juliet):
    """2000 messages; the link is cut after 600 and restored after 1200: each arrives exactly once."""
    count = 2000
    tag = uuid.uuid4().hex[:6]
    warm = unique("warm")
    romeo.send_message(JULIET, warm)
    juliet.wait_for_body(ROMEO, warm, timeout=30)
    for number in range(count):
        if number == 600:
            time.sleep(0.3)  # let the first 600 be on their way
            pair.stop_child("link-relay")
        if number == 1200:
            time.sleep(1.0)
            pair.start_link_relay()
        romeo.send_message(JULIET, f"pair-{tag} {number}")
    deadline = time.monotonic() + 120
    bodies = []
    while time.monotonic() < deadline:
        bodies = [m.body for m in list(juliet.messages) if m.body.startswith(f"pair-{tag} ")]
        if len(set(bodies)) >= count:
            break
        time.sleep(0.5)
    time.sleep(2.0)  # anything doubled would arrive now
    bodies = [m.body for m in list(juliet.messages) if m.body.startswith(f"pair-{tag} ")]
    numbers = sorted(int(body.split()[1]) for body in bodies)
    missing = sorted(set(range(count)) - set(numbers))
    doubled = len(numbers) - len(set(numbers))
    assert (len(set(numbers)), missing[:10], doubled) == (count, [], 0)
    link = pair.status_of("a")["pair_link"]
    assert link["connections"] >= 2, "the link was never cut"
    assert link["unacknowledged"] == 0 and link["queued"] == 0
    print(f"link at half A: {link}; at half B: {pair.status_of('b')['pair_link']}")


@pytest.mark.hag_only
def test_the_hag_drops_what_its_profile_does_not_permit(pair, romeo, juliet):
    """An element outside the HAG's allow-list never reaches Juliet, and the HAG audits the drop."""
    body = unique("a note with an unlisted payload")
    romeo.send_xml(f"<message to='{JULIET}' type='chat' id='p4'><body>{body}</body>"
                   "<secret xmlns='urn:example:unlisted'/></message>")
    allowed = unique("and a plain one after it")
    romeo.send_xml(f"<message to='{JULIET}' type='chat' id='p5'><body>{allowed}</body></message>")

    juliet.wait_for_body(ROMEO, allowed, timeout=30)

    assert not any(message.body == body for message in juliet.messages)
    drops = [record for record in pair.audit_records("hag") if record["event"] == "hag-drop"]
    assert drops and "urn:example:unlisted" in drops[-1]["reason"] and drops[-1]["id"] == "p4"


@pytest.mark.hag_only
def test_an_iq_the_hag_refuses_is_answered_with_an_error_to_its_sender(pair, romeo, client_loop):
    """Romeo asks blue.example for its last activity (XEP-0012, not in the HAG's profile): instead of waiting
    out his timeout he gets not-allowed with the HAG's own text, and the HAG audits the refusal."""
    from slixmpp.exceptions import IqError

    xmpp = romeo.xmpp

    async def ask():
        iq = xmpp.make_iq_get(queryxmlns="jabber:iq:last", ito="blue.example")
        try:
            await iq.send(timeout=20)
        except IqError as error:
            return error.iq["error"]["condition"], error.iq["error"]["text"]
        return None

    started = time.monotonic()
    answer = client_loop.run(ask, 21)
    assert answer == ("not-allowed", "refused by the High Assurance Guard")
    assert time.monotonic() - started < 10
    drops = [record for record in pair.audit_records("hag")
             if record["event"] == "hag-drop" and "jabber:iq:last" in record["reason"]]
    assert drops and drops[-1]["answer"] == "not-allowed" and drops[-1]["kind"] == "iq"


@pytest.mark.hag_only
def test_with_the_hag_down_nothing_passes_and_each_refusal_is_audited(pair, romeo, juliet):
    """The HAG stops: Romeo's messages wait, then bounce after the deadline, each audited by half A."""
    pair.stop_child("hag")
    try:
        bodies = [unique(f"while the HAG is down {n}") for n in range(5)]
        for number, body in enumerate(bodies):
            romeo.send_xml(f"<message to='{JULIET}' type='chat' id='down{number}'><body>{body}</body></message>")
        deadline = time.monotonic() + pair.down_deadline + 20
        bounced = []
        while time.monotonic() < deadline and len(bounced) < 5:
            bounced = [r for r in pair.audit_records("a")
                       if r["event"] == "bounce" and str(r.get("id", "")).startswith("down")]
            time.sleep(0.5)
        assert sorted(r["id"] for r in bounced) == [f"down{n}" for n in range(5)]
        assert {r["condition"] for r in bounced} == {"remote-server-timeout"}
        errors = [m for m in romeo.messages if m.type == "error" and m.sender.startswith(JULIET)]
        assert len(errors) >= 5
        assert not any(message.body in bodies for message in juliet.messages)
    finally:
        pair.start_hag()
    assert pair.wait_link_up("a")["state"] == "up"
    again = unique("after the HAG is back")
    romeo.send_xml(f"<message to='{JULIET}' type='chat'><body>{again}</body></message>")
    juliet.wait_for_body(ROMEO, again, timeout=30)


# -- the release authority for the refer verdict, over a real socket ------------

ASK = """
import json, sys
from twisted.internet import task
from twisted.internet.endpoints import clientFromString
from guard.core.pipeline import Direction
from guard.edges.audit import AuditLog
from guard.edges.release import ReleaseAuthority, reparse_stanza

def main(reactor, endpoint, audit, stanza):
    authority = ReleaseAuthority(clientFromString(reactor, endpoint), reactor, AuditLog(audit), timeout=2.0)
    asked = authority.ask(reparse_stanza(stanza), Direction("red", "blue"), "refer-test")
    return asked.addCallback(lambda release: print(json.dumps({"released": release.released,
        "reason": release.reason, "body": str(release.stanza.body) if release.released else None})))

task.react(main, sys.argv[1:])
"""

STANZA = "<message from='romeo@red.example/a' to='juliet@blue.example' id='r1'><body>{}</body></message>"


def ask_authority(tmp_path, options, body, start=True):
    """Start the reference authority with ``options`` (unless not ``start``) and ask it about one message."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    socket_path = tmp_path / "release.sock"
    audit = tmp_path / "release-audit.jsonl"
    authority = None
    if start:
        authority = subprocess.Popen([sys.executable, "-m", "guard.reference.authority",
                                      "--listen", f"unix:{socket_path}", *options],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    try:
        asked = subprocess.run([sys.executable, "-c", ASK, f"unix:path={socket_path}", str(audit),
                                STANZA.format(body)], capture_output=True, text=True, timeout=30)
    finally:
        if authority is not None:
            authority.terminate()
            authority.wait(timeout=10)
    assert asked.returncode == 0, asked.stderr
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    return json.loads(asked.stdout.strip().splitlines()[-1]), records


def test_the_authority_releases_denies_and_redacts(tmp_path):
    """Over a Unix socket: a plain message is released, a secret one denied, a sensitive one redacted."""
    options = ["--deny-word", "secret", "--redact-word", "Verona"]
    released, _ = ask_authority(tmp_path / "released", options, "hello")
    denied, denied_records = ask_authority(tmp_path / "denied", options, "the secret plan")
    redacted, _ = ask_authority(tmp_path / "redacted", options, "meet me in Verona")
    assert released["released"] and released["body"] == "hello"
    assert not denied["released"] and denied_records[-1]["event"] == "release-denied"
    assert redacted["released"] and redacted["body"] == "meet me in [redacted]"


def test_a_silent_authority_releases_nothing_and_the_refusal_is_audited(tmp_path):
    """The authority never answers: after the timeout the stanza is denied, with an audit record."""
    answer, records = ask_authority(tmp_path, ["--silent"], "hello")
    assert not answer["released"] and "no answer within" in answer["reason"]
    assert [record["event"] for record in records] == ["release-denied"]


def test_a_garbling_authority_releases_nothing(tmp_path):
    """An answer that is not JSON is a denial, audited."""
    answer, records = ask_authority(tmp_path, ["--garble"], "hello")
    assert not answer["released"] and "garbled" in answer["reason"]
    assert records[-1]["event"] == "release-denied"


def test_an_absent_authority_releases_nothing(tmp_path):
    """No authority listening: denied at once, audited."""
    answer, records = ask_authority(tmp_path, [], "hello", start=False)
    assert not answer["released"] and "cannot reach" in answer["reason"]
    assert records[-1]["event"] == "release-denied"
