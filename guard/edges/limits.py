"""
Every limit the guard enforces, with its default.  Each one is checked by the
code named beside it and has a test; a limit that is declared here and not
enforced is a defect.

The stream parser's limits are declared once, in
``guard.edges.xmlstream.ParserLimits`` (beside the parser that enforces
them); ``Limits`` extends it, so the ``[limits]`` table sets both with the
same keys and the same defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from guard.edges.xmlstream import ParserLimits


@dataclass(frozen=True)
class Limits(ParserLimits):
    """The parser's limits (stanza_bytes, element_depth, attributes_per_element, attribute_value_bytes,
    children_per_stanza, header_bytes: see ParserLimits) and every other limit of a guard process."""

    # Enforced by InboundStream before a stream is authenticated.
    preauth_bytes: int = 8 * 1024
    preauth_elements: int = 32
    # Enforced by InboundFactory and InboundStream on each side.
    connections_per_address: int = 64
    streams_per_domain: int = 16
    # Enforced by InboundStream (XEP-0205 style): bytes per second and burst per
    # connection; excess is slowed by not reading, and a peer still over its
    # budget after rate_grace seconds of throttling is disconnected.
    rate_bytes_per_second: int = 1024 * 1024
    rate_burst_bytes: int = 4 * 1024 * 1024
    rate_grace: float = 30.0
    # Enforced by InboundStream (and OutboundStream's congestion signal): bytes
    # written to a peer and not yet read by it.  Past it the guard stops
    # reading from the peer until it drains; a peer that receives this much
    # more while it is not reading is disconnected.
    unread_output_bytes: int = 64 * 1024
    # Enforced by InboundStream: bytes parsed from one connection per turn of
    # the event loop.  The rest waits (reading paused) for the next turn, so a
    # peer that floods cannot keep the loop from every other stream.
    read_turn_bytes: int = 8 * 1024
    # Enforced by the relay's outbound links: stanzas waiting for one domain pair.
    outbound_queue: int = 1000
    # Enforced by the dialback Verifier (guard.edges.s2s.verification): db:result
    # requests waiting for the authoritative server's answer, per asking stream,
    # per peer address and on one side; beyond them the peer gets a
    # <db:result type='error'> (policy-violation, resource-constraint).  One
    # verification stream per authoritative server carries every db:verify, and
    # each waits at most verification_timeout seconds (then remote-server-timeout).
    verifications_per_stream: int = 4
    verifications_per_address: int = 16
    verifications_per_side: int = 256
    verification_timeout: float = 30.0
    # Seconds, enforced by the stream machines with the injected clock.
    connect_timeout: float = 10.0
    tls_timeout: float = 10.0
    auth_timeout: float = 30.0
    idle_timeout: float = 900.0
    # Enforced by the service when stopping: how long bounces of what was
    # waiting may take to reach the senders before every stream is closed.
    shutdown_grace: float = 5.0
    # Enforced by the relay's outbound links: wire bytes (as the parser counted
    # them) of the stanzas waiting for one domain pair.  At outbound_queue
    # stanzas or outbound_queue_bytes, the streams that feed the pair are not
    # read until its stream is up (a burst waits, it is not bounced); what
    # still arrives past twice either bound is bounced (resource-constraint).
    outbound_queue_bytes: int = 4 * 1024 * 1024
    # Enforced by the relay (guard.core.books.HeldBytes): wire bytes of every
    # stanza the guard holds, in outbound queues and waiting for the release
    # authority.  At the budget no inbound stream is read until what is held
    # falls to three quarters of it.  A parsed stanza takes up to ~80 times
    # its wire size in memory: size the budget for that.
    memory_budget_bytes: int = 32 * 1024 * 1024

    def parser_limits(self) -> ParserLimits:
        """The stream parser's part of these limits."""
        return ParserLimits(**{limit.name: getattr(self, limit.name) for limit in fields(ParserLimits)})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
