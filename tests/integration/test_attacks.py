"""
The attack corpus against the running guard, with real peers.

A hostile "red server" (tests/integration/hostile.py: a raw TLS client with
red's own certificate) connects to the guard's red-facing address and sends
what an attacker would.  For every case:

- the offending stream gets the RFC 6120 stream error that names the fault
  and is closed;
- the other streams carry on: a message from Romeo (red) still reaches
  Juliet (blue) afterwards;
- the guard's resident memory stays bounded;
- nothing of it reaches the far side: the books' delivered count does not
  move and Juliet never sees the attacker's text.

Each class brings up its own lab (one at a time: the lab takes a lock), with
short limits so that timeouts and rates are reachable in seconds.  Run:

    .venv/bin/pytest tests/integration/test_attacks.py
"""

from __future__ import annotations

import time
import uuid

import pytest

from guard.lab.clients import ClientError
from guard.lab.topology import PROJECT_ROOT, Lab, Mode

from tests.integration.hostile import HostilePeer, StreamClosed, header, lab_lock_held_here
from .labs import started

ROMEO = "romeo@red.example"
JULIET = "juliet@blue.example"

ATTACK_LIMITS = {
    "auth_timeout": 3.0,
    "connections_per_address": 6,
    "streams_per_domain": 4,
    "rate_bytes_per_second": 64 * 1024,
    "rate_burst_bytes": 128 * 1024,
    "rate_grace": 2.0,
}
MEMORY_SLACK_KIB = 16 * 1024  # what one attack may add to the guard's resident memory, at most


def secret() -> str:
    return f"attacker-{uuid.uuid4().hex[:10]}"


def attack_message(body: str, extra: str = "", sender: str = "mallory@red.example/x") -> bytes:
    return (
        f"<message from='{sender}' to='{JULIET}' type='chat' id='{uuid.uuid4().hex[:8]}'>"
        f"<body>{body}</body>{extra}</message>"
    ).encode()


def start_lab(request, tmp_path_factory, authentication, policy=None) -> Lab:
    if lab_lock_held_here():
        pytest.skip("another lab of this pytest session is still running; run this module on its own")
    folder = tmp_path_factory.mktemp(f"attack-{authentication}")
    options = {"limits": ATTACK_LIMITS, "guard_log_level": "info"}
    if policy is not None:
        options["policy"] = policy
    laboratory = Lab(Mode.GUARD, authentication, folder=folder, **options)
    return started(laboratory, "the attack lab")


@pytest.fixture(scope="class")
def lab(request, tmp_path_factory):
    """A guard lab (certificate or dialback, allow-all or another policy) with short limits, for one class."""
    authentication, policy = request.param
    laboratory = start_lab(request, tmp_path_factory, authentication, policy)
    yield laboratory
    laboratory.stop()


@pytest.fixture
def romeo(lab, client_loop):
    """romeo@red.example, connected to the red Prosody."""
    client = lab.client(client_loop, ROMEO).connect()
    yield client
    client.disconnect()


@pytest.fixture
def juliet(lab, client_loop):
    """juliet@blue.example, connected to the blue Prosody."""
    client = lab.client(client_loop, JULIET).connect()
    yield client
    client.disconnect()


PEAK_RESIDENT_KIB: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def report_peak_resident():
    """Print the largest resident memory the guard showed in any attack test of this module."""
    yield
    if PEAK_RESIDENT_KIB:
        print("\nlargest guard resident memory seen in the attack tests: "
              + ", ".join(f"{lab}: {kib} KiB" for lab, kib in sorted(PEAK_RESIDENT_KIB.items())))


