"""
The whole lab on loopback: a DNS responder, red and blue Prosody servers and,
between them, nothing ("direct"), a dumb TCP relay ("relay") or the guard
("guard").

    red.example   Prosody 127.0.1.1 (s2s 5269, c2s 15222) + conference.red.example
    blue.example  Prosody 127.0.2.1 (s2s 5269, c2s 15222) + conference.blue.example
    guard/relay   127.0.3.1:5269 faces red (stands in for blue's domains)
                  127.0.3.2:5269 faces blue (stands in for red's domains)
    DNS           127.0.1.53:5300 UDP+TCP, SRV and A for the four domains

A ``Lab`` starts everything it needs in order, stops everything it started
(always, in reverse order) and can dump the tail of every log.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from guard.lab.clients import ClientLoop, LabClient
from guard.lab.pki import BLUE_DOMAINS, RED_DOMAINS, LabPki, write_lab_pki
from guard.lab.prosody import (
    LabError,
    ProsodyServer,
    ProsodySettings,
    cpu_seconds,
    resident_kib,
    stop_process,
    tail,
    wait_for_ports,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = PROJECT_ROOT / "policies" / "allow-all.toml"

DNS_ADDRESS = "127.0.1.53"
DNS_PORT = 5300
RED_ADDRESS = "127.0.1.1"
BLUE_ADDRESS = "127.0.2.1"
GUARD_RED_FACING = "127.0.3.1"  # where red's servers reach blue's domains
GUARD_BLUE_FACING = "127.0.3.2"  # where blue's servers reach red's domains
S2S_PORT = 5269
C2S_PORT = 15222

PASSWORD = "lab-password"
USERS = {"red": ("romeo",), "blue": ("juliet",)}


LOCK_PATH = Path(tempfile.gettempdir()) / "xmpp-guard-lab.lock"
LOCK_TIMEOUT = float(os.environ.get("GUARD_LAB_LOCK_TIMEOUT", "900"))


class LabLock:
    """Only one lab at a time on this machine: its addresses are fixed.

    An exclusive flock on a file in the temp folder, waited for (bounded), so
    that concurrent test runs, demos and benchmarks take turns instead of
    failing on busy ports.
    """

    def __init__(self, path: Path = LOCK_PATH):
        self.path = path
        self._handle = None

    def acquire(self, timeout: float = LOCK_TIMEOUT) -> None:
        handle = open(self.path, "a+")
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if self._held_by_this_process():
                    handle.close()
                    raise LabError(f"a lab of this very process still holds {self.path}: stop it first "
                                   "(waiting would wait for ourselves)")
                if time.monotonic() > deadline:
                    handle.close()
                    raise LabError(f"another lab held {self.path} for more than {timeout} s")
                if not announced:
                    print(f"lab: waiting (at most {timeout:.0f} s) for another lab to finish ({self.path})",
                          file=sys.stderr, flush=True)  # fmt: skip
                    announced = True
                time.sleep(0.25)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def _held_by_this_process(self) -> bool:
        try:
            return self.path.read_text().strip() == str(os.getpid())
        except OSError:
            return False

    def release(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _busy(address: str, port: int) -> OSError | None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            return error
    return None


def ensure_free(addresses: list[tuple[str, int]], timeout: float = 30.0) -> None:
    """Wait (bounded) until nothing listens on the lab's addresses, or raise LabError naming one."""
    deadline = time.monotonic() + timeout
    for address, port in addresses:
        while (error := _busy(address, port)) is not None:
            if time.monotonic() > deadline:
                raise LabError(
                    f"{address}:{port} is already in use ({error}); is another lab, guard or server running?"
                )
            time.sleep(0.25)


class Mode(enum.Enum):
    DIRECT = "direct"
    RELAY = "relay"
    GUARD = "guard"


AUTHENTICATIONS = ("certificate", "dialback")

