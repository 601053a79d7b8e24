"""
The decisions an outbound stream consults, on plain values: which features
it may use, how it authenticates, whether the far server's certificate
proves it, and what a dialback or verification answer means.
"""

import pytest

from guard.edges.s2s.decisions import (
    DIALBACK, EXTERNAL, VERIFY, KeyNotAccepted, Offer, Refusal, choose_mechanism, judge_dialback_answer,
    read_offer, refuse_clear_offer, refuse_far_server, refuse_verify_answer,
)
from guard.edges.tlsidentity import TrustAnchors, load_pem_chain
from guard.lab.inmemory import PresentedChain

from .sides import pki
from .test_outbound_bytes import stanza as features

SENDER, RECEIVER = "red.example", "blue.example"


def test_an_offer_is_read_from_the_features_element():
    """STARTTLS, an EXTERNAL mechanism and the dialback feature are each read as one fact."""
    offer = read_offer(features(
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism>"
        "<mechanism> EXTERNAL </mechanism></mechanisms>"
        "<dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
    ))
    assert offer == Offer(starttls=True, external=True, dialback=True)
    assert read_offer(features("<stream:features/>")) == Offer()


def test_other_mechanisms_are_not_external():
    """A mechanisms list without EXTERNAL offers no certificate authentication."""
    offer = read_offer(features(
        "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
        "<mechanism>PLAIN</mechanism></mechanisms></stream:features>"
    ))
    assert offer == Offer()


def test_features_in_the_clear_must_offer_starttls():
    """A far server that does not offer STARTTLS is refused with policy-violation; one that does is not."""
    assert refuse_clear_offer(Offer(dialback=True)) == Refusal("policy-violation", "the far server does not offer TLS")
    assert refuse_clear_offer(Offer(starttls=True)) is None


@pytest.mark.parametrize("offer, purpose, authentication, chosen", [
    (Offer(), "verify", "dialback", VERIFY),
    (Offer(external=True), "verify", "certificate", VERIFY),
    (Offer(external=True), "relay", "certificate", EXTERNAL),
    (Offer(external=True, dialback=True), "relay", "certificate", EXTERNAL),
    (Offer(dialback=True), "relay", "dialback", DIALBACK),
    (Offer(), "relay", "dialback", DIALBACK),
    (Offer(external=True, dialback=True), "relay", "dialback", DIALBACK),
])
def test_the_mechanism_follows_the_purpose_the_sides_authentication_and_the_offer(offer, purpose, authentication,
                                                                                   chosen):
    """Verification streams never authenticate; certificate sides use EXTERNAL; dialback sides use dialback."""
    assert choose_mechanism(offer, purpose, authentication) == chosen


def test_a_certificate_side_without_external_offered_is_refused():
    """A certificate side never falls back to dialback: no EXTERNAL offered is not-authorized."""
    assert choose_mechanism(Offer(dialback=True), "relay", "certificate") == Refusal(
        "not-authorized", "the far server does not accept our certificate")


def test_a_dialback_side_offered_only_external_is_refused():
    """A dialback side facing a server that offers EXTERNAL and not dialback has no mechanism to use."""
    assert choose_mechanism(Offer(external=True), "relay", "dialback") == Refusal(
        "not-authorized", "the far server does not offer dialback")


def server_verdict(keypair):
    return TrustAnchors(str(pki().blue_ca)).judge_server(PresentedChain(load_pem_chain(str(keypair.certificate))))


def test_the_far_servers_own_certificate_proves_it():
    """The blue server's certificate from blue's CA proves blue.example: nothing is refused."""
    assert refuse_far_server(server_verdict(pki().blue_server), RECEIVER) is None


def test_a_certificate_for_another_domain_is_refused_with_the_guards_text():
    """A valid certificate that does not name the receiver is refused with undefined-condition and says why."""
    refusal = refuse_far_server(server_verdict(pki().blue_server), "elsewhere.example")
    assert refusal == Refusal("undefined-condition",
                              "the server certificate is refused: its subjectAltName does not name elsewhere.example")


