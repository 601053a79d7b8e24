"""Copies of the audit trail to syslog and journald over real Unix datagram sockets, and the [guard] keys that ask for them and for rotation."""

import json
import socket

import pytest

from guard.app.config import ConfigError, audit_options, load_config
from guard.edges.audit import MIN_ROTATE_BYTES, AuditLog, journald_unavailable
from guard.lab.topology import render_guard_config

from .streams.sides import pki


@pytest.fixture
def listener(tmp_path):
    """A Unix datagram socket bound in the test's folder (as syslogd binds /dev/log), with a receive timeout."""
    path = tmp_path / "log.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    bound.bind(str(path))
    bound.settimeout(5)
    yield path, bound
    bound.close()


def test_each_line_goes_to_syslog_exactly_as_written_to_the_file(tmp_path, listener):
    """SysLogHandler sends each chained line, facility daemon, warning for a refusal and info for the rest."""
    path, bound = listener
    trail = AuditLog(str(tmp_path / "audit.jsonl"), syslog_address=str(path))
    trail.record("start", rule="guard:start")
    trail.record("drop", rule="no-drops")
    trail.close()
    written = (tmp_path / "audit.jsonl").read_text().splitlines()
    received = [bound.recv(65536).decode() for _ in written]
    daemon = 3 << 3
    assert received == [f"<{daemon | 6}>xmpp-guard-audit: {written[0]}\x00",
                        f"<{daemon | 4}>xmpp-guard-audit: {written[1]}\x00"]


def test_each_line_goes_to_journald_in_its_native_protocol(tmp_path, listener):
    """A datagram of KEY=value lines per record: MESSAGE is the exact line, with identifier, priority and seq."""
    path, bound = listener
    trail = AuditLog(str(tmp_path / "audit.jsonl"), journal_socket=str(path))
    trail.record("bounce", rule="no-bounces")
    trail.close()
    (line,) = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    assert bound.recv(65536) == (b"MESSAGE=" + line + b"\nSYSLOG_IDENTIFIER=xmpp-guard-audit\nPRIORITY=4\n"
                                 b"XMPP_GUARD_AUDIT_SEQ=1\n")


def test_a_copy_that_cannot_be_sent_is_counted_and_the_file_still_has_the_record(tmp_path):
    """No one listening on the journal socket: the record is in the file, relaying goes on, the loss is counted."""
    trail = AuditLog(str(tmp_path / "audit.jsonl"), journal_socket=str(tmp_path / "nobody.sock"),
                     syslog_address=str(tmp_path / "nobody-either.sock"))
    trail.record("drop", rule="r")
    trail.close()
    assert trail.copies_lost == 2
    assert json.loads((tmp_path / "audit.jsonl").read_text())["rule"] == "r"


def test_journald_is_unavailable_without_its_socket_and_says_why(tmp_path, listener):
    """The check names the missing socket; a bound socket is available."""
    path, _ = listener
    assert journald_unavailable(str(tmp_path / "journal.sock")) == (
        f"{tmp_path / 'journal.sock'} does not exist (journald is not running on this machine)")
    assert journald_unavailable(str(path)) is None


# -- the [guard] keys -----------------------------------------------------------------

def config_with(tmp_path, extra: str, audit=True):
    """A lab configuration whose [guard] table has an audit trail (if ``audit``) and the lines ``extra``."""
    text = render_guard_config(pki(), "certificate", log_level="info",
                               guard_options={"audit": str(tmp_path / "audit.jsonl")} if audit else None)
    path = tmp_path / "guard.toml"
    path.write_text(text.replace("[guard]\n", f"[guard]\n{extra}\n", 1))
    return str(path)


def test_without_the_new_keys_the_trail_neither_rotates_nor_copies(tmp_path):
    """Rotation and copies are off by default, and audit_keep is 10."""
    settings = load_config(config_with(tmp_path, "")).settings
    assert audit_options(settings) == {"rotate_bytes": None, "keep": 10, "syslog_address": None,
                                       "journal_socket": None}


