"""
Socket activation without a running systemd: systemd-socket-activate (from
Debian's systemd package) binds the guard's two S2S sockets and passes them
as LISTEN_FDS with the names "red" and "blue", as xmpp-guard-red.socket and
xmpp-guard-blue.socket do; the guard's configuration adopts them with
``listen = "systemd:domain=INET:name=..."`` and real Prosody servers federate
through it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from guard.lab.topology import GUARD_BLUE_FACING, GUARD_RED_FACING, S2S_PORT, Lab, Mode, render_guard_config

pytestmark = pytest.mark.guard


class SocketActivatedLab(Lab):
    """The lab whose guard gets its listening sockets from systemd-socket-activate, by name, and runs with no capability."""

    def _start_guard(self) -> None:
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            pytest.skip("systemd-socket-activate not found: install the Debian package systemd (make test does)")
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv not found: install the Debian package util-linux")
        self.guard_config = self.folder / "guard.toml"
        text = render_guard_config(self.pki, self.authentication, self.policy, self.guard_log_level,
                                   guard_options=self.guard_options, limits=self.limits)
        for side, address in (("red", GUARD_RED_FACING), ("blue", GUARD_BLUE_FACING)):
            bound_by_the_guard = f'listen = "tcp:{S2S_PORT}:interface={address}"'
            assert bound_by_the_guard in text
            text = text.replace(bound_by_the_guard, f'listen = "systemd:domain=INET:name={side}"')
        self.guard_config.write_text(text)
        arguments = [activate, "--listen", f"{GUARD_RED_FACING}:{S2S_PORT}",
                     "--listen", f"{GUARD_BLUE_FACING}:{S2S_PORT}", "--fdname=red:blue",
                     "--setenv=PYTHONPATH", "--setenv=PYTHONUNBUFFERED",
                     # As CapabilityBoundingSet= (empty) and NoNewPrivileges=yes in xmpp-guard.service.
                     setpriv, "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs",
                     self.python, "-m", "guard", "run", "--config", str(self.guard_config), "--pidfile", str(self.pidfile)]
        self._spawn("guard", arguments, [(GUARD_RED_FACING, S2S_PORT), (GUARD_BLUE_FACING, S2S_PORT)], 20.0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Red and blue Prosody with the socket-activated guard between them."""
    with SocketActivatedLab(Mode.GUARD, "certificate", folder=tmp_path_factory.mktemp("socket-activation")) as laboratory:
        yield laboratory


def guard_environment(pid: int) -> dict[str, str]:
    """The environment the guard process runs with."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in entries if entry)


def guard_privileges(pid: int) -> dict[str, str]:
    """The capability sets and the no-new-privileges flag of the guard process, as /proc/PID/status gives them."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    return {name: fields[name].strip() for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")}


def wait_until(predicate, timeout: float) -> bool:
    """Poll ``predicate`` every 0.1 s for at most ``timeout`` seconds; whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_the_guard_adopts_the_sockets_passed_to_it_by_name(lab):
    """The guard process is the one systemd-socket-activate became, it was passed two sockets named red and blue, and it listens on those."""
    process = lab.guard_process

    def arguments():
        return Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")

    # systemd-socket-activate execs the guard (same pid) at the first connection: the lab's readiness probe.
    assert wait_until(lambda: arguments()[1:4] == [b"-m", b"guard", b"run"], 10), arguments()
    environment = guard_environment(process.pid)
    assert (environment["LISTEN_FDS"], environment["LISTEN_FDNAMES"], environment["LISTEN_PID"]) == (
        "2", "red:blue", str(process.pid))
    assert wait_until(lambda: "listening on systemd:domain=INET:name=blue" in lab.guard_log(), 10), lab.guard_log()
    assert "listening on systemd:domain=INET:name=red" in lab.guard_log()


def test_the_guard_runs_with_no_capability_at_all(lab):
    """With its sockets passed, the guard runs (and relays, below) with every capability set empty and no way to gain one."""
    none = "0000000000000000"
    assert guard_privileges(lab.guard_process.pid) == {
        "CapInh": none, "CapPrm": none, "CapEff": none, "CapBnd": none, "CapAmb": none, "NoNewPrivs": "1"}


def test_prosody_federates_both_ways_through_the_socket_activated_guard(lab, client_loop):
    """A message from romeo@red.example reaches juliet@blue.example and her answer reaches him, through the adopted sockets."""
    with lab.client(client_loop, "romeo@red.example") as romeo, lab.client(client_loop, "juliet@blue.example") as juliet:
        romeo.send_message("juliet@blue.example", "through a socket systemd bound")
        juliet.wait_for_body("romeo@red.example", "through a socket systemd bound", timeout=30)
        juliet.send_message("romeo@red.example", "and back")
        romeo.wait_for_body("juliet@blue.example", "and back", timeout=30)
    assert wait_until(lambda: lab.guard_books().get("delivered", 0) >= 2, 10), lab.guard_books()
