"""
A lab for the back-to-back pair: red and blue Prosody as in guard.lab, and
between them two guard halves joined by the pair link, optionally through
the reference HAG, with a TCP relay in the link's path that tests can cut
and restore.

    red.example   Prosody 127.0.21.1 (s2s 5269, c2s 15222)
    blue.example  Prosody 127.0.22.1 (s2s 5269, c2s 15222)
    half A (red)  127.0.23.1:5269 faces red; dials the link at 127.0.24.3:5272
    half B (blue) 127.0.23.2:5269 faces blue; the link listens at 127.0.24.2:5271
    HAG           leg a listens at 127.0.24.1:5270, leg b dials half B
    link relay    127.0.24.3:5272 -> the HAG (or half B without a HAG)
    DNS           127.0.21.53:5300

Other people run guard.lab on 127.0.1.x-127.0.3.x at the same time, so this
lab uses its own addresses and its own lock file, by overriding the Lab
methods that use guard.lab.topology's module constants (never by changing
those constants, which other labs in the same process read).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from guard.edges.link.tls import certificate_fingerprint
from guard.lab.pki import BLUE_DOMAINS, RED_DOMAINS, CertificateAuthority, write_lab_pki
from guard.lab.prosody import LabError, ProsodyServer, ProsodySettings, stop_process
from guard.lab.topology import (C2S_PORT, PASSWORD, S2S_PORT, USERS, Lab, LabLock, LabClient, Mode,
                                ensure_free, toml_string)

DNS_ADDRESS = "127.0.21.53"
DNS_PORT = 5300
RED_ADDRESS = "127.0.21.1"
BLUE_ADDRESS = "127.0.22.1"
HALF_A_ADDRESS = "127.0.23.1"  # faces red, stands in for blue's domains
HALF_B_ADDRESS = "127.0.23.2"  # faces blue, stands in for red's domains
HAG_ADDRESS, HAG_PORT = "127.0.24.1", 5270
LINK_ADDRESS, LINK_PORT = "127.0.24.2", 5271  # half B's link port
LINK_RELAY_ADDRESS, LINK_RELAY_PORT = "127.0.24.3", 5272

PAIR_LOCK = Path(tempfile.gettempdir()) / "xmpp-guard-pair-lab.lock"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
ALLOW_ALL = PROJECT_ROOT / "policies" / "allow-all.toml"

BLUE_IMPORT_POLICY = """\
# blue-import.toml: what half B lets in from the link (the far side is red).
# Evaluation order: the FIRST rule whose conditions all hold decides; default drop.
[policy]
name = "blue-import"
description = "Half B's import policy: no contraband, everything else in."
default = "drop"

[[rules]]
id = "no-contraband"
rev = 1
why = "Half B refuses contraband even when half A lets it out."
kind = "message"
text_matches = "contraband"
verdict = "bounce"
condition = "policy-violation"
text = "Contraband is not imported."

[[rules]]
id = "import-rest"
rev = 1
why = "Everything else is imported."
verdict = "pass"
keep = "everything"
"""

HAG_PROFILE = """\
# The reference HAG's allow-list: a stanza passes only if every element and
# attribute in it is listed here (first failed check drops; default deny).
[limits]
stanza_bytes = 65536
depth = 8
elements = 64
text_bytes = 16384

