"""
One end of a pair link as a running thing: the link, its TLS, its peer
check and either a listening port or a dialler.  Used by a back-to-back half
(one leg) and by the reference HAG (two legs).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, serverFromString

from guard.edges.xmlstream import ParserLimits

from .dialler import Backoff, LinkDialler
from .link import Link, LinkSettings
from .stream import OPEN_TIMEOUT_SECONDS, LinkStreamFactory
from .tls import LinkTLS, PeerCheck


@dataclass(frozen=True)
class LegConfig:
    """Everything one link end needs; exactly one of ``listen`` and ``dial`` is set."""

    own_name: str
    peer_name: str
    certificate: str
    key: str
    pins: tuple[str, ...] = ()
    ca: str | None = None
    listen: str | None = None  # Twisted server endpoint string, e.g. tcp:5299:interface=192.0.2.1
    dial: str | None = None  # Twisted client endpoint string, e.g. tcp:host=192.0.2.2:port=5299
    settings: LinkSettings = field(default_factory=LinkSettings)
    backoff: Backoff = field(default_factory=Backoff)
    open_timeout: float = OPEN_TIMEOUT_SECONDS


class NoSuchSocket(ValueError):
    """The link's listen string names a socket that was not passed (systemd socket activation)."""


class LinkLeg:
    def __init__(self, config: LegConfig, owner, reactor, limits: ParserLimits = ParserLimits(),
                 random_source=random.random):
        if (config.listen is None) == (config.dial is None):
            raise ValueError("a link end either listens or dials")
        self.config = config
        self.reactor = reactor
        self.limits = limits  # the link stream parser's limits (the peer half is held to them too)
        self.link = Link(owner, config.own_name, config.peer_name, reactor, config.settings,
                         stanza_bytes=limits.stanza_bytes)
        self.tls = LinkTLS(config.certificate, config.key)
        self.check = PeerCheck(config.peer_name, config.pins, config.ca)
        self.factory = LinkStreamFactory(self.link, self.check, reactor, limits, config.open_timeout)
        self.dialler = None
        self.port = None
        self._random = random_source

    @defer.inlineCallbacks
    def start(self):
        self.link.start()
        if self.config.listen is not None:
            try:
                endpoint = serverFromString(self.reactor, self.config.listen)
            except (KeyError, IndexError) as problem:
                # A systemd: string whose socket was not passed (Twisted raises KeyError/IndexError).
                raise NoSuchSocket(f"{self.config.listen}: no such socket was passed by systemd ({problem!r})") \
                    from problem
            self.port = yield endpoint.listen(self.tls.listening(self.factory, self.reactor))
        else:
            endpoint = clientFromString(self.reactor, self.config.dial)

            def connect():
                attempt = endpoint.connect(self.tls.dialling(self.factory, self.reactor))
                return attempt.addCallback(lambda tls_protocol: tls_protocol.wrappedProtocol)

            self.dialler = LinkDialler(connect, self.reactor, self._random, self.config.backoff)
            self.dialler.start()

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
        if self.dialler is not None:
            description["dial_attempts"] = self.dialler.attempts
        return description
