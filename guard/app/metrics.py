"""
The guard's Prometheus metrics: ``GuardMetrics`` holds a
``CollectorRegistry`` (``.registry``) whose collector reads a running
GuardProcess at scrape time (books, queues, the pair link, policies,
certificates) and the counts the edges keep as things happen
(``guard.edges.metrics``: stanzas by verdict and rule, stream events,
release answers), plus the process collector (RSS, CPU, open descriptors).
The service builds one always (``process.metrics``); ``[metrics] listen``
serves it at ``/metrics`` (``metrics_site``), in the Prometheus text format,
or OpenMetrics when the Accept header asks for it.

Every name starts ``xmpp_guard_``, is in base units (seconds, bytes), and
counters end ``_total``.  Domain labels are only configured domains (any
other is "other"), so the number of series stays bounded.
"""

from __future__ import annotations

from collections import Counter, deque

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Site

import guard
from guard.edges.metrics import OTHER, ReleaseCounts, StanzaCounts, StreamEvents
from guard.edges.tlsidentity import load_pem_chain

PREFIX = "xmpp_guard_"
LINK_STATES = ("up", "down", "down_too_long")
DAY = 86400.0

# stanza_rates(): samples kept (one per second at most) and the window rates are taken over.
RATE_SAMPLES = 120
RATE_WINDOW_SECONDS = 10.0


def earliest_not_after(certificates) -> float | None:
    """The earliest notAfter (epoch seconds) of pyOpenSSL or ``cryptography`` certificates, or None for none."""
    times = []
    for certificate in certificates:
        if certificate is None:
            continue
        if hasattr(certificate, "to_cryptography"):
            certificate = certificate.to_cryptography()
        times.append(certificate.not_valid_after_utc.timestamp())
    return min(times) if times else None


def side_identity_expiries(side) -> dict[str, float]:
    """{identity label: earliest notAfter} for the certificates (and chains) a side presents."""
    expiries = {}
    for identity in {id(each): each for each in side.identities.values()}.values():
        chain = [getattr(identity, name, None) for name in ("_leaf", "_client_leaf")]
        chain += list(getattr(identity, "_extra", ())) + list(getattr(identity, "_client_extra", ()))
        not_after = earliest_not_after(chain)
        if not_after is not None:
            expiries[",".join(sorted(identity.domains))] = not_after
    return expiries


class GuardMetrics:
    """
    The metrics of one GuardProcess (standalone guard or pair half).  Call
    ``attach()`` once the process has its relay, sides (and link); the
    service does.
    """

    def __init__(self, process):
        self.process = process
        self.clock = process.reactor
        self.stanzas = StanzaCounts(self.clock)
        self.streams = StreamEvents()
        self.release = ReleaseCounts(self.stanzas)
        self.domains = frozenset()
        self.expiries: dict[tuple[str, str], float] = {}
        self._samples: deque = deque(maxlen=RATE_SAMPLES)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_GuardCollector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def attach(self) -> "GuardMetrics":
        """Hear the relay's settlements, every side's streams, the link's streams and the release authority."""
        process = self.process
        relay = process.relay
        relay.settlement.observe(self.stanzas)
        topology = relay.topology
        self.domains = frozenset(domain for name in topology.sides for domain in topology.hosted_on(name))
        for name, side in process.sides.items():
            side.events = self.streams
            for identity, not_after in side_identity_expiries(side).items():
                self.expiries[(name, identity)] = not_after
        leg = getattr(relay, "leg", None)
        if leg is not None:
            leg.link.stream_events = self.streams
            try:
                not_after = earliest_not_after(load_pem_chain(leg.tls.certificate_path))
            except (OSError, ValueError):
                not_after = None
            if not_after is not None:
                self.expiries[("link", leg.link.own_name)] = not_after
        if process.release_authority is not None:
            process.release_authority.answer_listeners.append(self.release)
        self.policies_changed()
        return self

    def policies_changed(self) -> None:
        """The rule ids of the policies in force are the rule label's values (call after a reload)."""
        policies = self.process.policies
        self.stanzas.rules_in_force(
            rule.id for direction, _, _ in self.process.policy_files()
            for rule in getattr(policies.current(direction), "rules", ()))

    def domain(self, name) -> str:
        """A domain as a label value: itself when configured, else "other"."""
        return name if name in self.domains else OTHER

    # -- what the management page's chart reads ------------------------------

    def stanza_totals(self) -> dict[tuple[str, str, str], int]:
        """(direction, kind, verdict) -> stanzas so far (the counter xmpp_guard_stanzas_total)."""
        return dict(self.stanzas.decisions)

    def stanza_rates(self) -> dict[tuple[str, str], float]:
        """
        (direction, verdict) -> stanzas per second over about the last
        ``RATE_WINDOW_SECONDS`` (0 at the first call): read from the same
        counter as xmpp_guard_stanzas_total, sampled at most once a second.
        """
        now = self.clock.seconds()
        totals = Counter()
        for (direction, _, verdict), count in self.stanzas.decisions.items():
            totals[(direction, verdict)] += count
        if not self._samples or now - self._samples[-1][0] >= 1.0:
            self._samples.append((now, totals))
        since = next(((when, counts) for when, counts in self._samples if now - when <= RATE_WINDOW_SECONDS),
                     self._samples[-1])
        elapsed = now - since[0]
        if elapsed <= 0:
            return {key: 0.0 for key in totals}
        return {key: (count - since[1].get(key, 0)) / elapsed for key, count in totals.items()}


