"""The SNMP view of the guard: NETWORK-SERVICES-MIB applTable and assocTable, XMPP-GUARD-MIB, the [snmp] table and the MIB files."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from guard.app.config import ConfigError, SnmpSettings, load_config
from guard.app.snmp import GuardMib, admin_string
from guard.edges.agentx import (COUNTER32, COUNTER64, GAUGE32, INTEGER, OBJECT_IDENTIFIER, OCTET_STRING, TIME_TICKS,
                                SearchRange)

from .test_config import config_text, write  # noqa: F401 - the lab configuration fixture

PROJECT = Path(__file__).resolve().parents[2]
MIBS = PROJECT / "deploy" / "snmp"
APPL = (1, 3, 6, 1, 2, 1, 27, 1, 1)  # applEntry
ASSOC = (1, 3, 6, 1, 2, 1, 27, 2, 1)  # assocEntry
GUARD = (1, 3, 6, 1, 4, 1, 99999, 1)


def stream(number, direction, peer, age):
    return {"id": number, "side": "red", "direction": direction, "peer_domain": peer, "local_domain": "blue.example",
            "authentication": "certificate", "age": age, "state": "open"}


def snapshot(state="running", streams=(), halted_reason=None):
    return {
        "service": {"name": "xmpp-guard", "version": "1.2", "started": 1000.0, "uptime": 30.0, "state": state,
                    "halted_reason": halted_reason},
        "books": {"accepted": 7, "delivered": 4, "bounced": 1, "dropped": 1, "in_flight": 1},
        "sides": {"red": {"peers": [s for s in streams if s["side"] == "red"]},
                  "blue": {"peers": [s for s in streams if s["side"] == "blue"]}},
        "carriers": [], "pair_link": None, "release_authority": None, "policies": [],
    }


def values(view):
    return {name: (kind, value) for name, kind, value in view.entries}


def test_appl_row_describes_the_guard():
    """applTable row 1: name, version, the sysUpTime it started at, up, and its associations each way."""
    streams = [stream(3, "inbound", "red.example", 12.0), stream(4, "outbound", "red.example", 2.5),
               stream(9, "inbound", "conference.red.example", 1.0)]
    view = values(GuardMib(lambda: snapshot(streams=streams)).view(now_ticks=10000))
    assert view[APPL + (2, 1)] == (OCTET_STRING, b"xmpp-guard")
    assert view[APPL + (4, 1)] == (OCTET_STRING, b"1.2")
    assert view[APPL + (5, 1)] == (TIME_TICKS, 7000)
    assert view[APPL + (6, 1)] == (INTEGER, 1)
    assert view[APPL + (8, 1)] == (GAUGE32, 2)
    assert view[APPL + (9, 1)] == (GAUGE32, 1)


def test_assoc_rows_are_the_streams_by_id():
    """One assocTable row per stream, indexed by its id: peer domain, XMPP S2S over TCP 5269, responder or initiator, start."""
    streams = [stream(3, "inbound", "red.example", 12.0), stream(4, "outbound", "red.example", 2.5)]
    view = values(GuardMib(lambda: snapshot(streams=streams)).view(now_ticks=10000))
    assert view[ASSOC + (2, 1, 3)] == (OCTET_STRING, b"red.example")
    assert view[ASSOC + (3, 1, 3)] == (OBJECT_IDENTIFIER, (1, 3, 6, 1, 2, 1, 27, 4, 5269))
    assert view[ASSOC + (4, 1, 3)] == (INTEGER, 4)
    assert view[ASSOC + (4, 1, 4)] == (INTEGER, 3)
    assert view[ASSOC + (5, 1, 3)] == (TIME_TICKS, 8800)
    assert view[ASSOC + (5, 1, 4)] == (TIME_TICKS, 9750)
    assert sorted(name[-1] for name in view if name[:len(ASSOC)] == ASSOC) == [3] * 4 + [4] * 4


def test_a_link_stream_is_no_assoc_row():
    """Only S2S streams (inbound, outbound) are associations; the pair link's stream is not counted."""
    streams = [dict(stream(5, "link", "half-b", 1.0), side="red")]
    view = values(GuardMib(lambda: snapshot(streams=streams)).view(now_ticks=500))
    assert not [name for name in view if name[:len(ASSOC)] == ASSOC]
    assert view[APPL + (8, 1)] == view[APPL + (9, 1)] == (GAUGE32, 0)


def test_a_stream_id_that_is_no_index_fails_the_view():
    """A stream id that cannot be an assocIndex makes the view fail (answered genErr), never a row under another index."""
    mib = GuardMib(lambda: snapshot(streams=[stream("s1", "inbound", "red.example", 1.0)]))
    with pytest.raises(ValueError, match="no assocIndex"):
        mib.view(now_ticks=100)


