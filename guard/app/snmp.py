"""
What the guard shows over SNMP: the MIB view its AgentX subagent
(guard.edges.agentx) answers from, built afresh for each request from the
process snapshot (guard.app.snapshot) and the stanza counters of the metrics
registry, never from the streams directly.

- RFC 2788 NETWORK-SERVICES-MIB ``applTable``: the guard as one network
  service application (applIndex 1): name, version, uptime, operational
  status (up, halted when relaying stopped, congested under back-pressure),
  last change, inbound and outbound associations now, and (from the
  metrics' stream counters) associations accumulated, rejected and failed;
  the last inbound and outbound activity (the sysUpTime when a stanza was
  last accepted, and last delivered; 0 before the first);
- its ``assocTable``: one row per S2S stream, both sides and both
  directions; ``assocRemoteApplication`` is the peer domain,
  ``assocApplicationProtocol`` is ``applTCPProtoID.5269`` (XMPP S2S), the
  type peer-responder (inbound) or peer-initiator (outbound);
- XMPP-GUARD-MIB (deploy/snmp/XMPP-GUARD-MIB.txt, under the placeholder
  enterprise number 99999): the books, the halted reason and a verdict table
  per direction.

TimeStamps are the master's sysUpTime: the subagent passes the current value
(in centiseconds) it works out from the master's last Response.
"""

from __future__ import annotations

from guard.edges.agentx import (COUNTER32, COUNTER64, GAUGE32, INTEGER, OBJECT_IDENTIFIER, OCTET_STRING,
                                TIME_TICKS, AgentXSubagent, MibView)

from .snapshot import snapshot

APPLICATION = (1, 3, 6, 1, 2, 1, 27)                 # NETWORK-SERVICES-MIB
APPL_ENTRY = APPLICATION + (1, 1)                   # applTable.applEntry
ASSOC_ENTRY = APPLICATION + (2, 1)                  # assocTable.assocEntry
APPL_TCP_PROTO_ID = APPLICATION + (4,)              # applTCPProtoID
XMPP_S2S_PORT = 5269
ENTERPRISE = (1, 3, 6, 1, 4, 1, 99999)              # placeholder enterprise number: see XMPP-GUARD-MIB
GUARD_OBJECTS = ENTERPRISE + (1,)
BOOKS = GUARD_OBJECTS + (1,)
VERDICT_ENTRY = GUARD_OBJECTS + (2, 1)
HALTED_REASON = GUARD_OBJECTS + (3, 0)

# The subtrees the subagent registers with the master.
SUBTREES = (APPLICATION, ENTERPRISE)

GUARD_APPL_INDEX = 1

# applOperStatus (RFC 2788) for each snapshot state.
OPER_STATUS = {"running": 1, "halted": 3, "congested": 4}
DOWN = 2
# assocApplicationType
PEER_INITIATOR, PEER_RESPONDER = 3, 4
BOOK_NAMES = ("accepted", "delivered", "bounced", "dropped")
VERDICTS = ("passed", "bounced", "dropped", "referred")
STANZA_COUNTER = "xmpp_guard_stanzas_total"
OPENED_COUNTER = "xmpp_guard_streams_opened_total"
REFUSED_COUNTERS = ("xmpp_guard_tls_failures_total", "xmpp_guard_authentication_failures_total")
OUTBOUND_FAILURES_COUNTER = "xmpp_guard_outbound_stream_failures_total"
METRIC_SAMPLES = frozenset({STANZA_COUNTER, OPENED_COUNTER, *REFUSED_COUNTERS, OUTBOUND_FAILURES_COUNTER})
MAX_ASSOC_INDEX = 2147483647  # assocIndex INTEGER (1..2147483647)
MAX_TEXT_BYTES = 255  # SnmpAdminString (SIZE (0..255))


def admin_string(text) -> bytes:
    """``text`` as an SnmpAdminString: UTF-8, at most 255 bytes, cut on a character boundary."""
    encoded = str(text if text is not None else "").encode("utf-8")[:MAX_TEXT_BYTES]
    return encoded.decode("utf-8", errors="ignore").encode("utf-8")


