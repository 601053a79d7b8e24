"""deploy/logrotate/xmpp-guard, run by the real logrotate: the audit trail is renamed, never copied and truncated, and the guard is told."""

import getpass
import grp
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROTATION = Path(__file__).resolve().parents[2] / "deploy" / "logrotate" / "xmpp-guard"
SIGNAL_COMMAND = "systemctl kill --kill-whom=main --signal=SIGHUP xmpp-guard.service 2>/dev/null || true"


def test_rotation_renames_the_trail_keeps_every_record_and_signals_the_guard(tmp_path):
    """Forced rotation moves every record to the rotated file, leaves a new empty trail of mode 0600, and runs the SIGHUP command once."""
    logrotate = shutil.which("logrotate") or shutil.which("/usr/sbin/logrotate")
    if logrotate is None:
        pytest.skip("logrotate not found: install the Debian package logrotate (make test does)")
    text = ROTATION.read_text()
    directives = [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "nocopytruncate" in directives and "copytruncate" not in directives
    assert SIGNAL_COMMAND in text
    trail = tmp_path / "audit.jsonl"
    records = "".join(f'{{"event": "drop", "n": {n}}}\n' for n in range(100))
    trail.write_text(records)
    signalled = tmp_path / "signalled"
    user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    (tmp_path / "rotation").write_text(
        text.replace("/var/log/xmpp-guard/audit.jsonl", str(trail))
            .replace("xmpp-guard xmpp-guard", f"{user} {group}")
            .replace(SIGNAL_COMMAND, f"echo signalled >> {signalled}"))
    result = subprocess.run([logrotate, "--force", "--state", str(tmp_path / "state"), str(tmp_path / "rotation")],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    rotated = [path for path in tmp_path.iterdir() if path.name.startswith("audit.jsonl-")]
    assert len(rotated) == 1 and rotated[0].read_text() == records
    assert (trail.read_text(), stat.S_IMODE(trail.stat().st_mode)) == ("", 0o600)
    assert signalled.read_text() == "signalled\n"