@pytest.mark.parametrize("state, status", [("running", 1), ("halted", 3), ("congested", 4), ("stopping?", 2)])
def test_oper_status_follows_the_state(state, status):
    """applOperStatus is up, halted (the audit trail stopped relaying), congested, or down for a state it does not know."""
    view = values(GuardMib(lambda: snapshot(state=state)).view(now_ticks=100))
    assert view[APPL + (6, 1)] == (INTEGER, status)


def test_last_change_moves_only_when_the_status_changes():
    """applLastChange is the sysUpTime at which applOperStatus last changed: first the guard's start, then each change seen."""
    current = {"state": "running"}
    mib = GuardMib(lambda: snapshot(state=current["state"]))
    assert values(mib.view(now_ticks=10000))[APPL + (7, 1)] == (TIME_TICKS, 7000)
    assert values(mib.view(now_ticks=20000))[APPL + (7, 1)] == (TIME_TICKS, 7000)
    current["state"] = "halted"
    assert values(mib.view(now_ticks=30000))[APPL + (7, 1)] == (TIME_TICKS, 30000)
    assert values(mib.view(now_ticks=40000))[APPL + (7, 1)] == (TIME_TICKS, 30000)


def test_last_inbound_and_outbound_activity_are_the_sysuptime_of_the_last_stanza_accepted_and_delivered():
    """applLastInboundActivity (12) is the sysUpTime when a stanza was last accepted, applLastOutboundActivity (13)
    when one was last delivered; both 0 before the first (the snapshot is at 1030 s, the master at 100 s)."""
    activity = {"now": (None, None)}
    mib = GuardMib(lambda: snapshot(), read_activity=lambda: activity["now"])
    view = values(mib.view(now_ticks=10000))
    assert (view[APPL + (12, 1)], view[APPL + (13, 1)]) == ((TIME_TICKS, 0), (TIME_TICKS, 0))
    activity["now"] = (1027.5, 1029.0)
    view = values(mib.view(now_ticks=10000))
    assert (view[APPL + (12, 1)], view[APPL + (13, 1)]) == ((TIME_TICKS, 9750), (TIME_TICKS, 9900))


def test_the_last_activity_comes_from_the_stanza_counts_of_the_metrics():
    """The stanza counts note when a stanza was accepted (its arrival) and when one was delivered (the clock)."""
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    from guard.app.snmp import last_activity
    from guard.edges.metrics import StanzaCounts

    clock = Clock()
    counts = StanzaCounts(clock)
    process = SimpleNamespace(metrics=SimpleNamespace(stanzas=counts))
    assert last_activity(process) == (None, None) and last_activity(SimpleNamespace()) == (None, None)
    clock.advance(50)
    counts.stanza_accepted(SimpleNamespace(arrived=42.0))
    counts.stanza_delivered(SimpleNamespace(ticket=None))
    assert last_activity(process) == (42.0, 50.0)


def test_books_and_halted_reason():
    """XMPP-GUARD-MIB carries the books as Counter64 (in flight a Gauge32) and why relaying stopped."""
    view = values(GuardMib(lambda: snapshot(state="halted", halted_reason="audit trail unavailable")).view(100))
    assert [view[GUARD + (1, n, 0)] for n in range(1, 6)] == [
        (COUNTER64, 7), (COUNTER64, 4), (COUNTER64, 1), (COUNTER64, 1), (GAUGE32, 1)]
    assert view[GUARD + (3, 0)] == (OCTET_STRING, b"audit trail unavailable")


def test_verdicts_per_direction_sum_the_stanza_counter_over_kinds():
    """xgVerdictTable rows follow the configured directions and sum xmpp_guard_stanzas_total over kinds."""
    registry = CollectorRegistry()
    stanzas = Counter("xmpp_guard_stanzas", "Stanzas judged", ["direction", "kind", "verdict"], registry=registry)
    stanzas.labels("red->blue", "message", "passed").inc(3)
    stanzas.labels("red->blue", "presence", "passed").inc(2)
    stanzas.labels("red->blue", "iq", "bounced").inc()
    stanzas.labels("blue->red", "message", "referred").inc(4)
    mib = GuardMib(lambda: snapshot(), lambda: registry, directions=("red->blue", "blue->red"))
    view = values(mib.view(100))
    entry = GUARD + (2, 1)
    assert view[entry + (2, 1)] == (OCTET_STRING, b"red->blue")
    assert [view[entry + (n, 1)][1] for n in (3, 4, 5, 6)] == [5, 1, 0, 0]
    assert view[entry + (2, 2)] == (OCTET_STRING, b"blue->red")
    assert [view[entry + (n, 2)][1] for n in (3, 4, 5, 6)] == [0, 0, 0, 4]


