"""
The metrics: the counts the edges keep (plain values), the registry a
service builds read at scrape time, and /metrics served over loopback.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from guard.app.config import ConfigError, load_config
from guard.app.metrics import GuardMetrics, metrics_site
from guard.app.service import GuardService
from guard.core.addressing import check_addressing
from guard.core.pipeline import Direction
from guard.core.settlement import Settlement
from guard.edges.filters import ByteCount
from guard.edges.metrics import Buckets, ReleaseCounts, StanzaCounts, StreamEvents
from guard.edges.release import ReleaseAuthority
from guard.edges.s2s.outbound import OutboundStream
from guard.lab.topology import DEFAULT_POLICY, render_guard_config

from .link import pairs
from .streams.sides import TOPOLOGY, pki
from .link.test_half_config import tree  # noqa: F401 - the pytest fixture
from .test_config import write
from .test_release import RecordingAudit, stanza as release_stanza

RED_BLUE = Direction("red", "blue")
MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"


def exported_names(text: str) -> set[str]:
    """Every sample name a scrape in the text format declares (a family with no sample yet included)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ())
        names.update(family.name + suffix for suffix in suffixes)
    return names


def monitored_names() -> set[str]:
    """Every xmpp_guard_ name the alert rules and the Grafana dashboard use."""
    named = set()
    for path in (MONITORING / "alerts.yml", MONITORING / "xmpp-guard-dashboard.json"):
        named |= set(re.findall(r"\bxmpp_guard_[a-z_]+", path.read_text()))
    return named


def message(number, sender="romeo@red.example", recipient="juliet@blue.example"):
    """A <message/> in jabber:server, as a stream's parser would hand it over."""
    return pairs.message(number, sender, recipient).stanza


def lab_service(tmp_path, extra=""):
    """A standalone guard from the lab configuration on a memory reactor; its outbound streams are never connected."""
    policy = tmp_path / "allow-all.toml"
    shutil.copy(DEFAULT_POLICY, policy)
    text = render_guard_config(pki(), "certificate", policy=policy) + extra
    clock = MemoryReactorClock()
    clock.advance(1_000)
    service = GuardService(load_config(str(write(tmp_path, text))), clock)
    service.relay.open_stream = lambda owner, side, sender, receiver, route, purpose="relay": OutboundStream(
        owner, side, sender, receiver, purpose)
    return service, clock


def relay_message(service, number=1, sender="romeo@red.example", recipient="juliet@blue.example"):
    """Hand the relay a message from red's server as an inbound stream authenticated for red.example would."""
    side = service.sides["red"]
    element = message(number, sender, recipient)
    addressed = check_addressing(element, {("red.example", "blue.example")}, side.fronted)
    service.relay.stanza_received(side, element, addressed, 120)


def samples(registry) -> dict:
    """{(sample name, sorted labels): value} of a registry, as a scrape parses it."""
    from prometheus_client import generate_latest

    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


# -- the counts, with plain values ------------------------------------------------