# The [limits] the lab's guard runs with unless a Lab is given overrides.
LAB_LIMITS: dict[str, int | float] = {
    "stanza_bytes": 524288,
    "outbound_queue": 1000,
    "connect_timeout": 10.0,
    "tls_timeout": 10.0,
    "auth_timeout": 30.0,
    "idle_timeout": 900.0,
}


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escaping is a subset TOML accepts)."""
    return json.dumps(str(text), ensure_ascii=False)


def render_guard_config(
    pki: LabPki,
    authentication: str,
    policy: Path | dict[str, Path] = DEFAULT_POLICY,
    log_level: str = "debug",
    guard_options: dict[str, str] | None = None,
    limits: dict[str, int | float] | None = None,
) -> str:
    """The guard's TOML configuration for the lab topology.

    ``policy`` is one file for both sides or ``{"red": ..., "blue": ...}``.
    ``guard_options`` adds [guard] keys (``audit``, ``audit_failure``,
    ``status``, ``dialback_secret``); ``limits`` overrides [limits] keys.
    """
    if authentication not in AUTHENTICATIONS:
        raise ValueError(f"authentication must be one of {AUTHENTICATIONS}, not {authentication!r}")
    chosen_limits = dict(LAB_LIMITS)
    chosen_limits.update(limits or {})
    sides = {
        "red": (GUARD_RED_FACING, RED_DOMAINS, RED_ADDRESS, BLUE_DOMAINS),
        "blue": (GUARD_BLUE_FACING, BLUE_DOMAINS, BLUE_ADDRESS, RED_DOMAINS),
    }
    lines = [
        "# Guard configuration written by guard.lab.topology for the loopback lab.",
        "[guard]",
        f"log_level = {toml_string(log_level)}",
    ]
    lines += [f"{key} = {toml_string(value)}" for key, value in (guard_options or {}).items() if value is not None]
    lines += ["", "[limits]"]
    lines += [f"{name} = {value!r}" for name, value in chosen_limits.items()]
    for side, (listen_address, hosted, server_address, stood_in_for) in sides.items():
        facing = pki.guard_facing(side)
        lines += [
            "",
            f"[sides.{side}]",
            f"listen = {toml_string(f'tcp:{S2S_PORT}:interface={listen_address}')}",
            f"ca = {toml_string(str(pki.side_ca(side)))}",
            f"authentication = {toml_string(authentication)}",
            f"policy = {toml_string(str(policy[side] if isinstance(policy, dict) else policy))}",
            "",
            f"[sides.{side}.domains]",
        ]
        lines += [f"{toml_string(domain)} = {toml_string(f'{server_address}:{S2S_PORT}')}" for domain in hosted]
        lines += [
            "",
            f"[[sides.{side}.certificates]]",
            f"domains = [{', '.join(toml_string(domain) for domain in stood_in_for)}]",
            f"certificate = {toml_string(str(facing.certificate))}",
            f"key = {toml_string(str(facing.key))}",
        ]
    return "\n".join(lines) + "\n"


def dns_table(mode: Mode) -> dict[str, str]:
    """Where each domain's S2S server is, as the Prosodies should see it."""
    if mode is Mode.DIRECT:
        red_at, blue_at = RED_ADDRESS, BLUE_ADDRESS
    else:
        red_at, blue_at = GUARD_BLUE_FACING, GUARD_RED_FACING
    table = {domain: f"{red_at}:{S2S_PORT}" for domain in RED_DOMAINS}
    table.update({domain: f"{blue_at}:{S2S_PORT}" for domain in BLUE_DOMAINS})
    return table


def _child_environment() -> dict[str, str]:
    environment = dict(os.environ)
    existing = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + existing if existing else "")
    environment.setdefault("PYTHONUNBUFFERED", "1")
    return environment


@dataclass
class _Child:
    """A Python subprocess of the lab (DNS, relay or guard) and its log file."""

    name: str
    process: subprocess.Popen
    log_path: Path


