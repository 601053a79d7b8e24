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