def test_buckets_are_cumulative_with_the_bound_itself_inside():
    """A value equal to a bound counts in that bucket; every bucket counts what is at or under it; +Inf counts all."""
    buckets = Buckets((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7.0):
        buckets.observe(value)
    assert buckets.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert (buckets.count, buckets.sum) == (4, 7.65)


def test_settlements_are_counted_by_direction_kind_verdict_and_rule():
    """A pass, a bounce and a drop count once each under their direction, kind and verdict, and under their rule;
    a rule the loaded policies do not have is "other", the guard's own rules keep their id."""
    clock = Clock()
    counts = StanzaCounts(clock, rules={"allow-chat"})
    settlement = Settlement(TOPOLOGY, (counts,))

    def judged(verdict, rule, element):
        ticket = settlement.accept(element, ("red.example", "blue.example"), 100, RED_BLUE, 0, clock.seconds())
        judgement = SimpleNamespace(verdict=verdict, stanza=element, rule_id=rule, rule_rev=1, condition=None,
                                    text="no", notes=())
        return ticket, settlement.judged(ticket, judgement)

    from guard.core.pipeline import Verdict

    ticket, deliver = judged(Verdict.PASS, "allow-chat", message(1))
    judged(Verdict.BOUNCE, "sneaky-rule", message(2))
    judged(Verdict.DROP, "guard:policy-failure", message(3))
    clock.advance(0.003)
    settlement.delivered(deliver.parcel)
    assert dict(counts.decisions) == {("red->blue", "message", "passed"): 1, ("red->blue", "message", "bounced"): 1,
                                      ("red->blue", "message", "dropped"): 1}
    assert dict(counts.rules) == {("red->blue", "allow-chat", "passed"): 1, ("red->blue", "other", "bounced"): 1,
                                  ("red->blue", "guard:policy-failure", "dropped"): 1}
    assert counts.latency["red->blue"].cumulative()[:3] == [("0.0005", 0), ("0.001", 0), ("0.0025", 0)]
    assert counts.latency["red->blue"].count == 1 and abs(counts.latency["red->blue"].sum - 0.003) < 1e-9


def test_a_stanza_of_an_unknown_kind_is_counted_as_other():
    """The kind label only takes the three stanza names."""
    counts = StanzaCounts(Clock())
    element = message(1)
    element.name = "sneaky"
    counts.stanza_dropped(SimpleNamespace(ticket=None, direction=RED_BLUE, stanza=element, rule="default"))
    assert dict(counts.decisions) == {("red->blue", "other", "dropped"): 1}


class FakeStream:
    """What StreamEvents reads of a stream: its side, kind, authentication and byte count."""

    def __init__(self, side="red", kind="inbound", authentication=None):
        self.side = SimpleNamespace(name=side)
        self.stream_kind = kind
        self.authentication = authentication
        self.byte_count = ByteCount()


fake_stream = FakeStream


def test_stream_events_keep_open_streams_closures_and_the_bytes_of_streams_that_are_over():
    """Open streams are counted by side, kind and authentication; a closed one is counted by its condition (an
    unknown condition is "other") and its bytes stay in the side's totals."""
    events = StreamEvents()
    first, second = fake_stream(authentication="certificate"), fake_stream("blue", "outbound")
    events.stream_opened(first)
    events.stream_opened(second)
    first.byte_count.count_in(b"x" * 100)
    first.byte_count.count_out(b"y" * 40)
    second.byte_count.count_out(b"z" * 7)
    assert dict(events.open_streams()) == {("red", "inbound", "certificate"): 1, ("blue", "outbound", "none"): 1}
    events.stream_closed(first, "policy-violation")
    events.stream_closed(second, "something the peer made up")
    events.stream_closed(second, "closed")  # told twice: counted once
    assert dict(events.closures) == {("red", "inbound", "policy-violation"): 1, ("blue", "outbound", "other"): 1}
    assert dict(events.bytes_by_side()) == {("red", "in"): 100, ("red", "out"): 40, ("blue", "in"): 0,
                                            ("blue", "out"): 7}
    assert events.open_streams() == {}


def test_timers_that_fire_are_tls_or_authentication_failures():
    """The tls timer is a TLS failure (timeout), the auth timer an authentication failure; idle is neither."""
    events = StreamEvents()
    stream = fake_stream()
    for name in ("tls", "auth", "idle"):
        events.timer_fired(stream, name)
    events.tls_failed(stream, "made-up")
    assert dict(events.tls_failures) == {("red", "inbound", "timeout"): 1, ("red", "inbound", "other"): 1}
    assert dict(events.authentication_failures) == {("red", "inbound", "timeout"): 1}


def test_the_release_authority_tells_questions_outcomes_and_latency():
    """A question the authority never answers is denied after its timeout, with that latency; one asked while the
    authority is full is busy at once; both count as referred."""
    clock = Clock()
    counts = StanzaCounts(clock)
    listener = ReleaseCounts(counts)
    authority = ReleaseAuthority(SimpleNamespace(connect=lambda factory: defer.Deferred()), clock, RecordingAudit(),
                                 timeout=2.0, max_pending=1, max_waiting=0)
    authority.answer_listeners.append(listener)
    authority.ask(release_stanza(), RED_BLUE, "refer-high")
    authority.ask(release_stanza(), RED_BLUE, "refer-high")
    clock.advance(2.0)
    assert dict(listener.outcomes) == {"busy": 1, "denied": 1}
    assert listener.latency.sum == 2.0 and listener.latency.count == 2
    assert dict(counts.decisions) == {("red->blue", "message", "referred"): 2}
    assert (authority.answered, authority.last_answer_seconds) == (2, 2.0)


def test_a_failing_listener_does_not_change_the_answer():
    """A listener that raises is logged; the question is still answered (denied here, as it timed out)."""
    clock = Clock()

    class Broken:
        def asked(self, kind, direction):
            raise RuntimeError("broken")

        answered = asked

    authority = ReleaseAuthority(SimpleNamespace(connect=lambda factory: defer.Deferred()), clock, RecordingAudit(),
                                 timeout=1.0)
    authority.answer_listeners.append(Broken())
    answers = []
    authority.ask(release_stanza(), RED_BLUE, "refer-high").addBoth(answers.append)
    clock.advance(1.0)
    assert [answer.released for answer in answers] == [False] and authority.answered == 1


# -- the registry of a service, read at scrape time -------------------------------


def test_a_service_counts_a_relayed_message_its_queue_and_then_its_bounce(tmp_path):
    """A message for blue passes and waits in the queue while its stream is set up; when the stream fails it is
    bounced: the scrape shows each step in the stanza counter, the queue gauges and the books."""
    service, clock = lab_service(tmp_path)
    relay_message(service)
    seen = samples(service.metrics.registry)
    stanzas = ("xmpp_guard_stanzas_total", (("direction", "red->blue"), ("kind", "message"), ("verdict", "passed")))
    queue = (("receiver", "blue.example"), ("sender", "red.example"), ("side", "blue"))
    assert seen[stanzas] == 1
    assert seen[("xmpp_guard_rule_decisions_total",
                 (("direction", "red->blue"), ("rule", "allow-all"), ("verdict", "passed")))] == 1
    assert seen[("xmpp_guard_outbound_queue_stanzas", queue)] == 1
    assert seen[("xmpp_guard_outbound_queue_bytes", queue)] == 120
    assert seen[("xmpp_guard_outbound_connects_total", queue)] == 1
    assert (seen[("xmpp_guard_books_accepted_total", ())], seen[("xmpp_guard_stanzas_in_flight", ())]) == (1, 1)
    assert seen[("xmpp_guard_held_bytes", ())] == 120
    carrier = service.relay.links[("blue", "red.example", "blue.example")]
    carrier.stream_failed(carrier.stream, "remote-server-not-found", "refused")
    seen = samples(service.metrics.registry)
    assert seen[("xmpp_guard_stanzas_total", (("direction", "red->blue"), ("kind", "message"),
                                              ("verdict", "bounced")))] == 1
    assert seen[("xmpp_guard_outbound_stream_failures_total", queue)] == 1
    assert seen[("xmpp_guard_outbound_queue_stanzas", queue)] == 0
    assert (seen[("xmpp_guard_books_bounced_total", ())], seen[("xmpp_guard_stanzas_in_flight", ())]) == (1, 0)
    assert service.metrics.stanza_totals() == {("red->blue", "message", "passed"): 1,
                                               ("red->blue", "message", "bounced"): 1}


def test_the_books_balance_in_the_scrape(tmp_path):
    """accepted - delivered - bounced - dropped - in flight is zero after traffic (what the alert checks)."""
    service, _ = lab_service(tmp_path)
    for number in range(3):
        relay_message(service, number)
    seen = samples(service.metrics.registry)
    balance = (seen[("xmpp_guard_books_accepted_total", ())] - seen[("xmpp_guard_books_delivered_total", ())]
               - seen[("xmpp_guard_books_bounced_total", ())] - seen[("xmpp_guard_books_dropped_total", ())]
               - seen[("xmpp_guard_stanzas_in_flight", ())])
    assert (seen[("xmpp_guard_books_accepted_total", ())], balance) == (3, 0)


def test_certificate_expiry_is_given_per_identity_from_the_injected_clock(tmp_path):
    """Each identity the guard presents has the seconds until its chain's earliest notAfter, on the service clock."""
    service, clock = lab_service(tmp_path)
    seen = samples(service.metrics.registry)
    expiries = {labels: value for (name, labels), value in seen.items()
                if name == "xmpp_guard_certificate_expiry_seconds"}
    assert {dict(labels)["side"] for labels in expiries} == {"red", "blue"}
    not_after = min(service.metrics.expiries.values())
    assert min(expiries.values()) == not_after - clock.seconds()
    clock.advance(86400)
    later = samples(service.metrics.registry)
    assert min(value for (name, _), value in later.items()
               if name == "xmpp_guard_certificate_expiry_seconds") == not_after - clock.seconds()


def test_unconfigured_domains_are_other_in_queue_labels(tmp_path):
    """A carrier for a pair whose domains are not configured is labelled other (cardinality stays bounded)."""
    service, _ = lab_service(tmp_path)
    from guard.edges.relay import Parcel

    service.relay._forward("blue", ("evil.example", "blue.example"), Parcel(message(1), message(1), None, 10))
    seen = samples(service.metrics.registry)
    assert seen[("xmpp_guard_outbound_queue_stanzas",
                 (("receiver", "blue.example"), ("sender", "other"), ("side", "blue")))] == 1
    assert not any("evil.example" in str(labels) for _, labels in seen)


def test_policies_halting_and_the_process_collector_are_exported(tmp_path):
    """The policy info, load time and cases, the halted gauge and the process RSS are in the scrape."""
    service, _ = lab_service(tmp_path)
    service.relay.halted_reason = "audit trail unavailable"
    seen = samples(service.metrics.registry)
    assert seen[("xmpp_guard_relaying_halted", ())] == 1
    assert seen[("xmpp_guard_policy_loaded_timestamp_seconds", (("direction", "red->blue"),))] == 1_000
    assert any(name == "xmpp_guard_policy_info" and dict(labels)["name"] == "allow-all" for name, labels in seen)
    assert seen[("process_resident_memory_bytes", ())] > 0


def test_metrics_listen_is_read_and_checked(tmp_path):
    """[metrics] listen is a Twisted server endpoint string, off by default; anything else is refused by name."""
    base = render_guard_config(pki(), "certificate")
    assert load_config(str(write(tmp_path, base))).settings.metrics_listen is None
    config = load_config(str(write(tmp_path, base + '\n[metrics]\nlisten = "tcp:9269:interface=127.0.0.1"\n')))
    assert config.settings.metrics_listen == "tcp:9269:interface=127.0.0.1"
    for broken, key in (('listen = "carrier-pigeon:1"', "metrics.listen"), ('port = 9269', "metrics.port")):
        try:
            load_config(str(write(tmp_path, base + f"\n[metrics]\n{broken}\n")))
        except ConfigError as problem:
            assert key in str(problem)
        else:
            raise AssertionError(f"{broken} was accepted")


# -- /metrics over loopback --------------------------------------------------------------


class ScrapeOverLoopback(unittest.TestCase):
    """A real HTTP scrape of /metrics on 127.0.0.1."""

    timeout = 20

    @defer.inlineCallbacks
    def setUp(self):
        import tempfile
        from pathlib import Path

        self.service, _ = lab_service(Path(tempfile.mkdtemp(prefix="guard-metrics-")))
        relay_message(self.service)
        self.port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            metrics_site(self.service.metrics.registry))
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def get(self, path, accept=None):
        agent = Agent(reactor)
        headers = Headers({b"accept": [accept]}) if accept else None
        response = yield agent.request(b"GET", f"http://127.0.0.1:{self.port.getHost().port}{path}".encode(), headers)
        body = yield readBody(response)
        return response.code, response.headers.getRawHeaders(b"content-type", [b""])[0], body.decode()

    @defer.inlineCallbacks
    def test_the_text_format_by_default(self):
        """Without an Accept header /metrics is the Prometheus text format, with the relayed message counted."""
        code, content_type, body = yield self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith(b"text/plain; version=0.0.4"))
        self.assertIn('xmpp_guard_stanzas_total{direction="red->blue",kind="message",verdict="passed"} 1.0', body)
        self.assertNotIn("# EOF", body)

    @defer.inlineCallbacks
    def test_openmetrics_when_asked(self):
        """With Accept: application/openmetrics-text the answer is OpenMetrics, ending in # EOF."""
        code, content_type, body = yield self.get("/metrics", b"application/openmetrics-text; version=1.0.0")
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith(b"application/openmetrics-text"))
        self.assertTrue(body.endswith("# EOF\n"))
        self.assertIn('xmpp_guard_stanzas_total{direction="red->blue",kind="message",verdict="passed"} 1.0', body)

    @defer.inlineCallbacks
    def test_anything_else_is_not_found(self):
        """/, /metrics/extra and /status are 404 and say nothing about the guard."""
        for path in ("/", "/metrics/extra", "/status"):
            code, _, body = yield self.get(path)
            self.assertEqual(code, 404, path)
            self.assertNotIn("xmpp_guard", body)