def samples(registry, names) -> list[tuple[str, dict, float]]:
    """(name, labels, value) of every sample named in ``names`` in ``registry`` (one collection); [] without one."""
    if registry is None:
        return []
    return [(sample.name, sample.labels, sample.value)
            for family in registry.collect() for sample in family.samples if sample.name in names]


def stanza_verdicts(found) -> dict[str, dict[str, int]]:
    """{direction: {verdict: count}} summed over kinds from the ``xmpp_guard_stanzas_total`` samples ``found``."""
    totals: dict[str, dict[str, int]] = {}
    for name, labels, value in found:
        direction, verdict = labels.get("direction"), labels.get("verdict")
        if name != STANZA_COUNTER or direction is None or verdict not in VERDICTS:
            continue
        counts = totals.setdefault(direction, dict.fromkeys(VERDICTS, 0))
        counts[verdict] += int(value)
    return totals


def association_counts(found) -> dict[int, int]:
    """
    {applEntry column: Counter32} from the stream counters of the metrics:
    accumulated inbound (10) and outbound (11) associations (streams
    opened), inbound associations rejected (14: TLS or authentication
    failures of inbound streams), outbound associations that failed (15:
    outbound streams that failed before they were ready).
    """
    counts = dict.fromkeys((10, 11, 14, 15), 0)
    for name, labels, value in found:
        direction = labels.get("direction")
        if name == OPENED_COUNTER and direction in ("inbound", "outbound"):
            counts[10 if direction == "inbound" else 11] += int(value)
        elif name in REFUSED_COUNTERS and direction == "inbound":
            counts[14] += int(value)
        elif name == OUTBOUND_FAILURES_COUNTER:
            counts[15] += int(value)
    return {column: count % 2**32 for column, count in counts.items()}


