"""deploy/logrotate/xmpp-guard, run by the real logrotate on a trail the guard's AuditLog writes: renamed, never copied and truncated, and the chain verifies across the rotation."""

import getpass
import grp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from guard.edges.audit import AuditLog

PROJECT = Path(__file__).resolve().parents[2]
ROTATION = PROJECT / "deploy" / "logrotate" / "xmpp-guard"


def directives(text: str) -> list[str]:
    """The first word of every line of a logrotate file that is not a comment."""
    return [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_rotation_neither_truncates_nor_signals():
    """The rotation renames the trail (no copytruncate), lets the guard create the next file (nocreate) and sends no SIGHUP, which would reload the policies."""
    words = directives(ROTATION.read_text())
    assert ("nocopytruncate" in words, "copytruncate" in words, "nocreate" in words) == (True, False, True)
    assert "postrotate" not in words and "create" not in words


def test_a_trail_rotated_by_logrotate_keeps_every_record_and_verifies_whole(tmp_path):
    """Records written before a forced logrotate run land in the rotated file, those after in a new one, and `guard audit verify` finds the chain whole across both."""
    logrotate = shutil.which("logrotate") or shutil.which("/usr/sbin/logrotate")
    if logrotate is None:
        pytest.skip("logrotate not found: install the Debian package logrotate (make test does)")
    trail = tmp_path / "audit.jsonl"
    user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    (tmp_path / "rotation").write_text(ROTATION.read_text().replace("/var/log/xmpp-guard/audit.jsonl", str(trail))
                                       .replace("su xmpp-guard xmpp-guard", f"su {user} {group}"))
    audit = AuditLog(str(trail))
    for number in range(50):
        audit.record("drop", rule="test:before", rev=1, number=number)
    before = trail.read_text()
    result = subprocess.run([logrotate, "--force", "--state", str(tmp_path / "state"), str(tmp_path / "rotation")],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr, trail.exists()) == (0, "", False)
    rotated = [path for path in tmp_path.iterdir() if path.name.startswith("audit.jsonl-")]
    assert len(rotated) == 1 and rotated[0].read_text() == before
    for number in range(50):
        audit.record("drop", rule="test:after", rev=1, number=number)
    audit.close()
    rules = [json.loads(line).get("rule") for line in trail.read_text().splitlines()]
    assert rules.count("test:after") == 50 and "test:before" not in rules
    verify = subprocess.run([sys.executable, "-m", "guard", "audit", "verify", str(rotated[0]), str(trail)],
                            capture_output=True, text=True, cwd=PROJECT, timeout=60,
                            env=os.environ | {"PYTHONPATH": str(PROJECT)})
    assert verify.returncode == 0, verify.stdout + verify.stderr