class Watch:
    """What a test compares before and after an attack: books and memory."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.books = lab.guard_books()
        self.resident = lab.guard_resident_kib()

    def assert_contained(self, romeo, juliet, *secrets: str, delivered_extra: int = 0) -> None:
        """Nothing was delivered, memory is bounded, and Romeo -> Juliet still works."""
        after = self.lab.guard_books()
        assert after["delivered"] == self.books["delivered"] + delivered_extra, (self.books, after)
        assert after["in_flight"] == 0, after
        resident = self.lab.guard_resident_kib()
        name = f"{self.lab.authentication}"
        PEAK_RESIDENT_KIB[name] = max(PEAK_RESIDENT_KIB.get(name, 0), resident)
        grown = resident - self.resident
        assert grown < MEMORY_SLACK_KIB, f"the guard grew by {grown} KiB"
        body = f"still here {uuid.uuid4().hex[:8]}"
        romeo.send_xml(f"<message to='{JULIET}' type='chat'><body>{body}</body></message>")
        juliet.wait_for_body(ROMEO, body)
        seen = [message.body for message in juliet.messages]
        for text in secrets:
            assert not any(text in (seen_body or "") for seen_body in seen), f"{text} reached Juliet"


def authenticated(lab: Lab) -> HostilePeer:
    return HostilePeer().authenticate(lab.pki)


def after_sasl(lab: Lab) -> HostilePeer:
    """SASL EXTERNAL has succeeded; the peer has not restarted the stream yet."""
    peer = HostilePeer()
    peer.secure(lab.pki)
    peer.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>cmVkLmV4YW1wbGU=</auth>")
    peer.expect(rb"<success[^>]*/>")
    return peer


HEADER_BODY = header()[len(b"<?xml version='1.0'?>"):]


def billion_laughs(text: str) -> bytes:
    entities = b"".join(
        b"<!ENTITY lol%d '%s'>" % (n, (b"&lol%d;" % (n - 1) if n > 1 else b"&lol;") * 10) for n in range(1, 10)
    )
    return (b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>" + entities + b"]>" + HEADER_BODY
            + attack_message(text + " &lol9;"))


def quadratic_blowup(text: str) -> bytes:
    return (b"<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY a '" + b"A" * 50_000 + b"'>]>"
            + HEADER_BODY + attack_message(text + " " + "&a;" * 10_000))


def external_entity(text: str) -> bytes:
    return (b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>" + HEADER_BODY
            + attack_message(text + " &x;"))


# What the attacker sends in place of the restarted stream, once SASL EXTERNAL
# succeeded; the stream error the guard must answer with.
RESTART_ATTACKS = [
    pytest.param(billion_laughs, "restricted-xml", id="billion-laughs"),
    pytest.param(quadratic_blowup, "restricted-xml", id="quadratic-blowup"),
    pytest.param(external_entity, "restricted-xml", id="external-entity"),
    pytest.param(lambda text: b"<?xml version='1.0'?><!DOCTYPE stream:stream>" + HEADER_BODY + attack_message(text),
                 "restricted-xml", id="doctype"),
    pytest.param(lambda text: HEADER_BODY.decode().encode("utf-16") + attack_message(text).decode().encode("utf-16"),
                 "unsupported-encoding", id="utf-16-stream"),
    pytest.param(lambda text: b"<?xml version='1.0' encoding='UTF-16'?>" + HEADER_BODY + attack_message(text),
                 "unsupported-encoding", id="declared-utf-16"),
]

# What the attacker sends on an authenticated stream (after the restart).
STREAM_ATTACKS = [
    pytest.param(lambda text: b"<!DOCTYPE x>" + attack_message(text), "restricted-xml", id="doctype-inside-stream"),
    pytest.param(lambda text: attack_message(text, "<?php system('id'); ?>"), "restricted-xml",
                 id="processing-instruction"),
    pytest.param(lambda text: attack_message(text + "<!-- hidden -->"), "restricted-xml", id="comment"),
    pytest.param(lambda text: b"<!-- " + text.encode() + b" -->", "restricted-xml", id="comment-between-stanzas"),
    pytest.param(lambda text: attack_message(text).replace(b"</body>", b"\xc0\xaf</body>"), "unsupported-encoding",
                 id="invalid-utf-8-overlong"),
    pytest.param(lambda text: attack_message(text).replace(b"</body>", b"\xed\xa0\x80</body>"),
                 "unsupported-encoding", id="invalid-utf-8-surrogate"),
    pytest.param(lambda text: attack_message(text).replace(b"</body>", b"\x01\x1b</body>"), "not-well-formed",
                 id="control-characters"),
    pytest.param(lambda text: attack_message(text).replace(b"</body>", b"&#0;</body>"), "not-well-formed",
                 id="nul-character-reference"),
    pytest.param(lambda text: HEADER_BODY + attack_message(text), "unsupported-stanza-type", id="nested-stream-header"),
    pytest.param(lambda text: attack_message(text).replace(b"</body>", b"<b></body>"), "not-well-formed",
                 id="unbalanced-tags"),
    pytest.param(lambda text: attack_message(text).replace(b"<message ", b"<message x='" + b"v" * 20_000 + b"' "),
                 "policy-violation", id="huge-attribute-value"),
    pytest.param(lambda text: attack_message(text, "<a>" * 60 + "</a>" * 60), "policy-violation",
                 id="very-deep-nesting"),
    pytest.param(lambda text: attack_message(text, "<x/>" * 6000), "policy-violation", id="too-many-children"),
    pytest.param(lambda text: attack_message(text + " " + "y" * 600_000), "policy-violation", id="oversized-stanza"),
    pytest.param(lambda text: attack_message(text, sender="mallory@blue.example/x"), "invalid-from",
                 id="from-the-far-side"),
    pytest.param(lambda text: attack_message(text, sender="mallory@conference.red.example/x"), "invalid-from",
                 id="from-a-domain-not-authenticated-on-this-stream"),
    pytest.param(lambda text: attack_message(text).replace(JULIET.encode(), b"mercutio@red.example"), "host-unknown",
                 id="addressed-to-the-same-side-no-hairpin"),
    pytest.param(lambda text: attack_message(text).replace(JULIET.encode(), b"juliet@conference.blue.example"),
                 "improper-addressing", id="to-a-far-domain-not-authenticated-on-this-stream"),
    pytest.param(lambda text: attack_message(text).replace(b" from='mallory@red.example/x'", b""),
                 "improper-addressing", id="no-from"),
    pytest.param(lambda text: attack_message(text, sender="mall ory@red.example"), "invalid-from",
                 id="malformed-from"),
    pytest.param(lambda text: attack_message(text).replace(b"<message ", b"<message xmlns='jabber:client' "),
                 "unsupported-stanza-type", id="client-namespace-stanza"),
]

# Sent in the clear as the very first bytes of a connection.
FIRST_BYTES_ATTACKS = [
    pytest.param(billion_laughs, "restricted-xml", id="billion-laughs-first"),
    pytest.param(lambda text: b"<?xml version='1.0'?><?evil " + text.encode() + b"?>" + HEADER_BODY,
                 "restricted-xml", id="processing-instruction-first"),
    pytest.param(lambda text: HEADER_BODY.decode().encode("utf-16"), "unsupported-encoding", id="utf-16-first"),
    pytest.param(lambda text: b"\xff\xfe\x00<stream" + text.encode(), "unsupported-encoding", id="garbage-first"),
    pytest.param(lambda text: header("evil-red.example"), "invalid-from", id="lookalike-sender-header"),
    pytest.param(lambda text: header("red.example.attacker.test"), "invalid-from", id="suffixed-sender-header"),
    pytest.param(lambda text: header("red.example", "blue.example.attacker.test"), "host-unknown",
                 id="suffixed-receiver-header"),
    pytest.param(lambda text: header("red.example", "red.example"), "host-unknown", id="hairpin-header"),
]


@pytest.mark.guard
@pytest.mark.parametrize("lab", [("certificate", None)], indirect=True, ids=["guard-certificate"])
class TestAttacksOnAnAuthenticatedStream:
    """Attacks from a peer that authenticated as red.example with red's own certificate."""

    def test_a_genuine_stanza_from_the_hostile_client_crosses(self, lab, romeo, juliet):
        """The raw client is a faithful red server: a well-formed message from it reaches Juliet (control case)."""
        body = f"from the raw client {uuid.uuid4().hex[:8]}"
        with authenticated(lab) as peer:
            peer.send(attack_message(body, sender=f"{ROMEO}/raw"))
            juliet.wait_for_body(ROMEO, body)
            peer.send(b"</stream:stream>")
            assert peer.wait_closed()

    @pytest.mark.parametrize("attack,condition", RESTART_ATTACKS)
    def test_restart_attack_is_refused(self, lab, romeo, juliet, attack, condition):
        """A hostile restarted stream (after SASL success) gets its stream error; nothing crosses."""
        watch = Watch(lab)
        text = secret()
        with after_sasl(lab) as peer:
            peer.try_send(attack(text))
            assert peer.stream_error() == condition, peer.received[-400:]
            assert peer.closed
        watch.assert_contained(romeo, juliet, text)

    @pytest.mark.parametrize("attack,condition", STREAM_ATTACKS)
    def test_stream_attack_is_refused(self, lab, romeo, juliet, attack, condition):
        """A hostile stanza on an authenticated stream gets its stream error; nothing crosses."""
        watch = Watch(lab)
        text = secret()
        with authenticated(lab) as peer:
            peer.try_send(attack(text))
            assert peer.stream_error() == condition, peer.received[-400:]
            assert peer.closed
        watch.assert_contained(romeo, juliet, text)

    @pytest.mark.parametrize("attack,condition", FIRST_BYTES_ATTACKS)
    def test_first_bytes_attack_is_refused(self, lab, romeo, juliet, attack, condition):
        """Hostile first bytes on a fresh connection get their stream error before anything else."""
        watch = Watch(lab)
        with HostilePeer() as peer:
            peer.try_send(attack(secret()))
            assert peer.stream_error() == condition, peer.received[-400:]
        watch.assert_contained(romeo, juliet)

    def test_slow_drip_before_authentication_is_cut_off(self, lab, romeo, juliet):
        """A peer dripping a stream header a byte at a time is cut off at auth_timeout, whatever it sends."""
        watch = Watch(lab)
        started = time.monotonic()
        with HostilePeer() as peer:
            drip = header() + b" " * 10_000
            for byte in drip:
                if not peer.try_send(bytes([byte])) or peer.wait_closed(0.1):
                    break
                if time.monotonic() - started > 20:
                    break
            condition = peer.stream_error(timeout=5)
        elapsed = time.monotonic() - started
        assert condition == "connection-timeout", peer.received[-400:]
        assert ATTACK_LIMITS["auth_timeout"] - 0.5 <= elapsed <= ATTACK_LIMITS["auth_timeout"] + 4
        watch.assert_contained(romeo, juliet)

    def test_stanza_in_the_clear_before_tls_is_refused(self, lab, romeo, juliet):
        """A stanza sent before STARTTLS closes the stream with not-authorized."""
        watch = Watch(lab)
        text = secret()
        with HostilePeer() as peer:
            peer.open_stream()
            peer.try_send(attack_message(text))
            assert peer.stream_error() == "not-authorized"
        watch.assert_contained(romeo, juliet, text)

    def test_stanza_after_tls_before_authentication_is_refused(self, lab, romeo, juliet):
        """A stanza sent over TLS but before SASL EXTERNAL closes the stream with not-authorized."""
        watch = Watch(lab)
        text = secret()
        with HostilePeer() as peer:
            peer.secure(lab.pki)
            peer.try_send(attack_message(text, sender=f"{ROMEO}/raw"))
            assert peer.stream_error() == "not-authorized"
        watch.assert_contained(romeo, juliet, text)

    def test_too_much_before_authentication_is_refused(self, lab, romeo, juliet):
        """More than preauth_bytes before authentication closes the stream with policy-violation."""
        watch = Watch(lab)
        with HostilePeer() as peer:
            peer.open_stream()
            peer.try_send(b" " * 20_000)
            assert peer.stream_error() == "policy-violation"
        watch.assert_contained(romeo, juliet)

    def test_unsolicited_db_verify_is_answered_invalid(self, lab, romeo, juliet):
        """A db:verify for a key the guard never issued is answered type='invalid'; the stream stays usable."""
        watch = Watch(lab)
        with HostilePeer() as peer:
            peer.secure(lab.pki)
            peer.send(b"<db:verify from='red.example' to='blue.example' id='0123456789abcdef'>"
                      b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855</db:verify>")
            answer = peer.expect(rb"<db:verify[^>]*/>|<db:verify[^>]*>[^<]*</db:verify>")
            assert b"type='invalid'" in answer or b'type="invalid"' in answer, answer
            assert b"type='valid'" not in answer
        watch.assert_contained(romeo, juliet)

    def test_dialback_on_a_certificate_side_is_refused(self, lab, romeo, juliet):
        """A db:result on a side that authenticates with certificates closes the stream with not-authorized."""
        watch = Watch(lab)
        with HostilePeer() as peer:
            peer.secure(lab.pki)
            peer.try_send(b"<db:result from='red.example' to='blue.example'>abcdef0123456789</db:result>")
            assert peer.stream_error() == "not-authorized"
        watch.assert_contained(romeo, juliet)

    def test_sasl_external_for_another_domain_fails(self, lab, romeo, juliet):
        """SASL EXTERNAL naming a domain the certificate does not prove fails; stanzas still cannot pass."""
        watch = Watch(lab)
        text = secret()
        with HostilePeer() as peer:
            peer.secure(lab.pki)
            peer.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>"
                      b"Y29uZmVyZW5jZS5ibHVlLmV4YW1wbGU=</auth>")  # conference.blue.example
            peer.expect(rb"<failure[^>]*>")
            peer.try_send(attack_message(text))
            assert peer.stream_error() == "not-authorized"
        watch.assert_contained(romeo, juliet, text)

    @pytest.mark.parametrize("certificate", ["red_common_name_only", "red_from_blue_ca", "blue_server"])
    def test_a_certificate_that_does_not_prove_red_cannot_authenticate(self, lab, romeo, juliet, certificate):
        """A client certificate naming red only in its CN, from blue's CA, or for blue's domains gets no EXTERNAL."""
        watch = Watch(lab)
        text = secret()
        pair = getattr(lab.pki, certificate)
        with HostilePeer() as peer:
            peer.open_stream()
            try:
                peer.starttls(pair.certificate, pair.key, lab.pki.red_ca)
                features = peer.open_stream()
            except (OSError, StreamClosed):
                features = b""  # refused during the handshake: as good
            assert b"EXTERNAL" not in features
            if features:
                peer.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
                peer.expect(rb"<failure[^>]*>")
                peer.try_send(attack_message(text))
                assert peer.stream_error() == "not-authorized"
        watch.assert_contained(romeo, juliet, text)

    def test_two_security_labels_are_bounced_by_the_policy(self, lab, romeo, juliet):
        """A message smuggling a second <securitylabel/> is bounced (XEP-0258) back to its sender, not delivered."""
        watch = Watch(lab)
        text = secret()
        label = ("<securitylabel xmlns='urn:xmpp:sec-label:0'><label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>"
                 "MQgCAQEGA4g3AQ==</esssecuritylabel></label></securitylabel>")
        with authenticated(lab) as peer:
            peer.send(attack_message(text, label + label, sender=romeo.full_jid))
            bounce = romeo.wait_for_error(JULIET)
            assert bounce.error_condition == "bad-request"
            peer.send(b"</stream:stream>")
            peer.wait_closed()
        after = lab.guard_books()
        assert after["bounced"] == watch.books["bounced"] + 1
        assert after["bounce_reasons"].get("xep0258:two-labels", 0) >= 1
        assert any(record["event"] == "bounce" and record["rule"] == "xep0258:two-labels"
                   for record in lab.audit_records())
        watch.assert_contained(romeo, juliet, text)

    def test_connections_per_address_over_the_limit_are_refused(self, lab, romeo, juliet):
        """The connection past connections_per_address from one address gets conflict (RFC 6120 4.9.3.3); the rest stay."""
        watch = Watch(lab)
        limit = ATTACK_LIMITS["connections_per_address"]
        peers = []
        try:
            for _ in range(limit):
                peer = HostilePeer()
                peer.open_stream()
                peers.append(peer)
            with HostilePeer() as extra:
                extra.try_send(header())
                assert extra.stream_error() == "conflict"
            assert not any(peer.wait_closed(0.2) for peer in peers)
            with HostilePeer(source="127.0.9.2") as elsewhere:
                elsewhere.open_stream()  # another address is unaffected
        finally:
            for peer in peers:
                peer.close()
        watch.assert_contained(romeo, juliet)

    def test_streams_per_domain_over_the_limit_are_refused(self, lab, romeo, juliet):
        """Authenticated streams for red.example beyond streams_per_domain get policy-violation."""
        watch = Watch(lab)
        limit = ATTACK_LIMITS["streams_per_domain"]
        peers, refused = [], None
        try:
            for index in range(limit + 1):
                peer = HostilePeer(source=f"127.0.9.{10 + index}")
                peers.append(peer)
                peer.secure(lab.pki)
                peer.try_send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
                try:
                    peer.expect(rb"<success[^>]*/>", timeout=5)
                    peer.open_stream()
                except Exception:  # noqa: BLE001 - the refused one is closed instead
                    refused = peer.stream_error()
                    break
            assert refused == "policy-violation", [p.received[-200:] for p in peers]
            assert len(peers) <= limit + 1
        finally:
            for peer in peers:
                peer.close()
        time.sleep(0.5)
        watch.assert_contained(romeo, juliet)

    def test_a_peer_over_its_byte_rate_past_the_grace_is_closed(self, lab, romeo, juliet):
        """Whitespace sent far faster than rate_bytes_per_second is throttled, then closed with policy-violation."""
        watch = Watch(lab)
        chunk = b" " * 16384
        started = time.monotonic()
        with authenticated(lab) as peer:
            peer.socket.settimeout(0.2)
            while time.monotonic() - started < 20:
                try:
                    peer.socket.sendall(chunk)
                except TimeoutError:
                    pass
                except OSError:
                    break
                if peer.wait_closed(0.01):
                    break
            condition = peer.stream_error(timeout=5)
        elapsed = time.monotonic() - started
        assert peer.closed
        assert condition in ("policy-violation", None), peer.received[-400:]
        if condition is None:
            pytest.fail("the guard closed the stream without the policy-violation stream error (reset?)")
        assert elapsed >= ATTACK_LIMITS["rate_grace"]
        watch.assert_contained(romeo, juliet)


