"""
A burst into a cold guard (issue 9 item 10): the first traffic for a domain
pair arrives faster than the outbound stream toward the far server is set
up.  The guard stops reading the sender while the queue for the pair is full
and bounces nothing: every message reaches Juliet, and the guard's memory
stays bounded.

A raw red server (tests/integration/hostile.py, authenticated with red's own
certificate) writes the whole burst at once; the far side is the lab's real
blue Prosody.  The test brings up its own lab.  Run it alone:

    .venv/bin/pytest tests/integration/test_cold_burst.py -s
"""

from __future__ import annotations

import threading
import time

import pytest

from guard.lab.clients import _Blast
from guard.lab.topology import Lab, Mode

from tests.integration.hostile import HostilePeer, lab_lock_held_here
from .labs import started

JULIET = "juliet@blue.example"
BURST = 20_000
RSS_GROWTH_LIMIT_KIB = 128 * 1024

pytestmark = pytest.mark.guard


@pytest.fixture
def lab(tmp_path):
    """A fresh guard lab: no stanza has crossed yet, so no outbound stream exists for red.example->blue.example."""
    if lab_lock_held_here():
        pytest.skip("another lab of this pytest session is still running; run this module on its own")
    laboratory = Lab(Mode.GUARD, "certificate", folder=tmp_path / "lab", guard_log_level="info",
                     limits={"rate_bytes_per_second": 256 * 1024 * 1024, "rate_burst_bytes": 256 * 1024 * 1024})
    yield started(laboratory, "the cold-burst lab")
    laboratory.stop()


def burst_bytes(to: str) -> bytes:
    return "".join(
        f"<message from='romeo@red.example/burst' to='{to}' type='chat' id='cold-{n}'>"
        f"<body>blast {n} {time.perf_counter_ns()}</body></message>"
        for n in range(BURST)
    ).encode()


def test_a_burst_into_a_cold_guard_arrives_complete_with_nothing_bounced(lab, client_loop):
    """20,000 messages written at once as the first traffic of the pair all reach Juliet; none bounce; RSS stays bounded."""
    juliet = lab.client(client_loop, JULIET).connect()
    tracker = _Blast(BURST)
    juliet._blast = tracker
    try:
        before = peak = lab.guard_resident_kib()
        payload = burst_bytes(juliet.full_jid)
        with HostilePeer() as peer:
            peer.authenticate(lab.pki)
            peer.socket.settimeout(120)
            sending = threading.Thread(target=peer.socket.sendall, args=(payload,), daemon=True)
            started = time.monotonic()
            sending.start()
            deadline = started + 100
            while tracker.received < BURST and time.monotonic() < deadline:
                peak = max(peak, lab.guard_resident_kib())
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            sending.join(timeout=5)
            books = lab.guard_books()
            held = lab.guard_status().get("held_bytes", {"peak": None, "budget": None})
        print(f"\ncold burst: {BURST} messages ({len(payload)} bytes) in one write; {tracker.received} arrived "
              f"in {elapsed:.1f}s; guard RSS {before} KiB before, {peak} KiB at most; held bytes peak "
              f"{held['peak']} of a {held['budget']} budget; books {books}")
        assert books["bounced"] == 0, books["bounce_reasons"]
        assert tracker.received == BURST, f"{BURST - tracker.received} did not arrive; books {books}"
        assert books["delivered"] == BURST and books["in_flight"] == 0, books
        assert peak - before < RSS_GROWTH_LIMIT_KIB, f"the guard grew by {peak - before} KiB"
    finally:
        juliet._blast = None
        juliet.disconnect()
