"""
A lab for the constrained-bandwidth gateways: red and blue Prosody (each with
its MUC component), gateway A facing red and gateway B facing blue, joined by
the pair link with the constrained profile, and the bearer simulator
(guard/lab/bearer.py) between them.  Or, for the benchmark's baseline, one
standalone guard with a simulator between it and blue's Prosody each way
(plain S2S over the same bearer).

    red.example     Prosody 127.0.31.1 (s2s 5269, c2s 15222), conference.red.example
    blue.example    Prosody 127.0.32.1 (s2s 5269, c2s 15222), conference.blue.example
    gateway A       127.0.33.1:5269 faces red; dials the bearer at 127.0.34.3:5272
    gateway B       127.0.33.2:5269 faces blue; its link listens at 127.0.34.2:5271
    bearer          127.0.34.3:5272 -> 127.0.34.2:5271 (the simulator, rate/delay/outages)
    DNS             127.0.31.53:5300
  standalone (plain S2S baseline):
    guard           127.0.33.1:5269 faces red, 127.0.33.2:5269 faces blue
    bearer to blue  127.0.34.4:5269 -> blue Prosody (the guard's route for blue's domains)
    bearer to red   127.0.34.5:5269 -> the guard's blue-facing address (blue's DNS for red's domains)

The other labs use 127.0.1-4.x, 127.0.5.x (ngircd), 127.0.9.x and 127.0.21-24.x;
this one takes the pair lab's lock (the same machine serves one pair lab at a time).
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import replace
from pathlib import Path

from guard.lab.pki import BLUE_DOMAINS, RED_DOMAINS
from guard.lab.prosody import LabError, ProsodyServer, stop_process, write_roster
from guard.lab.topology import C2S_PORT, PASSWORD, S2S_PORT, USERS, LabClient, ensure_free, toml_string

from pair_lab import PairLab  # noqa: E402  (tests/integration on sys.path: conftest, bench)

DNS_ADDRESS, DNS_PORT = "127.0.31.53", 5300
RED_ADDRESS = "127.0.31.1"
BLUE_ADDRESS = "127.0.32.1"
GATEWAY_A_ADDRESS = "127.0.33.1"  # faces red, stands in for blue's domains
GATEWAY_B_ADDRESS = "127.0.33.2"  # faces blue, stands in for red's domains
LINK_ADDRESS, LINK_PORT = "127.0.34.2", 5271  # gateway B's link port
BEARER_ADDRESS, BEARER_PORT = "127.0.34.3", 5272  # the simulator gateway A dials
S2S_BEARER_TO_BLUE = "127.0.34.4"  # standalone: guard -> bearer -> blue Prosody
S2S_BEARER_TO_RED = "127.0.34.5"  # standalone: blue Prosody -> bearer -> guard

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = PROJECT_ROOT / "deploy"
RED_EXPORT = DEPLOY / "constrained" / "red-export.toml"  # gateway A's export policy, as shipped
BLUE_IMPORT = DEPLOY / "pair" / "blue-import.toml"  # gateway B's import policy, as shipped
ALLOW_ALL = PROJECT_ROOT / "policies" / "allow-all.toml"

BLUE_OCCUPANTS = ("juliet", "nurse", "benvolio", "mercutio")  # blue users who sit in red's rooms
EXTRA_USERS = {"red": ("tybalt",), "blue": BLUE_OCCUPANTS[1:]}


class ConstrainedLab(PairLab):
    """red -> gateway A -> bearer simulator -> gateway B -> blue, on this lab's own loopback addresses; standalone:
    red -> guard -> bearer simulator -> blue, and blue -> bearer simulator (the same one, the back way) -> guard."""

    def __init__(self, folder: Path | None, rate: int = 64_000, delay: float = 0.25,
                 security: str = "bearer", compression: str = "dictionary", presence: str = "all",
                 standalone: bool = False, outage_on_signal: float = 20.0, marker: str | None = None,
                 roster: dict[str, dict[str, str]] | None = None, extra_users: dict[str, tuple] | None = None,
                 constrained_options: dict[str, object] | None = None, **options):
        """``rate``/``delay``: the bearer's bits per second and one-way delay; ``security``, ``compression``,
        ``presence``: gateway keys ([link.constrained]); ``outage_on_signal``: seconds of outage that
        ``begin_outage`` starts; ``roster``: "user@domain" -> {contact: subscription} written before the servers
        start; ``extra_users``: more accounts per side ("red", "blue")."""
        options.setdefault("down_deadline", 120.0)
        super().__init__(folder, with_hag=False, standalone=standalone, link_relay=False, **options)
        self.rate, self.delay = rate, delay
        self.security, self.compression, self.presence = security, compression, presence
        self.outage_on_signal = outage_on_signal
        self.marker = marker
        self.roster = roster or {}
        self.extra_users = EXTRA_USERS if extra_users is None else extra_users
        self.constrained_options = dict(constrained_options or {})
        self.bearer_status: dict[str, Path] = {}

    # -- lifecycle -----------------------------------------------------------------

    def _start(self) -> None:
        self._lock.acquire()
        self._started.append(self._lock)
        addresses = [(DNS_ADDRESS, DNS_PORT), (RED_ADDRESS, S2S_PORT), (RED_ADDRESS, C2S_PORT),
                     (BLUE_ADDRESS, S2S_PORT), (BLUE_ADDRESS, C2S_PORT), (GATEWAY_A_ADDRESS, S2S_PORT),
                     (GATEWAY_B_ADDRESS, S2S_PORT), (LINK_ADDRESS, LINK_PORT), (BEARER_ADDRESS, BEARER_PORT),
                     (S2S_BEARER_TO_BLUE, S2S_PORT), (S2S_BEARER_TO_RED, S2S_PORT)]  # fmt: skip
        ensure_free(addresses)
        self.folder.mkdir(parents=True, exist_ok=True)
        from guard.lab.pki import write_lab_pki

        self.pki = write_lab_pki(self.folder / "pki")
        self._start_dns()
        self.red = self._prosody("red", "red.example", "conference.red.example", RED_ADDRESS)
        self.blue = self._prosody("blue", "blue.example", "conference.blue.example", BLUE_ADDRESS)
        for server, side in ((self.red, "red"), (self.blue, "blue")):
            for user in (*USERS[side], *self.extra_users.get(side, ())):
                server.register(user, PASSWORD)
            for owner, contacts in self.roster.items():
                user, _, domain = owner.partition("@")
                if domain == server.domain:
                    write_roster(server, user, contacts)
            server.start()
            self._started.append(server)
        if self.standalone:
            self._start_standalone_guard()
            return
        self._write_pair_material()
        self.start_half("b")
        self.start_bearer()
        self.start_half("a")

    def _start_dns(self) -> None:
        arguments = [self.python, "-m", "guard.lab.dns", "--listen", DNS_ADDRESS, "--port", str(DNS_PORT)]
        # Blue's server reaches red's domains through gateway B (or, standalone, through the bearer to the guard).
        to_red = S2S_BEARER_TO_RED if self.standalone else GATEWAY_B_ADDRESS
        for domain in RED_DOMAINS:
            arguments += ["--domain", f"{domain}={to_red}:{S2S_PORT}"]
        for domain in BLUE_DOMAINS:
            arguments += ["--domain", f"{domain}={GATEWAY_A_ADDRESS}:{S2S_PORT}"]
        self._spawn("dns", arguments, [(DNS_ADDRESS, DNS_PORT)], 15.0)

    def _prosody(self, name, domain, muc_domain, address) -> ProsodyServer:
        """The pair lab's server, resolving through this lab's DNS."""
        server = super()._prosody(name, domain, muc_domain, address)
        return ProsodyServer(replace(server.settings, dns_forward=f"{DNS_ADDRESS}@{DNS_PORT}"), server.folder)

    def client(self, loop, jid: str, password: str = PASSWORD) -> LabClient:
        """The pair lab's client, connecting to this lab's server for its domain."""
        client = super().client(loop, jid, password)
        client.address = {"red.example": RED_ADDRESS, "blue.example": BLUE_ADDRESS}[client.jid.domain]
        return client

    # -- the gateways ------------------------------------------------------------------

    def _write_pair_material(self) -> None:
        """The pair lab's link CA, certificates and fingerprints; then each half's file for this lab."""
        super()._write_pair_material()
        folder = self.folder / "pair"
        self.half_configs["a"] = self._write_gateway(
            folder, "a", "red", "blue", RED_DOMAINS, BLUE_DOMAINS, RED_ADDRESS, GATEWAY_A_ADDRESS,
            self.pki.guard_facing("red"), RED_EXPORT, ALLOW_ALL, "half-b",
            f"dial = {toml_string(f'tcp:host={BEARER_ADDRESS}:port={BEARER_PORT}')}")
        self.half_configs["b"] = self._write_gateway(
            folder, "b", "blue", "red", BLUE_DOMAINS, RED_DOMAINS, BLUE_ADDRESS, GATEWAY_B_ADDRESS,
            self.pki.guard_facing("blue"), ALLOW_ALL, BLUE_IMPORT, "half-a",
            f"listen = {toml_string(f'tcp:{LINK_PORT}:interface={LINK_ADDRESS}')}")

    def _write_gateway(self, folder, half, *arguments) -> Path:
        """A pair half's file (PairLab._write_half) with the constrained profile's keys added."""
        path = self._write_half(folder, half, *arguments)
        text = path.read_text()
        if self.security == "bearer":  # no TLS: the link's certificate, key, pins and CA are refused
            head, link = text.split("\n[link]\n", 1)
            link = "\n".join(line for line in link.splitlines()
                             if line.split(" = ", 1)[0] not in ("certificate", "key", "pins", "ca"))
            text = f"{head}\n[link]\n{link}\n"
        constrained = {"security": self.security, "compression": self.compression, "rate": self.rate,
                       "round_trip": round(2 * self.delay + 0.1, 3), "presence": self.presence,
                       **self.constrained_options}
        lines = ['profile = "constrained"', "buffer_bytes = 1048576", "", "[link.constrained]"]
        lines += [f"{key} = {toml_string(value) if isinstance(value, str) else value}"
                  for key, value in constrained.items()]
        path.write_text(text + "\n".join(lines) + "\n")
        return path

    def start_half(self, half: str):
        listens = [(GATEWAY_A_ADDRESS if half == "a" else GATEWAY_B_ADDRESS, S2S_PORT)]
        if half == "b":
            listens.append((LINK_ADDRESS, LINK_PORT))
        arguments = [self.python, "-m", "guard.app.half", "--config", str(self.half_configs[half])]
        return self._spawn(f"half-{half}", arguments, listens, 20.0)

    def start_bearer(self, name: str = "bearer", listen=(BEARER_ADDRESS, BEARER_PORT),
                     target=(LINK_ADDRESS, LINK_PORT), more: tuple[str, ...] = ()):
        """The simulator between ``listen`` and ``target`` at this lab's rate and delay (``more``: arguments)."""
        self.bearer_status[name] = self.folder / f"{name}-status.json"
        arguments = [self.python, "-m", "guard.lab.bearer", "--listen", f"{listen[0]}:{listen[1]}",
                     "--target", f"{target[0]}:{target[1]}", "--rate", str(self.rate), "--delay", str(self.delay),
                     "--signal-outage", str(self.outage_on_signal), "--status", str(self.bearer_status[name]), *more]
        if self.marker:
            arguments += ["--marker", self.marker]
        # No port probe: a probe would be the bearer's first connection (the target may not listen yet).
        child = self._spawn(name, arguments, [], 15.0)
        deadline = time.monotonic() + 15.0
        while not self.bearer_status[name].exists():  # written once it listens
            if child.process.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{name} did not start")
            time.sleep(0.05)
        return child

    def _start_standalone_guard(self) -> None:
        """Plain S2S over the bearer: one standalone guard whose route to blue, and blue's route to it, cross a
        simulator each."""
        # S2S needs a TCP connection per domain pair and direction: they share the bearer's rate.
        self.start_bearer("bearer", (S2S_BEARER_TO_BLUE, S2S_PORT), (BLUE_ADDRESS, S2S_PORT), more=(
            "--max-connections", "16",
            "--reverse-route", f"{S2S_BEARER_TO_RED}:{S2S_PORT}={GATEWAY_B_ADDRESS}:{S2S_PORT}"))
        # Red's traffic is judged by red's export policy, as gateway A judges it: the same stanzas leave.
        self._run_standalone_guard({"red": RED_EXPORT, "blue": ALLOW_ALL}, GATEWAY_A_ADDRESS, GATEWAY_B_ADDRESS,
                                   RED_ADDRESS, S2S_BEARER_TO_BLUE)

    # -- the bearer's books and outages ---------------------------------------------------

    def _bearer_child(self, name: str):
        for child in reversed(self._children):
            if child.name == name and child.process.poll() is None:
                return child
        raise LabError(f"no running {name}")

    def bearer_books(self, name: str = "bearer", timeout: float = 5.0) -> dict:
        """Ask the simulator for its books now (SIGUSR1) and read them."""
        child = self._bearer_child(name)
        path = self.bearer_status[name]
        before = path.stat().st_mtime_ns if path.exists() else 0
        child.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.stat().st_mtime_ns != before:
                try:
                    return json.loads(path.read_text())
                except ValueError:
                    pass  # replaced while read: read again
            time.sleep(0.05)
        raise LabError(f"{name} wrote no books within {timeout} s")

    def begin_outage(self, name: str = "bearer") -> None:
        """The bearer drops its connection now and refuses new ones for ``outage_on_signal`` seconds."""
        self._bearer_child(name).process.send_signal(signal.SIGUSR2)

    def stop_bearer(self, name: str = "bearer") -> None:
        stop_process(self._bearer_child(name).process)