[elements]
"jabber:server message" = ["from", "to", "id", "type", "xml:lang"]
"jabber:server body" = ["xml:lang"]
"jabber:server subject" = ["xml:lang"]
"jabber:server thread" = ["parent"]
"jabber:server presence" = ["from", "to", "id", "type", "xml:lang"]
"jabber:server show" = []
"jabber:server status" = ["xml:lang"]
"jabber:server priority" = []
"jabber:server iq" = ["from", "to", "id", "type", "xml:lang"]
"jabber:server error" = ["type", "by"]
"urn:ietf:params:xml:ns:xmpp-stanzas *" = ["xml:lang"]
"urn:xmpp:ping ping" = []
"jabber:iq:version query" = []
"jabber:iq:version name" = []
"jabber:iq:version version" = []
"jabber:iq:version os" = []
"http://jabber.org/protocol/disco#info query" = ["node"]
"http://jabber.org/protocol/disco#info identity" = ["category", "type", "name", "xml:lang"]
"http://jabber.org/protocol/disco#info feature" = ["var"]
"http://jabber.org/protocol/caps c" = ["hash", "node", "ver", "ext"]
"urn:xmpp:delay delay" = ["from", "stamp"]
"""


class PairLab(Lab):
    """red -> half A -> (link relay) -> (HAG) -> half B -> blue, on its own loopback addresses."""

    def __init__(self, folder: Path | None, with_hag: bool, down_deadline: float = 30.0, standalone: bool = False,
                 guard_log_level: str = "info", link_relay: bool = True, authentication: str = "certificate",
                 half_limits: dict[str, dict[str, int]] | None = None, **options):
        """``standalone``: one standalone guard on the halves' two addresses instead of the pair (for benchmarks);
        ``authentication``: how the halves and the Prosodies authenticate S2S ("certificate" or "dialback");
        ``half_limits``: extra [limits] keys per half ("a", "b"), e.g. a stricter stanza_bytes for half B."""
        super().__init__(Mode.GUARD, authentication, folder=folder, guard_log_level=guard_log_level, **options)
        self.with_hag = with_hag
        self.standalone = standalone
        self.link_relay = link_relay  # False: half A dials the HAG or half B directly (nothing to cut)
        self.down_deadline = down_deadline
        self._lock = LabLock(PAIR_LOCK)
        self.half_configs: dict[str, Path] = {}
        self.audits: dict[str, Path] = {}
        self.status: dict[str, Path] = {}
        self.hag_config: Path | None = None
        self.half_limits = half_limits or {}

    # -- lifecycle (as Lab._start, on this lab's addresses) ---------------

    def _start(self) -> None:
        self._lock.acquire()
        self._started.append(self._lock)
        addresses = [(DNS_ADDRESS, DNS_PORT), (RED_ADDRESS, S2S_PORT), (RED_ADDRESS, C2S_PORT),
                     (BLUE_ADDRESS, S2S_PORT), (BLUE_ADDRESS, C2S_PORT), (HALF_A_ADDRESS, S2S_PORT),
                     (HALF_B_ADDRESS, S2S_PORT), (HAG_ADDRESS, HAG_PORT), (LINK_ADDRESS, LINK_PORT),
                     (LINK_RELAY_ADDRESS, LINK_RELAY_PORT)]  # fmt: skip
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
        if self.standalone:
            self._start_standalone_guard()
            return
        self._write_pair_material()
        self.start_half("b")
        if self.with_hag:
            self.start_hag()
        if self.link_relay:
            self.start_link_relay()
        self.start_half("a")

    def _start_dns(self) -> None:
        arguments = [self.python, "-m", "guard.lab.dns", "--listen", DNS_ADDRESS, "--port", str(DNS_PORT)]
        for domain in RED_DOMAINS:
            arguments += ["--domain", f"{domain}={HALF_B_ADDRESS}:{S2S_PORT}"]
        for domain in BLUE_DOMAINS:
            arguments += ["--domain", f"{domain}={HALF_A_ADDRESS}:{S2S_PORT}"]
        self._spawn("dns", arguments, [(DNS_ADDRESS, DNS_PORT)], 15.0)

    def _prosody(self, name, domain, muc_domain, address) -> ProsodyServer:
        settings = ProsodySettings(
            name=name, domain=domain, muc_domain=muc_domain, address=address,
            certificate=self.pki.server(name), cafile=self.pki.side_ca(name),
            secure_auth=self.authentication == "certificate",
            log_level=self.prosody_log_level, dns_forward=f"{DNS_ADDRESS}@{DNS_PORT}",
            c2s_port=C2S_PORT, s2s_port=S2S_PORT,
        )  # fmt: skip
        return ProsodyServer(settings, self.folder / name)

    def client(self, loop, jid: str, password: str = PASSWORD) -> LabClient:
        domain = jid.split("@", 1)[-1].split("/", 1)[0]
        address = {"red.example": RED_ADDRESS, "blue.example": BLUE_ADDRESS}.get(domain)
        if address is None:
            raise LabError(f"no lab server hosts {domain!r}")
        return LabClient(loop, jid, password, address, C2S_PORT, cafile=self.pki.both_cas)

    # -- the pair -----------------------------------------------------------

    def _write_pair_material(self) -> None:
        folder = self.folder / "pair"
        folder.mkdir(parents=True, exist_ok=True)
        link_ca = CertificateAuthority.create("link-ca")
        self.link_certificates = {name: link_ca.write_leaf(folder, name, [name]) for name in ("half-a", "half-b", "hag")}
        self.fingerprints = {name: certificate_fingerprint(str(pair.certificate))
                             for name, pair in self.link_certificates.items()}
        self.blue_import = folder / "blue-import.toml"
        self.blue_import.write_text(BLUE_IMPORT_POLICY)
        peer_of_a = "hag" if self.with_hag else "half-b"
        peer_of_b = "hag" if self.with_hag else "half-a"
        self.half_configs["a"] = self._write_half(
            folder, "a", "red", "blue", RED_DOMAINS, BLUE_DOMAINS, RED_ADDRESS, HALF_A_ADDRESS,
            self.pki.guard_facing("red"), ALLOW_ALL, ALLOW_ALL, peer_of_a,
            f"dial = {toml_string(self._half_a_dials())}")
        self.half_configs["b"] = self._write_half(
            folder, "b", "blue", "red", BLUE_DOMAINS, RED_DOMAINS, BLUE_ADDRESS, HALF_B_ADDRESS,
            self.pki.guard_facing("blue"), ALLOW_ALL, self.blue_import, peer_of_b,
            f"listen = {toml_string(f'tcp:{LINK_PORT}:interface={LINK_ADDRESS}')}")
        if self.with_hag:
            profile = folder / "hag-profile.toml"
            profile.write_text(HAG_PROFILE)
            self.audits["hag"] = self.folder / "hag-audit.jsonl"
            hag = self.link_certificates["hag"]
            self.hag_config = folder / "hag.toml"
            self.hag_config.write_text("\n".join([
                "[hag]", 'name = "hag"',
                f"certificate = {toml_string(str(hag.certificate))}", f"key = {toml_string(str(hag.key))}",
                f"profile = {toml_string(str(profile))}", f"audit = {toml_string(str(self.audits['hag']))}",
                "", "[legs.a]", 'peer = "half-a"', f"pins = [{toml_string(self.fingerprints['half-a'])}]",
                f"listen = {toml_string(f'tcp:{HAG_PORT}:interface={HAG_ADDRESS}')}",
                f"down_deadline = {self.down_deadline}", "backoff_initial = 0.2", "backoff_max = 2.0",
                "", "[legs.b]", 'peer = "half-b"', f"pins = [{toml_string(self.fingerprints['half-b'])}]",
                f"dial = {toml_string(f'tcp:host={LINK_ADDRESS}:port={LINK_PORT}')}",
                f"down_deadline = {self.down_deadline}", "backoff_initial = 0.2", "backoff_max = 2.0", "",
            ]))

    def _half_a_dials(self) -> str:
        if self.link_relay:
            return f"tcp:host={LINK_RELAY_ADDRESS}:port={LINK_RELAY_PORT}"
        if self.with_hag:
            return f"tcp:host={HAG_ADDRESS}:port={HAG_PORT}"
        return f"tcp:host={LINK_ADDRESS}:port={LINK_PORT}"

    def _write_half(self, folder, half, side, far_side, hosted, far_domains, server_address, listen_address,
                    facing, export_policy, import_policy, peer, link_endpoint) -> Path:
        own = f"half-{half}"
        certificate = self.link_certificates[own]
        self.audits[half] = self.folder / f"half-{half}-audit.jsonl"
        self.status[half] = self.folder / f"half-{half}-status.json"
        lines = [
            f"# Half {half.upper()} of the pair lab, facing {side}.",
            "[guard]", f"log_level = {toml_string(self.guard_log_level)}",
            f"audit = {toml_string(str(self.audits[half]))}", f"status = {toml_string(str(self.status[half]))}",
            "", "[limits]", "outbound_queue = 5000",
            *(f"{key} = {value}" for key, value in self.half_limits.get(half, {}).items()),
            "", f"[sides.{side}]",
            f"listen = {toml_string(f'tcp:{S2S_PORT}:interface={listen_address}')}",
            f"ca = {toml_string(str(self.pki.side_ca(side)))}", f"authentication = {toml_string(self.authentication)}",
            f"policy = {toml_string(str(export_policy))}",
            "", f"[sides.{side}.domains]",
        ]
        lines += [f"{toml_string(domain)} = {toml_string(f'{server_address}:{S2S_PORT}')}" for domain in hosted]
        lines += [
            "", f"[[sides.{side}.certificates]]",
            f"domains = [{', '.join(toml_string(d) for d in far_domains)}]",
            f"certificate = {toml_string(str(facing.certificate))}", f"key = {toml_string(str(facing.key))}",
            "", "[link]", f"name = {toml_string(own)}", f"peer = {toml_string(peer)}",
            f"far_side = {toml_string(far_side)}",
            f"far_domains = [{', '.join(toml_string(d) for d in far_domains)}]",
            f"import_policy = {toml_string(str(import_policy))}",
            f"certificate = {toml_string(str(certificate.certificate))}", f"key = {toml_string(str(certificate.key))}",
            f"pins = [{toml_string(self.fingerprints[peer])}]", link_endpoint,
            f"down_deadline = {self.down_deadline}", "backoff_initial = 0.2", "backoff_max = 2.0",
            "ack_every = 50", "ack_interval = 0.5",
        ]
        path = folder / f"half-{half}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _start_standalone_guard(self) -> None:
        self._run_standalone_guard(ALLOW_ALL, HALF_A_ADDRESS, HALF_B_ADDRESS, RED_ADDRESS, BLUE_ADDRESS)

    def _run_standalone_guard(self, policies, red_facing: str, blue_facing: str, red_route: str, blue_route: str) -> None:
        """One standalone guard listening on ``red_facing`` and ``blue_facing``, reaching red and blue at their routes."""
        from guard.lab import topology

        text = topology.render_guard_config(self.pki, self.authentication, policies, self.guard_log_level)
        for old, new in ((topology.GUARD_RED_FACING, red_facing), (topology.GUARD_BLUE_FACING, blue_facing),
                         (topology.RED_ADDRESS, red_route), (topology.BLUE_ADDRESS, blue_route)):
            text = text.replace(f'"{old}:', f'"{new}:').replace(f"interface={old}", f"interface={new}")
        self.guard_config = self.folder / "guard.toml"
        self.guard_config.write_text(text)
        arguments = [self.python, "-m", "guard", "run", "--config", str(self.guard_config)]
        self._spawn("guard", arguments, [(red_facing, S2S_PORT), (blue_facing, S2S_PORT)], 20.0)

    def start_half(self, half: str):
        listens = [(HALF_A_ADDRESS if half == "a" else HALF_B_ADDRESS, S2S_PORT)]
        if half == "b":
            listens.append((LINK_ADDRESS, LINK_PORT))
        arguments = [self.python, "-m", "guard", "run", "--config", str(self.half_configs[half])]
        return self._spawn(f"half-{half}", arguments, listens, 20.0)

    def start_hag(self):
        arguments = [self.python, "-m", "guard.reference.hag", "--config", str(self.hag_config)]
        return self._spawn("hag", arguments, [(HAG_ADDRESS, HAG_PORT)], 20.0)

    def start_link_relay(self):
        target = f"{HAG_ADDRESS}:{HAG_PORT}" if self.with_hag else f"{LINK_ADDRESS}:{LINK_PORT}"
        arguments = [self.python, "-m", "guard.lab.tcprelay",
                     "--route", f"{LINK_RELAY_ADDRESS}:{LINK_RELAY_PORT}={target}"]
        return self._spawn("link-relay", arguments, [(LINK_RELAY_ADDRESS, LINK_RELAY_PORT)], 15.0)

    def stop_child(self, name: str) -> None:
        """Stop the newest running child called ``name`` (the link relay, the HAG)."""
        for child in reversed(self._children):
            if child.name == name and child.process.poll() is None:
                stop_process(child.process)
                return
        raise LabError(f"no running {name}")

    def audit_records(self, who: str) -> list[dict]:
        import json

        path = self.audits[who]
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def status_of(self, half: str, timeout: float = 5.0) -> dict:
        """Ask a running half for its status (SIGUSR1) and read it."""
        import json
        import signal
        import time

        child = next(c for c in reversed(self._children) if c.name == f"half-{half}" and c.process.poll() is None)
        path = self.status[half]
        before = path.stat().st_mtime_ns if path.exists() else 0
        child.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.stat().st_mtime_ns != before:
                return json.loads(path.read_text())
            time.sleep(0.1)
        raise LabError(f"half {half} wrote no status within {timeout} s")

    def log_of(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def wait_link_up(self, half: str, timeout: float = 30.0) -> dict:
        """Wait (bounded) until ``half`` reports its pair link up; its link status."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            link = self.status_of(half)["pair_link"]
            if link["state"] == "up" or time.monotonic() > deadline:
                return link
            time.sleep(0.5)


def started(laboratory: PairLab) -> PairLab:
    """``laboratory``, started; when it cannot start, everything it started is stopped and LabError names why,
    with the tail of every log."""
    try:
        laboratory.start()
    except Exception as error:
        tails = laboratory.log_tails()
        laboratory.stop()
        raise LabError(f"the pair lab did not start: {error}\n{tails}") from error
    return laboratory
