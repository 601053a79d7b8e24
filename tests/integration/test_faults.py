"""
Faults with real peers: the far Prosody killed and restarted or stopped
(SIGSTOP) in the middle of traffic, the guard itself stopped during traffic,
and an audit trail that cannot be written.

After each, no stanza has vanished: every message Romeo sent reached Juliet,
came back to Romeo as an error, or was dropped with an audit record; and the
guard's books balance (accepted = delivered + bounced + dropped).

Every test brings up its own lab (the faults break it).  Run:

    .venv/bin/pytest tests/integration/test_faults.py
"""

from __future__ import annotations

import time
import uuid

import pytest

from guard.lab.clients import ClientError
from guard.lab.topology import Lab, Mode

from tests.integration.hostile import lab_lock_held_here
from .labs import started

ROMEO = "romeo@red.example"
JULIET = "juliet@blue.example"

pytestmark = pytest.mark.guard


@pytest.fixture
def lab_settings():
    """Keyword arguments for the test's Lab; a test overrides this fixture to change them."""
    return {}


@pytest.fixture
def lab(request, tmp_path, lab_settings):
    """A fresh guard lab (certificate authentication) for one test."""
    if lab_lock_held_here():
        pytest.skip("another lab of this pytest session is still running; run this module on its own")
    laboratory = Lab(Mode.GUARD, "certificate", folder=tmp_path / "lab", guard_log_level="info", **lab_settings)
    yield started(laboratory, "the fault lab")
    laboratory.stop()


@pytest.fixture
def romeo(lab, client_loop):
    """romeo@red.example, connected to the red Prosody."""
    client = lab.client(client_loop, ROMEO).connect()
    yield client
    client.disconnect()


@pytest.fixture
def juliet(lab, client_loop):
    """juliet@blue.example, connected to the blue Prosody."""
    client = lab.client(client_loop, JULIET).connect()
    yield client
    client.disconnect()


class Tally:
    """Messages Romeo sends with ids ``<run>-<n>``, and where each one ended up."""

    def __init__(self, size_of_body: int = 0):
        self.run = uuid.uuid4().hex[:6]
        self.sent: list[str] = []
        self.padding = "p" * size_of_body

    def send(self, romeo, count: int, interval: float = 0.0) -> None:
        for _ in range(count):
            identifier = f"{self.run}-{len(self.sent)}"
            romeo.send_xml(
                f"<message to='{JULIET}' type='chat' id='{identifier}'><body>tally {identifier} {self.padding}</body></message>"
            )
            self.sent.append(identifier)
            if interval:
                time.sleep(interval)

    def received_by(self, *juliets) -> set[str]:
        found = set()
        for client in juliets:
            for message in list(client.messages):
                words = (message.body or "").split()
                if message.type != "error" and len(words) >= 2 and words[0] == "tally" and words[1].startswith(self.run):
                    found.add(words[1])
        return found

    def bounced_to(self, romeo) -> set[str]:
        return {message.id for message in list(romeo.messages) if message.type == "error" and message.id.startswith(self.run)}

    def dropped_in(self, lab) -> set[str]:
        return {record.get("id") for record in lab.audit_records()
                if record["event"] == "drop" and str(record.get("id") or "").startswith(self.run)}

    def wait_settled(self, lab, romeo, juliets, timeout: float = 60.0) -> tuple[set, set, set]:
        """Wait (bounded) until every sent message is accounted for; the three sets."""
        deadline = time.monotonic() + timeout
        while True:
            got, bounced, dropped = self.received_by(*juliets), self.bounced_to(romeo), self.dropped_in(lab)
            if len(got | bounced | dropped) >= len(self.sent) or time.monotonic() > deadline:
                return got, bounced, dropped
            time.sleep(0.25)


def wait_balanced(lab, timeout: float = 30.0, books_from=None) -> dict:
    """The guard's books once nothing is in flight (bounded wait)."""
    read = books_from or lab.guard_books
    deadline = time.monotonic() + timeout
    while True:
        books = read()
        if books["in_flight"] == 0 or time.monotonic() > deadline:
            return books
        time.sleep(0.25)


