"""
Decisions S2S streams take about what peers send during negotiation.  Pure
functions: facts in, a refusal (stream error condition and text) or None out.
The stream machines act on the answer; they never decide themselves.

A refusal's text is always one of the guard's own constant strings: it may be
written into a stream error or into the bounce of every stanza waiting for
that stream.  What the peer said goes only into ``Refusal.detail``, bounded
and escaped by ``peer_detail``, for the log and the audit.
"""

from __future__ import annotations

from dataclasses import dataclass

from guard.core.addressing import parse_jid
from guard.core.bounce import peer_detail
from guard.core.dialback import key_is_ours

from .wire import SERVER_NS, STREAMS_NS

# The longest stream id a db:verify may carry: ids are the receiving server's
# (Prosody's are 36 characters); anything longer is refused, never echoed.
VERIFY_ID_BYTES = 128
# The longest dialback key a db:result may carry.
DIALBACK_KEY_CHARACTERS = 1024


@dataclass(frozen=True)
class Refusal:
    """Why a peer is refused: an RFC 6120 (or RFC 6120 SASL) condition, the guard's own constant
    text, and what the peer said, for the log only."""

    condition: str
    text: str
    detail: str = ""


def _domain(text: str | None) -> str | None:
    parsed = parse_jid(text)
    if parsed is None or parsed.user is not None or parsed.resource is not None:
        return None
    return parsed.host


def refuse_inbound_header(header, fronted: frozenset[str], hosted: frozenset[str],
                          previous=None) -> Refusal | None:
    """Whether a peer's stream header must be refused (RFC 6120 section 4.7-4.9)."""
    if header.name != "stream" or header.uri != STREAMS_NS:
        return Refusal("invalid-namespace", "the root must be {http://etherx.jabber.org/streams}stream")
    if header.default_namespace != SERVER_NS:
        return Refusal("invalid-namespace", "server streams use the jabber:server namespace")
    if header.prefixes.get("stream") not in (None, STREAMS_NS):
        return Refusal("bad-namespace-prefix", "the stream prefix is bound to the wrong namespace")
    version = header.attributes.get("version")
    if version is None or not _version_at_least_one(version):
        return Refusal("unsupported-version", "version 1.0 or later is required")
    receiver = _domain(header.attributes.get("to"))
    if receiver is None:
        return Refusal("host-unknown", "the stream is not addressed to a domain")
    if receiver not in fronted:
        return Refusal("host-unknown", "the stream is addressed to a domain this guard does not serve",
                       f"to {peer_detail(receiver)}")
    sender = _domain(header.attributes.get("from"))
    if sender is None:
        return Refusal("invalid-from", "the stream header needs a from domain")
    if sender not in hosted:
        return Refusal("invalid-from", "the stream's from is not a domain of this side", f"from {peer_detail(sender)}")
    if previous is not None:
        if previous.attributes.get("to") != header.attributes.get("to"):
            return Refusal("host-unknown", "the restarted stream changed its to address")
        if previous.attributes.get("from") != header.attributes.get("from"):
            return Refusal("invalid-from", "the restarted stream changed its from address")
    return None


def _version_at_least_one(version: str) -> bool:
    major, _, minor = version.partition(".")
    if not major.isdigit() or (minor and not minor.isdigit()):
        return False
    return int(major) >= 1


def refuse_outbound_header(header, expected_sender: str, previous=None) -> Refusal | None:
    """Whether the header a far server answered with must be refused."""
    if header.name != "stream" or header.uri != STREAMS_NS:
        return Refusal("invalid-namespace", "the root must be {http://etherx.jabber.org/streams}stream")
    if header.default_namespace != SERVER_NS:
        return Refusal("invalid-namespace", "server streams use the jabber:server namespace")
    version = header.attributes.get("version")
    if version is None or not _version_at_least_one(version):
        return Refusal("unsupported-version", "version 1.0 or later is required")
    if not header.attributes.get("id"):
        return Refusal("invalid-xml", "the stream header needs an id")
    sender = header.attributes.get("from")
    if sender is not None and _domain(sender) != expected_sender:
        return Refusal("invalid-from", "the far server answered for another domain",
                       f"expected {expected_sender}, got {peer_detail(sender)}")
    return None