def test_every_metric_name_follows_the_conventions(tmp_path):
    """Every family the guard exports starts xmpp_guard_ (or is a standard process_/python_ one), has help text,
    counters end in _total, and units are base units (seconds, bytes)."""
    service, _ = lab_service(tmp_path)
    relay_message(service)
    from prometheus_client import generate_latest

    text = generate_latest(service.metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        assert family.name.startswith(("xmpp_guard_", "process_", "python_")), family.name
        assert family.documentation, family.name
        assert not re.search(r"_(milliseconds|ms|kilobytes|kb|minutes)\b", family.name), family.name
    counters = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ") and line.endswith("counter")]
    samples_text = [line for line in text.splitlines() if not line.startswith("#")]
    assert "xmpp_guard_stanzas_total" in counters
    assert all(name.endswith("_total") for name in counters), counters
    assert all(re.match(r"[a-z_]+(_total)?({| )", line) for line in samples_text)


def test_guard_metrics_is_built_for_every_service(tmp_path):
    """The service always owns its metrics (served only when configured)."""
    service, _ = lab_service(tmp_path)
    assert isinstance(service.metrics, GuardMetrics) and service._metrics_port is None


class StreamEventsOverLoopback(unittest.TestCase):
    """Real streams over loopback TLS tell the side's StreamEvents what happens to them."""

    timeout = 20

    @defer.inlineCallbacks
    def connect(self, keypair):
        from twisted.internet.endpoints import HostnameEndpoint, connectProtocol

        from guard.edges.s2s.inbound import InboundFactory

        from .streams.sides import make_side
        from .streams.test_handshakes import RecordingOwner

        self.events = StreamEvents()
        self.guard_side = make_side("red", reactor)
        self.guard_side.events = self.events
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(InboundFactory(self.guard_side))
        self.addCleanup(port.stopListening)
        peer_side = make_side("red", reactor, certificate=keypair.certificate, key=keypair.key,
                              presents_for=("red.example", "conference.red.example"))
        owner = RecordingOwner()
        self.outbound = OutboundStream(owner, peer_side, "red.example", "blue.example")
        self.addCleanup(self.close)
        yield connectProtocol(HostnameEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=5), self.outbound)
        settled = yield owner.settled
        return settled

    @defer.inlineCallbacks
    def close(self):
        from .streams.test_handshakes import deferLater

        self.outbound.close_for_shutdown()
        yield deferLater(0.3)
        for stream in [self.outbound] + list(self.guard_side.inbound_streams):
            if stream.transport is not None:
                stream.transport.abortConnection()
        yield deferLater(0.1)

    @defer.inlineCallbacks
    def test_an_authenticated_stream_is_open_then_closed_with_its_bytes_kept(self):
        """A stream authenticated by certificate counts as open (red, inbound, certificate); once the peer closes,
        it counts as a closure and its bytes stay in red's totals."""
        self.assertEqual((yield self.connect(pki().red_server)), ("ready",))
        self.assertEqual(dict(self.events.open_streams()), {("red", "inbound", "certificate"): 1})
        (inbound,) = list(self.guard_side.inbound_streams)
        yield self.close()
        self.assertEqual(self.events.open_streams(), {})
        self.assertEqual(sum(self.events.closures.values()), 1)
        self.assertEqual(list(self.events.closures)[0][:2], ("red", "inbound"))
        totals = self.events.bytes_by_side()
        self.assertEqual((totals[("red", "in")], totals[("red", "out")]),
                         (inbound.byte_count.bytes_in, inbound.byte_count.bytes_out))
        self.assertGreater(totals[("red", "in")], 500)

    @defer.inlineCallbacks
    def test_a_certificate_from_the_wrong_ca_is_an_authentication_failure(self):
        """A red.example certificate issued by blue's CA is refused: one authentication failure, certificate-refused."""
        self.assertEqual((yield self.connect(pki().red_from_blue_ca)), ("failed", "remote-server-not-found"))
        yield self.close()
        self.assertEqual(dict(self.events.authentication_failures), {("red", "inbound", "certificate-refused"): 1})
        self.assertEqual(self.events.open_streams(), {})