def assert_nothing_vanished(tally, got, bounced, dropped):
    sent = set(tally.sent)
    assert got <= sent and bounced <= sent and dropped <= sent
    assert not (got & bounced), f"delivered and bounced: {sorted(got & bounced)[:5]}"
    missing = sent - got - bounced - dropped
    assert not missing, f"{len(missing)} of {len(sent)} vanished, e.g. {sorted(missing)[:5]}"
    assert len(got) + len(bounced) + len(dropped - got - bounced) == len(sent)


def test_far_server_killed_and_restarted_mid_blast(lab, romeo, juliet, client_loop):
    """Blue's Prosody dies mid-blast and comes back: each message is delivered or bounced, none vanish."""
    tally = Tally()
    tally.send(romeo, 40, interval=0.05)
    # What blue's Prosody has read but not yet handed to Juliet dies with it, whatever the guard does
    # (S2S has no acknowledgements without XEP-0198): let those 40 land before the kill.
    tally.wait_settled(lab, romeo, (juliet,), timeout=10)
    lab.blue.kill()
    tally.send(romeo, 40, interval=0.05)  # blue is down: the guard cannot connect, so it bounces
    lab.blue.restart()
    juliet.disconnect(timeout=1)
    fresh = lab.client(client_loop, JULIET).connect()
    try:
        tally.send(romeo, 40, interval=0.05)
        got, bounced, dropped = tally.wait_settled(lab, romeo, (juliet, fresh))
    finally:
        fresh.disconnect()

    assert_nothing_vanished(tally, got, bounced, dropped)
    assert len(got) >= 40, "the messages before the kill and after the restart arrive"
    assert bounced, "what was sent while blue was down came back"
    books = wait_balanced(lab)
    assert books["in_flight"] == 0, books


@pytest.mark.parametrize("lab_settings", [{"limits": {"rate_bytes_per_second": 256 * 1024 * 1024,
                                                      "rate_burst_bytes": 256 * 1024 * 1024}}])
def test_far_server_stops_reading_then_continues(lab, romeo, juliet):
    """Blue stops reading (SIGSTOP): the guard's memory stays bounded by back-pressure; after SIGCONT all arrive."""
    tally = Tally(size_of_body=8 * 1024)
    tally.send(romeo, 5)
    tally.wait_settled(lab, romeo, (juliet,), timeout=15)
    before = lab.guard_resident_kib()
    lab.blue.pause()
    try:
        peak = before
        for _ in range(20):  # 20 x 200 x 8 KiB: about 32 MiB towards a server that reads nothing
            tally.send(romeo, 200)
            time.sleep(0.2)
            peak = max(peak, lab.guard_resident_kib())
        for _ in range(20):
            time.sleep(0.25)
            peak = max(peak, lab.guard_resident_kib())
    finally:
        lab.blue.resume()
    got, bounced, dropped = tally.wait_settled(lab, romeo, (juliet,), timeout=180)

    grown = peak - before
    print(f"\nguard resident memory: {before} KiB before, {peak} KiB at most while blue was stopped; "
          f"{len(tally.sent)} messages of 8 KiB sent, {len(got)} arrived after SIGCONT")
    assert grown < 24 * 1024, f"the guard grew by {grown} KiB while blue was not reading"
    assert_nothing_vanished(tally, got, bounced, dropped)
    assert len(got) == len(tally.sent), f"{len(bounced)} bounced, {len(dropped)} dropped"
    books = wait_balanced(lab)
    assert books["in_flight"] == 0, books


def read_status_file(lab) -> dict:
    import json
    from pathlib import Path

    return json.loads(Path(lab.guard_options["status"]).read_text())


