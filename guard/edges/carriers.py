"""
Carriers: the ways a judged stanza leaves the guard.

A carrier takes parcels (``guard.edges.relay.Parcel``) for the pairs it
serves and settles each one exactly once with its owner: ``delivered`` once
it is written (or acknowledged), ``undeliverable`` when it cannot be.  It
says ``congested``/``decongested`` when whatever it writes to stops or starts
taking stanzas again: the owner then holds or releases the feeders of its
pairs (``guard.edges.feeders``); a carrier never reaches into who feeds it.

Today's carriers: the S2S outbound queue for one (side, sender, receiver)
(``guard.edges.s2s.carrier.S2SCarrier``) and the pair link of a half
(``guard.edges.link.link.LinkCarrier``).  A new way out (a constrained link,
a gateway) is one class that provides ``ICarrier`` and is registered with
the relay for the side it reaches (``Relay.carry_side_over``).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class ICarrier(Interface):
    """One way out of the guard for judged stanzas."""

    pairs = Attribute(
        "The (sender domain, receiver domain) pairs this carrier takes stanzas for: when it is congested, "
        "the feeders of these pairs stop being read.")

    def carry(parcel):
        """Take ``parcel`` to the far side, or settle it with the owner as undeliverable; never raises."""

    def bounce_waiting(condition, text):
        """The guard begins to stop: settle every accepted stanza that waits here (our own bounces may stay
        queued for the shutdown grace)."""

    def waiting():
        """How many parcels may still be settled here within the shutdown grace (the service waits for them)."""

    def shut_down():
        """Stop at once: give up everything still waiting (told to the owner) and close what is open."""

    def describe():
        """A dict for the status file: state, what waits, counters."""


class ICarrierOwner(Interface):
    """What a carrier tells (and asks) the relay that hands it parcels."""

    def delivered(parcel):
        """``parcel`` has left: it is settled as delivered."""

    def undeliverable(parcel, condition, text):
        """``parcel`` cannot leave: bounce what it settles (``text`` may be a peer's words: audit only)."""

    def congested(carrier, reason):
        """``carrier`` takes nothing more for now: hold the feeders of ``carrier.pairs`` for ``reason``."""

    def decongested(carrier, reason):
        """``carrier`` takes stanzas again: release what was held for ``reason``."""

    def judged_again(parcel):
        """``parcel`` as the policy in force now lets it leave, or None once it is settled by the owner;
        asked before every write."""

    def count_held(amount):
        """``amount`` more bytes wait in a carrier (they count against the guard's memory budget)."""

    def count_freed(amount):
        """``amount`` bytes no longer wait in a carrier."""
