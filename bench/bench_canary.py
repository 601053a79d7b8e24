"""
Canary benchmark: how long a well-behaved server's stanza waits while one peer
floods.  In one process, on loopback, with the lab's throwaway PKI and real
TLS: the guard's inbound side (certificate authentication, default limits
except read_turn_bytes) receives from

  - a flooding peer: ``--flood-connections`` streams from red.example, each
    writing ``--flood-mib`` MiB of small messages at once;
  - a canary: one more stream from red.example that sends one message every
    ``--interval`` seconds and is otherwise idle.

Where the relay would judge, a stand-in serialises each stanza (the cost of
writing it out) and notes when each canary message arrived.  The latency is
from the canary's write to the guard having the parsed, addressed stanza.
It runs once with a turn budget too large to matter (the guard before issue
9.8: each read parsed whole) and once per ``--turns`` value.

    .venv/bin/python bench/bench_canary.py [--seconds 4] [--flood-connections 4] [--turns 16384,8192]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, reactor, task  # noqa: E402
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint, connectProtocol  # noqa: E402

from guard.core.topology import Topology  # noqa: E402
from guard.edges.limits import Limits  # noqa: E402
from guard.edges.s2s.inbound import InboundFactory  # noqa: E402
from guard.edges.s2s.outbound import OutboundStream  # noqa: E402
from guard.edges.side import Side  # noqa: E402
from guard.edges.tlsidentity import Identity, TrustAnchors  # noqa: E402
from guard.edges.xmlstream import StreamParser, serialise  # noqa: E402
from guard.lab.pki import BLUE_DOMAINS, RED_DOMAINS, write_lab_pki  # noqa: E402

TOPOLOGY = Topology({"red": frozenset(RED_DOMAINS), "blue": frozenset(BLUE_DOMAINS)})
BEFORE = 1 << 30  # a turn budget no read reaches: every chunk parsed whole, as before the fix


class CanaryRelay:
    """Stands where the relay judges: serialises every stanza and notes each canary's latency."""

    def __init__(self):
        self.latencies: list[float] = []
        self.flood_stanzas = 0
        self.canaries_sent = 0

    def stanza_received(self, side, stanza, addressed, size):
        serialise(stanza)
        if stanza.getAttribute("from", "").startswith("canary@"):
            self.latencies.append(time.perf_counter() - float(stanza.getAttribute("id")))
        else:
            self.flood_stanzas += 1


class Owner:
    """Owns one client stream: fires when it is ready (or failed)."""

    def __init__(self):
        self.ready = defer.Deferred()

    def stream_ready(self, stream):
        self.ready.callback(stream)

    def stream_failed(self, stream, condition, text):
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"client stream failed: {condition}: {text}"))

    def stream_lost(self, stream):
        pass

    def congested(self, stream):
        pass

    def decongested(self, stream):
        pass


def guard_side(pki, relay, limits):
    anchors = TrustAnchors(str(pki.side_ca("red")))
    facing = pki.guard_facing("red")
    fronted = TOPOLOGY.fronted_on("red")
    identity = Identity(fronted, str(facing.certificate), str(facing.key), anchors)
    side = Side(name="red", topology=TOPOLOGY, authentication="certificate",
                identities={domain: identity for domain in fronted}, anchors=anchors, routes={},
                limits=limits, dialback_secret="bench", reactor=reactor)
    side.relay = relay
    return side


def client_side(pki):
    anchors = TrustAnchors(str(pki.side_ca("red")))
    keypair = pki.red_server
    identity = Identity(RED_DOMAINS, str(keypair.certificate), str(keypair.key), anchors)
    return Side(name="red", topology=TOPOLOGY, authentication="certificate",
                identities={domain: identity for domain in RED_DOMAINS}, anchors=anchors, routes={},
                limits=Limits(), dialback_secret="bench", reactor=reactor)


