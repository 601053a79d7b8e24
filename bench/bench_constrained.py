"""
Constrained-bearer benchmark: the same traffic over plain S2S (a standalone
guard, with the bearer simulator between it and blue's Prosody) and over the
constrained link between two gateways (compression none, zlib, dictionary),
with real Prosody servers and clients on the constrained lab's loopback
addresses (tests/integration/constrained_lab.py).

The traffic (issue 13): labelled chat messages of about 100 characters from
romeo@red.example to juliet@blue.example; a red user whose roster holds
contacts on blue coming online; a room on red with occupants on blue.  For
each setup and rate it prints:

- bytes on the bearer per labelled message, per contact coming online and
  per groupchat message (forward: red to blue; back: blue to red);
- turns (changes of direction on the bearer) and seconds before the first
  stanza after the bearer connection comes up;
- median and p95 delivery latency of labelled messages sent while the roster
  comes online;
- how long the bearer takes to drain the roster burst.

    .venv/bin/python bench/bench_constrained.py --quick     # make bench: 9,600 bit/s, small traffic, two setups
    .venv/bin/python bench/bench_constrained.py             # by hand: 1,200 and 9,600 bit/s, the issue's traffic

The seconds exclude TCP's own handshake (the simulator accepts at once): on a
real bearer every setup pays one more round trip for it.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from guard.lab.clients import ClientError, ClientLoop  # noqa: E402
from constrained_lab import ConstrainedLab  # noqa: E402

ROOM = "ops@conference.red.example"
# RESTRICTED REL BLUE under red-national: releasable by deploy/constrained/red-export.toml.
LABEL = ("<securitylabel xmlns='urn:xmpp:sec-label:0'>"
         "<displaymarking fgcolor='black' bgcolor='yellow'>RESTRICTED REL BLUE</displaymarking>"
         "<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>MRoCAQIGA4g3ATEQMA6ABIg3AQmBBgwEQkxVRQ=="
         "</esssecuritylabel></label></securitylabel>")
WORDS = ("grid", "reference", "convoy", "holding", "at", "checkpoint", "north", "of", "the", "river", "until",
         "relieved", "fuel", "state", "amber", "request", "resupply", "by", "first", "light")

PHASES = ("first", "messages", "roster", "room")
SETUPS = {
    "s2s": {"standalone": True},
    "tls-none": {"security": "tls", "compression": "none"},
    "tls-zlib": {"security": "tls", "compression": "zlib"},
    "tls-dictionary": {"security": "tls", "compression": "dictionary"},
    "bearer-dictionary": {"security": "bearer", "compression": "dictionary"},
    "bearer-none": {"security": "bearer", "compression": "none"},  # plain bytes: the marker is seen on the bearer
}


@dataclass(frozen=True)
class Traffic:
    messages: int  # labelled chat messages sent one after the other
    roster: int  # contacts on blue in the roster of the red user who comes online
    paced: int  # labelled messages sent, one every `gap` seconds, while the roster comes online
    occupants: int  # blue occupants of the room on red
    room_messages: int


FULL = Traffic(messages=200, roster=50, paced=10, occupants=10, room_messages=10)
QUICK = Traffic(messages=10, roster=10, paced=4, occupants=3, room_messages=3)


@dataclass
class Figures:
    setup: str
    rate: int
    delay: float
    first_turns: int | None = None
    first_turns_exact: int | None = None  # from the simulator's marker, where the bytes are plain
    first_seconds: float | None = None
    per_message: tuple[float, float] = (0.0, 0.0)  # bytes forward, back
    per_contact: tuple[float, float] = (0.0, 0.0)
    per_groupchat: tuple[float, float] = (0.0, 0.0)
    latencies: list[float] = field(default_factory=list)
    drain_seconds: float | None = None


def labelled(number: int, to: str = "juliet@blue.example", tag: str = "m") -> tuple[str, str]:
    """A labelled chat message of about 100 characters: (its XML, its body)."""
    words = [WORDS[(number * 7 + i) % len(WORDS)] for i in range(30)]
    body = f"{tag}{number:04d} " + " ".join(words)
    body = body[:100]
    return f"<message to='{to}' type='chat' id='{tag}{number}'><body>{body}</body>{LABEL}</message>", body


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


class Run:
    """One setup at one rate: a lab, its clients, and the phases of the traffic."""

    def __init__(self, setup: str, rate: int, delay: float, traffic: Traffic, timeout: float,
                 phases: Sequence[str] = PHASES, gateway_rate: float = 1.0):
        self.traffic = traffic
        self.phases = phases
        self.timeout = timeout
        contacts = [f"contact{n:02d}" for n in range(1, traffic.roster + 1)]
        occupants = [f"occupant{n:02d}" for n in range(1, traffic.occupants + 1)]
        self.occupants = occupants
        options = dict(SETUPS[setup])
        standalone = options.pop("standalone", False)
        self.lab = ConstrainedLab(
            None, rate=rate, delay=delay, presence="all", standalone=standalone, marker="<message",
            outage_on_signal=max(3.0, 4 * delay), prosody_log_level="warn", guard_log_level="warn",
            roster={"tybalt@red.example": {f"{c}@blue.example": "both" for c in contacts},
                    **{f"{c}@blue.example": {"tybalt@red.example": "both"} for c in contacts}},
            extra_users={"red": ("tybalt",), "blue": (*contacts, *occupants)},
            constrained_options={"rate": max(75, int(rate * gateway_rate))}, **options)
        self.standalone = standalone
        self.figures = Figures(setup, rate, delay)

    def books(self) -> dict:
        raw = self.lab.bearer_books()
        return {"forward": raw["bytes_forward"], "back": raw["bytes_back"], "raw": raw}

    def run(self) -> Figures:
        succeeded = False
        try:
            with ClientLoop() as loop:
                self.lab.start()
                with self.lab.client(loop, "romeo@red.example") as romeo, \
                        self.lab.client(loop, "juliet@blue.example") as juliet:
                    if "first" in self.phases:
                        self.first_stanza(romeo, juliet)
                    if "messages" in self.phases:
                        self.messages(romeo, juliet)
                    if "roster" in self.phases:
                        self.roster_with_messages(loop, romeo, juliet)
                    if "room" in self.phases:
                        self.room(loop, romeo)
            succeeded = True
            return self.figures
        except Exception:
            print(self.lab.log_tails(30), file=sys.stderr)
            raise
        finally:
            self.lab.stop()
            if succeeded:
                shutil.rmtree(self.lab.folder, ignore_errors=True)

    def _deliver(self, romeo, juliet, xml: str, body: str) -> float:
        """Send, wait for delivery; the wall-clock time it arrived."""
        romeo.send_xml(xml)
        received = juliet.wait_for_body("romeo@red.example", body, timeout=self.timeout)
        return time.time() - (time.perf_counter() - received.received_at)

    def first_stanza(self, romeo, juliet) -> None:
        """Seconds and turns from the bearer connection to the first stanza's delivery: the guard's first S2S
        stream, or the gateways' link reconnecting after an outage with a stanza waiting."""
        xml, body = labelled(0, tag="first")
        if not self.standalone:
            self.lab.wait_link_up("a")
            self.lab.begin_outage()
            time.sleep(0.5)
        arrived = self._deliver(romeo, juliet, xml, body)
        raw = self.books()["raw"]
        elapsed = arrived - raw["connected_at"]
        left_at = elapsed - self.figures.delay  # the stanza had left the bucket by then
        self.figures.first_seconds = elapsed
        self.figures.first_turns = sum(1 for moment in raw["turn_times"] if moment < left_at)
        self.figures.first_turns_exact = raw["turns_before_marker"]

    def messages(self, romeo, juliet) -> None:
        self._deliver(romeo, juliet, *labelled(0, tag="warm"))  # streams (S2S) and windows (zlib) set up before
        time.sleep(2 * self.figures.delay + 1.0)
        before = self.books()
        for number in range(1, self.traffic.messages + 1):
            self._deliver(romeo, juliet, *labelled(number))
        time.sleep(2 * self.figures.delay + 1.0)  # the acknowledgements of the last ones
        after = self.books()
        count = self.traffic.messages
        self.figures.per_message = ((after["forward"] - before["forward"]) / count,
                                    (after["back"] - before["back"]) / count)

    def _wait_idle(self, started: float) -> tuple[dict, float]:
        """Poll the bearer until its forward bytes stop moving (for two round trips); the books and drain time."""
        quiet = 4 * self.figures.delay + 1.0
        books = self.books()
        last_change = time.monotonic()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.books()
            if now["forward"] != books["forward"]:
                books, last_change = now, time.monotonic()
            elif time.monotonic() - last_change >= quiet:
                break
        return books, last_change - started

    def roster_with_messages(self, loop, romeo, juliet) -> None:
        """tybalt comes online (his roster: `roster` contacts on blue) while romeo sends paced labelled messages."""
        gap = max(1.0, 2 * self.figures.delay)
        # Streams up (the link's TLS handshake, the guard's S2S stream) and the bearer idle before the burst.
        self._deliver(romeo, juliet, *labelled(0, tag="warm-roster"))
        self._wait_idle(time.monotonic())
        before = self.books()
        started = time.monotonic()
        tybalt = self.lab.client(loop, "tybalt@red.example")
        sent: dict[str, float] = {}
        tybalt.connect(timeout=self.timeout)
        try:
            bodies = []
            for number in range(self.traffic.paced):
                xml, body = labelled(number, tag="paced")
                sent[body] = time.perf_counter()
                romeo.send_xml(xml)
                bodies.append(body)
                time.sleep(gap)
            for body in bodies:
                received = juliet.wait_for_body("romeo@red.example", body, timeout=self.timeout)
                self.figures.latencies.append(received.received_at - sent[body])
            after, drained = self._wait_idle(started)
        finally:
            tybalt.disconnect()
        self.figures.drain_seconds = drained
        message_forward, message_back = self.figures.per_message
        count = self.traffic.roster
        self.figures.per_contact = (
            (after["forward"] - before["forward"] - self.traffic.paced * message_forward) / count,
            (after["back"] - before["back"] - self.traffic.paced * message_back) / count)

    def room(self, loop, romeo) -> None:
        romeo.join_room(ROOM, "romeo", timeout=self.timeout)
        clients = []
        try:
            for name in self.occupants:
                client = self.lab.client(loop, f"{name}@blue.example").connect(timeout=self.timeout)
                clients.append(client)
                client.join_room(ROOM, name, timeout=self.timeout)
            time.sleep(2 * self.figures.delay + 1.0)
            before = self.books()
            for number in range(self.traffic.room_messages):
                body = f"room {number:03d} " + " ".join(WORDS[(number + i) % len(WORDS)] for i in range(14))
                romeo.send_xml(f"<message to='{ROOM}' type='groupchat' id='g{number}'><body>{body}</body></message>")
                for client in clients:
                    client.wait_for_groupchat(ROOM, "romeo", body, timeout=self.timeout)
            time.sleep(2 * self.figures.delay + 1.0)
            after = self.books()
        finally:
            for client in clients:
                client.disconnect()
        count = self.traffic.room_messages
        self.figures.per_groupchat = ((after["forward"] - before["forward"]) / count,
                                      (after["back"] - before["back"]) / count)


