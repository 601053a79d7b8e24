"""
One end of a pair link as a running thing: the link, its TLS, its peer
check and either a listening port or a dialler.  Used by a back-to-back half
(one leg) and by the reference HAG (two legs).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger

from guard.edges.xmlstream import ParserLimits

from .dialler import Backoff, LinkDialler
from .link import Link, LinkSettings
from .profile import BEARER_IDENTITY, BEARER_WARNING, ConstrainedProfile, HeaderNamesOnly
from .stream import OPEN_TIMEOUT_SECONDS, LinkStreamFactory
from .tls import LinkTLS, PeerCheck

log = Logger()


@dataclass(frozen=True)
class LegConfig:
    """Everything one link end needs; exactly one of ``listen`` and ``dial`` is set."""

    own_name: str
    peer_name: str
    certificate: str | None  # None only with the constrained profile's security = "bearer" (no TLS)
    key: str | None
    pins: tuple[str, ...] = ()
    ca: str | None = None
    listen: str | None = None  # Twisted server endpoint string, e.g. tcp:5299:interface=192.0.2.1
    dial: str | None = None  # Twisted client endpoint string, e.g. tcp:host=192.0.2.2:port=5299
    settings: LinkSettings = field(default_factory=LinkSettings)
    backoff: Backoff = field(default_factory=Backoff)
    open_timeout: float = OPEN_TIMEOUT_SECONDS
    profile: ConstrainedProfile | None = None  # [link] profile = "constrained" (None: the standard link)

    @property
    def without_tls(self) -> bool:
        return self.profile is not None and self.profile.security == "bearer"


class NoTLS:
    """security = "bearer": the link has no TLS, so no certificate, fingerprint or session (what status and metrics
    read of a leg's TLS: an empty certificate file reads as no certificate)."""

    certificate_path = os.devnull
    fingerprint = None
    sessions = None


class NoSuchSocket(ValueError):
    """The link's listen string names a socket that was not passed (systemd socket activation)."""


class LinkLeg:
    def __init__(self, config: LegConfig, owner, reactor, limits: ParserLimits = ParserLimits(),
                 random_source=random.random, near_domains=(), far_domains=()):
        """``near_domains``/``far_domains``: the domains on each end (the constrained profile's dictionary and
        abbreviation are computed from them, the same bytes at both ends of mirrored configurations)."""
        if (config.listen is None) == (config.dial is None):
            raise ValueError("a link end either listens or dials")
        self.config = config
        self.reactor = reactor
        self.limits = limits  # the link stream parser's limits (the peer half is held to them too)
        self.constrained = None
        if config.profile is not None:
            from .constrained import ConstrainedLink

            self.constrained = ConstrainedLink(config.profile, near_domains, far_domains, limits.stanza_bytes)
        self.link = Link(owner, config.own_name, config.peer_name, reactor, config.settings,
                         stanza_bytes=limits.stanza_bytes, constrained=self.constrained)
        if config.without_tls:
            self.tls = NoTLS()
            self.check = HeaderNamesOnly()
        else:
            self.tls = LinkTLS(config.certificate, config.key, tls13_only=config.profile is not None)
            self.check = PeerCheck(config.peer_name, config.pins, config.ca)
        prepare = self.constrained.prepare_stream if self.constrained is not None else None
        self.factory = LinkStreamFactory(self.link, self.check, reactor, limits, config.open_timeout, prepare)
        self.dialler = None
        self.port = None
        self._random = random_source

    def _wrapped(self, listening: bool):
        """The factory the endpoint gets: the link's streams in TLS, or bare under security = "bearer"."""
        if isinstance(self.tls, NoTLS):
            return self.factory
        return (self.tls.listening if listening else self.tls.dialling)(self.factory, self.reactor)

    def _opened(self, stream):
        """A dialled connection opened: keep its TLS session for the next one (the constrained profile)."""
        if self.tls.sessions is not None:
            self.tls.sessions.watch(stream)

    @defer.inlineCallbacks
    def start(self):
        self.link.start()
        if self.config.without_tls:
            log.warn("pair link to {peer}: {warning}; {identity}", peer=self.config.peer_name,
                     warning=BEARER_WARNING, identity=BEARER_IDENTITY)
        if self.config.listen is not None:
            try:
                endpoint = serverFromString(self.reactor, self.config.listen)
            except (KeyError, IndexError) as problem:
                # A systemd: string whose socket was not passed (Twisted raises KeyError/IndexError).
                raise NoSuchSocket(f"{self.config.listen}: no such socket was passed by systemd ({problem!r})") \
                    from problem
            self.port = yield endpoint.listen(self._wrapped(listening=True))
        else:
            endpoint = clientFromString(self.reactor, self.config.dial)

            def connect():
                attempt = endpoint.connect(self._wrapped(listening=False))
                return attempt.addCallback(self._dialled)

            self.dialler = LinkDialler(connect, self.reactor, self._random, self.config.backoff)
            self.dialler.start()

    def _dialled(self, protocol):
        stream = protocol if isinstance(self.tls, NoTLS) else protocol.wrappedProtocol
        stream.when_open.append(self._opened)
        return stream

    @defer.inlineCallbacks
    def stop(self):
        self.link.stop()
        if self.dialler is not None:
            self.dialler.stop()
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None

    def describe(self) -> dict:
        description = self.link.describe()
        description["role"] = "listen" if self.config.listen is not None else "dial"
        description["endpoint"] = self.config.listen or self.config.dial
        description["own_fingerprint"] = self.tls.fingerprint
        if self.config.profile is not None:
            description["profile"] = self.config.profile.describe()
            if self.tls.sessions is not None:
                description["tls_sessions_offered"] = self.tls.sessions.offered
        if self.dialler is not None:
            description["dial_attempts"] = self.dialler.attempts
        return description
