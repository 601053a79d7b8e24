"""
A pair whose halves disagree on limits, between real Prosody servers: half B
parses stanzas of at most 4096 bytes, half A carries up to the default.  A
stanza half A lets out and half B cannot take must not stall the link.

Run: .venv/bin/pytest tests/integration/test_pair_limits.py
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guard.lab.clients import ClientLoop  # noqa: E402
from pair_lab import PairLab, started  # noqa: E402

ROMEO = "romeo@red.example"
JULIET = "juliet@blue.example"


@pytest.fixture(scope="module")
def strict_pair(tmp_path_factory):
    """The pair lab without a HAG, half B's parser limited to 4096-byte stanzas."""
    laboratory = started(PairLab(tmp_path_factory.mktemp("pair-strict-b"), with_hag=False, down_deadline=20.0,
                                 half_limits={"b": {"stanza_bytes": 4096}}))
    yield laboratory
    laboratory.stop()


@pytest.fixture(scope="module")
def client_loop():
    loop = ClientLoop()
    yield loop
    loop.close()


def test_a_stanza_the_far_half_refuses_bounces_once_and_the_link_carries_on(strict_pair, client_loop):
    """Romeo's 6 KB message passes half A but not half B's parser: half B names it as it closes the
    connection, half A bounces it to Romeo (not-acceptable, audited) and never sends it again, and Romeo's
    next message reaches Juliet well within the down deadline."""
    romeo = strict_pair.client(client_loop, ROMEO).connect()
    juliet = strict_pair.client(client_loop, JULIET).connect()
    try:
        warm = f"warm-{uuid.uuid4().hex[:8]}"
        romeo.send_message(JULIET, warm)
        juliet.wait_for_body(ROMEO, warm, timeout=30)
        big = "x" * 6000
        romeo.send_xml(f"<message to='{JULIET}' type='chat' id='big1'><body>{big}</body></message>")
        after = f"after-{uuid.uuid4().hex[:8]}"
        romeo.send_xml(f"<message to='{JULIET}' type='chat' id='after1'><body>{after}</body></message>")
        started = time.monotonic()
        juliet.wait_for_body(ROMEO, after, timeout=30)
        assert time.monotonic() - started < strict_pair.down_deadline
        romeo.wait_for_error(JULIET, timeout=30)
        assert not any(message.body == big for message in juliet.messages)
        bounces = [record for record in strict_pair.audit_records("a")
                   if record["event"] == "bounce" and record.get("id") == "big1"]
        assert [record["condition"] for record in bounces] == ["not-acceptable"]
        link = strict_pair.status_of("a")["pair_link"]
        assert link["refused_by_peer"] == 1 and link["state"] == "up"
        time.sleep(2.0)  # a resent copy would be refused (and counted) again by now
        assert strict_pair.status_of("a")["pair_link"]["refused_by_peer"] == 1
    finally:
        romeo.disconnect()
        juliet.disconnect()