def report(figures: Figures, traffic: Traffic, baseline: Figures | None, phases: Sequence[str]) -> None:
    print(f"== {figures.setup} at {figures.rate} bit/s, {figures.delay:g} s one way ==")
    if "first" in phases:
        exact = "" if figures.first_turns_exact is None else f" (marker seen after {figures.first_turns_exact})"
        print(f"  first stanza            {figures.first_seconds:.2f} s after the bearer connection, "
              f"{figures.first_turns} turns{exact}")
    if "messages" in phases:
        forward, back = figures.per_message
        ratio = f"   {forward / baseline.per_message[0]:.2f} x s2s" if baseline and baseline.per_message[0] else ""
        print(f"  per labelled message    {forward:.0f} bytes forward, {back:.0f} back{ratio}")
    if "roster" in phases:
        forward, back = figures.per_contact
        paced = "" if "messages" in phases else f"; with the {traffic.paced} paced messages"
        print(f"  per contact online      {forward:.0f} bytes forward, {back:.0f} back ({traffic.roster} contacts{paced})")
        print(f"  latency under roster    median {statistics.median(figures.latencies):.2f} s, "
              f"p95 {_percentile(figures.latencies, 0.95):.2f} s, max {max(figures.latencies):.2f} s "
              f"({len(figures.latencies)} labelled messages)")
        print(f"  roster burst drained    {figures.drain_seconds:.1f} s")
    if "room" in phases:
        forward, back = figures.per_groupchat
        print(f"  per groupchat message   {forward:.0f} bytes forward, {back:.0f} back "
              f"({traffic.occupants} occupants behind the bearer; {forward / traffic.occupants:.0f} per occupant)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_constrained.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="make bench's form: 9,600 bit/s, 0.25 s, small traffic, s2s and tls-dictionary")
    parser.add_argument("--setups", default=None, help=f"comma-separated: {', '.join(SETUPS)}")
    parser.add_argument("--rates", default=None, help="comma-separated bit/s (default 1200,9600)")
    parser.add_argument("--delay", type=float, default=None, help="one-way delay in seconds (default 1.0)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for one delivery")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated, in this order: {', '.join(PHASES)} (default all)")
    parser.add_argument("--gateway-rate", type=float, default=1.0, metavar="FRACTION",
                        help="the gateways' [link.constrained] rate as a fraction of the bearer's (default 1.0)")
    parser.add_argument("--messages", type=int, default=None, help="labelled messages (default 200; quick 10)")
    parser.add_argument("--roster", type=int, default=None, help="contacts coming online (default 50; quick 10)")
    parser.add_argument("--occupants", type=int, default=None, help="room occupants on blue (default 10; quick 3)")
    arguments = parser.parse_args(argv)
    traffic = QUICK if arguments.quick else FULL
    traffic = replace(traffic, **{name: value for name in ("messages", "roster", "occupants")
                                  if (value := getattr(arguments, name)) is not None})
    setups = (arguments.setups or ("s2s,tls-dictionary" if arguments.quick else ",".join(SETUPS))).split(",")
    rates = [int(rate) for rate in (arguments.rates or ("9600" if arguments.quick else "1200,9600")).split(",")]
    delay = arguments.delay if arguments.delay is not None else (0.25 if arguments.quick else 1.0)
    unknown = [setup for setup in setups if setup not in SETUPS]
    if unknown:
        parser.error(f"unknown setups: {', '.join(unknown)}")
    phases = arguments.phases.split(",")
    if any(phase not in PHASES for phase in phases):
        parser.error(f"phases are among {', '.join(PHASES)}")
    print(f"traffic: {traffic.messages} labelled messages one after the other; a roster of {traffic.roster} "
          f"coming online with {traffic.paced} labelled messages paced; a room with {traffic.occupants} "
          f"occupants behind the bearer, {traffic.room_messages} messages")
    for rate in rates:
        timeout = arguments.timeout or max(60.0, 400_000 / rate)
        baseline = None
        for setup in setups:
            started = time.monotonic()
            try:
                figures = Run(setup, rate, delay, traffic, timeout, phases, arguments.gateway_rate).run()
            except ClientError as failure:
                # A figure too: plain S2S at the slowest rates may not set up within the timeout at all.
                print(f"== {setup} at {rate} bit/s, {delay:g} s one way ==\n"
                      f"  nothing delivered within {timeout:.0f} s ({str(failure).splitlines()[0]})")
                print(f"  (run took {time.monotonic() - started:.0f} s)", flush=True)
                continue
            report(figures, traffic, baseline, phases)
            print(f"  (run took {time.monotonic() - started:.0f} s)", flush=True)
            if setup == "s2s":
                baseline = figures
    return 0


if __name__ == "__main__":
    sys.exit(main())