def labelled(family_type, name: str, text: str, labels: list[str], counts) -> object:
    """A metric family of ``family_type`` whose samples are ``counts``: {(label values...): value}."""
    family = family_type(PREFIX + name, text, labels=labels)
    for values, count in sorted(counts.items()):
        family.add_metric(list(values), count)
    return family


class _GuardCollector:
    """Reads the process and the counts at each scrape."""

    def __init__(self, metrics: GuardMetrics):
        self.metrics = metrics

    def describe(self):
        return []  # families differ between a standalone guard and a half: described as collected

    def collect(self):
        metrics = self.metrics
        process = metrics.process
        yield from self._service(process)
        yield from self._books(process)
        yield from self._stanzas(metrics)
        yield from self._streams(metrics)
        yield from self._carriers(metrics, process.relay)
        yield from self._link(process.relay)
        yield from self._release(metrics, process)
        yield from self._policies(process)
        yield from self._certificates(metrics)

    @staticmethod
    def _service(process):
        info = GaugeMetricFamily(PREFIX + "build_info", "The guard's version (always 1).", labels=["version"])
        info.add_metric([guard.__version__], 1)
        yield info
        yield GaugeMetricFamily(PREFIX + "start_time_seconds", "When the guard process started (epoch seconds).",
                                value=process.started)
        yield GaugeMetricFamily(PREFIX + "relaying_halted",
                                "1 while the guard does not relay because its audit trail could not be written.",
                                value=1 if process.relay.halted_reason is not None else 0)
        records = getattr(process.audit, "records", None)
        if isinstance(records, int):
            yield CounterMetricFamily(PREFIX + "audit_records", "Records written to the audit trail.", value=records)
        failures = getattr(process.audit, "write_failures", None)
        if isinstance(failures, int):
            yield CounterMetricFamily(PREFIX + "audit_write_failures",
                                      "Audit records that could not be written (with audit_failure = \"continue\" "
                                      "the guard relays on; with \"stop\" it halts at the first).", value=failures)

    @staticmethod
    def _books(process):
        books, settlement = process.books, process.relay.settlement
        for name, value, text in (
                ("accepted", books.accepted, "Stanzas the guard accepted (each settles once)."),
                ("delivered", books.delivered, "Accepted stanzas written to their destination."),
                ("bounced", books.bounced, "Accepted stanzas bounced to their sender."),
                ("dropped", books.dropped, "Accepted stanzas dropped.")):
            yield CounterMetricFamily(PREFIX + "books_" + name, text, value=value)
        yield GaugeMetricFamily(PREFIX + "books_in_flight", "Accepted stanzas not settled yet, by the books.",
                                value=books.in_flight)
        yield GaugeMetricFamily(PREFIX + "stanzas_in_flight",
                                "Accepted stanzas not settled yet, by the settlement core's own open tickets "
                                "(accepted - delivered - bounced - dropped equals it while the books balance).",
                                value=settlement.in_flight)
        yield CounterMetricFamily(PREFIX + "settlements_refused",
                                  "Second settlements of a stanza that the core refused (never counted in the books).",
                                  value=settlement.counts["refused"])
        yield CounterMetricFamily(PREFIX + "bounces_lost", "The guard's own bounces that could not be delivered.",
                                  value=settlement.counts["bounce-lost"])
        held = process.relay.held
        yield GaugeMetricFamily(PREFIX + "held_bytes", "Bytes of stanzas the guard holds (queues, release authority).",
                                value=held.held)
        yield GaugeMetricFamily(PREFIX + "held_bytes_budget", "The memory budget for held stanzas, in bytes.",
                                value=held.budget)
        yield GaugeMetricFamily(PREFIX + "memory_budget_exceeded",
                                "1 while held bytes reached the budget and no feeder is read.", value=int(held.over))

    @staticmethod
    def _stanzas(metrics):
        stanzas = metrics.stanzas
        yield labelled(CounterMetricFamily, "stanzas", "Stanzas decided, by direction, kind and verdict (passed, "
                       "bounced, dropped, referred to the release authority).", ["direction", "kind", "verdict"],
                       stanzas.decisions)
        yield labelled(CounterMetricFamily, "rule_decisions", "Stanzas decided, by direction, deciding rule id and "
                       "verdict.", ["direction", "rule", "verdict"], stanzas.rules)
        family = HistogramMetricFamily(PREFIX + "delivery_latency_seconds",
                                       "Seconds from a stanza's arrival to its write to the destination.",
                                       labels=["direction"])
        for direction, buckets in sorted(stanzas.latency.items()):
            family.add_metric([direction], buckets.cumulative(), buckets.sum)
        yield family

    @staticmethod
    def _streams(metrics):
        events = metrics.streams
        yield labelled(GaugeMetricFamily, "streams_open", "Streams connected now, by side, direction and "
                       "authentication method (none: not authenticated yet).",
                       ["side", "direction", "authentication"], events.open_streams())
        for name, counts, text, label in (
                ("streams_opened", events.opened, "Streams connected, by side and direction.", None),
                ("stream_closures", events.closures, "Streams ended, by side, direction and stream-error "
                 "condition (or closed, peer-error, connection-lost, dropped, cut-off).", "condition"),
                ("tls_failures", events.tls_failures, "TLS failures, by side, direction and reason.", "reason"),
                ("authentication_failures", events.authentication_failures,
                 "Authentication failures, by side, direction and reason.", "reason")):
            yield labelled(CounterMetricFamily, name, text, ["side", "direction"] + ([label] if label else []), counts)
        received = CounterMetricFamily(PREFIX + "received_bytes", "Bytes received on the wire, by side.",
                                       labels=["side"])
        sent = CounterMetricFamily(PREFIX + "sent_bytes", "Bytes sent on the wire, by side.", labels=["side"])
        for (side, way), count in sorted(events.bytes_by_side().items()):
            (received if way == "in" else sent).add_metric([side], count)
        yield received
        yield sent

    @staticmethod
    def _carriers(metrics, relay):
        queued, queued_bytes, pressure, connects, failures = Counter(), Counter(), Counter(), Counter(), Counter()
        for (side, sender, receiver), carrier in relay.links.items():
            key = (side, metrics.domain(sender), metrics.domain(receiver))
            facts = carrier.describe()
            queued[key] += facts["queued"]
            queued_bytes[key] += facts["queued_bytes"]
            stream = carrier.stream
            congested = stream is not None and not stream.closing and stream._lifecycle_state() == "congested"
            pressure[key] = max(pressure[key], int(facts["holding"] or congested))
            connects[key] += facts["connects"]
            failures[key] += facts["failures"]
        labels = ["side", "sender", "receiver"]
        for name, family_type, counts, text in (
                ("outbound_queue_stanzas", GaugeMetricFamily, queued, "Stanzas waiting in an outbound queue."),
                ("outbound_queue_bytes", GaugeMetricFamily, queued_bytes, "Bytes waiting in an outbound queue."),
                ("outbound_back_pressure", GaugeMetricFamily, pressure,
                 "1 while the servers feeding this pair are held (queue full while connecting, or far server not "
                 "reading)."),
                ("outbound_connects", CounterMetricFamily, connects, "Outbound streams the guard began to open."),
                ("outbound_stream_failures", CounterMetricFamily, failures,
                 "Outbound streams that failed before they were ready (the far server unreachable or refusing).")):
            yield labelled(family_type, name, text, labels, counts)

    @staticmethod
    def _link(relay):
        leg = getattr(relay, "leg", None)
        if leg is None:
            return
        facts = leg.describe()
        yield GaugeMetricFamily(PREFIX + "link_up", "1 while the pair link to the peer half is up.",
                                value=int(facts["state"] == "up"))
        state = GaugeMetricFamily(PREFIX + "link_state", "The pair link's state (1 for the current one).",
                                  labels=["state"])
        for name in LINK_STATES:
            state.add_metric([name], int(facts["state"] == name))
        yield state
        yield GaugeMetricFamily(PREFIX + "link_buffer_bytes", "Bytes in the link's retransmission buffer.",
                                value=facts["buffer_bytes"])
        yield GaugeMetricFamily(PREFIX + "link_queued_stanzas", "Stanzas in the link's buffer not written yet.",
                                value=facts["queued"])
        yield GaugeMetricFamily(PREFIX + "link_unacknowledged_stanzas",
                                "Stanzas written to the peer half and not acknowledged yet.",
                                value=facts["unacknowledged"])
        yield GaugeMetricFamily(PREFIX + "link_held", "1 while the link is not read (back-pressure).",
                                value=int(bool(getattr(relay, "link_holds", ()))))
        yield CounterMetricFamily(PREFIX + "link_connections", "Connections of the pair link that came up.",
                                  value=facts["connections"])
        yield CounterMetricFamily(PREFIX + "link_in_doubt", "Stanzas settled in doubt when the link stopped.",
                                  value=facts["settled_in_doubt"])

    @staticmethod
    def _release(metrics, process):
        authority = process.release_authority
        if authority is None:
            return
        yield GaugeMetricFamily(PREFIX + "release_pending", "Questions open to the release authority now.",
                                value=authority.pending)
        yield GaugeMetricFamily(PREFIX + "release_waiting", "Questions waiting for a turn to be asked.",
                                value=len(authority.waiting))
        answers = CounterMetricFamily(PREFIX + "release_answers", "Release authority answers, by outcome.",
                                      labels=["outcome"])
        for outcome in ("released", "denied", "busy"):
            answers.add_metric([outcome], metrics.release.outcomes[outcome])
        yield answers
        latency = HistogramMetricFamily(PREFIX + "release_latency_seconds",
                                        "Seconds from asking the release authority to its answer (or giving up).")
        latency.add_metric([], metrics.release.latency.cumulative(), metrics.release.latency.sum)
        yield latency

    @staticmethod
    def _policies(process):
        loaded = GaugeMetricFamily(PREFIX + "policy_loaded_timestamp_seconds",
                                   "When the policy in force for a direction was loaded (epoch seconds).",
                                   labels=["direction"])
        info = GaugeMetricFamily(PREFIX + "policy_info", "The policy in force per direction: its name and the "
                                 "SHA-256 of its file (always 1).", labels=["direction", "name", "digest"])
        cases = GaugeMetricFamily(PREFIX + "policy_cases", "The policy's own test cases at load, by result.",
                                  labels=["direction", "result"])
        for record in process.policy_records:
            loaded.add_metric([record["direction"]], record["loaded"])
            info.add_metric([record["direction"], str(record["name"]), str(record["digest"])], 1)
            for result in ("passed", "failed"):
                cases.add_metric([record["direction"], result], record["cases"][result])
        yield loaded
        yield info
        yield cases

    @staticmethod
    def _certificates(metrics):
        now = metrics.clock.seconds()
        family = GaugeMetricFamily(PREFIX + "certificate_expiry_seconds",
                                   "Seconds until the earliest notAfter of the certificate chain an identity of the "
                                   "guard presents (negative: expired).", labels=["side", "identity"])
        for (side, identity), not_after in sorted(metrics.expiries.items()):
            family.add_metric([side, identity], not_after - now)
        yield family


class MetricsPage(Resource):
    """``/metrics``: the registry in the Prometheus text format, or OpenMetrics when the Accept header asks."""

    isLeaf = True

    def __init__(self, registry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        if request.postpath not in ([], [b""]):
            return NoResource().render(request)
        encoder, content_type = choose_encoder(request.getHeader("accept"))
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return encoder(self.registry)


class MetricsRoot(Resource):
    """Everything but ``/metrics`` is 404."""

    def __init__(self, registry):
        super().__init__()
        self.putChild(b"metrics", MetricsPage(registry))

    def render(self, request):
        return NoResource().render(request)


def metrics_site(registry) -> Site:
    """The twisted.web site that serves ``registry`` at /metrics."""
    site = Site(MetricsRoot(registry))
    site.displayTracebacks = False
    site.noisy = False
    return site