class GuardMib:
    """
    Builds the MIB view from ``read_snapshot()`` (the documented snapshot
    dict) and ``read_registry()`` (the metrics CollectorRegistry, or None).
    Between views it keeps only the sysUpTime of the last change of
    operational status.  A stream's assocIndex is its ``id`` (unique in the
    process, never used again), so a row keeps its index while the stream
    is open and the management page and the logs name it the same way.
    """

    def __init__(self, read_snapshot, read_registry=lambda: None, directions=(), read_activity=lambda: (None, None)):
        """``read_activity()``: (when a stanza was last accepted, when one was last delivered), in seconds on the
        clock of the snapshot's ``started``, None for never."""
        self.read_snapshot = read_snapshot
        self.read_registry = read_registry
        self.read_activity = read_activity
        self.directions = tuple(directions)
        self.last_status = None
        self.last_change = 0

    def view(self, now_ticks: int) -> MibView:
        """Every value, with TimeStamps against the master's sysUpTime ``now_ticks`` (centiseconds)."""
        snapshot = self.read_snapshot()
        registry = self.read_registry()
        found = samples(registry, METRIC_SAMPLES)
        entries = self._appl_row(snapshot, now_ticks)
        if registry is not None:
            entries += [(APPL_ENTRY + (column, GUARD_APPL_INDEX), COUNTER32, count)
                        for column, count in association_counts(found).items()]
        entries += self._assoc_rows(snapshot, now_ticks)
        entries += self._guard_objects(snapshot, stanza_verdicts(found))
        return MibView(entries)

    def _since(self, now_ticks: int, seconds) -> int:
        """The sysUpTime ``seconds`` ago (0 when that was before the master started)."""
        return max(0, now_ticks - int(float(seconds or 0) * 100))

    def _appl_row(self, snapshot, now_ticks):
        service = snapshot["service"]
        status = OPER_STATUS.get(service.get("state"), DOWN)
        if self.last_status is None:  # the status the guard had since it started, as far as SNMP can tell
            self.last_status, self.last_change = status, self._since(now_ticks, service["uptime"])
        elif status != self.last_status:
            self.last_status, self.last_change = status, now_ticks
        streams = [stream for side in snapshot["sides"].values() for stream in side["peers"]]
        inbound = sum(1 for stream in streams if stream["direction"] == "inbound")
        outbound = sum(1 for stream in streams if stream["direction"] == "outbound")
        now = float(service["started"]) + float(service["uptime"] or 0)
        last_in, last_out = (0 if last is None else self._since(now_ticks, max(0.0, now - last))
                             for last in self.read_activity())
        column = lambda number: APPL_ENTRY + (number, GUARD_APPL_INDEX)  # noqa: E731
        return [
            (column(2), OCTET_STRING, admin_string(service["name"])),                  # applName
            (column(3), OCTET_STRING, b""),                                            # applDirectoryName
            (column(4), OCTET_STRING, admin_string(service["version"])),               # applVersion
            (column(5), TIME_TICKS, self._since(now_ticks, service["uptime"])),        # applUptime
            (column(6), INTEGER, status),                                              # applOperStatus
            (column(7), TIME_TICKS, self.last_change),                                 # applLastChange
            (column(8), GAUGE32, inbound),                                             # applInboundAssociations
            (column(9), GAUGE32, outbound),                                            # applOutboundAssociations
            (column(12), TIME_TICKS, last_in),                                         # applLastInboundActivity
            (column(13), TIME_TICKS, last_out),                                        # applLastOutboundActivity
            (column(16), OCTET_STRING, admin_string("XMPP server-to-server boundary guard")),  # applDescription
        ]

    def _assoc_rows(self, snapshot, now_ticks):
        streams = [stream for side in snapshot["sides"].values() for stream in side["peers"]
                   if stream["direction"] in ("inbound", "outbound")]
        entries = []
        for stream in streams:
            index = stream["id"]
            if isinstance(index, bool) or not isinstance(index, int) or not 0 < index <= MAX_ASSOC_INDEX:
                raise ValueError(f"a stream id that is no assocIndex: {index!r}")
            column = lambda number: ASSOC_ENTRY + (number, GUARD_APPL_INDEX, index)  # noqa: E731
            kind = PEER_RESPONDER if stream["direction"] == "inbound" else PEER_INITIATOR
            entries += [
                (column(2), OCTET_STRING, admin_string(stream["peer_domain"])),        # assocRemoteApplication
                (column(3), OBJECT_IDENTIFIER, APPL_TCP_PROTO_ID + (XMPP_S2S_PORT,)),  # assocApplicationProtocol
                (column(4), INTEGER, kind),                                            # assocApplicationType
                (column(5), TIME_TICKS, self._since(now_ticks, stream["age"])),        # assocDuration
            ]
        return entries

    def _guard_objects(self, snapshot, verdicts):
        books = snapshot["books"]
        entries = [(BOOKS + (number, 0), COUNTER64, int(books[name]))
                   for number, name in enumerate(BOOK_NAMES, start=1)]
        entries.append((BOOKS + (5, 0), GAUGE32, int(books["in_flight"])))
        entries.append((HALTED_REASON, OCTET_STRING, admin_string(snapshot["service"].get("halted_reason"))))
        directions = list(self.directions) + sorted(set(verdicts) - set(self.directions))
        for index, direction in enumerate(directions, start=1):
            counts = verdicts.get(direction, dict.fromkeys(VERDICTS, 0))
            entries.append((VERDICT_ENTRY + (2, index), OCTET_STRING, admin_string(direction)))
            entries += [(VERDICT_ENTRY + (number, index), COUNTER64, counts[verdict])
                        for number, verdict in enumerate(VERDICTS, start=3)]
        return entries


def last_activity(process) -> tuple[float | None, float | None]:
    """When ``process`` last accepted a stanza and last delivered one (its metrics' stanza counts), None for never."""
    stanzas = getattr(getattr(process, "metrics", None), "stanzas", None)
    if stanzas is None:
        return None, None
    return stanzas.last_accepted, stanzas.last_delivered


def subagent_for(process):
    """
    The AgentX subagent of ``process`` (a GuardProcess) when its [snmp]
    table sets ``agentx``, else None: it shows the process's snapshot and the
    stanza counters of ``process.metrics`` (when there is one).
    """
    settings = process.config.settings.snmp
    if settings.agentx is None:
        return None
    mib = GuardMib(lambda: snapshot(process),
                   lambda: getattr(getattr(process, "metrics", None), "registry", None),
                   directions=[str(direction) for direction, _, _ in process.policy_files()],
                   read_activity=lambda: last_activity(process))
    return AgentXSubagent(process.reactor, settings.agentx, SUBTREES, mib.view, b"xmpp-guard",
                          ping_interval=settings.ping_interval)
