"""
The IRC gateway's lab: a real Prosody (red.example, its MUC
conference.red.example and the external component irc.red.example) on
127.0.5.2, a real ngIRCd with TLS on 127.0.5.1 (guard.lab.ngircd), and the
gateway itself as a process (``python -m guard.app.irc --config irc.toml``),
its management page and metrics on 127.0.5.3.  A raw IRC client (a TLS
socket, lines in and out, nothing clever) stands in the channel.

The XMPP lab lock is taken for Prosody (as every lab does) and ngIRCd takes
its own; the addresses are the IRC lab's alone (127.0.5.0/24).
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from guard.lab.pki import write_lab_pki
from guard.lab.prosody import LabError, ProsodyServer, ProsodySettings, stop_process, tail, wait_for_ports
from guard.lab.topology import LabLock

PROJECT_ROOT = Path(__file__).resolve().parents[2]
XMPP_ADDRESS = "127.0.5.2"
GATEWAY_ADDRESS = "127.0.5.3"
MANAGEMENT_PORT = 18443
METRICS_PORT = 19100
COMPONENT = "irc.red.example"
COMPONENT_SECRET = "irc-lab-component-secret"
ROOM_SERVICE = "conference.red.example"
ROOM = f"ops@{ROOM_SERVICE}"
CHANNEL = "#ops"
FLOOD_ROOM = f"flood@{ROOM_SERVICE}"
FLOOD_CHANNEL = "#flood"
NETWORK = "lab"
IRC_DOMAIN = f"{NETWORK}.irc.invalid"
PASSWORD = "irc-lab-password"
USERS = ("alice", "bob", "erin", "henry", "irene", "jack", "kate", "liam", "averyveryverylongnickname", "mona")
MODERATOR = "mona"  # a Prosody admin: the owner (so a moderator) of every room, who may kick
BOT_NICK = "xmppgw"
CONNECT_ATTEMPTS = 5
ROOM_NICK = "irc"


@dataclass
class IrcLine:
    """One line the raw client read: its prefix nick, command, params (the trailing one last)."""

    raw: str
    nick: str | None
    command: str
    params: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.params[-1] if self.params else ""


def read_irc_line(raw: str) -> IrcLine:
    """A line as a test reads it (tags dropped): deliberately simple, the gateway's parser is not used."""
    rest = raw
    if rest.startswith("@"):
        rest = rest.split(" ", 1)[1] if " " in rest else ""
    nick = None
    if rest.startswith(":"):
        prefix, _, rest = rest[1:].partition(" ")
        nick = prefix.split("!", 1)[0]
    trailing = None
    if " :" in rest:
        rest, trailing = rest.split(" :", 1)
    elif rest.startswith(":"):
        rest, trailing = "", rest[1:]
    words = rest.split()
    params = words[1:] + ([trailing] if trailing is not None else [])
    return IrcLine(raw, nick, words[0].upper() if words else "", params)


