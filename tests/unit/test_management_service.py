"""The management page wired to a real guard service (in memory): it listens where [management] says, shows the
service's own snapshot, and its reload runs the same check as `guard check-config` before swapping policies in."""

from __future__ import annotations

import json
import os
import re
import shutil

from twisted.internet.testing import MemoryReactorClock

from guard.app.config import load_config
from guard.app.management import management_page
from guard.app.service import GuardService
from guard.app.snapshot import snapshot
from guard.lab.topology import DEFAULT_POLICY, render_guard_config

from .streams.sides import pki
from .link.test_half_config import tree  # noqa: F401 - the pair configuration fixture
from .test_management import TOKEN, Harness

BROKEN_POLICY = "[policy]\nname = \"broken\"\n[[rules]]\nid = \"x\"\nverdict = \"launch-missiles\"\n"


def a_guard(tmp_path, allow_reload=True):
    """A GuardService on a memory reactor, its policy a copy of allow-all (with its cases) that the test may break."""
    policy = tmp_path / "policy.toml"
    shutil.copy(DEFAULT_POLICY, policy)
    shutil.copy(str(DEFAULT_POLICY).replace(".toml", ".tests.toml"), tmp_path / "policy.tests.toml")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    os.chmod(token_file, 0o600)
    path = tmp_path / "guard.toml"
    path.write_text(render_guard_config(pki(), "certificate", policy=policy, log_level="info",
                                        guard_options={"audit": str(tmp_path / "audit.jsonl")})
                    + f'\n[management]\nlisten = "tcp:9270"\ntoken_file = "{token_file}"\n'
                    + f"allow_reload = {str(allow_reload).lower()}\n")
    reactor = MemoryReactorClock()
    reactor.advance(1_700_000_000)
    return GuardService(load_config(str(path)), reactor), policy


def harness_for(service) -> Harness:
    """A Harness whose page is the service's own (its Access, snapshot, refusals and reload)."""
    harness = Harness()
    harness.clock = service.reactor
    harness.page = management_page(service, snapshot)
    return harness


def test_the_service_listens_for_the_page_on_loopback_and_stops_with_its_listeners(tmp_path):
    """startService listens on [management] listen (127.0.0.1 by default) besides the two sides."""
    service, _ = a_guard(tmp_path)
    service.startService()
    listening = [(port, interface) for port, _, _, interface in service.reactor.tcpServers]
    assert (9270, "127.0.0.1") in listening and len(listening) == 3


def test_the_page_shows_the_services_snapshot_and_policy(tmp_path):
    """The status page of a real service names its policy file, its cases' results and its books."""
    service, policy = a_guard(tmp_path)
    status, _, body = harness_for(service).get("/", f"Authorization: Bearer {TOKEN}")
    assert status == 200 and str(policy).encode() in body and b"red-&gt;blue" in body
    assert re.search(rb"\d+ passed, 0 failed", body)


def test_a_broken_policy_is_refused_with_the_checkers_message_and_a_good_one_is_reloaded(tmp_path):
    """Reload from the page: a policy the checker refuses leaves the policies in force and shows its message;
    fixed again, the reload swaps the policies in."""
    service, policy = a_guard(tmp_path)
    page = harness_for(service)
    bearer = f"Authorization: Bearer {TOKEN}"
    before = service.policies.generation
    good = policy.read_text()
    policy.write_text(BROKEN_POLICY)
    status, _, body = page.post("/reload", f"csrf={page.csrf(bearer)}&confirm=yes", bearer)
    assert status == 409 and b"sides.red.policy" in body and service.policies.generation == before
    policy.write_text(good)
    status, _, body = page.post("/reload", f"csrf={page.csrf(bearer)}&confirm=yes", bearer)
    assert status == 200 and b"Policies reloaded" in body and service.policies.generation > before


def test_a_policy_whose_cases_fail_is_refused_as_check_config_refuses_it(tmp_path):
    """The page's check runs the cases beside the policy, as `guard check-config` does: a failing case refuses."""
    service, policy = a_guard(tmp_path)
    page = harness_for(service)
    bearer = f"Authorization: Bearer {TOKEN}"
    cases = tmp_path / "policy.tests.toml"
    cases.write_text(cases.read_text().replace('verdict = "pass"', 'verdict = "drop"', 1))
    status, _, body = page.post("/reload", f"csrf={page.csrf(bearer)}&confirm=yes", bearer)
    assert status == 409 and b"case " in body


def test_a_pair_half_serves_the_page_with_its_pair_link(tree, tmp_path):
    """A half with [management] listens for the page too, and the page shows its pair link."""
    from guard.app.half import HalfService
    from guard.app.half_config import load_half_config

    from .link.test_half_config import variant

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    os.chmod(token_file, 0o600)
    config = load_half_config(variant(tree, [], add=f'\n[management]\nlisten = "tcp:9271"\ntoken_file = "{token_file}"\n'))
    service = HalfService(config, MemoryReactorClock())
    service.startService()
    assert (9271, "127.0.0.1") in [(port, interface) for port, _, _, interface in service.reactor.tcpServers]
    status, _, body = harness_for(service).get("/", f"Authorization: Bearer {TOKEN}")
    assert status == 200 and b"<dt>state</dt><dd>down</dd>" in body and b"read-only" in body


def test_the_chart_reads_the_same_counter_as_metrics(tmp_path):
    """After stanzas are decided, /rates.json gives per direction and verdict exactly what /metrics's
    xmpp_guard_stanzas_total holds, summed over kinds."""
    from twisted.words.xish import domish

    from guard.core.pipeline import Direction
    from guard.core.settlement import SettlementEvent

    service, _ = a_guard(tmp_path)
    red_to_blue = Direction("red", "blue")
    for name, verdict in (("message", "pass"), ("message", "pass"), ("presence", "pass"), ("iq", "drop")):
        event = SettlementEvent(verdict, domish.Element((None, name)), "allow-all", 1, red_to_blue)
        (service.metrics.stanzas.stanza_passed if verdict == "pass" else service.metrics.stanzas.stanza_dropped)(event)
    _, _, body = harness_for(service).get("/rates.json", f"Authorization: Bearer {TOKEN}")
    counts = json.loads(body)["counts"]
    registry = service.metrics.registry
    for verdict in ("passed", "dropped"):
        assert counts[f"red->blue {verdict}"] == sum(
            registry.get_sample_value("xmpp_guard_stanzas_total", {"direction": "red->blue", "kind": kind,
                                                                   "verdict": verdict}) or 0
            for kind in ("message", "presence", "iq"))
    assert counts == {"red->blue passed": 3, "red->blue dropped": 1}
