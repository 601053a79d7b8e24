"""
Reloading policies under load: SIGHUP swaps both policies at once between
two stanzas; an invalid policy is refused and the old one stays in force; no
stanza is lost or judged by a half-loaded policy.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from guard.lab.clients import ClientLoop

from .policylab import PolicyLab, wait_for
from .labs import started

PASS_ALL = """
[policy]
name = "pass-all"
default = "drop"

[[rules]]
id = "pass-everything"
rev = 1
why = "Before the reload everything passes."
verdict = "pass"
keep = "everything"
"""

DROP_MARKED = """
[policy]
name = "drop-marked"
default = "drop"

[[rules]]
id = "drop-marked-messages"
rev = 3
why = "After the reload, messages whose body starts with 'marked' are dropped."
kind = "message"
body_matches = "^marked"
verdict = "drop"

[[rules]]
id = "pass-rest"
rev = 1
why = "Everything else passes."
verdict = "pass"
keep = "everything"
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    laboratory = PolicyLab(tmp_path_factory.mktemp("reload-lab"), PASS_ALL, PASS_ALL)
    yield started(laboratory)
    laboratory.stop()


def test_reload_under_load_loses_nothing(lab):
    """Messages sent while the policy is swapped are each either delivered or dropped by a rule of the new policy."""
    total = 600
    with ClientLoop() as loop, lab.client(loop, "romeo@red.example") as romeo, \
            lab.client(loop, "juliet@blue.example") as juliet:
        romeo.send_message("juliet@blue.example", "warm-up")
        juliet.wait_for_body("romeo@red.example", "warm-up", timeout=20)
        for number in range(total):
            body = f"marked {number}" if number % 2 else f"plain {number}"
            romeo.send_message("juliet@blue.example", body)
            if number == total // 3:
                lab.policy_files["red"].write_text(DROP_MARKED + "\n# rewritten in place\n")
                os.kill(lab.guard_pid(), signal.SIGHUP)
            if number % 50 == 0:
                time.sleep(0.05)

        def delivered_bodies():
            return {m.body for m in list(juliet.messages) if m.sender.startswith("romeo@red.example")} - {"warm-up"}

        def settled():
            dropped = [r for r in lab.audit_records() if r["event"] == "drop"]
            return len(delivered_bodies()) + len(dropped) >= total

        assert wait_for(settled, 30), lab.log_tails()
        delivered = delivered_bodies()
        drops = [r for r in lab.audit_records() if r["event"] == "drop"]
    assert len(delivered) + len(drops) == total
    assert {r["rule"] for r in drops} == {"drop-marked-messages"}
    assert {r["rev"] for r in drops} == {3}
    assert all(f"plain {n}" in delivered for n in range(0, total, 2))
    assert drops, "the new policy never took effect"
    assert len(drops) < total // 2, "the new policy took effect before the reload"


def test_invalid_policy_is_refused_and_the_old_one_stays(lab):
    """A policy that does not load is refused with the checker's message in the log; traffic still follows the old one."""
    lab.policy_files["red"].write_text(PASS_ALL)
    os.kill(lab.guard_pid(), signal.SIGHUP)
    time.sleep(0.5)
    lab.policy_files["red"].write_text("[policy]\nname = 'broken'\n[[rules]]\nid = 'x'\nverdict = 'teleport'\n")
    os.kill(lab.guard_pid(), signal.SIGHUP)
    assert wait_for(lambda: "reload refused, policies unchanged" in lab.guard_log(), 10)
    with ClientLoop() as loop, lab.client(loop, "romeo@red.example") as romeo, \
            lab.client(loop, "juliet@blue.example") as juliet:
        romeo.send_message("juliet@blue.example", "marked but the pass-all policy is still in force")
        juliet.wait_for_body("romeo@red.example", "marked but the pass-all policy is still in force", timeout=20)