class RawIrcClient:
    """One IRC client over TLS, lines in a list read by a thread; every wait is bounded."""

    def __init__(self, address: str, port: int, cafile: Path, server_name: str, nick: str):
        self.nick = nick
        context = ssl.create_default_context(cafile=str(cafile))
        for attempt in range(CONNECT_ATTEMPTS):
            # ngIRCd sometimes answers a connection that follows a QUIT from the same address in clear text
            # (its per-address throttle): try again, a few times, a little later.
            raw = socket.create_connection((address, port), timeout=10)
            try:
                self.sock = context.wrap_socket(raw, server_hostname=server_name)
                break
            except ssl.SSLError:
                raw.close()
                if attempt == CONNECT_ATTEMPTS - 1:
                    raise
                time.sleep(1.0)
        self.sock.setblocking(False)
        # One SSL object is not safe to read and write from two threads at once: every use holds this lock.
        self._ssl = threading.Lock()
        self.lines: list[IrcLine] = []
        self._arrived = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _receive(self) -> bytes | None:
        """What the socket has now (b"" for nothing yet, None once the server closed)."""
        select.select([self.sock], [], [], 0.2)
        with self._ssl:
            try:
                chunk = self.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return b""
        return chunk if chunk else None

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self._receive()
                if chunk is None:
                    break
                buffer += chunk
                while b"\r\n" in buffer:
                    raw, buffer = buffer.split(b"\r\n", 1)
                    line = read_irc_line(raw.decode("utf-8", "replace"))
                    if line.command == "PING":
                        self.send(f"PONG :{line.text}")
                    with self._arrived:
                        self.lines.append(line)
                        self._arrived.notify_all()
        except OSError:
            pass
        finally:
            with self._arrived:
                self._closed = True
                self._arrived.notify_all()

    def send(self, line: str) -> None:
        data = line.encode("utf-8") + b"\r\n"
        deadline = time.monotonic() + 10
        while data:
            with self._ssl:
                try:
                    data = data[self.sock.send(data):]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    pass
            if data:
                if time.monotonic() > deadline:
                    raise LabError(f"{self.nick}: the server does not take what we write")
                select.select([], [self.sock], [], 0.2)

    def register(self, timeout: float = 15.0) -> "RawIrcClient":
        self.send(f"NICK {self.nick}")
        self.send(f"USER {self.nick} 0 * :raw lab client")
        self.wait_for(lambda line: line.command == "001", timeout, "the welcome (001)")
        return self

    def join(self, channel: str, timeout: float = 15.0) -> None:
        self.send(f"JOIN {channel}")
        self.wait_for(lambda line: line.command == "366" and channel.lower() in [p.lower() for p in line.params],
                      timeout, f"the end of NAMES of {channel}")

    def say(self, channel: str, text: str) -> None:
        self.send(f"PRIVMSG {channel} :{text}")

    def wait_for(self, predicate, timeout: float, what: str, start: int = 0) -> IrcLine:
        """The first line at or after ``start`` for which ``predicate`` holds, or LabError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for line in self.lines[start:]:
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    seen = "\n".join(line.raw for line in self.lines[-15:])
                    raise LabError(f"{self.nick}: no {what} within {timeout} s; last lines:\n{seen}")
                self._arrived.wait(min(remaining, 0.5))

    def mark(self) -> int:
        """Where the lines read so far end: wait_for(..., start=mark) looks only at what comes after."""
        with self._arrived:
            return len(self.lines)

    def privmsgs(self, channel: str, start: int = 0) -> list[IrcLine]:
        with self._arrived:
            return [line for line in self.lines[start:] if line.command == "PRIVMSG"
                    and line.params and line.params[0].lower() == channel.lower()]

    def close(self) -> None:
        try:
            self.send("QUIT :bye")
        except (OSError, LabError):
            pass
        with self._ssl:
            try:
                self.sock.close()
            except OSError:
                pass


def write_policy(folder: Path) -> Path:
    """The bridge policy of the lab: the shipped sample (policies/irc-bridge.toml), as it is."""
    return PROJECT_ROOT / "policies" / "irc-bridge.toml"


def render_gateway_config(folder: Path, irc_ca: Path, policy: Path, irc_port: int, irc_address: str,
                          server_name: str) -> str:
    # The lab has no DNS: the gateway dials ngIRCd's address and verifies the certificate's name (server_name).
    """The irc.toml the lab's gateway runs with (every path inside ``folder``)."""
    return f"""\
[gateway]
log_level = "debug"
audit = "{folder / 'audit.jsonl'}"
audit_failure = "stop"
audit_level = "all"
status = "{folder / 'status.json'}"

[metrics]
listen = "tcp:{METRICS_PORT}:interface={GATEWAY_ADDRESS}"

[xmpp]
component = "{COMPONENT}"
connect = "tcp:host={XMPP_ADDRESS}:port=15347"
tls = false
secret = "{COMPONENT_SECRET}"
room_service = "{ROOM_SERVICE}"

[networks.{NETWORK}]
host = "{irc_address}"
port = {irc_port}
tls = true
ca = "{irc_ca}"
tls_verify = true
server_name = "{server_name}"
nick = "{BOT_NICK}"
user = "xmppgw"
realname = "xmpp-guard IRC lab gateway"

[limits]
# The tests open and close many occupants' connections in a minute; production keeps the default (10).
connections_per_minute = 200

[[bridges]]
room = "{ROOM}"
network = "{NETWORK}"
channel = "{CHANNEL}"
policy = "{policy}"
irc_domain = "{IRC_DOMAIN}"
room_nick = "{ROOM_NICK}"
map_markings = {{ }}

[[bridges]]
room = "{FLOOD_ROOM}"
network = "{NETWORK}"
channel = "{FLOOD_CHANNEL}"
policy = "{policy}"
irc_domain = "{IRC_DOMAIN}"
room_nick = "{ROOM_NICK}"
flot_position = "prefix"
"""


