"""
Soak benchmark: the guard (certificate authentication) between the lab's real
Prosody servers for a long while, under churn, mixed traffic and some hostile
input, watching its resident memory and its books.

Every round (a few seconds):
- clients come and go: Romeo and Juliet reconnect every few rounds;
- raw server peers connect to the guard, authenticate as red.example with
  red's certificate, send a few good stanzas and leave;
- mixed traffic: a windowed blast Romeo -> Juliet, messages back, pings to
  the far server, messages to users that do not exist (bounced by blue), and
  messages with two security labels (bounced by the guard's policy layer);
- hostile input: raw peers send a DOCTYPE, a billion-laughs header, invalid
  UTF-8, a stanza with a spoofed from, deep nesting... and are refused.

It prints the guard's resident memory and books over time, stanzas per
second (accepted by the guard), and at the end whether the books balance
(accepted = delivered + bounced + dropped, nothing in flight).

    .venv/bin/python bench/bench_soak.py [--seconds 600] [--blast 200]
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guard.lab.clients import ClientLoop, blast  # noqa: E402
from guard.lab.topology import Lab, Mode  # noqa: E402
from tests.integration.hostile import HostilePeer, header  # noqa: E402

ROMEO = "romeo@red.example"
JULIET = "juliet@blue.example"
HEADER_BODY = header()[len(b"<?xml version='1.0'?>"):]
TWO_LABELS = ("<securitylabel xmlns='urn:xmpp:sec-label:0'><label/></securitylabel>"
              "<securitylabel xmlns='urn:xmpp:sec-label:0'><label/></securitylabel>")


def hostile_message(text: str, extra: str = "", sender: str = "mallory@red.example/x") -> bytes:
    return f"<message from='{sender}' to='{JULIET}' type='chat'><body>{text}</body>{extra}</message>".encode()


# (name, whether the peer authenticates first, bytes)
HOSTILE_INPUTS = [
    ("doctype", False, b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY a 'b'>]>" + HEADER_BODY),
    ("billion-laughs", False, b"<?xml version='1.0'?><!DOCTYPE l [<!ENTITY l 'lol'><!ENTITY l2 '&l;&l;&l;&l;'>]>"
                              + HEADER_BODY + hostile_message("&l2;")),
    ("utf-16", False, HEADER_BODY.decode().encode("utf-16")),
    ("invalid-utf-8", True, hostile_message("bad \xc0\xaf").replace(b"\xc3\x80\xc2\xaf", b"\xc0\xaf")),
    ("spoofed-from", True, hostile_message("spoof", sender="eve@blue.example")),
    ("hairpin", True, hostile_message("loop").replace(JULIET.encode(), b"mercutio@red.example")),
    ("deep-nesting", True, hostile_message("deep", "<a>" * 80 + "</a>" * 80)),
    ("huge-attribute", True, hostile_message("attr").replace(b"<message ", b"<message x='" + b"v" * 40_000 + b"' ")),
    ("processing-instruction", True, hostile_message("pi", "<?evil?>")),
    ("nested-stream", True, HEADER_BODY),
]


class Soak:
    def __init__(self, lab: Lab, loop: ClientLoop, blast_size: int, rng: random.Random):
        self.lab, self.loop, self.blast_size, self.rng = lab, loop, blast_size, rng
        self.romeo = lab.client(loop, ROMEO).connect()
        self.juliet = lab.client(loop, JULIET).connect()
        self.sent = self.received = self.refused = self.reconnects = self.raw_peers = 0
        self.refusals: dict[str, int] = {}

    def close(self) -> None:
        for client in (self.romeo, self.juliet):
            client.disconnect()

    def churn_clients(self) -> None:
        which = self.rng.choice(["romeo", "juliet"])
        client = getattr(self, which)
        client.disconnect()
        setattr(self, which, self.lab.client(self.loop, ROMEO if which == "romeo" else JULIET).connect())
        self.reconnects += 1

    def mixed_traffic(self) -> None:
        result = blast(self.romeo, self.juliet, self.blast_size, window=50, timeout=60)
        self.sent += result.sent
        self.received += result.received
        for _ in range(5):
            self.juliet.send_xml(f"<message to='{ROMEO}' type='chat'><body>back {uuid.uuid4().hex[:6]}</body></message>")
            self.romeo.send_xml("<message to='nobody@blue.example' type='chat'><body>anyone?</body></message>")
            self.romeo.send_xml(f"<message to='{JULIET}' type='chat'><body>labels</body>{TWO_LABELS}</message>")
        self.romeo.ping("blue.example")
        self.juliet.ping("red.example")
        self.romeo.send_xml(f"<presence to='{JULIET}' type='subscribe'/>")

    def good_raw_peer(self) -> None:
        with HostilePeer(source=f"127.0.9.{self.rng.randint(1, 200)}") as peer:
            peer.authenticate(self.lab.pki)
            for _ in range(3):
                peer.send(hostile_message(f"raw {uuid.uuid4().hex[:6]}", sender=f"{ROMEO}/raw"))
            peer.send(b"</stream:stream>")
            peer.wait_closed(5)
        self.raw_peers += 1

    def hostile_raw_peer(self) -> None:
        name, authenticate, data = self.rng.choice(HOSTILE_INPUTS)
        with HostilePeer(source=f"127.0.9.{self.rng.randint(1, 200)}") as peer:
            if authenticate:
                peer.authenticate(self.lab.pki)
            peer.try_send(data)
            condition = peer.stream_error(timeout=10) or "closed-without-error"
        self.refused += 1
        self.refusals[f"{name}:{condition}"] = self.refusals.get(f"{name}:{condition}", 0) + 1


def settle(lab: Lab, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        books = lab.guard_books()
        if books["in_flight"] == 0 or time.monotonic() > deadline:
            return books
        time.sleep(0.5)


def run(seconds: float, blast_size: int, seed: int, report_every: float = 10.0) -> int:
    lab = Lab(Mode.GUARD, "certificate", prosody_log_level="warn", guard_log_level="warn",
              limits={"auth_timeout": 10.0})
    rng = random.Random(seed)
    samples = []
    failed = True
    try:
        with ClientLoop() as loop:
            lab.start()
            soak = Soak(lab, loop, blast_size, rng)
            try:
                started = time.monotonic()
                first = lab.guard_books()
                samples.append((0.0, lab.guard_resident_kib(), first))
                print(f"{'seconds':>8} {'rss KiB':>9} {'accepted':>9} {'delivered':>9} {'bounced':>8} {'dropped':>8}"
                      f" {'in flight':>9} {'stanzas/s':>9}", flush=True)
                rounds = 0
                while time.monotonic() - started < seconds:
                    rounds += 1
                    soak.mixed_traffic()
                    soak.good_raw_peer()
                    for _ in range(2):
                        soak.hostile_raw_peer()
                    if rounds % 4 == 0:
                        soak.churn_clients()
                    now = time.monotonic() - started
                    if now - samples[-1][0] < report_every and now < seconds:
                        continue
                    books = lab.guard_books()
                    previous_time, _, previous_books = samples[-1]
                    rate = (books["accepted"] - previous_books["accepted"]) / max(0.001, now - previous_time)
                    samples.append((now, lab.guard_resident_kib(), books))
                    print(f"{now:8.1f} {samples[-1][1]:9d} {books['accepted']:9d} {books['delivered']:9d}"
                          f" {books['bounced']:8d} {books['dropped']:8d} {books['in_flight']:9d} {rate:9.1f}", flush=True)
            finally:
                soak.close()
            books = settle(lab)
            elapsed = time.monotonic() - started
            resident = [sample[1] for sample in samples]
            balanced = books["in_flight"] == 0 and books["accepted"] == (
                books["delivered"] + books["bounced"] + books["dropped"])
            print()
            print(f"rounds: {rounds} in {elapsed:.0f} s; client reconnects {soak.reconnects}, good raw peers "
                  f"{soak.raw_peers}, hostile raw peers {soak.refused}")
            print(f"blast: {soak.received}/{soak.sent} messages arrived")
            print(f"stanzas accepted by the guard: {books['accepted']} ({books['accepted'] / elapsed:.1f}/s)")
            print(f"resident memory KiB: at start {resident[0]}, at the first report {resident[min(1, len(resident) - 1)]}, "
                  f"max {max(resident)}, last {resident[-1]}")
            print(f"refusals: {dict(sorted(soak.refusals.items()))}")
            print(f"books: {books}")
            print(f"books balance: {'yes' if balanced else 'NO'}")
            failed = not balanced or soak.received != soak.sent
            return 1 if failed else 0
    except Exception:
        print(lab.log_tails(30), file=sys.stderr)
        raise
    finally:
        lab.stop()
        if not failed:
            shutil.rmtree(lab.folder, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_soak.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to soak (default 600)")
    parser.add_argument("--blast", type=int, default=200, help="messages per blast each round (default 200)")
    parser.add_argument("--seed", type=int, default=4, help="random seed for the choices (default 4)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between reports (default 10)")
    arguments = parser.parse_args(argv)
    # slixmpp leaves a filter task pending on each disconnect; asyncio's complaint about it is noise here.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    return run(arguments.seconds, arguments.blast, arguments.seed, arguments.every)


if __name__ == "__main__":
    raise SystemExit(main())
