"""
Hostile certificates: a side's own Prosody presents a certificate the guard
must not accept for its domain (issued by the other side's CA, or naming the
domain only in its CN).  Nothing may cross in either direction, and senders
get an error back instead of silence.

These run only in guard mode with certificate authentication (``-m guard``):
with dialback, the guard may legitimately authenticate the domain otherwise.
"""

from __future__ import annotations

import uuid

import pytest

from guard.lab.clients import ClientError
from guard.lab.topology import Mode

ROMEO = "romeo@red.example"
JULIET = "juliet@blue.example"

HOSTILE_LABS = [
    pytest.param(
        (Mode.GUARD, "certificate", (("red", "red_from_blue_ca"),)),
        marks=pytest.mark.guard,
        id="guard-certificate-red-server-from-blue-ca",
    ),
    pytest.param(
        (Mode.GUARD, "certificate", (("red", "red_common_name_only"),)),
        marks=pytest.mark.guard,
        id="guard-certificate-red-server-cn-only",
    ),
]

pytestmark = pytest.mark.parametrize("lab", HOSTILE_LABS, indirect=True)


def test_nothing_leaves_red_when_its_server_certificate_is_untrusted(romeo, juliet):
    """Romeo's message does not reach Juliet, and Romeo is told it failed."""
    body = f"let me in {uuid.uuid4().hex[:8]}"
    romeo.send_xml(f"<message to='{JULIET}' type='chat' id='h1'><body>{body}</body></message>")

    bounce = romeo.wait_for_error(JULIET, timeout=30)

    assert bounce.error_condition
    with pytest.raises(ClientError):
        juliet.wait_for_body(ROMEO, body, timeout=2)


def test_nothing_reaches_red_when_its_server_certificate_is_untrusted(romeo, juliet):
    """Juliet's message is not delivered to a red server the guard cannot authenticate, and Juliet is told."""
    body = f"are you really red {uuid.uuid4().hex[:8]}"
    juliet.send_xml(f"<message to='{ROMEO}' type='chat' id='h2'><body>{body}</body></message>")

    bounce = juliet.wait_for_error(ROMEO, timeout=30)

    assert bounce.error_condition
    with pytest.raises(ClientError):
        romeo.wait_for_body(JULIET, body, timeout=2)
