"""
Two guards behind DNS SRV records (issue 11, several machines): guard A
(127.0.3.1 facing red, 127.0.3.2 facing blue, the lab's usual addresses) and
guard B (127.0.4.1, 127.0.4.2) front the same domains with the same
certificates and policies and nothing else shared.  The lab's DNS responder
gives each domain two SRV targets of equal priority and weight, named
otherwise than the domain (guard-a-red.lab.example, guard-b-red.lab.example,
...), which the Prosodies look up through lua-unbound.

The guards find the Prosodies the same way: each side's domains route
``"srv"``, asked of a second lab DNS responder (127.0.1.54:5300, the side's
``dns``) whose targets are red-server.lab.example and
blue-server.lab.example: the certificates are checked for the domain, never
for the target.

One guard is stopped in the middle of traffic: traffic continues through
the other; nothing accepted is lost: every message is delivered or bounced,
and the stopped guard's books balance with an audit record for each bounce.
With dialback the guards share the dialback secret: the key one guard sends
is verified by whichever guard the receiving Prosody's SRV lookup reaches.

    .venv/bin/pytest tests/integration/test_srv.py
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from guard.lab.pki import BLUE_DOMAINS, RED_DOMAINS
from guard.lab.topology import (BLUE_ADDRESS, DNS_ADDRESS, DNS_PORT, GUARD_BLUE_FACING, GUARD_RED_FACING, RED_ADDRESS,
                                S2S_PORT, Lab, Mode, ensure_free, render_guard_config)

from tests.integration.hostile import lab_lock_held_here
from tests.integration.test_faults import (  # noqa: F401 - romeo and juliet are fixtures (on this module's lab)
    Tally, assert_nothing_vanished, juliet, romeo,
)

pytestmark = pytest.mark.guard

GUARD_B_RED_FACING = "127.0.4.1"
GUARD_B_BLUE_FACING = "127.0.4.2"
GUARDS_DNS_ADDRESS = "127.0.1.54"  # the guards' own DNS: where the Prosodies really are
SHARED_DIALBACK_SECRET = "two-guards-share-this-dialback-secret"
GUARDS = {"a": (GUARD_RED_FACING, GUARD_BLUE_FACING), "b": (GUARD_B_RED_FACING, GUARD_B_BLUE_FACING)}


def target(guard: str, facing: str) -> str:
    return f"guard-{guard}-{facing}.lab.example"


class TwoGuardLab(Lab):
    """The guard lab with a second guard and SRV records for both; the guards route by SRV through their own DNS."""

    def __init__(self, folder: Path, authentication: str):
        # The dialback secret is shared: a key one guard made is verified by whichever guard the
        # receiving server's SRV lookup reaches.
        super().__init__(Mode.GUARD, authentication, folder=folder, guard_log_level="info",
                         guard_options={"audit_level": "all", "dialback_secret": SHARED_DIALBACK_SECRET})
        self.guard_processes = {}

    def _start_dns(self) -> None:
        ensure_free([(GUARD_B_RED_FACING, S2S_PORT), (GUARD_B_BLUE_FACING, S2S_PORT), (GUARDS_DNS_ADDRESS, DNS_PORT)])
        prosodies_dns = [self.python, "-m", "guard.lab.dns", "--listen", DNS_ADDRESS, "--port", str(DNS_PORT)]
        for guard, (red_facing, blue_facing) in GUARDS.items():
            for domains, facing, address in ((BLUE_DOMAINS, "red", red_facing), (RED_DOMAINS, "blue", blue_facing)):
                prosodies_dns += ["--host", f"{target(guard, facing)}={address}"]
                for domain in domains:
                    prosodies_dns += ["--domain", f"{domain}={address}:{S2S_PORT}",
                                      "--srv", f"{domain}=0:50:{S2S_PORT}:{target(guard, facing)}"]
        self._spawn("dns", prosodies_dns, [(DNS_ADDRESS, DNS_PORT)], 15.0)
        guards_dns = [self.python, "-m", "guard.lab.dns", "--listen", GUARDS_DNS_ADDRESS, "--port", str(DNS_PORT),
                      "--host", f"red-server.lab.example={RED_ADDRESS}", "--host", f"blue-server.lab.example={BLUE_ADDRESS}"]
        for domains, server in ((RED_DOMAINS, "red-server.lab.example"), (BLUE_DOMAINS, "blue-server.lab.example")):
            for domain in domains:
                guards_dns += ["--srv", f"{domain}=0:1:{S2S_PORT}:{server}"]
        self._spawn("guards-dns", guards_dns, [(GUARDS_DNS_ADDRESS, DNS_PORT)], 15.0)

    def _start_guard(self) -> None:
        assert self.pki is not None
        for guard, (red_facing, blue_facing) in GUARDS.items():
            options = dict(self.guard_options, status=str(self.folder / f"guard-{guard}-status.json"),
                           audit=str(self.folder / f"guard-{guard}-audit.jsonl"))
            if guard == "a":
                self.guard_options.update(options)
            text = render_guard_config(self.pki, self.authentication, self.policy, self.guard_log_level,
                                       guard_options=options, limits=self.limits)
            text = text.replace(f"interface={GUARD_RED_FACING}\"", f"interface={red_facing}\"")
            text = text.replace(f"interface={GUARD_BLUE_FACING}\"", f"interface={blue_facing}\"")
            for domain in RED_DOMAINS + BLUE_DOMAINS:
                address = RED_ADDRESS if domain in RED_DOMAINS else BLUE_ADDRESS
                text = text.replace(f'"{domain}" = "{address}:{S2S_PORT}"', f'"{domain}" = "srv"')
            for side in ("red", "blue"):
                text = text.replace(f"[sides.{side}.domains]",
                                    f'dns = "{GUARDS_DNS_ADDRESS}:{DNS_PORT}"\n\n[sides.{side}.domains]')
            config = self.folder / f"guard-{guard}.toml"
            config.write_text(text)
            name = "guard" if guard == "a" else "guard-b"
            child = self._spawn(name, [self.python, "-m", "guard", "run", "--config", str(config),
                                       "--pidfile", str(self.folder / f"guard-{guard}.pid")],
                                [(red_facing, S2S_PORT), (blue_facing, S2S_PORT)], 20.0)
            self.guard_processes[guard] = (child.process, Path(options["status"]), Path(options["audit"]))

    def status_of(self, guard: str, timeout: float = 10.0) -> dict:
        """A fresh status of one guard (SIGUSR1) while it runs; its last status file once it has stopped."""
        process, path, _ = self.guard_processes[guard]
        if process.poll() is None:
            before = path.stat().st_mtime_ns if path.exists() else 0
            process.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + timeout
            while (path.stat().st_mtime_ns if path.exists() else 0) == before and time.monotonic() < deadline:
                time.sleep(0.05)
        return json.loads(path.read_text())

    def audit_of(self, guard: str) -> list[dict]:
        _, _, path = self.guard_processes[guard]
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def stop_one(self, guard: str, timeout: float = 20.0) -> int:
        process, _, _ = self.guard_processes[guard]
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=timeout)


@pytest.fixture(params=["certificate", "dialback"])
def lab(request, tmp_path):
    if lab_lock_held_here():
        pytest.skip("another lab of this pytest session is still running; run this module on its own")
    laboratory = TwoGuardLab(tmp_path / "lab", request.param)
    try:
        laboratory.start()
    except Exception as error:
        tails = laboratory.log_tails()
        laboratory.stop()
        pytest.fail(f"the two-guard lab did not start: {error}\n{tails}", pytrace=False)
    yield laboratory
    laboratory.stop()


def wait_idle(lab, guard, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        books = lab.status_of(guard)["books"]
        if books["in_flight"] == 0 or time.monotonic() > deadline:
            return books


def test_one_guard_stopped_mid_traffic_the_other_carries_on_and_nothing_accepted_is_lost(lab, romeo, juliet):
    """Red reaches blue.example through whichever guard its SRV lookup chose; that guard is stopped mid-blast:
    every message is delivered or bounced, the rest go through the other guard, and the stopped guard's books
    balance with an audit record for each bounce."""
    tally = Tally()
    tally.send(romeo, 20, interval=0.02)
    got, _, _ = tally.wait_settled(lab, romeo, (juliet,), timeout=30)
    assert got == set(tally.sent), f"{len(got)} of 20 arrived before any guard stopped"
    delivered = {guard: lab.status_of(guard)["books"]["delivered"] for guard in GUARDS}
    carrying = max(delivered, key=delivered.get)
    other = "b" if carrying == "a" else "a"
    assert delivered[carrying] >= 20, delivered

    tally.send(romeo, 20, interval=0.02)
    assert lab.stop_one(carrying) == 0
    tally.send(romeo, 40, interval=0.05)
    got, bounced, dropped = tally.wait_settled(lab, romeo, (juliet,), timeout=90)

    assert_nothing_vanished(tally, got, bounced, dropped)
    assert set(tally.sent[-20:]) <= got, "the last messages, long after the stop, arrive through the other guard"
    stopped = lab.status_of(carrying)["books"]
    assert stopped["in_flight"] == 0, stopped
    assert stopped["accepted"] == stopped["delivered"] + stopped["bounced"] + stopped["dropped"], stopped
    bounce_records = [r for r in lab.audit_of(carrying) if r["event"] == "bounce"]
    assert len(bounce_records) == stopped["bounced"], (stopped, bounce_records[:3])
    survivor = wait_idle(lab, other)
    assert survivor["delivered"] >= 20 and survivor["in_flight"] == 0, survivor
    assert survivor["accepted"] == survivor["delivered"] + survivor["bounced"] + survivor["dropped"], survivor
    print(f"\nguard {carrying} (stopped): {stopped}\nguard {other}: {survivor}\n"
          f"messages: {len(got)} delivered, {len(bounced)} bounced, {len(dropped)} dropped of {len(tally.sent)}")