@pytest.mark.guard
@pytest.mark.parametrize("lab", [("dialback", None)], indirect=True, ids=["guard-dialback"])
class TestDialbackAttacks:
    """Attacks on a side that authenticates red's servers by dialback."""

    @pytest.mark.parametrize("sender,receiver,condition", [
        pytest.param("evil-red.example", "blue.example", "invalid-from", id="lookalike-prefix"),
        pytest.param("red.example.attacker.test", "blue.example", "invalid-from", id="domain-suffix"),
        pytest.param("ed.example", "blue.example", "invalid-from", id="truncated"),
        pytest.param("red.examp1e", "blue.example", "invalid-from", id="homoglyph-digit"),
        pytest.param("blue.example", "blue.example", "invalid-from", id="far-side-to-itself"),
    ])
    def test_dialback_for_a_domain_not_of_this_side_is_refused(self, lab, romeo, juliet, sender, receiver, condition):
        """A db:result from a lookalike, suffixed or wrong-side domain closes the stream with its error."""
        watch = Watch(lab)
        with HostilePeer() as peer:
            peer.secure(lab.pki)
            peer.try_send(f"<db:result from='{sender}' to='{receiver}'>abcdef0123456789</db:result>".encode())
            assert peer.stream_error() == condition, peer.received[-400:]
        watch.assert_contained(romeo, juliet)

    @pytest.mark.parametrize("receiver", [
        pytest.param("blue.example.attacker.test", id="receiver-suffix"),
        pytest.param("red.example", id="receiver-on-the-same-side"),
    ])
    def test_dialback_to_a_domain_the_guard_does_not_serve_is_a_dialback_error(self, lab, romeo, juliet, receiver):
        """XEP-0220 2.4: a db:result naming a target the guard does not serve gets <item-not-found/>, not a stream error."""
        watch = Watch(lab)
        with HostilePeer() as peer:
            peer.secure(lab.pki)
            peer.send(f"<db:result from='red.example' to='{receiver}'>abcdef0123456789</db:result>".encode())
            peer.expect(rb"<db:result[^>]*type=['\"]error['\"][^>]*>.*?<item-not-found", timeout=10)
            assert not peer.closed and b"stream:error" not in peer.received, peer.received[-400:]
        watch.assert_contained(romeo, juliet)

    def test_forged_dialback_key_is_denied_and_stanzas_stay_out(self, lab, romeo, juliet):
        """A db:result for red.example with a key red never made is checked with red, denied, and stanzas are refused."""
        watch = Watch(lab)
        text = secret()
        with HostilePeer() as peer:
            peer.secure(lab.pki)
            peer.send(b"<db:result from='red.example' to='blue.example'>"
                      b"00000000000000000000000000000000000000000000000000000000000000ff</db:result>")
            answer = peer.expect(rb"<db:result[^>]*type=['\"](?:valid|invalid)['\"][^>]*/?>", timeout=20)
            assert b"invalid" in answer, answer
            peer.try_send(attack_message(text, sender=f"{ROMEO}/raw"))
            assert peer.stream_error() == "not-authorized"
        watch.assert_contained(romeo, juliet, text)

    def test_unsolicited_db_verify_is_answered_invalid(self, lab, romeo, juliet):
        """A db:verify for a key the guard never issued is answered type='invalid'."""
        watch = Watch(lab)
        with HostilePeer() as peer:
            peer.secure(lab.pki)
            peer.send(b"<db:verify from='red.example' to='blue.example' id='feedface'>0badc0de</db:verify>")
            answer = peer.expect(rb"<db:verify[^>]*/>|<db:verify[^>]*>[^<]*</db:verify>")
            assert b"invalid" in answer, answer
        watch.assert_contained(romeo, juliet)


