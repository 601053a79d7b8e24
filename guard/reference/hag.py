"""
The reference High Assurance Guard in the pair link's path:

    half A ==link==> HAG ==link==> half B   (and back)

It terminates the link on both legs (its own certificate; each half pins
the HAG's, the HAG pins each half's), so it sees every stanza in clear.
Each stanza is checked by ``guard.reference.profile.check_stanza`` (its own
independent parse and an allow-list profile) and either forwarded, rebuilt
from the HAG's own tree, on the other leg, or dropped with an audit record.
Acknowledgements are per leg: the HAG acknowledges what it has taken
responsibility for (forwarded into the other leg's retransmission buffer, or
dropped and audited), so the pair's "nothing lost, nothing doubled" holds
across it.  If the audit trail cannot be written, nothing more passes.

What the HAG refuses is answered: a stanza error goes back on the leg it
came from, to its sender, wherever RFC 6120 allows one (never for an error
or an iq result), with the HAG's own constant text; the peer's words go to
the audit record only.

Run: ``python -m guard.reference.hag --config hag.toml`` (deploy/pair/hag.toml
documents the file).
"""

from __future__ import annotations

import argparse
import sys
import tomllib

from twisted.internet import defer
from twisted.logger import Logger

from guard.app.config import ConfigError, _Checker
from guard.app.half_config import link_leg
from guard.core.addressing import parse_jid
from guard.core.bounce import error_reply, guard_text, may_bounce, peer_detail
from guard.edges.audit import AuditLog, AuditUnavailable
from guard.edges.link.leg import LinkLeg
from guard.edges.relay import Parcel
from guard.edges.xmlstream import serialise

from .profile import Profile, ProfileError, check_stanza, load_profile

log = Logger()

# The HAG's own answers (condition, text): constant, never what a peer said.
REFUSED = ("not-allowed", "refused by the High Assurance Guard")  # RFC 3920 and 6120: every client knows it
HALTED = ("service-unavailable", "the High Assurance Guard is not forwarding")

LEG_KEYS = ("peer", "certificate", "key", "pins", "ca", "listen", "dial", "buffer_stanzas", "buffer_bytes",
            "down_deadline",
            "ack_every", "ack_interval", "ack_timeout", "keepalive", "open_timeout", "backoff_initial", "backoff_max",
            "backoff_jitter")


class ReferenceHag:
    """Checks each stanza crossing between two legs and forwards or drops it."""

    def __init__(self, profile: Profile, audit):
        self.profile = profile
        self.audit = audit
        self.legs = {}
        self.forwarded = 0
        self.dropped = 0
        self.halted: str | None = None

    def add_leg(self, name, leg):
        self.legs[name] = leg

    def other(self, name):
        (other,) = [leg_name for leg_name in self.legs if leg_name != name]
        return other

    def crossing(self, source: str, stanza) -> None:
        """A stanza arrived on leg ``source``: forward it to the other leg or drop it."""
        destination = self.other(source)
        if self.halted is not None:
            self._drop(source, destination, stanza, f"the HAG is halted: {self.halted}", HALTED)
            return
        try:
            serialised = serialise(stanza).encode("utf-8")
            check = check_stanza(serialised, self.profile)
        except Exception as problem:  # noqa: BLE001 - fail closed on anything
            self._drop(source, destination, stanza, f"check failed: {problem!r}", REFUSED)
            return
        if not check.passed:
            self._drop(source, destination, stanza, check.reason, REFUSED)
            return
        self.forwarded += 1
        self.legs[destination].link.send(Parcel(check.stanza, stanza))

    def undeliverable(self, destination: str, parcel, condition: str, text: str) -> None:
        """The far leg gave up on a stanza: audit it and bounce an error back where it came from."""
        source = self.other(destination)
        self._record("hag-undeliverable", source, destination, parcel.stanza, f"{condition}: {peer_detail(text)}")
        original = parcel.original
        if original is None or not may_bounce(original) or parse_jid(original.getAttribute("from")) is None:
            return
        # The text is the guard's own for the condition: what the far leg said stays in the audit record.
        self.legs[source].link.send(Parcel(error_reply(original, condition, guard_text(condition)), None))

    def in_doubt(self, destination: str, parcel) -> None:
        """The far leg stopped with ``parcel`` written and unacknowledged: nobody can say if it arrived; audit it."""
        self._record("hag-in-doubt", self.other(destination), destination, parcel.stanza,
                     "written, not acknowledged when the leg stopped")

    def _drop(self, source, destination, stanza, reason, answer):
        """Refuse ``stanza``: audit it, and answer its sender on the leg it came from when an error is allowed."""
        self.dropped += 1
        log.info("hag: dropped a {kind} from {source}: {reason}", kind=stanza.name, source=source, reason=reason)
        condition, text = answer
        answered = may_bounce(stanza) and parse_jid(stanza.getAttribute("from")) is not None \
            and parse_jid(stanza.getAttribute("to")) is not None
        self._record("hag-drop", source, destination, stanza, reason, answer=condition if answered else None)
        if answered:
            self.legs[source].link.send(Parcel(error_reply(stanza, condition, text), None))

    def _record(self, event, source, destination, stanza, reason, **extra):
        try:
            self.audit.record(event, direction=f"{source}->{destination}", kind=stanza.name,
                              type=stanza.getAttribute("type"), id=stanza.getAttribute("id"),
                              sender=stanza.getAttribute("from"), recipient=stanza.getAttribute("to"),
                              reason=reason, **extra)
        except AuditUnavailable as problem:
            log.critical("AUDIT TRAIL UNAVAILABLE: {problem}; the HAG stops forwarding", problem=str(problem))
            self.halted = f"audit trail unavailable: {problem}"

    def describe(self) -> dict:
        return {"forwarded": self.forwarded, "dropped": self.dropped, "halted": self.halted,
                "legs": {name: leg.describe() for name, leg in self.legs.items()}}


