"""
The guard's own CPU per stanza, in one process: bytes of N stanzas fed to a
real InboundStream (red side, authenticated by dialback) over a
StringTransport (with ``--tls-out`` every write to the sink is encrypted as a
TLS record, as the guard pays for it), judged by a real Relay with a real policy, settled, carried
by the real S2SCarrier to a real OutboundStream (blue side, authenticated by
SASL EXTERNAL with the lab PKI's certificates) over a StringTransport.  TLS is
off (the transports only record startTLS); everything else is what the
service runs: filters, fair read turns, parser limits, addressing, policy,
settlement, books, serialiser.

Run from the project root:

    .venv/bin/python bench/bench_pipeline.py [--stanzas 20000] [--rounds 3] [--policy allow-all|high-to-low]
        [--tls-out]

Each read hands the inbound stream ``--read-bytes`` of stanzas (as a TCP read
would), then lets the event loop turn until everything was parsed and
written; what was written is checked for count once and thrown away.  Prints
stanzas per second and CPU microseconds per stanza (process time) for each
round, then the median and the spread.  No network, no reactor: a figure of
the guard's code alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from OpenSSL import SSL  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import MemoryReactorClock, StringTransport  # noqa: E402

from guard.core.books import Books  # noqa: E402
from guard.core.pipeline import Direction  # noqa: E402
from guard.core.policy import load_policy  # noqa: E402
from guard.edges.limits import Limits  # noqa: E402
from guard.edges.relay import PolicyTable, Relay  # noqa: E402
from guard.edges.s2s.inbound import InboundStream  # noqa: E402
from guard.edges.s2s.outbound import OutboundStream  # noqa: E402
from guard.edges.tlsidentity import load_pem_chain  # noqa: E402
from guard.lab.inmemory import PresentedChain  # noqa: E402
from tests.unit.streams.sides import RecordingRelay, make_side, pki  # noqa: E402

MAX_TURNS = 1_000_000  # a bound on every loop that turns the event loop

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='red.example' to='blue.example' version='1.0'>"
)
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
DIALBACK = b"<db:result from='red.example' to='blue.example'>" + b"k" * 64 + b"</db:result>"

FAR_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='blue.example' to='red.example' id='s1' version='1.0'>"
)
FAR_REPLIES = (
    FAR_HEADER + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>",
    b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    FAR_HEADER + b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                 b"<mechanism>EXTERNAL</mechanism></mechanisms></stream:features>",
    b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
    FAR_HEADER + b"<stream:features/>",
)

# A labelled message of about 400 bytes that high-to-low releases (RESTRICTED REL BLUE), as the firehose sends.
MESSAGE = (
    "<message from='alice@red.example/pc' to='bob@blue.example' id='m{n:08d}' type='chat'>"
    "<body>meet at noon by the north gate; bring the maps and the spare radio batteries</body>"
    "<securitylabel xmlns='urn:xmpp:sec-label:0'>"
    "<displaymarking fgcolor='black' bgcolor='yellow'>RESTRICTED REL BLUE</displaymarking>"
    "<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>MRoCAQIGA4g3ATEQMA6ABIg3AQmBBgwEQkxVRQ=="
    "</esssecuritylabel></label></securitylabel></message>"
)

POLICIES = {"allow-all": ROOT / "policies" / "allow-all.toml", "high-to-low": ROOT / "policies" / "high-to-low.toml"}


class RecordingTLSTransport(StringTransport):
    """Records startTLS instead of doing it; presents ``presents`` (a chain) as the handshake would."""

    def __init__(self, presents=None, peer=None):
        super().__init__(peerAddress=peer)
        self.presents = presents

    def startTLS(self, options):
        pass

    def getHandle(self):
        return self.presents


class EncryptingTransport(RecordingTLSTransport):
    """
    Encrypts every write as a TLS connection does (one record per write, a
    session handshaked in memory beforehand) and keeps the plaintext: the
    guard's cost of TLS out, without a socket.
    """

    def __init__(self, presents=None, peer=None):
        super().__init__(presents, peer)
        self.session = tls_session()
        self.encrypted = 0

    def write(self, data):
        self.session.send(data)
        self.encrypted += len(self.session.bio_read(1 << 20))
        super().write(data)


def tls_session():
    """The client end of a TLS session handshaked in memory with the lab's blue server certificate."""
    server_context = SSL.Context(SSL.TLS_METHOD)
    server_context.use_certificate_file(str(pki().blue_server.certificate))
    server_context.use_privatekey_file(str(pki().blue_server.key))
    server, client = SSL.Connection(server_context, None), SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    server.set_accept_state()
    client.set_connect_state()
    done = set()
    for _ in range(50):
        for source, target in ((client, server), (server, client)):
            try:
                target.bio_write(source.bio_read(1 << 20))
            except SSL.WantReadError:
                pass
        for end in (client, server):
            try:
                end.do_handshake()
                done.add(id(end))
            except SSL.WantReadError:
                pass
        if len(done) == 2:
            return client
    raise SystemExit("the in-memory TLS handshake did not finish")


