"""
Firehose benchmark: the guard alone, between a raw S2S blaster and a raw S2S
sink (no Prosody), on loopback with TLS and SASL EXTERNAL (the lab's PKI).

The blaster authenticates as red.example (red's server certificate) and
sends 400-byte labelled messages romeo@red.example -> juliet@blue.example as
fast as the guard reads them; the sink stands as blue.example at blue's
address and counts what arrives.  The guard runs as a real process from a
generated configuration: the per-connection rate and the outbound queue are
raised so that the guard, not a limit, is measured; every other limit is the
shipped default.  Modes:

- ``straight``: the blaster straight into the sink (no guard), for comparison;
- ``allow-all``: through the guard with policies/allow-all.toml;
- ``high-to-low``: through the guard with policies/high-to-low.toml (the
  messages are releasable: they leave folded, without their chat state).

After a warm-up (which opens the guard's outbound stream) it times the
blast from the blaster's first byte to the sink's last message and prints
msg/s, the guard's CPU per stanza (from /proc, in clock ticks: time enough
messages), its resident memory, and the CPU the blaster and the sink took
(their own process time: the blaster's message bytes are built before the
clock starts, so it pays for TLS and writing only); then checks that the sink received every
message, in order, and exactly what the policy lets out.

    .venv/bin/python bench/bench_firehose.py [--modes straight,allow-all,high-to-low]
        [--messages 20000] [--warm-up 500] [--rounds 1] [--timeout 60] [--audit] [--pairs 1]

``--pairs N`` (up to 4; 2 for high-to-low) blasts N domain pairs at once
(red.example and conference.red.example to blue.example and
conference.blue.example), each its own stream and blaster process, sharing
``--messages``; the sink checks each pair's stream on its own.

GUARD_PROFILE=FILE runs the guard under cProfile (as the lab does).  Exit
status 1 when a run failed or a check did not hold.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guard.edges.limits import Limits  # noqa: E402
from guard.lab.pki import LabPki, write_lab_pki  # noqa: E402
from guard.lab.prosody import LabError, cpu_seconds, resident_kib, stop_process, tail, wait_for_ports  # noqa: E402
from guard.lab.raws2s import MessageCounter, accept_server_stream, server_context  # noqa: E402
from guard.lab.topology import (  # noqa: E402
    BLUE_ADDRESS, GUARD_BLUE_FACING, GUARD_RED_FACING, LAB_LIMITS, S2S_PORT, LabLock, ensure_free,
    render_guard_config,
)
from tests.integration.hostile import HostilePeer  # noqa: E402

MODES = ("straight", "allow-all", "high-to-low")
POLICIES = {
    "allow-all": ROOT / "policies" / "allow-all.toml",
    # red -> blue (the blast) under high-to-low; blue -> red (nothing in this bench) under low-to-high.
    "high-to-low": {"red": ROOT / "policies" / "high-to-low.toml", "blue": ROOT / "policies" / "low-to-high.toml"},
}
MESSAGE_BYTES = 400
SENDER = "romeo@red.example/firehose"
RECEIVER = "juliet@blue.example"
# The (from, to) domain pairs of --pairs N, in this order; the lab's certificates name all four domains.
# high-to-low releases the label only to blue.example: it takes the first two.
PAIRS = (("red.example", "blue.example"), ("conference.red.example", "blue.example"),
         ("red.example", "conference.blue.example"), ("conference.red.example", "conference.blue.example"))
MOST_PAIRS = {"straight": 4, "allow-all": 4, "high-to-low": 2}
CHAT_STATE = "<active xmlns='http://jabber.org/protocol/chatstates'/>"
ESS_LABEL = ("<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>MRoCAQIGA4g3ATEQMA6ABIg3AQmBBgwEQkxVRQ=="
             "</esssecuritylabel></label>")  # red-national RESTRICTED, REL-BLUE
LABEL = f"<securitylabel xmlns='urn:xmpp:sec-label:0'>{ESS_LABEL}</securitylabel>"
# The label as high-to-low encodes it again: with the display marking of its policy.
LABEL_RELEASED = ("<securitylabel xmlns='urn:xmpp:sec-label:0'>"
                  "<displaymarking fgcolor='black' bgcolor='yellow'>RESTRICTED REL BLUE</displaymarking>"
                  f"{ESS_LABEL}</securitylabel>")
STREAM_OPEN = "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>"
RAISED_LIMITS = {
    # So that the guard, not a limit, is measured: one connection may send as fast as it can ...
    "rate_bytes_per_second": 1024 ** 3,
    "rate_burst_bytes": 1024 ** 3,
    # ... and nothing is bounced while the outbound stream is being set up.
    "outbound_queue": 1_000_000,
    "outbound_queue_bytes": 1024 ** 3,
}


def message(sequence: int, pair: int = 0) -> str:
    """The ``sequence``-th message of a blast on the ``pair``-th domain pair: exactly MESSAGE_BYTES bytes,
    labelled RESTRICTED REL BLUE, with a chat state (which high-to-low's folding leaves behind)."""
    sender, receiver = SENDER, RECEIVER
    if pair:
        sender = sender.replace("@red.example", "@" + PAIRS[pair][0])
        receiver = receiver.replace("@blue.example", "@" + PAIRS[pair][1])
    head = f"<message from='{sender}' to='{receiver}' type='chat' id='fh-{sequence:07d}'><body>firehose {sequence:07d} "
    tail_ = f"</body>{CHAT_STATE}{LABEL}</message>"
    padding = MESSAGE_BYTES - len(head) - len(tail_)
    if padding < 0:
        raise ValueError("MESSAGE_BYTES is too small for the message's envelope")
    return head + ("x" * padding) + tail_


def shipped_limits(raised: dict[str, int | float] = RAISED_LIMITS) -> dict[str, int | float]:
    """The [limits] of a bench's guard: the shipped defaults, but ``raised`` (by default the rate and the queue)."""
    shipped = Limits()
    chosen: dict[str, int | float] = {name: getattr(shipped, name) for name in LAB_LIMITS}
    chosen.update(raised)
    return chosen


# -- what the sink should receive ----------------------------------------------


def _shape(element: ElementTree.Element) -> tuple:
    return (element.tag, tuple(sorted(element.attrib.items())), (element.text or "").strip(),
            tuple(_shape(child) for child in element), (element.tail or "").strip())


def expected_shape(mode: str, sequence: int, pair: int = 0) -> tuple:
    """What the sink should receive for the ``sequence``-th message: as sent, or folded by high-to-low."""
    text = message(sequence, pair)
    if mode == "high-to-low":  # message-plain keeps body, subject, thread and the label the guard encodes
        text = text.replace(CHAT_STATE, "").replace(LABEL, LABEL_RELEASED)
    return _shape(ElementTree.fromstring(f"{STREAM_OPEN}{text}</stream:stream>")[0])


def check_received(mode: str, received: bytes, count: int, pair: int = 0) -> list[str]:
    """Problems with what the sink received (every message, in order, as the policy lets it out)."""
    try:
        root = ElementTree.fromstring(STREAM_OPEN.encode() + received + b"</stream:stream>")
    except ElementTree.ParseError as error:
        return [f"the sink's bytes do not parse: {error}"]
    stanzas = list(root)
    problems = []
    if len(stanzas) != count:
        problems.append(f"{len(stanzas)} stanzas received, {count} sent")
    for sequence, stanza in enumerate(stanzas[:count]):
        if _shape(stanza) != expected_shape(mode, sequence, pair):
            problems.append(f"stanza {sequence} is not what {mode} lets out: "
                            f"{ElementTree.tostring(stanza)[:300]!r}")
            if len(problems) > 5:
                break
    return problems


# -- the sink and the blaster (each a process of its own) ---------------------


class _Arrivals:
    """The sink's streams (one per pair): reports when every one has its warm-up, and then its whole blast."""

    def __init__(self, pairs: int, warm_up: int, messages: int, reports):
        self.waiting_warm = self.waiting_done = pairs
        self.warm_up, self.total = warm_up, warm_up + messages
        self.reports = reports
        self.cpu_began = 0.0
        self.finished: float | None = None  # when the last stream had its whole blast
        self.cpu = 0.0  # the sink's CPU seconds from the warm-up to then
        self.lock = threading.Lock()

    def receive(self, stream, counter: MessageCounter, deadline: float) -> None:
        warm = False
        while counter.count < self.total:
            if not warm and counter.count >= self.warm_up:
                warm = True
                with self.lock:
                    self.waiting_warm -= 1
                    if not self.waiting_warm:
                        self.reports.put(("warm", time.monotonic()))
                        self.cpu_began = time.process_time()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            stream.connection.settimeout(remaining)
            data = stream.connection.recv(262144)
            if not data:
                break
            counter.feed(data)
        with self.lock:
            self.waiting_done -= 1
            if not self.waiting_done:
                self.finished, self.cpu = time.monotonic(), time.process_time() - self.cpu_began


def run_sink(pki: LabPki, mode: str, pairs: int, warm_up: int, messages: int, reports, measured,
             deadline: float) -> None:
    """Stand as blue's domains at blue's address, one stream per pair; report when the warm-up and the blast
    have arrived on every stream, then check what arrived."""
    # Straight, the blaster expects the guard's red-facing certificate (red's CA, blue's names).
    certificate = pki.guard_red_facing if mode == "straight" else pki.blue_server
    context = server_context(certificate.certificate, certificate.key, pki.both_cas)
    arrivals = _Arrivals(pairs, warm_up, messages, reports)
    streams: dict[int, tuple] = {}
    try:
        with socket.create_server((BLUE_ADDRESS, S2S_PORT)) as listener:
            reports.put(("listening",))
            threads = []
            for _ in range(pairs):
                listener.settimeout(max(0.1, deadline - time.monotonic()))
                connection, _ = listener.accept()
                stream = accept_server_stream(connection, context, "blue.example")
                pair = PAIRS.index((stream.peer_domain, stream.local_domain))
                if pair in streams or pair >= pairs:
                    raise RuntimeError(f"a second stream for {PAIRS[pair]}")
                counter = MessageCounter(keep=True)
                counter.feed(stream.leftover)
                streams[pair] = stream, counter
                threads.append(threading.Thread(target=arrivals.receive, args=(stream, counter, deadline),
                                                daemon=True))
                threads[-1].start()
            for thread in threads:
                thread.join(max(0.1, deadline - time.monotonic()))
            received = sum(counter.count for _, counter in streams.values())
            reports.put(("done", arrivals.finished or time.monotonic(), received, arrivals.cpu))
            measured.wait(max(0.1, deadline - time.monotonic()))
            problems = []
            for pair, (stream, counter) in sorted(streams.items()):
                problems += [f"{PAIRS[pair][0]} -> {PAIRS[pair][1]}: {problem}" for problem in
                             check_received(mode, counter.received(), min(counter.count, arrivals.total), pair)]
                stream.connection.close()
            reports.put(("checked", problems))
    except Exception as error:  # reported, never silent: the bench fails
        reports.put(("failed", f"sink: {type(error).__name__}: {error}"))


def run_blaster(pki: LabPki, address: str, pair: int, warm_up: int, messages: int, reports, go, stop,
                deadline: float) -> None:
    """Authenticate as the pair's red domain, send the warm-up, wait for the go, blast; report what came back."""
    try:
        sender, receiver = PAIRS[pair]
        peer = HostilePeer(address, S2S_PORT, source=None, timeout=10.0).authenticate(pki, sender, receiver)
        peer.socket.settimeout(max(1.0, deadline - time.monotonic()))
        peer.send("".join(message(sequence, pair) for sequence in range(warm_up)).encode())
        blast = "".join(message(sequence, pair) for sequence in range(warm_up, warm_up + messages)).encode()
        reports.put(("ready", pair))
        if not go.wait(max(0.1, deadline - time.monotonic())):
            raise TimeoutError("no go before the deadline")
        began, cpu_began = time.monotonic(), time.process_time()
        peer.send(blast)
        reports.put(("sent", began, time.process_time() - cpu_began))
        while not stop.is_set() and time.monotonic() < deadline and not peer.closed:
            peer._read_some(0.2)
        back = peer.received.split(b"</stream:features>")[-1]
        reports.put(("back", len(back), back.count(b"type='error'") + back.count(b'type="error"')))
        peer.close()
    except Exception as error:
        reports.put(("failed", f"blaster: {type(error).__name__}: {error}"))


# -- one run --------------------------------------------------------------------


@dataclass
class Run:
    """What one run of one mode measured."""

    mode: str
    messages: int
    pairs: int = 1
    received: int = 0
    seconds: float = float("nan")
    cpu: dict[str, float] = field(default_factory=dict)
    guard_rss_kib: int = 0
    guard_peak_kib: int = 0
    back_bytes: int = 0
    back_errors: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    def per_stanza_us(self, name: str) -> float:
        return self.cpu.get(name, float("nan")) / max(self.messages, 1) * 1e6


class _Reports:
    """The messages the sink and the blaster put on the shared queue, waited for by kind."""

    def __init__(self, channel, deadline: float):
        self.channel = channel
        self.deadline = deadline
        self.seen: dict[str, list[tuple]] = {}

    def wait(self, kind: str, count: int = 1) -> list[tuple]:
        """The first ``count`` reports of ``kind`` (each a tuple of its values), waiting for them before the deadline."""
        while len(self.seen.get(kind, ())) < count:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind!r} report before the deadline (seen {sorted(self.seen)})")
            try:
                report = self.channel.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if report[0] == "failed":
                raise RuntimeError(report[1])
            self.seen.setdefault(report[0], []).append(report[1:])
        return self.seen[kind][:count]

    def one(self, kind: str) -> tuple:
        return self.wait(kind)[0]