def refuse_dialback_request(element, stream_header, fronted: frozenset[str],
                            hosted: frozenset[str]) -> Refusal | None:
    """Whether a <db:result/> asking us to verify a peer must be refused outright."""
    receiver = _domain(element.getAttribute("to"))
    sender = _domain(element.getAttribute("from"))
    if receiver is None or sender is None:
        return Refusal("improper-addressing", "dialback needs from and to domains")
    if sender not in hosted:
        return Refusal("invalid-from", "dialback from a domain not of this side", f"from {peer_detail(sender)}")
    if receiver not in fronted:
        return Refusal("host-unknown", "dialback for a domain this guard does not serve", f"to {peer_detail(receiver)}")
    key = "".join(str(child) for child in element.children if isinstance(child, str)).strip()
    if not key or len(key) > DIALBACK_KEY_CHARACTERS:
        return Refusal("bad-format", "a dialback key is required")
    return None


def external_identity(authzid: str | None, stream_header, peer_verdict, hosted: frozenset[str]) -> str | Refusal:
    """
    The domain a SASL EXTERNAL exchange authenticates (RFC 6120 6.4.6, XEP-0178),
    or why it fails: the identity is the stream's from (an authzid must equal
    it), it must be hosted on this side and the certificate must prove it.
    """
    claimed = stream_header.attributes.get("from")
    if authzid is None:
        return Refusal("incorrect-encoding", "the authorization identity is not valid base64 UTF-8")
    if authzid and authzid != claimed:
        return Refusal("invalid-authzid", "the authorization identity must be the stream's from")
    if claimed not in hosted:
        return Refusal("not-authorized", "the stream's from is not a domain of this side", f"from {peer_detail(claimed)}")
    if peer_verdict is None or not peer_verdict.chain_valid:
        problem = peer_verdict.problem if peer_verdict is not None else "no certificate"
        return Refusal("not-authorized", "the certificate is refused", peer_detail(problem))
    if not peer_verdict.proves(claimed):
        return Refusal("not-authorized", "the certificate does not name the stream's from",
                       f"from {peer_detail(claimed)}")
    return claimed


# -- the inbound stream's decisions: mechanisms, limits, dialback --------------------


@dataclass(frozen=True)
class AuthenticationOffer:
    """Which authentication the secured stream's features offer; ``problem``: why EXTERNAL is not (for the log)."""

    external: bool
    dialback: bool
    problem: str | None = None


def authentication_offer(authentication: str, peer_verdict, claimed: str | None) -> AuthenticationOffer:
    """
    What a secured inbound stream offers: on a certificate side, SASL EXTERNAL
    when the peer's certificate proves the stream's from (and nothing when it
    does not); on a dialback side, dialback only.
    """
    if authentication != "certificate":
        return AuthenticationOffer(external=False, dialback=True)
    if peer_verdict is not None and peer_verdict.proves(claimed):
        return AuthenticationOffer(external=True, dialback=False)
    problem = peer_verdict.problem if peer_verdict is not None else "no certificate"
    return AuthenticationOffer(external=False, dialback=False, problem=problem or "subjectAltName does not match")


def refuse_sasl_mechanism(authentication: str, mechanism: str | None) -> Refusal | None:
    """Whether a SASL <auth/> is refused for its mechanism (a SASL failure; the stream stays open)."""
    if authentication != "certificate":
        return Refusal("invalid-mechanism", "this side authenticates with dialback")
    if mechanism != "EXTERNAL":
        return Refusal("invalid-mechanism", "only EXTERNAL is offered")
    return None


