"""
Every core (issue 11): the guard with [guard] workers = 2 between two real
Prosody servers, dialback authentication (so a far server's verification of
a key one worker made may reach the other: the secret is shared).  Messages
cross both ways in order, a killed worker is restarted and traffic goes on,
and the books of all workers add up.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from slixmpp import JID

from guard.lab.topology import Lab, Mode, render_guard_config

from .policylab import wait_for

pytestmark = pytest.mark.guard

MESSAGES = 30


class WorkersLab(Lab):
    """The lab whose guard runs as a supervisor with two worker processes."""

    def _start_guard(self) -> None:
        self.guard_config = self.folder / "guard.toml"
        text = render_guard_config(self.pki, self.authentication, self.policy, self.guard_log_level,
                                   guard_options=self.guard_options, limits=self.limits)
        self.guard_config.write_text(text.replace("[guard]\n", "[guard]\nworkers = 2\n", 1))
        arguments = [self.python, "-m", "guard", "run", "--config", str(self.guard_config),
                     "--pidfile", str(self.pidfile)]
        self._spawn("guard", arguments, [("127.0.3.1", 5269), ("127.0.3.2", 5269)], 20.0)

    def workers(self) -> list[int]:
        """The process ids of the supervisor's live workers, as its status says."""
        return [worker["pid"] for worker in self.guard_status()["workers"] if worker["pid"] is not None]

    def worker_audit_records(self) -> list[dict]:
        """Every record of every worker's audit trail."""
        records = []
        for path in sorted(self.folder.glob("guard-audit.worker-*.jsonl")):
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return records


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Red and blue Prosody with a two-worker guard between them (dialback)."""
    with WorkersLab(Mode.GUARD, "dialback", folder=tmp_path_factory.mktemp("workers")) as laboratory:
        yield laboratory


def bodies_from(client, sender: str, prefix: str) -> list[str]:
    """The bodies ``client`` received from ``sender`` starting with ``prefix``, in the order they arrived."""
    return [message.body for message in client.messages
            if JID(message.sender).bare == sender and message.type != "error" and message.body.startswith(prefix)]


def exchange(lab, client_loop, prefix: str) -> tuple[list[str], list[str]]:
    """Romeo sends MESSAGES numbered messages to Juliet and she sends as many back; what each received, in order."""
    with lab.client(client_loop, "romeo@red.example") as romeo, lab.client(client_loop, "juliet@blue.example") as juliet:
        for number in range(MESSAGES):
            romeo.send_message("juliet@blue.example", f"{prefix} red {number}")
        juliet.wait_for_body("romeo@red.example", f"{prefix} red {MESSAGES - 1}", timeout=60)
        for number in range(MESSAGES):
            juliet.send_message("romeo@red.example", f"{prefix} blue {number}")
        romeo.wait_for_body("juliet@blue.example", f"{prefix} blue {MESSAGES - 1}", timeout=60)
        return bodies_from(juliet, "romeo@red.example", prefix), bodies_from(romeo, "juliet@blue.example", prefix)


def books_add_up(status: dict) -> bool:
    """Every stanza accepted by any worker, live or dead, is delivered, bounced, dropped, in flight or in doubt."""
    books = status["books"]
    return books["accepted"] == (books["delivered"] + books["bounced"] + books["dropped"] + books["in_flight"]
                                 + status["in_doubt"])


def test_messages_cross_both_ways_in_order_through_two_workers(lab, client_loop):
    """Thirty messages each way arrive, each direction in the order sent, through a supervisor and its two workers."""
    to_juliet, to_romeo = exchange(lab, client_loop, "first")
    assert to_juliet == [f"first red {number}" for number in range(MESSAGES)]
    assert to_romeo == [f"first blue {number}" for number in range(MESSAGES)]
    assert wait_for(lambda: lab.guard_status()["books"]["delivered"] >= 2 * MESSAGES, 15), lab.guard_status()
    status = lab.guard_status()
    assert len(status["workers"]) == 2 and all(worker["pid"] for worker in status["workers"])
    assert books_add_up(status), status


def test_a_killed_worker_is_restarted_and_traffic_goes_on(lab, client_loop):
    """SIGKILL to a worker: the supervisor restarts it, the Prosody servers reconnect, and the books still add up."""
    before = lab.guard_status()  # fresh: every worker's books as they are now, quiet
    victim = before["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        pids = [worker["pid"] for worker in lab.guard_status()["workers"]]
        return len(pids) == 2 and victim not in pids and None not in pids

    assert wait_for(replaced, 30), lab.guard_log()
    restarted = lab.guard_status()
    assert sorted(worker["restarts"] for worker in restarted["workers"]) == [0, 1]
    to_juliet, to_romeo = exchange(lab, client_loop, "second")
    assert to_juliet == [f"second red {number}" for number in range(MESSAGES)]
    assert to_romeo == [f"second blue {number}" for number in range(MESSAGES)]
    assert wait_for(lambda: lab.guard_status()["books"]["delivered"] >= 4 * MESSAGES, 15), lab.guard_status()
    after = lab.guard_status()
    assert books_add_up(after), after
    assert after["books"]["accepted"] >= before["books"]["accepted"] + 2 * MESSAGES


def test_every_worker_wrote_its_own_audit_chain(lab):
    """Each worker that ran wrote its start record to its own trail (one hash chain per process)."""
    starts = [record for record in lab.worker_audit_records() if record.get("rule") == "guard:start"]
    assert len(starts) >= 3  # two workers, and the restarted one
    assert sorted(path.name for path in Path(lab.folder).glob("guard-audit.worker-*.jsonl")) == [
        "guard-audit.worker-0.jsonl", "guard-audit.worker-1.jsonl"]