def stream_counters():
    registry = CollectorRegistry()
    opened = Counter("xmpp_guard_streams_opened", "Streams", ["side", "direction"], registry=registry)
    opened.labels("red", "inbound").inc(5)
    opened.labels("blue", "inbound").inc(2)
    opened.labels("blue", "outbound").inc(3)
    opened.labels("red", "link").inc(9)
    tls = Counter("xmpp_guard_tls_failures", "TLS", ["side", "direction", "reason"], registry=registry)
    tls.labels("red", "inbound", "handshake").inc(2)
    tls.labels("blue", "outbound", "handshake").inc(7)
    authentication = Counter("xmpp_guard_authentication_failures", "Auth", ["side", "direction", "reason"],
                             registry=registry)
    authentication.labels("blue", "inbound", "certificate").inc()
    failures = Counter("xmpp_guard_outbound_stream_failures", "Failed", ["side", "sender", "receiver"],
                       registry=registry)
    failures.labels("blue", "red.example", "blue.example").inc(4)
    failures.labels("red", "blue.example", "red.example").inc(2**32 + 1)
    return registry


def test_accumulated_rejected_and_failed_associations_come_from_the_stream_counters():
    """applAccumulated* count S2S streams opened each way; applRejectedInbound the inbound TLS and authentication
    failures; applFailedOutbound the outbound streams that failed; each a Counter32 (wrapping at 2**32)."""
    registry = stream_counters()
    view = values(GuardMib(lambda: snapshot(), lambda: registry).view(100))
    assert [view[APPL + (column, 1)] for column in (10, 11, 14, 15)] == [
        (COUNTER32, 7), (COUNTER32, 3), (COUNTER32, 3), (COUNTER32, 5)]


def test_without_metrics_the_accumulated_columns_are_absent():
    """With no metrics registry the view leaves out what it cannot count, rather than answering zero."""
    view = values(GuardMib(lambda: snapshot()).view(100))
    assert not [column for column in (10, 11, 14, 15) if APPL + (column, 1) in view]


def test_without_metrics_the_verdicts_are_zero():
    """With no metrics registry each configured direction still has its row, every verdict zero."""
    view = values(GuardMib(lambda: snapshot(), directions=("red->blue",)).view(100))
    assert [view[GUARD + (2, 1, n, 1)][1] for n in (3, 4, 5, 6)] == [0, 0, 0, 0]


def test_admin_strings_are_cut_to_255_bytes_on_a_character_boundary():
    """An SnmpAdminString is at most 255 bytes of UTF-8; a long peer-given text is cut, never split inside a character."""
    assert admin_string("é" * 200) == ("é" * 127).encode()
    assert admin_string(None) == b""


def test_view_walks_in_oid_order():
    """The view is sorted by OID, so a walk from the NETWORK-SERVICES-MIB root visits applTable before assocTable."""
    view = GuardMib(lambda: snapshot(streams=[stream(1, "inbound", "red.example", 1.0)])).view(100)
    first = view.next(SearchRange((1, 3, 6, 1, 2, 1, 27)))
    assert first.name == APPL + (2, 1)
    names = [name for name, _, _ in view.entries]
    assert names == sorted(names)


# -- the [snmp] table ------------------------------------------------------------


def load(tmp_path, text):
    return load_config(str(write(tmp_path, text)))


def test_snmp_is_off_unless_configured(tmp_path, config_text):
    """Without an [snmp] table there is no AgentX subagent."""
    assert load(tmp_path, config_text).settings.snmp == SnmpSettings(agentx=None, ping_interval=15.0)


def test_snmp_agentx_endpoint(tmp_path, config_text):
    """[snmp] agentx takes a Twisted client endpoint string; ping_interval is in seconds."""
    text = config_text + '\n[snmp]\nagentx = "unix:path=/var/agentx/master"\nping_interval = 30\n'
    assert load(tmp_path, text).settings.snmp == SnmpSettings("unix:path=/var/agentx/master", 30.0)


@pytest.mark.parametrize("table, message", [
    ('agentx = "nonsense:x"', "snmp.agentx: not a Twisted client endpoint string"),
    ('agentx = ""', "snmp.agentx: must be a non-empty string"),
    ('community = "public"', "snmp.community: unknown key"),
    ("ping_interval = 0", "snmp.ping_interval: must be a number of seconds from 1 to 3600"),
])
def test_snmp_table_refuses_mistakes(tmp_path, config_text, table, message):
    """A wrong [snmp] key or value is refused at load time, naming the key."""
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, config_text + f"\n[snmp]\n{table}\n")


def test_release_endpoint_shares_the_endpoint_check(tmp_path, config_text):
    """[release] endpoint goes through the same client endpoint check as [snmp] agentx, naming its own key."""
    with pytest.raises(ConfigError, match="release.endpoint: not a Twisted client endpoint string"):
        load(tmp_path, config_text + '\n[release]\nendpoint = "nonsense:x"\n')
    text = config_text + '\n[release]\nendpoint = "unix:path=/run/guard/release.sock"\n'
    assert load(tmp_path, text).settings.release_endpoint == "unix:path=/run/guard/release.sock"


