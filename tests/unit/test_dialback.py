"""Dialback keys follow XEP-0185 and are checked in constant time."""

from wokkel.server import generateKey

from guard.core.dialback import dialback_key, key_is_ours
from guard.edges.s2s.decisions import verify_verdict

SECRET = "s3cr3tf0rd14lb4ck"


def test_key_matches_an_independent_implementation():
    """Our key equals wokkel's XEP-0185 implementation for the XEP's example inputs."""
    ours = dialback_key(SECRET, "example.net", "example.org", "D60000229F")
    assert ours == generateKey(SECRET, "example.net", "example.org", "D60000229F")
    assert ours == "787d747fddd82406a36c193fd1437027b163c5f9f787a2b77c30d15409c34aa3"


def test_key_is_ours_only_for_the_same_inputs():
    """A key verifies for the stream it was issued on and for nothing else."""
    key = dialback_key(SECRET, "blue.example", "red.example", "stream-1")
    assert key_is_ours(SECRET, "blue.example", "red.example", "stream-1", key)
    assert key_is_ours(SECRET, "blue.example", "red.example", "stream-1", f"  {key}\n")
    assert not key_is_ours(SECRET, "blue.example", "red.example", "stream-2", key)
    assert not key_is_ours(SECRET, "red.example", "blue.example", "stream-1", key)
    assert not key_is_ours("another secret", "blue.example", "red.example", "stream-1", key)
    assert not key_is_ours(SECRET, "blue.example", "red.example", "stream-1", "")
    assert not key_is_ours(SECRET, "blue.example", "red.example", "stream-1", "é" * 64)


def test_a_db_verify_is_valid_only_for_the_key_the_guard_issued():
    """verify_verdict (the inbound stream's answer to a db:verify) says valid for our key and invalid for any other."""
    key = dialback_key(SECRET, "blue.example", "red.example", "stream-1")
    assert verify_verdict(SECRET, "blue.example", "red.example", "stream-1", key) == "valid"
    assert verify_verdict(SECRET, "blue.example", "red.example", "stream-2", key) == "invalid"
    assert verify_verdict(SECRET, "blue.example", "red.example", "stream-1", "") == "invalid"
