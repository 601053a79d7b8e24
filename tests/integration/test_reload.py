"""
Reloading policies under load: SIGHUP swaps both policies at once between
two stanzas; an invalid policy is refused and the old one stays in force; no
stanza is lost or judged by a half-loaded policy.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from guard.lab.clients import ClientLoop
from guard.lab.topology import Lab, Mode, render_guard_config

PASS_ALL = """
[policy]
name = "pass-all"
default = "drop"

[[rules]]
id = "pass-everything"
rev = 1
why = "Before the reload everything passes."
verdict = "pass"
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
"""


class PolicyLab(Lab):
    """The guard-mode lab with an audit trail and a policy file of our own for each side."""

    def _start_guard(self) -> None:
        self.policy_file = self.folder / "policy.toml"
        self.policy_file.write_text(PASS_ALL)
        self.audit_file = self.folder / "audit.jsonl"
        self.guard_config = self.folder / "guard.toml"
        text = render_guard_config(self.pki, self.authentication, self.policy_file, "info")
        text = text.replace("[guard]\n", f"[guard]\naudit = {json.dumps(str(self.audit_file))}\n", 1)
        self.guard_config.write_text(text)
        from guard.lab import topology

        arguments = [self.python, "-m", "guard", "run", "--config", str(self.guard_config)]
        self._spawn("guard", arguments, [(topology.GUARD_RED_FACING, topology.S2S_PORT),
                                         (topology.GUARD_BLUE_FACING, topology.S2S_PORT)], 20.0)

    def guard_pid(self) -> int:
        return self.intermediary.process.pid

    def audit_records(self) -> list[dict]:
        if not self.audit_file.exists():
            return []
        return [json.loads(line) for line in self.audit_file.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    laboratory = PolicyLab(Mode.GUARD, "certificate", folder=tmp_path_factory.mktemp("reload-lab"),
                           guard_log_level="info")
    try:
        laboratory.start()
    except Exception as error:
        tails = laboratory.log_tails()
        laboratory.stop()
        pytest.fail(f"the lab did not start: {error}\n{tails}", pytrace=False)
    yield laboratory
    laboratory.stop()


def wait_for(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


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
                lab.policy_file.write_text(DROP_MARKED + "\n# rewritten in place\n")
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
    lab.policy_file.write_text(PASS_ALL)
    os.kill(lab.guard_pid(), signal.SIGHUP)
    time.sleep(0.5)
    lab.policy_file.write_text("[policy]\nname = 'broken'\n[[rules]]\nid = 'x'\nverdict = 'teleport'\n")
    os.kill(lab.guard_pid(), signal.SIGHUP)
    assert wait_for(lambda: "reload refused, policies unchanged" in Path(lab.intermediary.log_path).read_text(), 10)
    with ClientLoop() as loop, lab.client(loop, "romeo@red.example") as romeo, \
            lab.client(loop, "juliet@blue.example") as juliet:
        romeo.send_message("juliet@blue.example", "marked but the pass-all policy is still in force")
        juliet.wait_for_body("romeo@red.example", "marked but the pass-all policy is still in force", timeout=20)