@pytest.mark.parametrize("return_path", [
    pytest.param("open", id="return-stream-open"),
    pytest.param("cold", id="return-stream-not-yet-open"),
])
def test_guard_stopped_while_holding_stanzas_bounces_them(lab, romeo, juliet, return_path):
    """Stanzas waiting for a far server that has not answered yet are bounced to their sender when the guard stops."""
    if return_path == "open":  # Juliet writes first, so the guard already has a stream towards red
        hello = f"hello first {uuid.uuid4().hex[:8]}"
        juliet.send_xml(f"<message to='{ROMEO}' type='chat'><body>{hello}</body></message>")
        romeo.wait_for_body(JULIET, hello)
    lab.blue.pause()  # blue accepts the TCP connection but never answers: the guard holds what waits
    try:
        tally = Tally()
        tally.send(romeo, 10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            queued = sum(link["queued"] for link in lab.guard_status()["links"].values())
            if queued >= 10:
                break
            time.sleep(0.2)
        assert queued == 10, lab.guard_status()
        assert lab.stop_guard() == 0
        got, bounced, dropped = tally.wait_settled(lab, romeo, (juliet,), timeout=20)
    finally:
        lab.blue.resume()

    assert bounced == set(tally.sent), f"bounced {len(bounced)} of 10"
    assert not got
    books = read_status_file(lab)["books"]
    assert books["in_flight"] == 0 and books["bounced"] >= 10, books
    assert "books at shutdown" in lab.guard_log()


def test_guard_stopped_during_traffic_closes_cleanly(lab, romeo, juliet):
    """SIGTERM during a blast: the guard exits 0, tells red it is shutting down, and its books balance."""
    tally = Tally()
    tally.send(romeo, 30, interval=0.05)
    assert lab.stop_guard() == 0
    tally.send(romeo, 20, interval=0.05)  # nobody answers for blue now: red's Prosody bounces these itself
    got, bounced, dropped = tally.wait_settled(lab, romeo, (juliet,), timeout=60)

    assert_nothing_vanished(tally, got, bounced, dropped)
    books = read_status_file(lab)["books"]
    assert books["in_flight"] == 0, books
    assert books["accepted"] == books["delivered"] + books["bounced"] + books["dropped"]
    assert "system-shutdown" in lab.red.log_path.read_text(errors="replace")


TWO_LABELS = ("<securitylabel xmlns='urn:xmpp:sec-label:0'><label/></securitylabel>"
              "<securitylabel xmlns='urn:xmpp:sec-label:0'><label/></securitylabel>")


@pytest.mark.parametrize("lab_settings", [{"guard_options": {"audit": "/dev/full"}}])
def test_unwritable_audit_stops_relaying_and_says_so(lab, romeo, juliet):
    """With audit = /dev/full the first audit record fails: the guard stops relaying and logs it loudly."""
    romeo.send_xml(f"<message to='{JULIET}' type='chat' id='a1'><body>two labels</body>{TWO_LABELS}</message>")
    romeo.wait_for_error(JULIET)  # bounced by the policy; writing its audit record fails
    body = f"after the audit failed {uuid.uuid4().hex[:8]}"
    romeo.send_xml(f"<message to='{JULIET}' type='chat' id='a2'><body>{body}</body></message>")

    bounce = romeo.wait_for_message(lambda m: m.type == "error" and m.id == "a2")
    assert bounce.sender.startswith(JULIET)
    with pytest.raises(ClientError):
        juliet.wait_for_body(ROMEO, body, timeout=3)
    status = lab.guard_status()
    assert status["halted"] and "audit" in status["halted"]
    assert status["books"]["in_flight"] == 0
    log = lab.guard_log()
    assert "AUDIT TRAIL UNAVAILABLE" in log and "stops relaying" in log


@pytest.mark.parametrize("lab_settings", [{"guard_options": {"audit": "/dev/full", "audit_failure": "continue"}}])
def test_unwritable_audit_with_continue_keeps_relaying(lab, romeo, juliet):
    """With audit_failure = "continue" the guard logs the failure and keeps relaying."""
    romeo.send_xml(f"<message to='{JULIET}' type='chat' id='c1'><body>two labels</body>{TWO_LABELS}</message>")
    romeo.wait_for_error(JULIET)
    body = f"relayed without audit {uuid.uuid4().hex[:8]}"
    romeo.send_xml(f"<message to='{JULIET}' type='chat' id='c2'><body>{body}</body></message>")

    juliet.wait_for_body(ROMEO, body)
    status = lab.guard_status()
    assert status["halted"] is None
    assert status["books"]["in_flight"] == 0
    assert "AUDIT TRAIL UNAVAILABLE" in lab.guard_log()