# -- the MIB files -----------------------------------------------------------------


def need(tool, package):
    """The path of ``tool``; under make (MAKELEVEL set) a missing tool is a failure, by hand a skip naming the package."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if found is None:
        message = f"{tool} is missing: install the Debian package {package} (make system-deps does)"
        if os.environ.get("MAKELEVEL"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_enterprise_mib_passes_smilint():
    """XMPP-GUARD-MIB passes smilint at level 6 with no message, against the IETF modules shipped beside it."""
    smilint = need("smilint", "smitools")
    result = subprocess.run([smilint, "-l", "6", "-s", str(MIBS / "XMPP-GUARD-MIB.txt")],
                            env=dict(os.environ, SMIPATH=str(MIBS)), capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_net_snmp_reads_both_mibs():
    """net-snmp resolves the names of XMPP-GUARD-MIB and NETWORK-SERVICES-MIB from deploy/snmp to the OIDs the view uses."""
    snmptranslate = need("snmptranslate", "snmp")
    result = subprocess.run(
        [snmptranslate, "-m", "XMPP-GUARD-MIB:NETWORK-SERVICES-MIB", "-M", f"+{MIBS}", "-On",
         "XMPP-GUARD-MIB::xgVerdictReferred", "NETWORK-SERVICES-MIB::assocRemoteApplication",
         "NETWORK-SERVICES-MIB::applOperStatus", "XMPP-GUARD-MIB::xgBooksInFlight"],
        capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == [".1.3.6.1.4.1.99999.1.2.1.6", ".1.3.6.1.2.1.27.2.1.2",
                                     ".1.3.6.1.2.1.27.1.1.6", ".1.3.6.1.4.1.99999.1.1.5"]


def test_every_name_in_the_view_is_the_object_the_mibs_define():
    """net-snmp names every OID the view answers with the object of the MIB it belongs to, with its instance."""
    snmptranslate = need("snmptranslate", "snmp")
    view = GuardMib(lambda: snapshot(streams=[stream(3, "inbound", "red.example", 1.0)]), stream_counters,
                    directions=("red->blue",)).view(100)
    oids = [".".join(map(str, name)) for name, _, _ in view.entries]
    result = subprocess.run([snmptranslate, "-m", "XMPP-GUARD-MIB:NETWORK-SERVICES-MIB", "-M", f"+{MIBS}", "-OS",
                             *oids], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == [
        "NETWORK-SERVICES-MIB::applName.1", "NETWORK-SERVICES-MIB::applDirectoryName.1",
        "NETWORK-SERVICES-MIB::applVersion.1", "NETWORK-SERVICES-MIB::applUptime.1",
        "NETWORK-SERVICES-MIB::applOperStatus.1", "NETWORK-SERVICES-MIB::applLastChange.1",
        "NETWORK-SERVICES-MIB::applInboundAssociations.1", "NETWORK-SERVICES-MIB::applOutboundAssociations.1",
        "NETWORK-SERVICES-MIB::applAccumulatedInboundAssociations.1",
        "NETWORK-SERVICES-MIB::applAccumulatedOutboundAssociations.1",
        "NETWORK-SERVICES-MIB::applLastInboundActivity.1", "NETWORK-SERVICES-MIB::applLastOutboundActivity.1",
        "NETWORK-SERVICES-MIB::applRejectedInboundAssociations.1",
        "NETWORK-SERVICES-MIB::applFailedOutboundAssociations.1",
        "NETWORK-SERVICES-MIB::applDescription.1",
        "NETWORK-SERVICES-MIB::assocRemoteApplication.1.3", "NETWORK-SERVICES-MIB::assocApplicationProtocol.1.3",
        "NETWORK-SERVICES-MIB::assocApplicationType.1.3", "NETWORK-SERVICES-MIB::assocDuration.1.3",
        "XMPP-GUARD-MIB::xgBooksAccepted.0", "XMPP-GUARD-MIB::xgBooksDelivered.0",
        "XMPP-GUARD-MIB::xgBooksBounced.0", "XMPP-GUARD-MIB::xgBooksDropped.0", "XMPP-GUARD-MIB::xgBooksInFlight.0",
        "XMPP-GUARD-MIB::xgVerdictDirection.1", "XMPP-GUARD-MIB::xgVerdictPassed.1",
        "XMPP-GUARD-MIB::xgVerdictBounced.1", "XMPP-GUARD-MIB::xgVerdictDropped.1",
        "XMPP-GUARD-MIB::xgVerdictReferred.1", "XMPP-GUARD-MIB::xgHaltedReason.0",
    ]
