"""
How many stanzas per second the stream parser and the serialiser handle.

Run from the project root:

    .venv/bin/python bench/bench_parser.py [--seconds 2]

The stanza is a realistic chat message of about 300 bytes; parsing feeds one
stanza per feed() call (as one TCP read each), serialising writes the parsed
element back.  No network, no reactor.  Each rate is the best of five runs,
since other processes on the machine only ever make a run slower; the rate of
bare expat with empty callbacks is printed as the floor we build on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guard.edges.xmlstream import StreamParser, serialise  # noqa: E402

HEADER = (
    b"<?xml version='1.0'?>"
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' to='blue.example' from='red.example' version='1.0'>"
)

CHAT_MESSAGE = (
    b"<message from='romeo@red.example/orchard-7f3a' to='juliet@blue.example' type='chat'"
    b" id='a4f1c2d3-5e6f-4a7b-8c9d-0e1f2a3b4c5d' xml:lang='en'>"
    b"<body>But soft, what light through yonder window breaks? It is the east &amp; Juliet.</body>"
    b"<active xmlns='http://jabber.org/protocol/chatstates'/>"
    b"<request xmlns='urn:xmpp:receipts'/>"
    b"</message>"
)


def bench_parse(seconds: float) -> tuple[float, object]:
    """Stanzas per second through StreamParser.feed, one stanza per feed."""
    received = []
    parser = StreamParser(lambda header: None, lambda element, size: received.append(element), lambda: None)
    parser.feed(HEADER)
    count = 0
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            parser.feed(CHAT_MESSAGE)
        count += 1000
        received.clear()
    elapsed = time.perf_counter() - began
    parser.feed(CHAT_MESSAGE)
    return count / elapsed, received[-1]


def bench_serialise(seconds: float, element, max_bytes: int | None = None) -> float:
    """Stanzas per second through serialise (with the far side's bound, as the streams call it)."""
    count = 0
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            serialise(element, "jabber:server", max_bytes)
        count += 1000
    return count / (time.perf_counter() - began)


def hostile_serialisation() -> tuple[int, int, float]:
    """Wire bytes, serialised bytes and seconds for 4999 <p:y/> under a 16 KB namespace name (issue 8.7)."""
    uri = b"urn:" + b"u" * (16 * 1024 - 4)
    wire = b"<message><x xmlns:p='" + uri + b"'>" + b"<p:y/>" * 4999 + b"</x></message>"
    received = []
    StreamParser(lambda header: None, lambda element, size: received.append(element), lambda: None).feed(HEADER + wire)
    began = time.perf_counter()
    text = serialise(received[0])
    return len(wire), len(text.encode("utf-8")), time.perf_counter() - began


def bench_bare_expat(seconds: float) -> float:
    """Stanzas per second through pyexpat with callbacks that do nothing: the floor."""
    import pyexpat

    expat = pyexpat.ParserCreate(encoding="UTF-8", namespace_separator=" ")
    expat.buffer_text = True

    def nothing(*_arguments):
        return None

    expat.StartElementHandler = expat.EndElementHandler = nothing
    expat.CharacterDataHandler = expat.StartNamespaceDeclHandler = nothing
    expat.Parse(HEADER, False)
    count = 0
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            expat.Parse(CHAT_MESSAGE, False)
        count += 1000
    return count / (time.perf_counter() - began)


def best(measure, runs: int = 5) -> float:
    return max(measure() for _ in range(runs))


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    arguments.add_argument("--seconds", type=float, default=2.0, help="time per measurement (split over five runs)")
    options = arguments.parse_args()
    seconds = options.seconds / 5
    _, element = bench_parse(0.01)
    parse_rate = best(lambda: bench_parse(seconds)[0])
    serialise_rate = best(lambda: bench_serialise(seconds, element))
    bounded_rate = best(lambda: bench_serialise(seconds, element, 512 * 1024))
    floor = best(lambda: bench_bare_expat(seconds))
    print(f"stanza: {len(CHAT_MESSAGE)} bytes")
    print(f"parse:      {parse_rate:10.0f} stanzas/s  ({parse_rate * len(CHAT_MESSAGE) / 1e6:.1f} MB/s)")
    print(f"serialise:  {serialise_rate:10.0f} stanzas/s")
    print(f"  bounded:  {bounded_rate:10.0f} stanzas/s  (max_bytes=512 KiB, as the streams call it)")
    print(f"bare expat: {floor:10.0f} stanzas/s  (empty callbacks, for comparison)")
    wire, out, spent = hostile_serialisation()
    print(f"hostile:    {wire} bytes serialise to {out} bytes ({out / wire:.2f}x) in {spent * 1000:.1f} ms")


if __name__ == "__main__":
    main()