def refuse_another_stream(domain: str, already_sends_as: bool, streams_from: int, limit: int) -> Refusal | None:
    """
    Whether one more stream may authenticate ``domain``: ``streams_from`` other
    streams already are, at most ``limit`` may be (streams_per_domain).  A
    stream that already sends as ``domain`` (dialback for one more receiving
    domain) adds no stream.
    """
    if not already_sends_as and streams_from >= limit:
        return Refusal("policy-violation", f"too many streams from {domain}")
    return None


def refuse_connection(connections_from_address: int, limit: int) -> Refusal | None:
    """Whether a new connection is refused: ``limit`` (connections_per_address) are already open from its address."""
    if connections_from_address >= limit:
        # RFC 6120 4.9.3.3 names a per-address connection limit as its example of <conflict/>.
        return Refusal("conflict", "too many connections from this address")
    return None


@dataclass(frozen=True)
class KeyToCheck:
    """A <db:result/> the guard asks the authoritative server about: originating ``sender``, receiving ``receiver``."""

    sender: str
    receiver: str
    key: str


@dataclass(frozen=True)
class NotServed:
    """
    XEP-0220 2.2.1 and 2.4: a <db:result/> for a receiving domain the guard
    does not serve is answered with a dialback error, not a stream error (the
    stream may carry other domain pairs); ``refusal`` says why, for the log.
    """

    sender: str | None
    receiver: str | None
    refusal: Refusal


def judge_dialback_request(element, authentication: str, fronted: frozenset[str],
                           hosted: frozenset[str]) -> Refusal | NotServed | KeyToCheck:
    """What to do with a <db:result/> asking the guard to verify a peer: refuse the stream, answer an error, or check the key."""
    if authentication != "dialback":
        return Refusal("not-authorized", "this side authenticates with certificates")
    refusal = refuse_dialback_request(element, None, fronted, hosted)
    if refusal is not None and refusal.condition == "host-unknown":
        return NotServed(element.getAttribute("from"), element.getAttribute("to"), refusal)
    if refusal is not None:
        return refusal
    key = "".join(child for child in element.children if isinstance(child, str)).strip()
    return KeyToCheck(element.getAttribute("from"), element.getAttribute("to"), key)


def dialback_settled(verdict: str) -> str:
    """Which way the authoritative server's answer settles a <db:result/>: "confirmed", "denied" or "failed" (an XEP-0220 error)."""
    if verdict == "valid":
        return "confirmed"
    if verdict == "invalid":
        return "denied"
    return "failed"


def refuse_verify_request(asking: str | None, claimed: str | None, stream_id: str,
                          fronted: frozenset[str], hosted: frozenset[str]) -> Refusal | None:
    """A <db:verify/> is answered only for our own domains and a short id: what is echoed is bounded and known."""
    if asking not in hosted:
        return Refusal("invalid-from", "a db:verify must come from a domain of this side")
    if claimed not in fronted:
        return Refusal("host-unknown", "a db:verify must name a domain served through this guard")
    if not stream_id or len(stream_id.encode("utf-8")) > VERIFY_ID_BYTES:
        return Refusal("policy-violation", "a db:verify needs a stream id of at most 128 bytes")
    return None


def verify_verdict(secret: str, asking: str, claimed: str, stream_id: str, key: str) -> str:
    """The answer to a <db:verify/>: "valid" when ``key`` is the one the guard issued for these domains and stream."""
    return "valid" if key_is_ours(secret, asking, claimed, stream_id, key) else "invalid"


# -- outbound: what the guard decides about a far server it connected to -------
# (engineer "streams-out" edits below this line; the inbound decisions are above it)

from .wire import DIALBACK_FEATURE_NS, SASL_NS, TLS_NS  # noqa: E402 - kept with the decisions that use them

# How an outbound stream authenticates, chosen from the secured stream's features.
EXTERNAL = "external"  # SASL EXTERNAL with the guard's certificate
DIALBACK = "dialback"  # a dialback key the far server checks with us
VERIFY = "verify"  # not at all: a verification stream only carries db:verify