# -- deploy/monitoring ------------------------------------------------------------------


def promtool(*arguments):
    """Run Debian's promtool (package prometheus, installed by make test) in deploy/monitoring."""
    import subprocess

    import pytest

    if shutil.which("promtool") is None:
        pytest.skip("promtool not found: install Debian's prometheus package (make system-deps does)")
    return subprocess.run(["promtool", *arguments], cwd=MONITORING, capture_output=True, text=True, timeout=60)


def test_the_alert_rules_pass_promtool_check_and_their_own_tests():
    """promtool check rules accepts alerts.yml, and promtool test rules runs alerts.test.yml: each of the six
    alerts fires when it should and not before."""
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0 and "SUCCESS: 6 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_the_alerts_cover_audit_books_certificates_link_and_far_side():
    """The rules are the six the operators page on."""
    alerts = re.findall(r"^      - alert: (\w+)$", (MONITORING / "alerts.yml").read_text(), re.MULTILINE)
    assert alerts == ["XmppGuardAuditFailure", "XmppGuardAuditRecordsLost", "XmppGuardBooksNotBalancing",
                                                 "XmppGuardCertificateExpiring", "XmppGuardLinkDown",
                                                 "XmppGuardFarSideUnreachable"]


def test_the_alerts_and_the_dashboard_name_only_exported_metrics(tmp_path, tree):
    """Every xmpp_guard_ name in alerts.yml and the dashboard is exported by a standalone guard with a release
    authority or by a pair half; the dashboard is JSON with a query in every panel."""
    import json

    from prometheus_client import generate_latest

    from guard.app.half import HalfService
    from guard.app.half_config import load_half_config

    from .link.test_half_config import variant

    standalone, _ = lab_service(tmp_path, '\n[release]\nendpoint = "tcp:host=127.0.0.1:port=9"\n')
    half = HalfService(load_half_config(variant(tree, [])), MemoryReactorClock())
    exported = set()
    for service in (standalone, half):
        exported |= exported_names(generate_latest(service.metrics.registry).decode())
    assert ("link", half.config.link.leg.own_name) in half.metrics.expiries  # the pair link's identity
    assert half.side.events is half.metrics.streams and half.leg.link.stream_events is half.metrics.streams
    named = monitored_names()
    assert len(named) > 30
    assert named <= exported, sorted(named - exported)
    dashboard = json.loads((MONITORING / "xmpp-guard-dashboard.json").read_text())
    queries = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert queries and all(target["expr"] for panel in queries for target in panel["targets"])


