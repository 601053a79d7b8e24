"""
The snapshot: what a running guard process is doing now, as plain JSON-able
data, read from a GuardProcess (guard.app.service; a pair half is one too).
The management page and the SNMP agent read only this (and the metrics
registry), never the streams themselves.  No I/O: every value is read from
objects in memory; times are epoch seconds on the process's injected clock.

    {"service": {"name", "version", "started", "uptime", "state", "halted_reason"},
     "books": {"accepted", "delivered", "bounced", "dropped", "in_flight"},
     "sides": {side: {"peers": [stream, ...]}},
     "carriers": [{"side", "sender", "receiver", "state", "queued", "queued_bytes", "holding", ...}],
     "pair_link": None | {"state", "peer", "buffer_bytes", "unacknowledged", ..., "stream": stream | None},
     "release_authority": None | {"endpoint", "pending", "waiting", "asked", "answers", "latency_seconds", ...},
     "policies": [{"direction", "file", "name", "loaded", "digest", "cases": {"passed", "failed"}}]}

A stream is what its ``describe()`` says (InboundStream, OutboundStream,
LinkStream): ``id``, ``side``, ``direction``, ``peer_domain``,
``local_domain``, ``authentication``, ``certificate_subject``,
``certificate_not_after``, ``started``, ``age``, ``state``,
``stanzas_in``, ``stanzas_out``, ``bytes_in``, ``bytes_out``.
"""

from __future__ import annotations

import guard

SERVICE_NAME = "xmpp-guard"

RUNNING = "running"
HALTED = "halted"
CONGESTED = "congested"


def snapshot(process) -> dict:
    """Everything the management page and the SNMP agent show of ``process``, read now."""
    now = process.reactor.seconds()
    relay = process.relay
    books = process.books
    return {
        "service": {
            "name": SERVICE_NAME,
            "version": guard.__version__,
            "started": process.started,
            "uptime": max(0.0, now - process.started),
            "state": service_state(relay),
            "halted_reason": relay.halted_reason,
        },
        "books": {"accepted": books.accepted, "delivered": books.delivered, "bounced": books.bounced,
                  "dropped": books.dropped, "in_flight": books.in_flight},
        "sides": {name: {"peers": [stream.describe() for stream in side_streams(relay, side)]}
                  for name, side in process.sides.items()},
        "carriers": [describe_carrier(key, carrier) for key, carrier in relay.links.items()],
        "pair_link": describe_pair_link(relay),
        "release_authority": describe_release_authority(process),
        "policies": [dict(record, cases=dict(record["cases"])) for record in process.policy_records],
    }


def service_state(relay) -> str:
    """halted (the audit trail stopped relaying), congested (anything holds back reading), or running."""
    if relay.halted_reason is not None:
        return HALTED
    if relay.held.over or any(carrier.holding or _stream_state(carrier.stream) == CONGESTED
                              for carrier in relay.links.values()):
        return CONGESTED
    if getattr(relay, "link_holds", None):
        return CONGESTED
    return RUNNING


def side_streams(relay, side) -> list:
    """Every S2S stream of ``side`` that is connected and not over: inbound, outbound (relay), outbound (verify)."""
    streams = list(side.inbound_streams)
    streams += [carrier.stream for (name, _, _), carrier in relay.links.items() if name == side.name]
    verifier = getattr(side, "verifier", None)
    streams += [channel.stream for channel in getattr(verifier, "channels", {}).values()]
    return [stream for stream in streams if _live(stream)]


def _live(stream) -> bool:
    return (stream is not None and hasattr(stream, "describe") and getattr(stream, "transport", None) is not None
            and not stream.closing)


def _stream_state(stream):
    return stream.describe()["state"] if _live(stream) else None


def describe_carrier(key, carrier) -> dict:
    """One S2S carrier (outbound queue) of (side, sender, receiver)."""
    side, sender, receiver = key
    return {"side": side, "sender": sender, "receiver": receiver, **carrier.describe()}


def describe_pair_link(relay) -> dict | None:
    """A half's pair link (None for a standalone guard), with its current connection's describe()."""
    leg = getattr(relay, "leg", None)
    if leg is None:
        return None
    facts = dict(leg.describe())
    stream = leg.link.stream
    facts["stream"] = stream.describe() if _live(stream) else None
    return facts


def describe_release_authority(process) -> dict | None:
    """The release authority ``refer`` asks (None when none is configured): questions, answers, latency."""
    authority = process.release_authority
    if authority is None:
        return None
    answered = authority.answered
    return {
        "endpoint": process.config.settings.release_endpoint,
        "pending": authority.pending,
        "waiting": len(authority.waiting),
        "asked": authority.asked,
        # The authority counts a busy answer as denied too: here each answer is in one outcome.
        "answers": {"released": authority.released, "denied": authority.denied - authority.busy,
                    "busy": authority.busy},
        "answered": answered,
        "latency_seconds": authority.answered_seconds / answered if answered else None,
        "last_latency_seconds": authority.last_answer_seconds,
    }
