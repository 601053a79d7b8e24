"""
The audit trail of a running guard between two real Prosody servers: it
rotates by size with the chain carried across files, keeps only the files
asked for, copies every line to syslog (a Unix datagram socket the test
binds), and `guard audit verify` finds the kept files whole.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from guard.edges.audit import MIN_ROTATE_BYTES, rotated_files
from guard.lab.clients import ClientLoop

from .policylab import PolicyLab, wait_for
from .labs import started

DROP_MARKED = """
[policy]
name = "drop-marked"
default = "drop"

[[rules]]
id = "drop-marked-messages"
rev = 1
why = "Messages whose body starts with 'drop' are dropped (and audited)."
kind = "message"
body_matches = "^drop"
verdict = "drop"

[[rules]]
id = "pass-rest"
rev = 1
why = "Everything else passes."
verdict = "pass"
keep = "everything"
"""

KEEP = 2
ID_CHARS = 8000  # each drop record carries the stanza's id: about 8 kB a record, ~30 records a file


class RotatingLab(PolicyLab):
    """The policy lab whose guard rotates its trail at MIN_ROTATE_BYTES, keeps KEEP files and copies to syslog."""

    def __init__(self, folder, syslog_path):
        super().__init__(folder, DROP_MARKED, DROP_MARKED)
        self.syslog_path = syslog_path

    def _spawn(self, name, arguments, listens, timeout):
        if name == "guard":
            keys = (f"audit_rotate_bytes = {MIN_ROTATE_BYTES}\naudit_keep = {KEEP}\naudit_syslog = true\n"
                    f"audit_syslog_address = {json.dumps(str(self.syslog_path))}\n")
            self.guard_config.write_text(self.guard_config.read_text().replace("[guard]\n", "[guard]\n" + keys, 1))
        return super()._spawn(name, arguments, listens, timeout)


@pytest.fixture(scope="module")
def syslog(tmp_path_factory):
    """A Unix datagram socket standing in for /dev/log, bound before the guard starts."""
    path = tmp_path_factory.mktemp("syslog") / "log.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    bound.bind(str(path))
    bound.setblocking(False)
    yield path, bound
    bound.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, syslog):
    laboratory = RotatingLab(tmp_path_factory.mktemp("audit-lab"), syslog[0])
    yield started(laboratory)
    laboratory.stop()


def drain(bound, into: list[str]) -> list[str]:
    """Every datagram waiting on ``bound``, decoded, added to ``into``."""
    while True:
        try:
            into.append(bound.recv(1 << 20).decode())
        except BlockingIOError:
            return into


def test_a_running_guard_rotates_its_chained_trail_and_copies_it_to_syslog(lab, syslog):
    """Drops with long ids rotate the trail several times; the kept files verify as one chain and syslog has every line."""
    _, bound = syslog
    count = 5 * MIN_ROTATE_BYTES // ID_CHARS
    copies: list[str] = []
    with ClientLoop() as loop, lab.client(loop, "romeo@red.example") as romeo, \
            lab.client(loop, "juliet@blue.example") as juliet:
        romeo.send_message("juliet@blue.example", "warm-up")
        juliet.wait_for_body("romeo@red.example", "warm-up", timeout=20)
        for number in range(count):
            romeo.send_xml(f"<message to='juliet@blue.example' type='chat' id='{number:05d}{'x' * ID_CHARS}'>"
                           f"<body>drop {number}</body></message>")
            time.sleep(0.01)
        assert wait_for(lambda: sum('"event": "drop"' in copy for copy in drain(bound, copies)) >= count, 60), \
            lab.log_tails()
    current = lab.audit_file
    kept = rotated_files(str(current))
    assert len(kept) == KEEP, kept
    assert int(kept[-1][-8:]) > KEEP  # older files were rotated away
    files = [*kept, str(current)]
    for name in files:
        with open(name, "rb") as trail:
            assert len(trail.read()) <= MIN_ROTATE_BYTES
    checked = subprocess.run([sys.executable, "-m", "guard", "audit", "verify", *files], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("OK: ") and "continuing a record not given" in checked.stdout
    lines = [line for name in files for line in open(name, encoding="ascii").read().splitlines()]
    assert [json.loads(line)["event"] for line in lines if '"chain-continues"' in line] == ["chain-continues"] * 3
    sent = {copy.split("xmpp-guard-audit: ", 1)[1].rstrip("\x00") for copy in copies}
    assert set(lines) <= sent