class ModeratedProsody(ProsodyServer):
    """The lab's Prosody with MODERATOR a server admin, so an owner (a moderator, who may kick) of every room."""

    def write_config(self) -> Path:
        path = super().write_config()
        # A global option: before every VirtualHost and Component section of the generated file.
        path.write_text(f'admins = {{ "{MODERATOR}@red.example" }}\n' + path.read_text())
        return path


class IrcGatewayLab:
    """Prosody + ngIRCd + the gateway process, started and stopped together; the log tails of all three."""

    def __init__(self, folder: Path):
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = LabLock()
        self.prosody: ProsodyServer | None = None
        self.ngircd = None
        self.gateway: subprocess.Popen | None = None
        self.config_path = self.folder / "gateway" / "irc.toml"
        self.gateway_log = self.folder / "gateway" / "gateway.log"
        self.pki = None

    def start(self) -> None:
        from guard.lab.ngircd import NgircdLab

        self._lock.acquire()
        self.pki = write_lab_pki(self.folder / "pki")
        self.prosody = ModeratedProsody(
            ProsodySettings("red", "red.example", ROOM_SERVICE, XMPP_ADDRESS, self.pki.red_server, self.pki.red_ca,
                            True, component=(COMPONENT, COMPONENT_SECRET)),
            self.folder / "prosody")
        self.prosody.write_config()
        for user in USERS:
            self.prosody.register(user, PASSWORD)
        self.prosody.start()
        self.ngircd = NgircdLab(self.folder / "ngircd")
        self.ngircd.start()
        self.start_gateway()

    def start_gateway(self) -> None:
        folder = self.config_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_gateway_config(
            folder, self.ngircd.pki.ca, write_policy(folder), self.ngircd.settings.tls_port,
            self.ngircd.settings.address, self.ngircd.settings.name))
        environment = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
        with open(self.gateway_log, "ab") as log:
            self.gateway = subprocess.Popen(
                [sys.executable, "-m", "guard.app.irc", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=environment,
                start_new_session=True)
        wait_for_ports(GATEWAY_ADDRESS, [METRICS_PORT], 20, self.gateway, "guard-irc")

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            stop_process(self.gateway)

    def stop(self) -> None:
        try:
            self.stop_gateway()
            if self.ngircd is not None:
                self.ngircd.stop()
            if self.prosody is not None:
                self.prosody.stop()
        finally:
            self._lock.release()

    def status(self) -> dict:
        import json

        return json.loads((self.config_path.parent / "status.json").read_text())

    def audit_records(self) -> list[dict]:
        import json

        path = self.config_path.parent / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def irc_client(self, nick: str) -> RawIrcClient:
        settings = self.ngircd.settings
        return RawIrcClient(settings.address, settings.tls_port, self.ngircd.pki.ca, settings.name, nick).register()

    def xmpp_client(self, loop, user: str):
        from guard.lab.clients import LabClient

        return LabClient(loop, f"{user}@red.example", PASSWORD, XMPP_ADDRESS, 15222, cafile=self.pki.red_ca)

    def log_tails(self) -> str:
        parts = [f"--- guard-irc ({self.gateway_log}) ---\n{tail(self.gateway_log, 120)}"]
        if self.prosody is not None:
            parts.append(self.prosody.log_tail(60))
        if self.ngircd is not None:
            parts.append(self.ngircd.log_tails())
        return "\n".join(parts)


__all__ = ["IrcGatewayLab", "LabError", "RawIrcClient", "read_irc_line"]
