"""
The refer verdict end to end: the guard asks a release authority (the
reference one, over a Unix socket) and relays only what it releases; a
denial, a silent authority or no authority at all lets nothing through, and
each refusal is audited.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from guard.lab.clients import ClientLoop

from .policylab import PolicyLab, wait_for
from .labs import started

REFER_REVIEWS = """
[policy]
name = "refer-reviews"
default = "drop"

[[rules]]
id = "ask-about-reviews"
rev = 2
why = "Messages marked for review are released only by the release authority."
kind = "message"
body_matches = "^review"
verdict = "refer"
keep = ["body"]

[[rules]]
id = "pass-rest"
rev = 1
why = "Everything else passes."
verdict = "pass"
keep = "everything"
"""

RELEASE = """
[release]
endpoint = "unix:path={folder}/release.sock"
timeout = 2.0
"""


class Authority:
    """The reference release authority as a process of its own, listening on the lab's socket."""

    def __init__(self, folder: Path):
        self.socket = folder / "release.sock"
        self.log = folder / "authority.log"
        self.process = None

    def start(self, *options):
        self.stop()
        if self.socket.exists():
            self.socket.unlink()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "guard.reference.authority", "--listen", f"unix:{self.socket}", *options],
            stdout=open(self.log, "a"), stderr=subprocess.STDOUT)
        assert wait_for(self.socket.exists, 15), self.log.read_text()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refer-lab")
    laboratory = PolicyLab(folder, REFER_REVIEWS, REFER_REVIEWS.replace("refer-reviews", "refer-reviews-back"),
                           extra_config=RELEASE)
    laboratory.authority = Authority(folder)
    laboratory.authority.start("--deny-word", "secret")
    yield started(laboratory, also_stop=[laboratory.authority])
    laboratory.stop()
    laboratory.authority.stop()


def exchange(lab, bodies, expected, settle=3.0):
    """Romeo sends each body to Juliet; once the ``expected`` ones arrived and ``settle`` more seconds passed, what she got."""
    with ClientLoop() as loop, lab.client(loop, "romeo@red.example") as romeo, \
            lab.client(loop, "juliet@blue.example") as juliet:
        for body in bodies:
            romeo.send_message("juliet@blue.example", body)

        def received():
            return {m.body for m in list(juliet.messages)} & set(bodies)

        wait_for(lambda: set(expected) <= received(), 20)
        time.sleep(settle)
        return received()


def refusals(lab):
    return [r for r in lab.audit_records() if r["rule"] == "ask-about-reviews" and r["event"] == "drop"]


def test_released_and_denied_by_the_authority(lab):
    """A review the authority releases reaches Juliet; one it denies does not, and the denial is audited."""
    tag = uuid.uuid4().hex[:6]
    released, denied, plain = f"review {tag} routine", f"review {tag} secret", f"plain {tag}"
    before = len(refusals(lab))
    received = exchange(lab, [released, denied, plain], expected={released, plain})
    assert received == {released, plain}
    assert wait_for(lambda: len(refusals(lab)) == before + 1, 10)
    assert "refer:" in (refusals(lab)[-1].get("text") or "")


@pytest.mark.parametrize("authority_state", ["silent", "down"])
def test_silent_or_absent_authority_lets_nothing_through(lab, authority_state):
    """With the authority silent (timeout) or gone (connection refused), no review passes and each is audited."""
    if authority_state == "silent":
        lab.authority.start("--silent")
    else:
        lab.authority.stop()
    try:
        tag = uuid.uuid4().hex[:6]
        reviews = [f"review {tag} {number}" for number in range(3)]
        before = len(refusals(lab))
        received = exchange(lab, reviews + [f"plain {tag}"], expected={f"plain {tag}"})
        assert received == {f"plain {tag}"}
        assert wait_for(lambda: len(refusals(lab)) == before + 3, 15)
    finally:
        lab.authority.start("--deny-word", "secret")