def test_stanza_rates_are_per_second_over_the_last_seconds_from_the_same_counter(tmp_path):
    """The chart's rates come from xmpp_guard_stanzas_total: 0 at first, then the stanzas counted since the oldest
    sample of the window divided by the seconds between."""
    service, clock = lab_service(tmp_path)
    assert service.metrics.stanza_rates() == {}
    relay_message(service, 1)
    assert service.metrics.stanza_rates() == {("red->blue", "passed"): 0.0}
    for number in range(2, 6):
        relay_message(service, number)
    clock.advance(2.0)
    assert service.metrics.stanza_rates() == {("red->blue", "passed"): 2.5}  # 5 since the first sample, 2 s ago
    clock.advance(20.0)
    assert service.metrics.stanza_rates() == {("red->blue", "passed"): 0.0}


def test_audit_records_that_cannot_be_written_in_continue_mode_are_counted_in_the_scrape(tmp_path):
    """audit_failure = "continue" and a trail that cannot be written: the bounce is still made, relaying goes on,
    and xmpp_guard_audit_write_failures_total counts the record that was lost."""
    service, _ = lab_service(tmp_path)
    assert samples(service.metrics.registry)[("xmpp_guard_audit_write_failures_total", ())] == 0
    service.relay.settlement.stop_on_audit_failure = False  # what [guard] audit_failure = "continue" sets
    service.audit.close()
    relay_message(service)
    carrier = service.relay.links[("blue", "red.example", "blue.example")]
    carrier.stream_failed(carrier.stream, "remote-server-not-found", "refused")
    seen = samples(service.metrics.registry)
    assert seen[("xmpp_guard_audit_write_failures_total", ())] == 1
    assert (seen[("xmpp_guard_relaying_halted", ())], seen[("xmpp_guard_books_bounced_total", ())]) == (0, 1)