def _peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def start_guard(pki: LabPki, policy, folder: Path, limits: dict[str, int | float],
                audit: bool = False) -> subprocess.Popen:
    """The guard as a process of its own, from a configuration written into ``folder``; listening when returned."""
    config = folder / "guard.toml"
    options = {"audit": str(folder / "guard-audit.jsonl")} if audit else None
    config.write_text(render_guard_config(pki, "certificate", policy, "warn", guard_options=options, limits=limits))
    profile = ["-m", "cProfile", "-o", os.environ["GUARD_PROFILE"]] if os.environ.get("GUARD_PROFILE") else []
    environment = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(folder / "guard.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, *profile, "-m", "guard", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=environment,
            start_new_session=True,
        )  # fmt: skip
    wait_for_ports(GUARD_RED_FACING, [S2S_PORT], 30.0, process, "guard")
    return process


def run_once(mode: str, messages: int, warm_up: int, timeout: float, audit: bool, pairs: int = 1) -> Run:
    """Sink, guard (unless straight) and one blaster per pair up; warm up, blast (``messages`` shared by the
    pairs), measure, check; everything stopped."""
    folder = Path(tempfile.mkdtemp(prefix=f"firehose-{mode}-"))
    per_pair = messages // pairs
    run = Run(mode, per_pair * pairs, pairs)
    lock = LabLock()
    lock.acquire()
    context = multiprocessing.get_context("fork")
    channel, go, stop, measured = context.Queue(), context.Event(), context.Event(), context.Event()
    children: list = []
    guard = None
    deadline = time.monotonic() + timeout
    succeeded = False
    try:
        ensure_free([(BLUE_ADDRESS, S2S_PORT), (GUARD_RED_FACING, S2S_PORT), (GUARD_BLUE_FACING, S2S_PORT)])
        pki = write_lab_pki(folder / "pki")
        reports = _Reports(channel, deadline)
        sink = context.Process(target=run_sink, name="sink",
                               args=(pki, mode, pairs, warm_up, per_pair, channel, measured, deadline))
        sink.start()
        children.append(sink)
        reports.wait("listening")
        if mode != "straight":
            guard = start_guard(pki, POLICIES[mode], folder, shipped_limits(), audit)
        address = BLUE_ADDRESS if mode == "straight" else GUARD_RED_FACING
        for pair in range(pairs):
            blaster = context.Process(target=run_blaster, name=f"blaster-{pair}",
                                      args=(pki, address, pair, warm_up, per_pair, channel, go, stop, deadline))
            blaster.start()
            children.append(blaster)
        reports.wait("ready", pairs)
        reports.wait("warm")
        guard_before = cpu_seconds(guard.pid) if guard is not None else 0.0
        go.set()
        sent = reports.wait("sent", pairs)
        finished, received, run.cpu["sink"] = reports.one("done")
        if guard is not None:
            run.cpu["guard"] = cpu_seconds(guard.pid) - guard_before
            run.guard_rss_kib, run.guard_peak_kib = resident_kib(guard.pid), _peak_kib(guard.pid)
        run.cpu["blaster"] = sum(cpu for _, cpu in sent)
        run.received = received - warm_up * pairs
        run.seconds = finished - min(began for began, _ in sent)
        measured.set()
        (run.problems,) = reports.one("checked")
        stop.set()
        back = reports.wait("back", pairs)
        run.back_bytes, run.back_errors = sum(b for b, _ in back), sum(e for _, e in back)
        if run.back_errors:
            run.problems.append(f"the blaster received {run.back_errors} error stanzas back")
        succeeded = not run.problems
        return run
    except Exception:
        if guard is not None:
            print(f"--- guard log {folder / 'guard.log'} ---\n{tail(folder / 'guard.log', 30)}", file=sys.stderr)
        raise
    finally:
        stop.set()
        measured.set()
        if guard is not None:
            stop_process(guard)
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join(5)
        lock.release()
        if succeeded:
            shutil.rmtree(folder, ignore_errors=True)