def test_the_keys_reach_the_audit_trail(tmp_path, listener):
    """Rotation, keep and a syslog address given in the configuration become the trail's own."""
    path, _ = listener
    settings = load_config(config_with(tmp_path, f"audit_rotate_bytes = {MIN_ROTATE_BYTES}\naudit_keep = 3\n"
                                                 f"audit_syslog = true\naudit_syslog_address = \"{path}\"")).settings
    assert audit_options(settings) == {"rotate_bytes": MIN_ROTATE_BYTES, "keep": 3, "syslog_address": str(path),
                                       "journal_socket": None}


def test_a_guard_service_sends_its_start_record_to_the_configured_syslog(tmp_path, listener):
    """The service builds its trail from the configuration: its start record reaches the test's syslog socket."""
    from twisted.internet.testing import MemoryReactorClock

    from guard.app.service import GuardService

    path, bound = listener
    service = GuardService(load_config(config_with(tmp_path, f"audit_syslog = true\naudit_syslog_address = \"{path}\"")),
                           MemoryReactorClock())
    service._audit_start()
    service.audit.close()
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert bound.recv(65536).decode().endswith(f"xmpp-guard-audit: {line}\x00")
    assert json.loads(line)["event"] == "start"


@pytest.mark.parametrize("extra, audit, message", [
    (f"audit_rotate_bytes = {MIN_ROTATE_BYTES - 1}", True,
     f"guard.audit_rotate_bytes: must be a whole number of bytes from {MIN_ROTATE_BYTES} to {1 << 40}"),
    ("audit_rotate_bytes = 1e9", True, "guard.audit_rotate_bytes: must be a whole number of bytes"),
    (f"audit_rotate_bytes = {MIN_ROTATE_BYTES}\naudit_keep = 0", True,
     "guard.audit_keep: must be a whole number from 1 to 100000"),
    (f"audit_rotate_bytes = {MIN_ROTATE_BYTES}\naudit_keep = 100001", True,
     "guard.audit_keep: must be a whole number from 1 to 100000"),
    ("audit_keep = 5", True, "guard.audit_keep: needs guard.audit_rotate_bytes"),
    (f"audit_rotate_bytes = {MIN_ROTATE_BYTES}", False, "guard.audit_rotate_bytes: needs guard.audit"),
    ("audit_syslog = \"yes\"", True, "guard.audit_syslog: must be true or false"),
    ("audit_syslog = true\naudit_syslog_address = \"/nonexistent/log\"", True,
     "guard.audit_syslog: /nonexistent/log does not exist (no syslog daemon listening there"),
    ("audit_syslog = true\naudit_syslog_address = \"loghost\"", True,
     "guard.audit_syslog_address: must be a Unix socket path"),
])
def test_bad_audit_keys_are_refused_naming_the_key(tmp_path, extra, audit, message):
    """Each out-of-range or inconsistent audit key is a ConfigError naming guard.<key>."""
    with pytest.raises(ConfigError, match=f"guard.toml: {message}".replace("(", r"\(").replace(")", r"\)")):
        load_config(config_with(tmp_path, extra, audit=audit))


def test_journald_is_used_where_it_runs_and_refused_with_the_reason_where_it_does_not(tmp_path):
    """With the journal socket present the trail copies to it; without it, the config check says why rather than starting without it."""
    from guard.edges.audit import JOURNAL_SOCKET

    path = config_with(tmp_path, "audit_journald = true")
    if journald_unavailable() is None:
        assert audit_options(load_config(path).settings)["journal_socket"] == JOURNAL_SOCKET
        return
    with pytest.raises(ConfigError, match=f"guard.audit_journald: journald is unavailable: {JOURNAL_SOCKET} "
                                          f"does not exist"):
        load_config(path)


def test_a_udp_syslog_address_is_accepted_as_host_and_port(tmp_path):
    """audit_syslog_address = "127.0.0.1:5514" is a UDP address for SysLogHandler."""
    settings = load_config(config_with(tmp_path, "audit_syslog = true\naudit_syslog_address = \"127.0.0.1:5514\"")).settings
    assert audit_options(settings)["syslog_address"] == ("127.0.0.1", 5514)
