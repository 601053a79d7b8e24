"""`guard run` with [guard] workers = 2, as processes on loopback: the supervisor, its workers, their status, deaths and restarts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guard.lab.topology import render_guard_config

from .streams.sides import pki

PROJECT = Path(__file__).resolve().parents[2]
RED_TCP = 'listen = "tcp:5269:interface=127.0.3.1"'
BLUE_TCP = 'listen = "tcp:5269:interface=127.0.3.2"'
RED_ADDRESS, BLUE_ADDRESS = "127.0.9.1", "127.0.9.2"


def free_port() -> int:
    """A TCP port free on both of the test's loopback addresses now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((RED_ADDRESS, 0))
            port = probe.getsockname()[1]
        with socket.socket() as other:
            try:
                other.bind((BLUE_ADDRESS, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port on 127.0.9.1 and 127.0.9.2")


def connected(address: str, port: int) -> socket.socket | None:
    """A TCP connection to ``address``:``port``, or None if it is refused."""
    try:
        return socket.create_connection((address, port), timeout=5)
    except ConnectionRefusedError:
        return None


def wait_until(predicate, timeout: float = 15.0):
    """Poll ``predicate`` every 0.1 s for at most ``timeout`` seconds; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


def children(pid: int) -> list[int]:
    """The process ids whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (and is not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Supervised:
    """A `guard run` with two workers on 127.0.9.1 and 127.0.9.2 in ``folder``."""

    def __init__(self, folder: Path, socket_activated: bool = False):
        """``socket_activated``: systemd-socket-activate binds both sockets and passes them named red and blue."""
        self.folder = folder
        self.port = free_port()
        self.status_path = folder / "status.json"
        text = render_guard_config(pki(), "certificate", log_level="info",
                                   guard_options={"audit": str(folder / "audit.jsonl"), "status": str(self.status_path)})
        text = text.replace("[guard]\n", "[guard]\nworkers = 2\n", 1)
        text = text.replace(RED_TCP, f'listen = "tcp:{self.port}:interface={RED_ADDRESS}"')
        text = text.replace(BLUE_TCP, f'listen = "tcp:{self.port}:interface={BLUE_ADDRESS}"')
        launcher = []
        if socket_activated:
            text = text.replace(f'listen = "tcp:{self.port}:interface={RED_ADDRESS}"', 'listen = "systemd:domain=INET:name=red"')
            text = text.replace(f'listen = "tcp:{self.port}:interface={BLUE_ADDRESS}"', 'listen = "systemd:domain=INET:name=blue"')
            launcher = [shutil.which("systemd-socket-activate"), "--listen", f"{RED_ADDRESS}:{self.port}",
                        "--listen", f"{BLUE_ADDRESS}:{self.port}", "--fdname=red:blue", "--setenv=PYTHONPATH"]
        self.metrics_port = free_port()
        text += f'\n[metrics]\nlisten = "tcp:{self.metrics_port}:interface={RED_ADDRESS}"\n'
        self.config = folder / "guard.toml"
        self.config.write_text(text)
        self.log = open(folder / "guard.log", "wb")
        environment = {key: value for key, value in os.environ.items() if not key.startswith("LISTEN_")}
        self.pidfile = folder / "guard.pid"
        self.process = subprocess.Popen([*launcher, sys.executable, "-m", "guard", "run", "--config", str(self.config),
                                         "--pidfile", str(self.pidfile)],
                                        cwd=PROJECT, env=environment | {"PYTHONPATH": str(PROJECT)},
                                        stdout=self.log, stderr=subprocess.STDOUT)

    def workers(self) -> list[int]:
        return children(self.process.pid)

    def status(self) -> dict:
        """Ask the supervisor for a fresh status (SIGUSR1) and read it once it is rewritten."""
        before = self.status_path.stat().st_mtime_ns if self.status_path.exists() else 0
        self.process.send_signal(signal.SIGUSR1)
        assert wait_until(lambda: self.status_path.exists() and self.status_path.stat().st_mtime_ns != before), \
            self.output()
        return json.loads(self.status_path.read_text())

    def output(self) -> str:
        return (self.folder / "guard.log").read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def guard(tmp_path_factory):
    """One supervised guard for the tests below, in their order (the last one stops it)."""
    yield from supervised_guard(tmp_path_factory.mktemp("workers"))


@pytest.fixture
def another_guard(tmp_path):
    """A supervised guard of its own, for a test that kills the supervisor."""
    yield from supervised_guard(tmp_path)


def stop_with_every_worker(supervised):
    """Stop the supervisor, then kill any worker it left behind (a test never leaves a process running)."""
    workers = supervised.workers()
    supervised.stop()
    for pid in workers:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def supervised_guard(folder):
    """Start a supervised guard in ``folder`` and wait for both workers to accept; stop it (and any worker left) after."""
    supervised = Supervised(folder)
    try:
        assert wait_until(lambda: len(supervised.workers()) == 2 and
                          supervised.output().count("accepting on the inherited socket") == 4), supervised.output()
        yield supervised
    finally:
        stop_with_every_worker(supervised)


def test_two_workers_accept_on_the_sockets_the_supervisor_bound(guard):
    """The supervisor binds, the two workers accept: a connection to a side is an inbound stream of one worker, counted in the sum."""
    with socket.create_connection((RED_ADDRESS, guard.port), timeout=5):
        status = wait_until(lambda: (lambda s: s if s["inbound_streams"].get("red") == 1 else None)(guard.status()))
    assert status, guard.output()
    assert sorted(worker["pid"] for worker in status["workers"]) == guard.workers()
    assert [worker["restarts"] for worker in status["workers"]] == [0, 0]
    assert (status["books"], status["in_doubt"]) == (
        {"accepted": 0, "delivered": 0, "bounced": 0, "dropped": 0, "in_flight": 0}, 0)
    assert sorted(path.name for path in guard.folder.glob("audit*")) == ["audit.worker-0.jsonl",
                                                                         "audit.worker-1.jsonl"]


def test_the_secret_is_on_neither_the_command_line_nor_the_environment(guard):
    """The workers got the dialback secret through a pipe: none of its 64 hex digits appear in their arguments or environment."""
    for pid in guard.workers():
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        environment = Path(f"/proc/{pid}/environ").read_bytes().rstrip(b"\0").split(b"\0")
        assert arguments[-2:] == [b"--worker", arguments[-1]] and arguments[-1] in (b"0", b"1")
        assert not any(len(value) >= 64 and all(chr(c) in "0123456789abcdef" for c in value)
                       for entry in arguments + environment for value in entry.split(b"=")[-1:])
        assert Path(f"/proc/{pid}/fd/0").resolve().name.startswith("pipe:")


def test_reload_reaches_every_worker(guard):
    """SIGHUP to the supervisor makes each worker load its policies again."""
    guard.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: guard.output().count("policies reloaded") == 2), guard.output()


def test_guard_status_prints_the_sum_over_the_workers(guard):
    """`guard status --pidfile` waits for the supervisor to collect every worker's status and prints the sum, each worker named."""
    result = subprocess.run([sys.executable, "-m", "guard", "status", "--config", str(guard.config),
                             "--pidfile", str(guard.pidfile)], capture_output=True, text=True, cwd=PROJECT,
                            env=dict(os.environ, PYTHONPATH=str(PROJECT)), timeout=60)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert sorted(worker["pid"] for worker in printed["workers"]) == guard.workers()
    assert [worker["stale"] for worker in printed["workers"]] == [False, False]
    assert set(printed["books"]) == {"accepted", "delivered", "bounced", "dropped", "in_flight"}


def test_the_supervisor_serves_every_workers_metrics(guard):
    """/metrics on the configured listener has each worker's books, labelled by worker, and the count of workers running."""
    import urllib.request

    guard.status()  # each worker writes its metrics with its status
    with urllib.request.urlopen(f"http://{RED_ADDRESS}:{guard.metrics_port}/metrics", timeout=10) as answer:
        page = answer.read().decode()
    assert 'xmpp_guard_books_accepted_total{worker="0"} 0.0' in page
    assert 'xmpp_guard_books_accepted_total{worker="1"} 0.0' in page
    assert "xmpp_guard_workers_running 2.0" in page


def test_a_worker_that_dies_is_restarted_and_counted(guard):
    """A worker killed with SIGKILL is replaced by a new process in its slot, and the status counts the restart."""
    first, second = guard.workers()
    os.kill(first, signal.SIGKILL)

    def replaced():
        status = guard.status()
        pids = [worker["pid"] for worker in status["workers"]]
        return status if None not in pids and first not in pids and second in pids else None

    status = wait_until(replaced)
    assert status, guard.output()
    assert sorted(guard.workers()) == sorted(worker["pid"] for worker in status["workers"])
    assert sorted(worker["restarts"] for worker in status["workers"]) == [0, 1]
    assert "died" in guard.output() and "restarting it in 0.5 s" in guard.output()


def test_sigterm_stops_the_workers_and_the_supervisor(guard):
    """SIGTERM stops every worker (each as a guard stops) and then the supervisor, with status 0 and the final sum written."""
    workers = guard.workers()
    guard.process.send_signal(signal.SIGTERM)
    assert guard.process.wait(timeout=30) == 0, guard.output()
    assert not any(alive(pid) for pid in workers), guard.output()
    assert guard.output().count("books at shutdown") == 2, guard.output()
    assert len(json.loads(guard.status_path.read_text())["workers"]) == 2, guard.output()


def test_workers_stop_when_their_supervisor_is_gone(another_guard):
    """Killed supervisor: the workers see their pipe close and stop, instead of holding the sockets alone."""
    workers = another_guard.workers()
    another_guard.process.kill()
    another_guard.process.wait(timeout=10)
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 20), another_guard.output()


def test_the_supervisor_takes_the_sockets_systemd_passed(tmp_path):
    """Under systemd-socket-activate (listen = "systemd:...:name=red"), the supervisor hands the passed sockets to its workers, which accept on them."""
    if shutil.which("systemd-socket-activate") is None:
        pytest.skip("systemd-socket-activate not found: install the Debian package systemd (make test does)")
    supervised = Supervised(tmp_path, socket_activated=True)
    try:
        # systemd-socket-activate binds, then execs the guard at the first connection.
        first = wait_until(lambda: connected(RED_ADDRESS, supervised.port))
        assert first, "systemd-socket-activate did not listen"
        with first:
            assert wait_until(lambda: supervised.output().count("accepting on the inherited socket of systemd:") == 4,
                              30), supervised.output()
        with socket.create_connection((BLUE_ADDRESS, supervised.port), timeout=5):
            assert wait_until(lambda: supervised.status()["inbound_streams"].get("blue") == 1), supervised.output()
        assert len(supervised.workers()) == 2
    finally:
        stop_with_every_worker(supervised)
