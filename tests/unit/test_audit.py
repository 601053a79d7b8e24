"""The audit trail fails closed once closed, and records every decision when asked to."""

import json

import pytest

from guard.edges.audit import AuditLog, AuditUnavailable


def test_a_record_after_close_raises_instead_of_vanishing(tmp_path):
    """A decision settled after the trail was closed (a refer answered during shutdown) cannot go unrecorded."""
    trail = AuditLog(str(tmp_path / "audit.jsonl"))
    trail.record("drop", rule="r")
    trail.close()
    with pytest.raises(AuditUnavailable):
        trail.record("release", rule="late")
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["rule"] for line in lines] == ["r"]


def test_a_trail_without_a_file_fails_closed_once_closed_too():
    """Counting-only trails (no path) refuse records after close like file trails do."""
    trail = AuditLog(None)
    trail.close()
    with pytest.raises(AuditUnavailable):
        trail.record("drop", rule="r")


def test_the_level_all_says_passes_are_recorded_and_unknown_levels_are_refused():
    """Level "all" records passes, the default level records refusals only, and a made-up level is an error."""
    assert AuditLog(None, level="all").records_passes
    assert not AuditLog(None).records_passes
    with pytest.raises(ValueError):
        AuditLog(None, level="everything")


# -- the audit trail as an observer of settlement (issue 10 item 1) -------------

def settled_records(tmp_path, level="refusals", judge=None):
    """The records a real settlement writes through AuditObserver for one stanza per judgement ``judge`` makes."""
    from guard.core.pipeline import Direction
    from guard.core.settlement import Settlement
    from guard.core.topology import Topology
    from guard.edges.audit import AuditObserver
    from guard.edges.release import reparse_stanza

    path = tmp_path / "audit.jsonl"
    trail = AuditLog(str(path), clock=lambda: 5.0, level=level)
    topology = Topology({"red": frozenset({"red.example"}), "blue": frozenset({"blue.example"})})
    settlement = Settlement(topology, (AuditObserver(trail),))
    for number, make in enumerate(judge):
        stanza = reparse_stanza(f"<message from='romeo@red.example/a' to='juliet@blue.example' id='m{number}'/>")
        ticket = settlement.accept(stanza, ("red.example", "blue.example"), 10, Direction("red", "blue"), 0)
        action = settlement.judged(ticket, make(stanza))
        if action is not None and hasattr(action, "parcel"):
            settlement.undeliverable(action.parcel, "remote-server-not-found", "far \x1b said")
    trail.close()
    return [{key: value for key, value in json.loads(line).items() if key not in CHAIN_FIELDS}
            for line in path.read_text().splitlines()]


CHAIN_FIELDS = ("seq", "prev", "chain")  # the hash chain's own fields, tested in test_audit_chain.py


ADDRESSES = {"kind": "message", "type": None, "sender": "romeo@red.example/a", "recipient": "juliet@blue.example",
             "time": 5.0}


def test_the_audit_observer_writes_the_records_the_relay_always_wrote(tmp_path):
    """Bounce, drop, pass with a note, a bounced pass and a lost bounce: same events, same fields as before the settlement core."""
    from guard.core.pipeline import Judgement, Verdict

    records = settled_records(tmp_path, judge=[
        lambda stanza: Judgement.bounced(stanza, "no-bounces", "policy-violation", "not across", 3),
        lambda stanza: Judgement.dropped(stanza, "no-drops", 2, "dropped"),
        lambda stanza: Judgement(Verdict.PASS, stanza, "log-large", 1, notes=("large\n",)),
        lambda stanza: Judgement.passed(stanza, "quiet"),
    ])
    assert records == [
        {**ADDRESSES, "event": "bounce", "rule": "no-bounces", "rev": 3, "direction": "red->blue", "id": "m0",
         "condition": "policy-violation", "text": "not across"},
        {**ADDRESSES, "event": "bounce-lost", "rule": "guard:bounce-lost", "rev": 1, "direction": None, "id": "m0",
         "kind": "message", "type": "error", "sender": "juliet@blue.example", "recipient": "romeo@red.example/a",
         "condition": "remote-server-not-found", "detail": "far \\x1b said"},
        {**ADDRESSES, "event": "drop", "rule": "no-drops", "rev": 2, "direction": "red->blue", "id": "m1",
         "text": "dropped"},
        {**ADDRESSES, "event": "pass", "rule": "log-large", "rev": 1, "direction": "red->blue", "id": "m2",
         "notes": ["large\\n"]},
        {**ADDRESSES, "event": "bounce", "rule": "guard:remote-server-not-found", "rev": 1, "direction": None,
         "id": "m2", "condition": "remote-server-not-found", "text": "the guard could not reach the receiving server",
         "detail": "far \\x1b said"},
        {**ADDRESSES, "event": "bounce", "rule": "guard:remote-server-not-found", "rev": 1, "direction": None,
         "id": "m3", "condition": "remote-server-not-found", "text": "the guard could not reach the receiving server",
         "detail": "far \\x1b said"},
    ]


def test_with_level_all_every_pass_is_written(tmp_path):
    """At level "all" a pass without a note is written too, with no notes field."""
    from guard.core.pipeline import Judgement

    (record, _) = settled_records(tmp_path, level="all", judge=[lambda stanza: Judgement.passed(stanza, "quiet")])
    assert record == {**ADDRESSES, "event": "pass", "rule": "quiet", "rev": 1, "direction": "red->blue", "id": "m0"}


def test_a_record_the_trail_cannot_write_is_unavailable_to_the_settlement():
    """AuditUnavailable becomes RecordUnavailable naming the audit trail: the reason relaying halts."""
    from guard.core.settlement import RecordUnavailable, SettlementEvent
    from guard.edges.audit import AuditObserver
    from guard.edges.release import reparse_stanza

    trail = AuditLog(None)
    trail.close()
    stanza = reparse_stanza("<message from='romeo@red.example/a' to='juliet@blue.example' id='m1'/>")
    with pytest.raises(RecordUnavailable, match="^audit trail unavailable: the audit trail: closed$"):
        AuditObserver(trail).stanza_dropped(SettlementEvent("drop", stanza, "r"))


def test_records_that_cannot_be_written_are_counted_and_logged_at_most_once_a_minute():
    """With audit_failure = "continue" every refusal may fail to be recorded: each failure counts in the trail's
    write_failures, the first is logged at once, later ones in one line per FAILURE_LOG_INTERVAL with their number."""
    from twisted.internet.task import Clock
    from twisted.logger import capturedLogs

    from guard.core.settlement import RecordUnavailable, SettlementEvent
    from guard.edges.audit import FAILURE_LOG_INTERVAL, AuditObserver
    from guard.edges.release import reparse_stanza

    trail = AuditLog(None)
    trail.record("drop", rule="written")
    trail.close()
    clock = Clock()
    observer = AuditObserver(trail, clock=clock.seconds)
    stanza = reparse_stanza("<message from='romeo@red.example/a' to='juliet@blue.example' id='m1'/>")
    with capturedLogs() as events:
        for step in (0.0, 1.0, 1.0, FAILURE_LOG_INTERVAL):
            clock.advance(step)
            with pytest.raises(RecordUnavailable):
                observer.stanza_dropped(SettlementEvent("drop", stanza, "r"))
    logged = [event.get("more") for event in events if "AUDIT TRAIL UNAVAILABLE" in event.get("log_format", "")]
    assert (trail.records, trail.write_failures, logged) == (1, 4, [0, 2])