@dataclass(frozen=True)
class Offer:
    """What a far server's <stream:features/> offer, as plain facts."""

    starttls: bool = False
    external: bool = False
    dialback: bool = False


def first_child(element, uri, name):
    """The first child element of ``element`` named ``name`` in ``uri``, or None."""
    for child in element.elements():
        if child.uri == uri and child.name == name:
            return child
    return None


def read_offer(features) -> Offer:
    """The facts of a <stream:features/> element that the outbound stream decides on."""
    mechanisms = first_child(features, SASL_NS, "mechanisms")
    external = mechanisms is not None and any(
        mechanism.name == "mechanism" and str(mechanism).strip() == "EXTERNAL"
        for mechanism in mechanisms.elements()
    )
    return Offer(
        starttls=first_child(features, TLS_NS, "starttls") is not None,
        external=external,
        dialback=first_child(features, DIALBACK_FEATURE_NS, "dialback") is not None,
    )


def refuse_clear_offer(offer: Offer) -> Refusal | None:
    """Whether the features of a stream still in the clear must be refused: the guard never talks without TLS."""
    if not offer.starttls:
        return Refusal("policy-violation", "the far server does not offer TLS")
    return None


def choose_mechanism(offer: Offer, purpose: str, authentication: str) -> str | Refusal:
    """
    How the secured outbound stream authenticates (EXTERNAL, DIALBACK or VERIFY),
    or why it cannot: a certificate side needs EXTERNAL offered; a dialback side
    uses dialback unless the far server offers EXTERNAL and not dialback.
    """
    if purpose == "verify":
        return VERIFY
    if authentication == "certificate":
        if offer.external:
            return EXTERNAL
        return Refusal("not-authorized", "the far server does not accept our certificate")
    if offer.dialback or not offer.external:
        return DIALBACK
    return Refusal("not-authorized", "the far server does not offer dialback")


def refuse_far_server(verdict, receiver: str) -> Refusal | None:
    """
    Whether the certificate the far server presented on the secured stream
    fails to prove it is ``receiver``.  Twisted's verify callback logs, but
    does not fail on, some identity errors (a certificate without
    subjectAltName): the guard proves it itself from ``verdict`` (a PeerVerdict).
    """
    if verdict.proves(receiver):
        return None
    problem = verdict.problem or f"its subjectAltName does not name {receiver}"
    return Refusal("undefined-condition", f"the server certificate is refused: {problem}")


@dataclass(frozen=True)
class KeyNotAccepted:
    """The far server did not accept the guard's dialback key; ``detail`` (for the log only) says how."""

    detail: str


def judge_dialback_answer(answer_from: str | None, answer_to: str | None, answer_type: str,
                          error_reason: str | None, sender: str, receiver: str) -> Refusal | KeyNotAccepted | None:
    """
    What a <db:result type=.../> answering the key the guard sent as ``sender``
    to ``receiver`` means: None when the key is accepted; KeyNotAccepted when the
    far server said invalid or could not check it (XEP-0220: its reason is
    logged, never relayed); a Refusal when the answer is for another domain pair.
    """
    if (answer_from, answer_to) != (receiver, sender):
        return Refusal("invalid-from", "dialback answer for another domain pair")
    if answer_type == "valid":
        return None
    if answer_type == "error":
        return KeyNotAccepted(f"dialback error from the far server: {peer_detail(error_reason)}")
    return KeyNotAccepted("the far server did not accept our dialback key")


def refuse_verify_answer(answer_from: str | None, answer_to: str | None, stream_id: str | None,
                         purpose: str, sender: str, receiver: str, asked) -> Refusal | None:
    """
    Whether a <db:verify type=.../> answer must be refused: only a verification
    stream takes them, for its own domain pair, and only for a stream id the
    guard asked about (``asked(stream_id)``, consulted last).
    """
    matches = (
        purpose == "verify"
        and answer_from == receiver
        and answer_to == sender
        and asked(stream_id)
    )
    if not matches:
        return Refusal("invalid-id", "a verification answer we did not ask for")
    return None
