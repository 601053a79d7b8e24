"""
The constrained profile of the pair link (``[link] profile = "constrained"``):
the same link (header, <resume/>, numbered stanzas, acknowledgements) over a
slow bearer (HF radio, SatCom), with what the bearer needs and no more.

- ``security``: "tls" is TLS 1.3 only, with session resumption (the dialling
  half keeps the session of its last connection and offers it on the next:
  a resumed handshake carries no certificates); "bearer" is plain TCP with no
  TLS at all, for a bearer that encrypts itself (crypto at the radio).  Under
  "bearer" nothing proves the peer but the names in its stream header: the
  half logs a WARNING at start and on every connection.
- ``compression``: "none", "zlib" or "dictionary" (guard.edges.constrained);
  both halves must use the same mode.
- ``rate`` (bits per second) and ``round_trip`` (seconds) describe the
  bearer: the link paces its writes to the rate, one stanza per write, and
  its timers are stretched to the round trip (``stretched_settings``).
- ``presence``, ``groupchat_merge``, ``iq_deadline`` and ``max_wait`` go to
  the bearer schedule (guard.core.constrained.schedule).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SECURITY_MODES = ("tls", "bearer")
PRESENCE_MODES = ("all", "available", "directed", "none")
PROFILES = ("standard", "constrained")

# Bytes a link connection exchanges before its first stanza when nothing can be resumed: a full TLS 1.3
# handshake with a certificate chain each way, both stream headers and both <resume/> elements (rounded up).
OPEN_BYTES = 8192

BEARER_WARNING = "no encryption on the link: the bearer must provide it"
BEARER_IDENTITY = ("the peer half is proved by nothing but the names in its stream header "
                   "(security = \"bearer\": no TLS, no certificate)")


@dataclass(frozen=True)
class ConstrainedProfile:
    """The ``[link.constrained]`` table, checked (guard.app.half_config reads it)."""

    security: str = "tls"
    compression: str = "dictionary"
    rate: int = 1200  # bits per second the gateway paces its writes to
    round_trip: float = 2.0  # seconds
    presence: str = "all"
    groupchat_merge: float = 0.25  # seconds a groupchat copy waits for its siblings
    iq_deadline: float = 60.0  # seconds a requester waits for an IQ's answer
    max_wait: float = 600.0  # seconds a stanza may wait for the bearer before it bounces

    def seconds_to_send(self, size: int) -> float:
        """How long ``size`` bytes take on the bearer at ``rate``."""
        return size * 8.0 / self.rate

    def describe(self) -> str:
        """One line for ``--check`` and the start-up log."""
        return (f"profile constrained: security {self.security}, compression {self.compression}, "
                f"{self.rate} bit/s, round trip {self.round_trip:g} s, presence {self.presence}")


def stretched_settings(settings, open_timeout: float, profile: ConstrainedProfile):
    """The link's timers stretched to the bearer (each at least what the configuration says):

    - ack_interval >= round_trip (asking more often only repeats the question in flight);
    - ack_timeout >= 6 * round_trip + the time one ``OPEN_BYTES`` take at the rate;
    - keepalive >= 10 * round_trip;
    - open_timeout >= 4 * round_trip + the time ``OPEN_BYTES`` take at the rate;
    - down_deadline >= max_wait (a stanza may wait ``max_wait`` for the bearer, outages included).

    Returns (settings, open_timeout)."""
    transfer = profile.seconds_to_send(OPEN_BYTES)
    trip = profile.round_trip
    stretched = replace(
        settings,
        ack_interval=max(settings.ack_interval, trip),
        ack_timeout=max(settings.ack_timeout, 6 * trip + transfer),
        keepalive=max(settings.keepalive, 10 * trip),
        down_deadline=max(settings.down_deadline, profile.max_wait),
    )
    return stretched, max(open_timeout, 4 * trip + transfer)


class HeaderNamesOnly:
    """The peer check of security = "bearer": there is no TLS, so no certificate; the peer is whoever connects
    (the stream header must still name the peer half and this half: ``refuse_link_header``)."""

    without_tls = True
    fingerprint = "none (security = bearer)"

    def judge(self, transport):
        return self.fingerprint, None
