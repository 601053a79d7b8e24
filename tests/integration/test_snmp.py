"""
SNMP against a running guard: a real ``snmpd`` (Debian net-snmp) started by
the test with its AgentX master on a Unix socket in a temporary folder and
SNMPv2c on 127.0.0.1 (a free port, no other listener), the lab's guard
(a real process, certificate authentication, real Prosodies) as its AgentX
subagent, and the values read with real ``snmpwalk`` and ``snmpget``.

    .venv/bin/pytest tests/integration/test_snmp.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import guard
from guard.lab import topology
from guard.lab.prosody import stop_process
from guard.lab.topology import Lab, Mode

from tests.integration.hostile import lab_lock_held_here
from tests.unit.test_snmp import need
from .labs import started

pytestmark = pytest.mark.guard

PROJECT = Path(__file__).resolve().parents[2]
MIBS = PROJECT / "deploy" / "snmp"
ROMEO = "romeo@red.example"
JULIET = "juliet@blue.example"
COMMUNITY = "guard-test"
APPL = "1.3.6.1.2.1.27.1.1"
ASSOC = "1.3.6.1.2.1.27.2.1"
BOOKS = "1.3.6.1.4.1.99999.1.1"
VERDICTS = "1.3.6.1.4.1.99999.1.2.1"
WAIT_SECONDS = 30.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Snmpd:
    """One snmpd in the foreground: AgentX master on ``socket_path``, v2c read-only for COMMUNITY on 127.0.0.1:``port``."""

    def __init__(self, folder: Path, config_text: str | None = None):
        """``config_text``: the configuration, with {port} and {socket} where they go (default: v2c for COMMUNITY)."""
        self.executable = need("snmpd", "snmpd")
        self.folder = folder
        self.socket_path = folder / "agentx" / "master"
        self.port = free_udp_port()
        self.config = folder / "snmpd.conf"
        self.log_path = folder / "snmpd.log"
        self.process = None
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if config_text is None:
            config_text = ("agentaddress udp:127.0.0.1:{port}\n"
                           "master agentx\n"
                           "agentXSocket {socket}\n"
                           "agentXPerms 0600 0700\n"
                           f"rocommunity {COMMUNITY} 127.0.0.1\n")
        self.config.write_text(config_text.format(port=self.port, socket=self.socket_path)
                               + "dontLogTCPWrappersConnects yes\n")

    def start(self):
        environment = dict(os.environ, SNMP_PERSISTENT_DIR=str(self.folder / "persistent"), MIBS="")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([self.executable, "-f", "-Lo", "-C", "-c", str(self.config)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=environment, start_new_session=True)
        deadline = time.monotonic() + 10
        while not self.socket_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"snmpd did not open {self.socket_path}: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self):
        if self.process is not None:
            stop_process(self.process)
            self.process = None


V2C = ("-v2c", "-c", COMMUNITY)


def snmp(tool, *arguments, mibs=None, timeout=20, security=V2C):
    """Run snmpwalk/snmpget (v2c unless ``security`` says otherwise) against the test's snmpd; its stdout lines."""
    executable = need(tool, "snmp")
    names = ["-m", mibs, "-M", f"+{MIBS}"] if mibs else ["-m", "", "-On"]
    result = subprocess.run([executable, *security, "-t", "2", "-r", "1", *names, *arguments],
                            capture_output=True, text=True, timeout=timeout)
    return result.stdout.splitlines() or result.stderr.splitlines()


def walk(agent, oid, mibs=None, security=V2C):
    return snmp("snmpwalk", f"127.0.0.1:{agent.port}", oid, mibs=mibs, security=security)


def values(lines) -> dict[str, str]:
    """{numeric OID without the leading dot: value text} from -On output."""
    found = {}
    for line in lines:
        name, _, value = line.partition(" = ")
        found[name.lstrip(".")] = value
    return found


def wait_for(condition, what, timeout=WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"waited {timeout} s for {what}")


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory):
    """A real snmpd for the module, AgentX master in a temporary folder."""
    agent = Snmpd(tmp_path_factory.mktemp("snmpd")).start()
    yield agent
    agent.stop()