class Pipeline:
    """One inbound stream on red, the relay, and the outbound stream it opens on blue."""

    def __init__(self, policy_name, tls=False):
        self.transport_kind = EncryptingTransport if tls else RecordingTLSTransport
        self.clock = MemoryReactorClock()
        limits = Limits(rate_bytes_per_second=1 << 40, rate_burst_bytes=1 << 40,
                        outbound_queue=1_000_000, outbound_queue_bytes=1 << 40, memory_budget_bytes=1 << 40)
        red = make_side("red", self.clock, authentication="dialback", limits=limits,
                        relay=RecordingRelay({("red.example", "blue.example"): True}))
        blue = make_side("blue", self.clock, limits=limits, routes={"blue.example": "tcp:host=127.0.2.1:port=5269"},
                         presents_for=("red.example", "conference.red.example"))
        policy = load_policy(POLICIES[policy_name])
        policies = PolicyTable({Direction("red", "blue"): policy, Direction("blue", "red"): policy})
        self.books = Books()
        self.relay = Relay(red.topology, policies, self.books, None, self.clock, open_stream=self._open_stream)
        self.relay.add_side(red)
        self.relay.add_side(blue)
        self.outbound_transport = None
        self.inbound = InboundStream(red)
        self.inbound_transport = RecordingTLSTransport(peer=IPv4Address("TCP", "127.0.1.1", 40000))
        self.inbound.makeConnection(self.inbound_transport)
        for data in (HEADER + STARTTLS, HEADER, DIALBACK):
            self.inbound.dataReceived(data)
            self.turns()
        assert self.inbound.authenticated_pairs == {("red.example", "blue.example")}

    def _open_stream(self, owner, side, sender, receiver, route, purpose="relay"):
        stream = OutboundStream(owner, side, sender, receiver, purpose=purpose)
        presented = PresentedChain(load_pem_chain(str(pki().blue_server.certificate)))
        self.outbound_transport = self.transport_kind(presents=presented)
        self.outbound = stream
        stream.makeConnection(self.outbound_transport)
        self.clock.callLater(0, self._answer_as_far_server, stream)
        return stream

    def _answer_as_far_server(self, stream):
        for reply in FAR_REPLIES:
            stream.dataReceived(reply)

    def turns(self):
        for _ in range(MAX_TURNS):
            if not self.clock.getDelayedCalls() or all(call.getTime() > self.clock.seconds()
                                                      for call in self.clock.getDelayedCalls()):
                return
            self.clock.advance(0)

    def pump(self, reads):
        """Hand each read to the inbound stream and turn the loop until it is parsed; the bytes written out."""
        written = 0
        for data in reads:
            self.inbound.dataReceived(data)
            self.turns()
            written += len(self.outbound_transport.io.getvalue())
            self.outbound_transport.clear()
        return written


def reads_of(count, read_bytes, first=0):
    """``count`` messages cut into reads of about ``read_bytes`` each (a read ends with a whole stanza)."""
    reads, piece = [], []
    size = 0
    for n in range(first, first + count):
        stanza = MESSAGE.format(n=n).encode()
        piece.append(stanza)
        size += len(stanza)
        if size >= read_bytes:
            reads.append(b"".join(piece))
            piece, size = [], 0
    if piece:
        reads.append(b"".join(piece))
    return reads


def one_round(policy_name, stanzas, read_bytes, tls=False):
    pipeline = Pipeline(policy_name, tls)
    pipeline.pump(reads_of(200, read_bytes))  # the outbound stream is opened and warm
    passed_before = pipeline.books.summary()
    reads = reads_of(stanzas, read_bytes, first=200)
    cpu, wall = time.process_time(), time.perf_counter()
    written = pipeline.pump(reads)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    delivered = pipeline.outbound.stanzas_out - 200
    if delivered != stanzas:
        raise SystemExit(f"only {delivered} of {stanzas} stanzas left the guard ({passed_before})")
    return stanzas / wall, cpu / stanzas * 1e6, written / stanzas


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stanzas", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--read-bytes", type=int, default=16 * 1024)
    parser.add_argument("--policy", choices=sorted(POLICIES), default="allow-all")
    parser.add_argument("--tls-out", action="store_true",
                        help="encrypt what the guard writes to the sink as TLS would (one record per write)")
    arguments = parser.parse_args()
    rates, costs = [], []
    for _ in range(arguments.rounds):
        rate, cost, out = one_round(arguments.policy, arguments.stanzas, arguments.read_bytes,
                                     arguments.tls_out)
        rates.append(rate)
        costs.append(cost)
        print(f"{arguments.policy}: {rate:,.0f} stanzas/s, {cost:.1f} us CPU per stanza, {out:.0f} bytes out each")
    print(f"{arguments.policy} median: {statistics.median(rates):,.0f} stanzas/s "
          f"(range {min(rates):,.0f}-{max(rates):,.0f}), {statistics.median(costs):.1f} us CPU per stanza "
          f"(range {min(costs):.1f}-{max(costs):.1f})")


if __name__ == "__main__":
    main()
