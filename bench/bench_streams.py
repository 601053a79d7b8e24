"""
Streams benchmark (issue 11, goal 5): resident memory per idle authenticated
inbound stream, in the guard and, as the anchor, in the lab's real Prosody.

Raw S2S clients (tests.integration.hostile.HostilePeer: STARTTLS, then SASL
EXTERNAL with red's server certificate) open streams red.example ->
blue.example from many loopback source addresses and leave them idle.  The
server is measured the same way for both: its resident memory (VmRSS, from
/proc) after a few warm-up streams, then after each step (1,000 and 5,000
streams by default), each read a moment after the last stream authenticated;
per stream = (RSS at the step - RSS after the warm-up) / streams opened since.
Before reading, it checks that no stream was closed by the server.  The same
difference is split by where the pages are (/proc/PID/smaps): ``heap`` is
malloc's main arena (C libraries: OpenSSL's connections and sessions, expat;
and Python objects over 512 bytes), ``anon`` the other anonymous mappings
(Python's object arenas for the small objects; Lua's allocations in Prosody
go to the heap), ``other`` the rest (files, stacks).

- ``guard``: the guard as a process (allow-all, shipped limits but
  connections_per_address and streams_per_domain raised to fit the streams);
- ``prosody``: the lab's Debian Prosody standing as blue.example (s2s secure
  auth, presenting a red-CA certificate for blue.example as the guard does).

    .venv/bin/python bench/bench_streams.py [--streams 1000,5000] [--servers guard,prosody]

RLIMIT_NOFILE is raised to its hard limit (the servers inherit it).  Exit
status 1 when a run failed or a stream was closed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import resource
import selectors
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_firehose import POLICIES, shipped_limits, start_guard  # noqa: E402
from guard.lab.pki import LabPki, write_lab_pki  # noqa: E402
from guard.lab.prosody import ProsodyServer, ProsodySettings, resident_kib, stop_process  # noqa: E402
from guard.lab.topology import (  # noqa: E402
    BLUE_ADDRESS, GUARD_BLUE_FACING, GUARD_RED_FACING, S2S_PORT, LabLock, ensure_free,
)
from tests.integration.hostile import HostilePeer  # noqa: E402

SERVERS = ("guard", "prosody")
WARM_UP_STREAMS = 20
SOURCE_ADDRESSES = 64  # 127.0.9.1 .. 127.0.9.64: no lab server uses them
OPENERS = 8  # handshakes in flight at once
SETTLE_SECONDS = 2.0


def source_address(number: int) -> str:
    return f"127.0.9.{1 + number % SOURCE_ADDRESSES}"


def raise_file_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the new soft limit (an error if below ``needed``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        raise RuntimeError(f"RLIMIT_NOFILE is {soft}, {needed} are needed: raise the hard limit (ulimit -Hn)")
    return soft


class Streams:
    """Idle authenticated streams to one server, opened in steps."""

    def __init__(self, pki: LabPki, address: str, deadline: float):
        self.pki = pki
        self.address = address
        self.deadline = deadline
        self.peers: list[HostilePeer] = []

    def _open_one(self, number: int) -> HostilePeer:
        timeout = max(1.0, min(30.0, self.deadline - time.monotonic()))
        peer = HostilePeer(self.address, S2S_PORT, source=source_address(number), timeout=timeout)
        try:
            return peer.authenticate(self.pki)
        except BaseException:
            peer.close()
            raise

    def open_up_to(self, total: int) -> float:
        """Open streams until ``total`` are open; the seconds it took."""
        began = time.monotonic()
        numbers = range(len(self.peers), total)
        with concurrent.futures.ThreadPoolExecutor(OPENERS) as pool:
            for peer in pool.map(self._open_one, numbers):
                self.peers.append(peer)
        return time.monotonic() - began

    def closed_by_the_server(self) -> int:
        """How many streams the server has written to or closed since they authenticated (idle ones get nothing)."""
        selector = selectors.DefaultSelector()
        for number, peer in enumerate(self.peers):
            selector.register(peer.socket, selectors.EVENT_READ, number)
        try:
            return len(selector.select(timeout=0.5))
        finally:
            selector.close()

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        self.peers.clear()


def resident_by_mapping(pid: int) -> dict[str, int]:
    """Resident KiB of process ``pid`` in malloc's heap, in other anonymous mappings, and in the rest."""
    kinds = {"heap": 0, "anon": 0, "other": 0}
    kind = "other"
    with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields:
                continue
            if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's first line: range perms offset dev inode [path]
                path = fields[5] if len(fields) > 5 else ""
                kind = "heap" if path == "[heap]" else "anon" if path == "" else "other"
            elif fields[0] == "Rss:":
                kinds[kind] += int(fields[1])
    return kinds


