"""
Seconds and SIS units before the first stanza over STANAG 5066 (XEP-0365):
two halves of the constrained link (security = "bearer") bound to two
simulated SIS nodes (guard/lab/sisnode.py) on loopback; half B dials with a
100-character chat already waiting, and the bench prints when it reaches
half A and how many units each node carried before it (none from A: no
round trip).

    .venv/bin/python bench/bench_sis.py [--rate 1200] [--delay 1.0] [--compression none|zlib|dictionary]
"""

from __future__ import annotations

import argparse
import time

from twisted.internet import defer, task
from twisted.words.xish import domish

from guard.edges.link.leg import LegConfig, LinkLeg
from guard.core.settlement import Parcel
from guard.edges.link.profile import ConstrainedProfile
from guard.edges.xmlstream import ParserLimits
from guard.lab.sisnode import SisNetwork

DEADLINE_SECONDS = 120.0


class Arrivals:
    """The link owner of one half: notes what arrives, settles nothing else."""

    def __init__(self):
        self.received = []

    def link_stanza_received(self, element, size):
        self.received.append(element)

    def link_delivered(self, parcel):
        pass

    def link_undeliverable(self, parcel, condition, text):
        pass

    def link_in_doubt(self, parcel):
        pass


def chat() -> Parcel:
    stanza = domish.Element(("jabber:server", "message"))
    stanza["from"], stanza["to"], stanza["id"], stanza["type"] = "juliet@blue.example/b", "romeo@red.example", "c1", "chat"
    stanza.addElement("body", content="x" * 100)
    return Parcel(stanza, None, size=len(stanza.toXml().encode()))


async def first_stanza(reactor, rate: int, delay: float, compression: str) -> str:
    network = SisNetwork(reactor, rate, delay)
    a, b = network.node("0.0.6.1"), network.node("0.0.6.2")
    port_a = await a.listen(reactor, 0, "127.0.0.1")
    port_b = await b.listen(reactor, 0, "127.0.0.1")
    profile = ConstrainedProfile(security="bearer", compression=compression, rate=rate, round_trip=2 * delay)
    limits = ParserLimits(stanza_bytes=1700)
    listening = LegConfig("half-a", "half-b", None, None, profile=profile,
                          listen=f"stanag5066:node=127.0.0.1:port={port_a.getHost().port}:peer=0.0.6.2")
    dialling = LegConfig("half-b", "half-a", None, None, profile=profile,
                         dial=f"stanag5066:node=127.0.0.1:port={port_b.getHost().port}:peer=0.0.6.1")
    arrivals = Arrivals()
    leg_a = LinkLeg(listening, arrivals, reactor, limits, near_domains=("red.example",), far_domains=("blue.example",))
    leg_b = LinkLeg(dialling, Arrivals(), reactor, limits, near_domains=("blue.example",), far_domains=("red.example",))
    try:
        await leg_a.start()
        started = time.monotonic()
        leg_b.link.send(chat())
        await leg_b.start()
        while not arrivals.received and time.monotonic() - started < DEADLINE_SECONDS:
            await task.deferLater(reactor, 0.005, lambda: None)
        took = time.monotonic() - started
        if not arrivals.received:
            return f"{compression:10s} no stanza within {DEADLINE_SECONDS:.0f} s"
        return (f"{compression:10s} first stanza after {took:5.2f} s; units from B before it: {b.delivered}, "
                f"from A: {a.delivered} (0 = no round trip)")
    finally:
        for leg in (leg_b, leg_a):
            await defer.maybeDeferred(leg.stop)
        for port in (port_a, port_b):
            await port.stopListening()
        network.stop()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1200, help="bits per second of the simulated bearer")
    parser.add_argument("--delay", type=float, default=1.0, help="one-way delay in seconds")
    parser.add_argument("--compression", choices=("none", "zlib", "dictionary"), action="append")
    arguments = parser.parse_args(argv)
    modes = arguments.compression or ["none", "zlib", "dictionary"]

    def run(reactor):
        async def each():
            print(f"STANAG 5066 SIS, {arguments.rate} bit/s, {arguments.delay} s one way")
            for mode in modes:
                print(await first_stanza(reactor, arguments.rate, arguments.delay, mode))
        return defer.ensureDeferred(each())

    task.react(run)


if __name__ == "__main__":
    main()
