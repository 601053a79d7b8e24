"""
How many stanzas per second the stream parser and the serialiser handle.

Run from the project root:

    .venv/bin/python bench/bench_parser.py [--seconds 2]

The stanza is a realistic chat message of about 300 bytes; parsing feeds one
stanza per feed() call (as one TCP read each), serialising writes the parsed
element back.  No network, no reactor.
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


def bench_serialise(seconds: float, element) -> float:
    """Stanzas per second through serialise."""
    count = 0
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            serialise(element)
        count += 1000
    return count / (time.perf_counter() - began)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    arguments.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    options = arguments.parse_args()
    parse_rate, element = bench_parse(options.seconds)
    serialise_rate = bench_serialise(options.seconds, element)
    print(f"stanza: {len(CHAT_MESSAGE)} bytes")
    print(f"parse:     {parse_rate:10.0f} stanzas/s  ({parse_rate * len(CHAT_MESSAGE) / 1e6:.1f} MB/s)")
    print(f"serialise: {serialise_rate:10.0f} stanzas/s")


if __name__ == "__main__":
    main()