def measure(pid: int, streams: Streams, steps: Sequence[int]) -> list[tuple[int, float, int, float]]:
    """(streams, seconds to open, RSS KiB, KiB per stream) at each step, after the warm-up."""
    streams.open_up_to(WARM_UP_STREAMS)
    time.sleep(SETTLE_SECONDS)
    base = resident_kib(pid)
    base_mappings = resident_by_mapping(pid)
    print(f"  rss after {WARM_UP_STREAMS} warm-up streams: {base / 1024:.1f} MiB", flush=True)
    rows = []
    for step in steps:
        seconds = streams.open_up_to(WARM_UP_STREAMS + step)
        time.sleep(SETTLE_SECONDS)
        closed = streams.closed_by_the_server()
        if closed:
            raise RuntimeError(f"the server wrote to or closed {closed} of {len(streams.peers)} idle streams")
        rss = resident_kib(pid)
        mappings = resident_by_mapping(pid)
        rows.append((step, seconds, rss, (rss - base) / step))
        split = "  ".join(f"{kind} {(mappings[kind] - base_mappings[kind]) / step:5.1f}" for kind in mappings)
        print(f"  {step:>6} streams  opened in {seconds:6.1f} s ({step / seconds:5.0f}/s)  rss {rss / 1024:7.1f} MiB"
              f"  {(rss - base) / step:6.1f} KiB/stream ({split})", flush=True)
    return rows


def run_guard(pki: LabPki, folder: Path, steps: Sequence[int], deadline: float):
    most = WARM_UP_STREAMS + max(steps)
    raised = {"connections_per_address": most, "streams_per_domain": most}
    print(f"== guard (allow-all; limits as shipped but {', '.join(f'{k} = {v}' for k, v in raised.items())}) ==")
    guard = start_guard(pki, POLICIES["allow-all"], folder, shipped_limits(raised))
    streams = Streams(pki, GUARD_RED_FACING, deadline)
    try:
        return measure(guard.pid, streams, steps)
    finally:
        streams.close()
        stop_process(guard)


def run_prosody(pki: LabPki, folder: Path, steps: Sequence[int], deadline: float):
    print("== Prosody (the lab's, as blue.example, s2s_secure_auth) ==")
    settings = ProsodySettings(
        name="blue", domain="blue.example", muc_domain="conference.blue.example", address=BLUE_ADDRESS,
        certificate=pki.guard_red_facing,  # red's CA, blue's names: what a red server expects of blue
        cafile=pki.both_cas, secure_auth=True, log_level="warn",
    )  # fmt: skip
    server = ProsodyServer(settings, folder / "prosody-blue")
    server.start()
    streams = Streams(pki, BLUE_ADDRESS, deadline)
    try:
        return measure(server.pid, streams, steps)
    finally:
        streams.close()
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_streams.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1000,5000", help="comma-separated stream counts, rising")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated: {', '.join(SERVERS)}")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per server at most (default 300)")
    arguments = parser.parse_args(argv)
    try:
        steps = [int(text) for text in arguments.streams.split(",") if text.strip()]
    except ValueError:
        parser.error("--streams takes numbers")
    if not steps or steps != sorted(steps) or not 1 <= steps[0] <= steps[-1] <= 10000:
        parser.error("--streams must be rising counts between 1 and 10000")
    servers = [name.strip() for name in arguments.servers.split(",") if name.strip()]
    if any(name not in SERVERS for name in servers):
        parser.error(f"--servers takes {', '.join(SERVERS)}")
    limit = raise_file_limit(WARM_UP_STREAMS + steps[-1] + 100)
    print(f"idle authenticated S2S streams red.example -> blue.example from {SOURCE_ADDRESSES} loopback addresses; "
          f"RLIMIT_NOFILE {limit}")

    results: dict[str, list] = {}
    failures = 0
    for server in servers:
        folder = Path(tempfile.mkdtemp(prefix=f"streams-{server}-"))
        lock = LabLock()
        lock.acquire()
        try:
            ensure_free([(BLUE_ADDRESS, S2S_PORT), (GUARD_RED_FACING, S2S_PORT), (GUARD_BLUE_FACING, S2S_PORT)])
            pki = write_lab_pki(folder / "pki")
            run = run_guard if server == "guard" else run_prosody
            results[server] = run(pki, folder, steps, time.monotonic() + arguments.timeout)
            shutil.rmtree(folder, ignore_errors=True)
        except Exception as error:
            failures += 1
            print(f"  FAILED: {type(error).__name__}: {error} (files in {folder})")
        finally:
            lock.release()
    if "guard" in results and "prosody" in results:
        print("== guard against Prosody (KiB per stream) ==")
        for (step, _, _, guard), (_, _, _, prosody) in zip(results["guard"], results["prosody"]):
            ratio = f"{guard / prosody:.2f}" if prosody > 0 else "n/a"
            print(f"  {step:>6} streams  guard {guard:6.1f}  Prosody {prosody:6.1f}  guard/Prosody {ratio}"
                  "  (goal: guard <= 32 KiB)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
