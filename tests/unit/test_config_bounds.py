"""The keys that bound what the relay holds (issue 9 items 6, 9, 15) load, reach the running parts, and refuse nonsense."""

import pytest
from twisted.internet.testing import MemoryReactorClock

from guard.app.config import ConfigError, load_config
from guard.app.service import GuardService
from guard.lab.topology import render_guard_config

from .streams.sides import pki

BOUNDED = {
    "[guard]\n": "[guard]\naudit_level = \"all\"\n",
    "[limits]\n": "[limits]\noutbound_queue_bytes = 65536\nmemory_budget_bytes = 1048576\n",
}
RELEASE = "\n[release]\nendpoint = \"tcp:host=127.0.0.1:port=7400\"\nmax_pending = 3\nmax_waiting = 7\n"


def write(tmp_path, text):
    path = tmp_path / "guard.toml"
    path.write_text(text)
    return str(path)


def bounded_text():
    text = render_guard_config(pki(), "certificate", log_level="info")
    for old, new in BOUNDED.items():
        assert old in text
        text = text.replace(old, new, 1)
    return text.replace("\n[limits]", RELEASE + "\n[limits]", 1)


def test_the_bounds_reach_the_relay_the_audit_trail_and_the_release_authority(tmp_path):
    """Each key set in the file is what the running relay, audit trail and release authority enforce."""
    config = load_config(write(tmp_path, bounded_text()))
    assert (config.limits.outbound_queue_bytes, config.limits.memory_budget_bytes) == (65536, 1048576)
    guard = GuardService(config, MemoryReactorClock())
    assert guard.relay.held.budget == 1048576 and guard.relay.held.low_water == 786432
    assert guard.audit.records_passes
    described = guard.release_authority.describe()
    assert (described["max_pending"], described["max_waiting"]) == (3, 7)


def test_the_defaults_record_refusals_only_and_cap_the_release_authority(tmp_path):
    """Without the keys: refusals only in the audit trail, 16 questions open and 256 waiting, a 32 MiB budget."""
    text = bounded_text().replace("audit_level = \"all\"\n", "").replace("max_pending = 3\nmax_waiting = 7\n", "")
    text = text.replace("outbound_queue_bytes = 65536\nmemory_budget_bytes = 1048576\n", "")
    guard = GuardService(load_config(write(tmp_path, text)), MemoryReactorClock())
    assert not guard.audit.records_passes and guard.relay.held.budget == 32 * 1024 * 1024
    described = guard.release_authority.describe()
    assert (described["max_pending"], described["max_waiting"]) == (16, 256)


@pytest.mark.parametrize("old, new, message", [
    ("audit_level = \"all\"", "audit_level = \"some\"", "guard.audit_level: must be one of refusals, all"),
    ("max_pending = 3", "max_pending = 0", "release.max_pending: must be a whole number from 1 to 4096"),
    ("max_waiting = 7", "max_waiting = -1", "release.max_waiting: must be a whole number from 0 to 65536"),
    ("max_waiting = 7", "max_waiting = 1.5", "release.max_waiting: must be a whole number"),
    ("memory_budget_bytes = 1048576", "memory_budget_bytes = 0", "limits.memory_budget_bytes: must be greater than zero"),
])
def test_nonsense_bounds_are_refused_naming_the_key(tmp_path, old, new, message):
    """A bound that cannot be enforced is refused at load, naming its key."""
    text = bounded_text()
    assert old in text
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text.replace(old, new)))
    assert message in str(raised.value)