def test_a_certificate_without_subject_alt_name_is_refused():
    """A certificate naming the receiver only in its common name does not prove it."""
    refusal = refuse_far_server(server_verdict(pki().blue_common_name_only), RECEIVER)
    assert refusal.condition == "undefined-condition"
    assert refusal.text.startswith("the server certificate is refused: ")


def test_a_certificate_from_another_ca_is_refused_with_the_chain_problem():
    """A certificate the side's CA did not issue is refused and the text names the chain problem."""
    refusal = refuse_far_server(server_verdict(pki().blue_from_red_ca), RECEIVER)
    assert refusal.condition == "undefined-condition"
    assert refusal.text.startswith("the server certificate is refused: chain not trusted")


def test_no_certificate_at_all_is_refused():
    """A secured stream without a peer certificate proves nothing."""
    verdict = TrustAnchors(str(pki().blue_ca)).judge_server(None)
    assert refuse_far_server(verdict, RECEIVER) == Refusal(
        "undefined-condition", "the server certificate is refused: no certificate presented")


def test_a_valid_dialback_answer_for_our_pair_accepts_the_key():
    """type='valid' from the receiver to the sender accepts the key."""
    assert judge_dialback_answer(RECEIVER, SENDER, "valid", None, SENDER, RECEIVER) is None


@pytest.mark.parametrize("answer_from, answer_to", [
    (SENDER, RECEIVER), ("other.example", SENDER), (RECEIVER, "other.example"), (None, None),
])
def test_a_dialback_answer_for_another_pair_is_a_protocol_fault(answer_from, answer_to):
    """An answer that does not come from the receiver to the sender is refused with invalid-from, whatever it says."""
    assert judge_dialback_answer(answer_from, answer_to, "valid", None, SENDER, RECEIVER) == Refusal(
        "invalid-from", "dialback answer for another domain pair")


def test_an_invalid_dialback_answer_is_not_accepted():
    """type='invalid' means the far server did not accept the key."""
    assert judge_dialback_answer(RECEIVER, SENDER, "invalid", None, SENDER, RECEIVER) == KeyNotAccepted(
        "the far server did not accept our dialback key")


def test_a_dialback_error_keeps_the_far_servers_reason_for_the_log_only_and_escaped():
    """type='error' is not accepted; the far server's condition is in the detail, bounded and escaped."""
    answer = judge_dialback_answer(RECEIVER, SENDER, "error", "remote-server-timeout", SENDER, RECEIVER)
    assert isinstance(answer, KeyNotAccepted)
    assert "remote-server-timeout" in answer.detail
    long = judge_dialback_answer(RECEIVER, SENDER, "error", "x" * 5000, SENDER, RECEIVER)
    assert len(long.detail) < 1000


def test_a_verification_answer_we_asked_for_is_taken():
    """On a verification stream, an answer from the receiver to the sender for an id we asked about is taken."""
    assert refuse_verify_answer(RECEIVER, SENDER, "s-1", "verify", SENDER, RECEIVER, {"s-1"}.__contains__) is None


@pytest.mark.parametrize("answer_from, answer_to, stream_id, purpose", [
    (RECEIVER, SENDER, "s-2", "verify"),
    (RECEIVER, SENDER, "s-1", "relay"),
    (SENDER, RECEIVER, "s-1", "verify"),
    ("other.example", SENDER, "s-1", "verify"),
])
def test_a_verification_answer_we_did_not_ask_for_is_refused(answer_from, answer_to, stream_id, purpose):
    """Another id, a relay stream or another domain pair: invalid-id, and the stream closes."""
    assert refuse_verify_answer(answer_from, answer_to, stream_id, purpose, SENDER, RECEIVER,
                                {"s-1"}.__contains__) == Refusal("invalid-id", "a verification answer we did not ask for")


def test_a_relay_streams_owner_is_never_asked_about_verification_answers():
    """The owner of a relay stream has no verifications: it is not consulted."""
    def asked(stream_id):
        raise AssertionError("asked about a relay stream")

    assert refuse_verify_answer(RECEIVER, SENDER, "s-1", "relay", SENDER, RECEIVER, asked).condition == "invalid-id"