class LegOwner:
    """What one leg's link tells: stanzas to check, deliveries, give-ups."""

    def __init__(self, hag: ReferenceHag, name: str):
        self.hag = hag
        self.name = name

    def link_stanza_received(self, element, size):
        self.hag.crossing(self.name, element)

    def link_delivered(self, parcel):
        pass

    def link_undeliverable(self, parcel, condition, text):
        self.hag.undeliverable(self.name, parcel, condition, text)

    def link_in_doubt(self, parcel):
        self.hag.in_doubt(self.name, parcel)


def load_hag_config(path: str):
    """(name, profile path, audit path, {leg name: LegConfig}); ConfigError naming file and key."""
    checker = _Checker(path)
    try:
        with open(path, "rb") as source:
            document = tomllib.load(source)
    except OSError as problem:
        raise ConfigError(f"{path}: cannot read: {problem.strerror}") from problem
    except tomllib.TOMLDecodeError as problem:
        raise ConfigError(f"{path}: not valid TOML: {problem}") from problem
    checker.only(document, ("hag", "legs"), "")
    hag = checker.table(document.get("hag", {}), "hag")
    checker.only(hag, ("name", "certificate", "key", "profile", "audit"), "hag")
    name = checker.string(hag, "name", "hag")
    profile = checker.file(hag, "profile", "hag")
    audit = checker.writable_path(hag, "audit", "hag")
    legs_table = checker.table(document.get("legs", {}), "legs")
    if len(legs_table) != 2:
        checker.fail("legs", f"needs exactly two legs, found {len(legs_table)}")
    legs = {}
    for leg_name, table in legs_table.items():
        key = f"legs.{leg_name}"
        checker.table(table, key)
        checker.only(table, LEG_KEYS, key)
        merged = {"name": name, **{k: hag[k] for k in ("certificate", "key") if k in hag}, **table}
        legs[leg_name] = link_leg(checker, merged, key, known=("name",) + LEG_KEYS)
    return name, profile, audit, legs


def build(config_path: str, reactor) -> tuple[ReferenceHag, dict]:
    name, profile_path, audit_path, leg_configs = load_hag_config(config_path)
    try:
        profile = load_profile(profile_path)
    except ProfileError as problem:
        raise ConfigError(str(problem)) from problem
    hag = ReferenceHag(profile, AuditLog(audit_path))
    for leg_name, leg_config in leg_configs.items():
        hag.add_leg(leg_name, LinkLeg(leg_config, LegOwner(hag, leg_name), reactor))
    return hag, leg_configs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="guard-hag", description="Reference High Assurance Guard for the pair link")
    parser.add_argument("--config", required=True, help="the HAG's TOML configuration")
    parser.add_argument("--check", action="store_true", help="check the configuration and profile, then exit")
    arguments = parser.parse_args(argv)

    from twisted.internet import task
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import globalLogBeginner, textFileLogObserver

    try:
        build(arguments.config, MemoryReactorClock())  # check everything before anything starts
    except ConfigError as problem:
        print(f"guard-hag: {problem}", file=sys.stderr)
        return 2
    if arguments.check:
        print(f"{arguments.config}: OK")
        return 0
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)

    @defer.inlineCallbacks
    def serve(reactor):
        hag, _ = build(arguments.config, reactor)
        stopped = defer.Deferred()

        @defer.inlineCallbacks
        def stop():
            for leg in hag.legs.values():
                yield leg.stop()
            hag.audit.close()

        reactor.addSystemEventTrigger("before", "shutdown", stop)
        for name, leg in hag.legs.items():
            yield leg.start()  # a leg that cannot start ends the process
            log.info("hag leg {name}: {role} {endpoint}; fingerprint {fingerprint}", name=name,
                     role=leg.describe()["role"], endpoint=leg.describe()["endpoint"],
                     fingerprint=leg.tls.fingerprint)
        yield stopped  # until SIGTERM or SIGINT

    task.react(serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