class Lab:
    """Red, blue and what stands between them, all on loopback."""

    def __init__(
        self,
        mode: Mode | str = Mode.DIRECT,
        authentication: str = "certificate",
        folder: Path | None = None,
        prosody_log_level: str = "debug",
        guard_log_level: str = "debug",
        policy: Path | dict[str, Path] = DEFAULT_POLICY,
        python: str = sys.executable,
        server_certificates: dict[str, str] | None = None,
        guard_options: dict[str, str | None] | None = None,
        limits: dict[str, int | float] | None = None,
    ):
        """``server_certificates`` swaps a side's Prosody certificate for another
        LabPki attribute, for hostile tests: ``{"red": "red_from_blue_ca"}``.

        ``guard_options`` sets [guard] keys of the guard's configuration; by
        default the lab's guard writes its status to ``guard-status.json`` and
        its audit trail to ``guard-audit.jsonl`` in the lab folder (a value of
        None removes the key).  ``limits`` overrides [limits] keys.
        """
        self.mode = Mode(mode)
        if authentication not in AUTHENTICATIONS:
            raise ValueError(f"authentication must be one of {AUTHENTICATIONS}")
        self.authentication = authentication
        self._own_folder = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix=f"guard-lab-{self.mode.value}-")).resolve()
        self.prosody_log_level = prosody_log_level
        self.guard_log_level = guard_log_level
        # One policy file for both sides, or one per side: {"red": ..., "blue": ...}.
        self.policy = {side: Path(path) for side, path in policy.items()} if isinstance(policy, dict) else Path(policy)
        self.server_certificates = dict(server_certificates or {})
        for side, attribute in self.server_certificates.items():
            if side not in ("red", "blue") or attribute not in LabPki.__dataclass_fields__:
                raise ValueError(f"unknown side or certificate: {side}={attribute}")
        self.python = python
        self.guard_options: dict[str, str | None] = {
            "status": str(self.folder / "guard-status.json"),
            "audit": str(self.folder / "guard-audit.jsonl"),
        }
        self.guard_options.update(guard_options or {})
        self.limits = dict(limits or {})
        self.pidfile = self.folder / "guard.pid"
        self.pki: LabPki | None = None
        self.red: ProsodyServer | None = None
        self.blue: ProsodyServer | None = None
        self.guard_config: Path | None = None
        self._children: list[_Child] = []
        self._started: list = []  # things to stop, in start order
        self._lock = LabLock()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> "Lab":
        """Start every peer; on any failure stop what was started and raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self._lock.acquire()
        self._started.append(self._lock)
        addresses = [(DNS_ADDRESS, DNS_PORT), (RED_ADDRESS, S2S_PORT), (RED_ADDRESS, C2S_PORT),
                     (BLUE_ADDRESS, S2S_PORT), (BLUE_ADDRESS, C2S_PORT)]  # fmt: skip
        if self.mode is not Mode.DIRECT:
            addresses += [(GUARD_RED_FACING, S2S_PORT), (GUARD_BLUE_FACING, S2S_PORT)]
        ensure_free(addresses)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pki = write_lab_pki(self.folder / "pki")
        self._start_dns()
        self.red = self._prosody("red", "red.example", "conference.red.example", RED_ADDRESS)
        self.blue = self._prosody("blue", "blue.example", "conference.blue.example", BLUE_ADDRESS)
        for server, side in ((self.red, "red"), (self.blue, "blue")):
            for user in USERS[side]:
                server.register(user, PASSWORD)
            server.start()
            self._started.append(server)
        if self.mode is Mode.RELAY:
            self._start_relay()
        elif self.mode is Mode.GUARD:
            self._start_guard()

    def stop(self) -> None:
        """Stop everything started, newest first; never raises."""
        while self._started:
            item = self._started.pop()
            try:
                if isinstance(item, ProsodyServer):
                    item.stop()
                elif isinstance(item, LabLock):
                    item.release()
                else:
                    stop_process(item.process)
            except Exception as error:  # keep stopping the rest
                print(f"lab: could not stop {item!r}: {error}", file=sys.stderr)

    def __enter__(self) -> "Lab":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _prosody(self, name: str, domain: str, muc_domain: str, address: str) -> ProsodyServer:
        assert self.pki is not None
        # Guard mode: each Prosody trusts only its own side's CA (the guard's
        # certificates facing it come from there).  Direct/relay: both CAs, so
        # certificates authenticate end to end -- except in dialback mode, where
        # each trusts only its own CA so that the peer's certificate does not
        # validate and genuine dialback (with db:verify callbacks) must run.
        if self.mode is Mode.GUARD or self.authentication == "dialback":
            cafile = self.pki.side_ca(name)
        else:
            cafile = self.pki.both_cas
        settings = ProsodySettings(
            name=name,
            domain=domain,
            muc_domain=muc_domain,
            address=address,
            certificate=getattr(self.pki, self.server_certificates[name])
            if name in self.server_certificates
            else self.pki.server(name),
            cafile=cafile,
            secure_auth=self.authentication == "certificate",
            log_level=self.prosody_log_level,
            dns_forward=f"{DNS_ADDRESS}@{DNS_PORT}",
            c2s_port=C2S_PORT,
            s2s_port=S2S_PORT,
        )
        return ProsodyServer(settings, self.folder / name)

    def _spawn(self, name: str, arguments: list[str], listens: list[tuple[str, int]], timeout: float) -> _Child:
        log_path = self.folder / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                arguments,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
                env=_child_environment(),
                start_new_session=True,
            )
        child = _Child(name, process, log_path)
        self._children.append(child)
        self._started.append(child)
        for address, port in listens:
            wait_for_ports(address, [port], timeout, process, name)
        return child

    def _start_dns(self) -> None:
        arguments = [self.python, "-m", "guard.lab.dns", "--listen", DNS_ADDRESS, "--port", str(DNS_PORT)]
        for domain, where in dns_table(self.mode).items():
            arguments += ["--domain", f"{domain}={where}"]
        self._spawn("dns", arguments, [(DNS_ADDRESS, DNS_PORT)], 15.0)

    def _start_relay(self) -> None:
        arguments = [
            self.python, "-m", "guard.lab.tcprelay",
            "--route", f"{GUARD_RED_FACING}:{S2S_PORT}={BLUE_ADDRESS}:{S2S_PORT}",
            "--route", f"{GUARD_BLUE_FACING}:{S2S_PORT}={RED_ADDRESS}:{S2S_PORT}",
        ]  # fmt: skip
        self._spawn("relay", arguments, [(GUARD_RED_FACING, S2S_PORT), (GUARD_BLUE_FACING, S2S_PORT)], 15.0)

    def _start_guard(self) -> None:
        assert self.pki is not None
        self.guard_config = self.folder / "guard.toml"
        self.guard_config.write_text(
            render_guard_config(self.pki, self.authentication, self.policy, self.guard_log_level,
                                guard_options=self.guard_options, limits=self.limits)
        )
        # GUARD_PROFILE=FILE runs the lab's guard under cProfile (for benchmarks: bench_relay.py).
        profile = ["-m", "cProfile", "-o", os.environ["GUARD_PROFILE"]] if os.environ.get("GUARD_PROFILE") else []
        arguments = [self.python, *profile, "-m", "guard", "run", "--config", str(self.guard_config),
                     "--pidfile", str(self.pidfile)]
        self._spawn("guard", arguments, [(GUARD_RED_FACING, S2S_PORT), (GUARD_BLUE_FACING, S2S_PORT)], 20.0)

    # -- the guard process, for hostile and fault tests ----------------------

    @property
    def guard_process(self) -> subprocess.Popen:
        child = self.intermediary
        if self.mode is not Mode.GUARD or child is None:
            raise LabError("this lab runs no guard")
        return child.process

    def guard_resident_kib(self) -> int:
        """The guard's resident memory (VmRSS) in KiB."""
        return resident_kib(self.guard_process.pid)

    def guard_status(self, timeout: float = 10.0) -> dict:
        """The guard's status (books, links, streams): asks for a fresh one (SIGUSR1) and reads it."""
        path = Path(self.guard_options.get("status") or "")
        if not self.guard_options.get("status"):
            raise LabError("this lab's guard writes no status file")
        process = self.guard_process
        before = path.stat().st_mtime_ns if path.exists() else 0
        if process.poll() is None:
            process.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + timeout
            while (path.stat().st_mtime_ns if path.exists() else 0) == before:
                if time.monotonic() > deadline:
                    raise LabError(f"the guard did not write {path} within {timeout} s")
                time.sleep(0.05)
        return json.loads(path.read_text())

    def guard_books(self) -> dict:
        return self.guard_status()["books"]

    def audit_records(self) -> list[dict]:
        """Every record of the guard's audit trail so far (a file in the lab folder)."""
        path = self.guard_options.get("audit")
        if not path or not Path(path).is_file():
            return []
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

    def stop_guard(self, timeout: float = 15.0) -> int:
        """SIGTERM the guard and wait (bounded) for it to exit; its exit status."""
        process = self.guard_process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=timeout)
        return process.returncode

    def guard_log(self) -> str:
        child = self.intermediary
        return child.log_path.read_text(errors="replace") if child is not None else ""

    # -- observation --------------------------------------------------------

    @property
    def intermediary(self) -> _Child | None:
        """The relay or guard process standing between the sides, if any."""
        wanted = {Mode.RELAY: "relay", Mode.GUARD: "guard"}.get(self.mode)
        return next((child for child in self._children if child.name == wanted), None)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each lab process that is still running."""
        usage: dict[str, float] = {}
        for server in (self.red, self.blue):
            if server is not None and server.process is not None and server.process.poll() is None:
                usage[f"prosody-{server.settings.name}"] = server.cpu_seconds()
        for child in self._children:
            if child.process.poll() is None:
                usage[child.name] = cpu_seconds(child.process.pid)
        return usage

    def log_tails(self, lines: int = 60) -> str:
        """The tail of every log of the lab, for a failing test's report."""
        parts = [f"=== lab mode={self.mode.value} authentication={self.authentication} folder={self.folder} ==="]
        for child in self._children:
            status = child.process.poll()
            state = "running" if status is None else f"exited {status}"
            parts.append(f"--- {child.name} ({state}) {child.log_path} ---\n{tail(child.log_path, lines)}")
        for server in (self.red, self.blue):
            if server is not None:
                parts.append(server.log_tail(lines))
        return "\n".join(parts)

    # -- clients ------------------------------------------------------------

    def client(self, loop: ClientLoop, jid: str, password: str = PASSWORD) -> LabClient:
        """An unconnected client for ``jid`` on its own side's Prosody."""
        assert self.pki is not None
        domain = jid.split("@", 1)[-1].split("/", 1)[0]
        if domain == "red.example":
            address = RED_ADDRESS
        elif domain == "blue.example":
            address = BLUE_ADDRESS
        else:
            raise LabError(f"no lab server hosts {domain!r}")
        side = "red" if domain == "red.example" else "blue"
        return LabClient(
            loop, jid, password, address, C2S_PORT, cafile=self.pki.both_cas,
            # A swapped (hostile) server certificate may not name the domain.
            check_hostname=side not in self.server_certificates,
        )  # fmt: skip

    def register(self, jid: str, password: str = PASSWORD) -> None:
        """Create another account on its side's Prosody."""
        user, domain = jid.split("@", 1)
        server = {"red.example": self.red, "blue.example": self.blue}.get(domain)
        if server is None:
            raise LabError(f"no lab server hosts {domain!r}")
        server.register(user, password)