def start_lab(snmpd, folder, **settings):
    """A lab's guard (certificate authentication) with ``[snmp] agentx`` at ``snmpd``; Lab keyword ``settings``."""
    if lab_lock_held_here():
        pytest.skip("another lab of this pytest session is still running; run this module on its own")
    block = f'\n[snmp]\nagentx = "unix:path={snmpd.socket_path}"\nping_interval = 2\n'
    original = topology.render_guard_config
    laboratory = Lab(Mode.GUARD, "certificate", folder=folder, guard_log_level="info", **settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(topology, "render_guard_config", lambda *args, **kwargs: original(*args, **kwargs) + block)
        return started(laboratory, "the SNMP lab")


@pytest.fixture(scope="module")
def lab(snmpd, tmp_path_factory):
    """The lab's guard with ``[snmp] agentx`` at the test's snmpd."""
    laboratory = start_lab(snmpd, tmp_path_factory.mktemp("lab-snmp"))
    yield laboratory
    laboratory.stop()


def appl_row(snmpd):
    return values(walk(snmpd, APPL))


def test_appl_table_shows_the_running_guard(lab, snmpd):
    """applTable row 1 names the guard, its version and up(1), read with snmpwalk through snmpd's AgentX master."""
    row = wait_for(lambda: appl_row(snmpd).get(f"{APPL}.2.1"), "the guard's applTable row")
    assert row == 'STRING: "xmpp-guard"'
    row = appl_row(snmpd)
    assert row[f"{APPL}.4.1"] == f'STRING: "{guard.__version__}"'
    assert row[f"{APPL}.6.1"] == "INTEGER: 1"
    assert row[f"{APPL}.5.1"].startswith("Timeticks: ")
    got = snmp("snmpget", f"127.0.0.1:{snmpd.port}", f"{APPL}.6.1", f"{APPL}.2.7")
    assert got == [f".{APPL}.6.1 = INTEGER: 1",
                   f".{APPL}.2.7 = No Such Object available on this agent at this OID"]


def test_assoc_rows_appear_for_the_streams_of_a_message_and_the_books_move(lab, snmpd, romeo, juliet):
    """After Romeo's message crosses, assocTable has one row per open stream (red.example inbound, blue.example
    outbound), and the books and the red->blue passed verdicts counted it."""
    wait_for(lambda: appl_row(snmpd).get(f"{APPL}.2.1"), "the guard's applTable row")
    before = values(walk(snmpd, BOOKS))
    verdicts_before = values(walk(snmpd, VERDICTS))
    body = f"snmp {uuid.uuid4()}"
    romeo.send_message(JULIET, body)
    juliet.wait_for_body(ROMEO, body)

    def rows():
        found = values(walk(snmpd, ASSOC))
        remote = {name[len(f"{ASSOC}.2."):]: value for name, value in found.items() if name.startswith(f"{ASSOC}.2.")}
        kinds = {name[len(f"{ASSOC}.4."):]: value for name, value in found.items() if name.startswith(f"{ASSOC}.4.")}
        pairs = {(remote[index], kinds.get(index)) for index in remote}
        wanted = {('STRING: "red.example"', "INTEGER: 4"), ('STRING: "blue.example"', "INTEGER: 3")}
        return (remote, found) if wanted <= pairs else None

    remote, found = wait_for(rows, "assocTable rows for red.example (inbound) and blue.example (outbound)")
    row = appl_row(snmpd)
    inbound, outbound = (int(row[f"{APPL}.{column}.1"].split()[-1]) for column in (8, 9))
    assert len(remote) == inbound + outbound
    accumulated_in, accumulated_out = (int(row[f"{APPL}.{column}.1"].split()[-1]) for column in (10, 11))
    assert accumulated_in >= inbound >= 1 and accumulated_out >= outbound >= 1
    assert row[f"{APPL}.14.1"] == row[f"{APPL}.15.1"] == "Counter32: 0"
    # applLastInboundActivity / applLastOutboundActivity: the sysUpTime of the last stanza accepted / delivered.
    started_at, last_in, last_out = (int(row[f"{APPL}.{column}.1"].split("(")[1].split(")")[0])
                                     for column in (5, 12, 13))
    assert last_in > 0 and last_out > 0 and min(last_in, last_out) >= started_at
    assert all(found[f"{ASSOC}.3.{index}"] == "OID: .1.3.6.1.2.1.27.4.5269" for index in remote)
    after = values(walk(snmpd, BOOKS))
    accepted, delivered = f"{BOOKS}.1.0", f"{BOOKS}.2.0"
    assert int(after[accepted].split()[-1]) > int(before[accepted].split()[-1])
    assert int(after[delivered].split()[-1]) > int(before[delivered].split()[-1])
    verdicts_after = values(walk(snmpd, VERDICTS))
    assert verdicts_after[f"{VERDICTS}.2.1"] == 'STRING: "red->blue"'
    passed = f"{VERDICTS}.3.1"
    assert int(verdicts_after[passed].split()[-1]) > int(verdicts_before[passed].split()[-1])


def test_mib_files_name_what_snmpwalk_reads(lab, snmpd):
    """snmpwalk loading XMPP-GUARD-MIB and NETWORK-SERVICES-MIB from deploy/snmp prints the guard's objects by name."""
    wait_for(lambda: appl_row(snmpd).get(f"{APPL}.2.1"), "the guard's applTable row")
    named = walk(snmpd, "1.3.6.1.4.1.99999", mibs="+XMPP-GUARD-MIB:NETWORK-SERVICES-MIB")
    assert any(line.startswith("XMPP-GUARD-MIB::xgBooksAccepted.0 = Counter64: ") for line in named)
    assert "XMPP-GUARD-MIB::xgVerdictDirection.1 = STRING: red->blue" in named
    named = walk(snmpd, "NETWORK-SERVICES-MIB::applOperStatus", mibs="+XMPP-GUARD-MIB:NETWORK-SERVICES-MIB")
    assert named == ["NETWORK-SERVICES-MIB::applOperStatus.1 = INTEGER: up(1)"]


def test_the_guard_registers_again_after_snmpd_restarts(lab, snmpd):
    """When snmpd stops and starts again on the same socket, the guard's subagent connects, opens and registers anew."""
    wait_for(lambda: appl_row(snmpd).get(f"{APPL}.2.1"), "the guard's applTable row")
    snmpd.stop()
    snmpd.start()
    row = wait_for(lambda: appl_row(snmpd).get(f"{APPL}.2.1"), "the guard's applTable row after the restart", 90)
    assert row == 'STRING: "xmpp-guard"'
    assert lab.guard_process.poll() is None