def report(run: Run) -> None:
    through = "straight into the sink" if run.mode == "straight" else f"through the guard, {run.mode}"
    if run.pairs > 1:
        through += f", {run.pairs} domain pairs (one stream and one blaster process each)"
    print(f"== {through} ==")
    print(f"  messages received   {run.received}/{run.messages} in {run.seconds:.3f} s")
    print(f"  throughput          {run.rate:,.0f} msg/s")
    for name in ("guard", "blaster", "sink"):
        if name in run.cpu:
            print(f"  cpu {name:<16}{run.cpu[name]:.2f} s   ({run.per_stanza_us(name):.1f} us/stanza)")
    if run.guard_rss_kib:
        print(f"  guard rss           {run.guard_rss_kib / 1024:.1f} MiB (peak {run.guard_peak_kib / 1024:.1f} MiB)")
    print(f"  check               {'every message, in order, as ' + run.mode + ' lets it out' if not run.problems else 'FAILED'}")
    for problem in run.problems:
        print(f"    {problem}")


def summary(runs: list[Run]) -> None:
    """Median and spread per mode over the rounds."""
    print("== medians over the rounds (min..max) ==")
    for mode in dict.fromkeys(run.mode for run in runs):
        mine = [run for run in runs if run.mode == mode]
        rates = [run.rate for run in mine]
        line = f"  {mode:<12} {statistics.median(rates):>9,.0f} msg/s ({min(rates):,.0f}..{max(rates):,.0f})"
        if all("guard" in run.cpu for run in mine):
            cpu = [run.per_stanza_us("guard") for run in mine]
            line += f"   guard {statistics.median(cpu):.1f} us/stanza ({min(cpu):.1f}..{max(cpu):.1f})"
            line += f"   rss {statistics.median(run.guard_rss_kib for run in mine) / 1024:.1f} MiB"
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_firehose.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    parser.add_argument("--messages", type=int, default=20000, help="messages timed per run (default 20000)")
    parser.add_argument("--warm-up", type=int, default=500, help="messages sent before timing (default 500)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every mode, interleaved (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per run at most (default 60)")
    parser.add_argument("--audit", action="store_true", help="the guard writes its audit trail (off by default)")
    parser.add_argument("--pairs", type=int, default=1,
                        help="domain pairs, each its own stream and blaster, sharing --messages (default 1; "
                             "at most 4, 2 for high-to-low)")
    arguments = parser.parse_args(argv)
    modes = [name.strip() for name in arguments.modes.split(",") if name.strip()]
    unknown = [name for name in modes if name not in MODES]
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r} (known: {', '.join(MODES)})")
    if not 1 <= arguments.messages <= 1_000_000 or not 1 <= arguments.warm_up <= 100_000:
        parser.error("--messages must be 1..1000000 and --warm-up 1..100000")
    if not 1 <= arguments.rounds <= 20 or not 1 <= arguments.timeout <= 600:
        parser.error("--rounds must be 1..20 and --timeout 1..600")
    if not all(1 <= arguments.pairs <= MOST_PAIRS[mode] for mode in modes):
        parser.error(f"--pairs must be 1..{min(MOST_PAIRS[mode] for mode in modes)} for modes {', '.join(modes)}")

    pairs = ", ".join(f"{sender} -> {receiver}" for sender, receiver in PAIRS[:arguments.pairs])
    print(f"firehose: {arguments.messages} messages of {MESSAGE_BYTES} bytes (shared by the pairs) after "
          f"{arguments.warm_up} of warm-up per pair ({pairs}); guard limits as shipped but {', '.join(RAISED_LIMITS)} raised"
          + ("; audit on" if arguments.audit else ""))
    runs: list[Run] = []
    failures = 0
    for _ in range(arguments.rounds):
        for mode in modes:
            started = time.monotonic()
            try:
                run = run_once(mode, arguments.messages, arguments.warm_up, arguments.timeout, arguments.audit,
                               arguments.pairs)
            except (Exception, LabError) as error:
                failures += 1
                print(f"== {mode} ==\n  FAILED after {time.monotonic() - started:.1f} s: {error}")
                continue
            report(run)
            failures += bool(run.problems) or run.received < run.messages
            runs.append(run)
    if arguments.rounds > 1 and runs:
        summary(runs)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