LABEL_POLICIES = {"red": PROJECT_ROOT / "policies" / "high-to-low.toml",
                  "blue": PROJECT_ROOT / "policies" / "low-to-high.toml"}
UNCLASSIFIED = ("<securitylabel xmlns='urn:xmpp:sec-label:0'><label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>"
                "MQgCAQEGA4g3AQ==</esssecuritylabel></label></securitylabel>")


@pytest.mark.guard
@pytest.mark.parametrize("lab", [("certificate", LABEL_POLICIES)], indirect=True, ids=["guard-high-to-low"])
class TestSmugglingPastALabelPolicy:
    """With the high-to-low release policy, only labelled-releasable messages leave red."""

    def test_a_releasable_message_crosses(self, lab, romeo, juliet):
        """An UNCLASSIFIED labelled message from Romeo reaches Juliet (control case)."""
        body = f"releasable {uuid.uuid4().hex[:8]}"
        romeo.send_xml(f"<message to='{JULIET}' type='chat'><body>{body}</body>{UNCLASSIFIED}</message>")
        juliet.wait_for_body(ROMEO, body)

    def test_a_label_inside_forwarded_content_does_not_release_it(self, lab, romeo, juliet):
        """An unlabelled message carrying a labelled message inside <forwarded/> is bounced, not released."""
        text = secret()
        romeo.send_xml(
            f"<message to='{JULIET}' type='chat' id='fw1'><body>{text}</body>"
            "<forwarded xmlns='urn:xmpp:forward:0'>"
            f"<message xmlns='jabber:client' from='{ROMEO}' to='{JULIET}' type='chat'><body>{text}</body>"
            f"{UNCLASSIFIED}</message></forwarded></message>"
        )
        bounce = romeo.wait_for_error(JULIET)
        assert bounce.id == "fw1"
        assert any(record["event"] == "bounce" and record["rule"] == "label-not-releasable" and record["id"] == "fw1"
                   for record in lab.audit_records())
        with pytest.raises(ClientError):
            juliet.wait_for_body(ROMEO, text, timeout=2)

    def test_a_second_label_smuggled_beside_a_releasable_one_is_bounced(self, romeo, juliet):
        """A releasable label plus a second <securitylabel/> is bounced (XEP-0258), not released."""
        text = secret()
        second = UNCLASSIFIED.replace("MQgCAQEGA4g3AQ==", "MQgCAQQGA4g3AQ==")
        romeo.send_xml(f"<message to='{JULIET}' type='chat' id='sl2'><body>{text}</body>{UNCLASSIFIED}{second}</message>")
        bounce = romeo.wait_for_error(JULIET)
        assert bounce.error_condition == "bad-request"
        with pytest.raises(ClientError):
            juliet.wait_for_body(ROMEO, text, timeout=2)