def message(sender, ident, body="flood"):
    return (f"<message from='{sender}@red.example/a' to='juliet@blue.example' id='{ident}'>"
            f"<body>{body}</body></message>")


def parsed(xml):
    found = []
    StreamParser(lambda header: None, lambda element, size: found.append(element), lambda: None).feed(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        + xml.encode())
    return found[0]


async def connect(pki, port):
    owner = Owner()
    stream = OutboundStream(owner, client_side(pki), "red.example", "blue.example")
    await connectProtocol(HostnameEndpoint(reactor, "127.0.0.1", port, timeout=5), stream)
    await owner.ready
    return stream


async def run_once(pki, turn: int, seconds: float, flood_connections: int, flood_mib: float, interval: float):
    relay = CanaryRelay()
    side = guard_side(pki, relay, Limits(read_turn_bytes=turn))
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(InboundFactory(side))
    clients = []
    try:
        canary = await connect(pki, port.getHost().port)
        clients.append(canary)
        flooders = [await connect(pki, port.getHost().port) for _ in range(flood_connections)]
        clients.extend(flooders)
        one = message("flooder", "f").encode()
        flood = one * max(1, int(flood_mib * 1024 * 1024 / len(one)))
        for flooder in flooders:
            flooder.transport.write(flood)
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            canary.send(parsed(message("canary", repr(time.perf_counter()), "canary")))
            relay.canaries_sent += 1
            await task.deferLater(reactor, interval, lambda: None)
        await task.deferLater(reactor, 0.5, lambda: None)
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.abortConnection()
        for stream in list(side.inbound_streams):
            stream.transport.abortConnection()
        await port.stopListening()
        await task.deferLater(reactor, 0.2, lambda: None)
    return relay


def report(label, relay, sent_every):
    latencies = sorted(relay.latencies)
    if not latencies:
        print(f"  {label:<28} no canary arrived")
        return
    p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
    print(f"  {label:<28} canaries {len(latencies):>4}/{relay.canaries_sent:<4} median {statistics.median(latencies) * 1000:7.1f} ms"
          f"   p95 {p95 * 1000:7.1f} ms   max {latencies[-1] * 1000:7.1f} ms"
          f"   flood stanzas judged {relay.flood_stanzas}")


async def main_async(arguments):
    pki = write_lab_pki(Path(tempfile.mkdtemp(prefix="guard-bench-pki-")))
    print(f"canary every {arguments.interval * 1000:.0f} ms for {arguments.seconds:.0f} s while "
          f"{arguments.flood_connections} connections each send {arguments.flood_mib} MiB of small messages "
          f"(default rate limits)")
    for turn in [BEFORE] + arguments.turns:
        relay = await run_once(pki, turn, arguments.seconds, arguments.flood_connections, arguments.flood_mib,
                               arguments.interval)
        label = "before (whole reads)" if turn == BEFORE else f"read_turn_bytes = {turn}"
        report(label, relay, arguments.interval)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_canary.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of flooding per run (default 4, at most 20)")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between canaries (default 0.02)")
    parser.add_argument("--flood-connections", type=int, default=4, help="flooding connections (default 4)")
    parser.add_argument("--flood-mib", type=float, default=8.0, help="MiB each flooding connection writes (default 8)")
    parser.add_argument("--turns", type=lambda text: [int(part) for part in text.split(",")], default=[16384, 8192],
                        help="comma-separated read_turn_bytes values to compare with before (default 16384,8192)")
    arguments = parser.parse_args(argv)
    if not 0 < arguments.seconds <= 20 or arguments.flood_connections < 1 or arguments.flood_mib <= 0:
        parser.error("--seconds must be in (0, 20], --flood-connections >= 1, --flood-mib > 0")
    outcome = []
    done = defer.ensureDeferred(main_async(arguments))
    done.addErrback(lambda failure: outcome.append(failure))
    done.addBoth(lambda _: reactor.stop())
    reactor.run()
    if outcome:
        outcome[0].printTraceback()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
