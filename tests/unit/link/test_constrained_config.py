"""[link] profile = "constrained" and [link.constrained]: checked like every link key, timers stretched to the bearer."""

import pytest

from guard.app.config import ConfigError
from guard.app.half_config import load_half_config
from guard.edges.link.profile import OPEN_BYTES

from .test_half_config import tree, variant  # noqa: F401 - the fixture and the helper of the half's config tests

CONSTRAINED = """profile = "constrained"

[link.constrained]
security = "tls"
compression = "dictionary"
rate = 1200
round_trip = 2.0
presence = "available"
groupchat_merge = 0.25
iq_deadline = 60
max_wait = 600
"""

NO_TLS_MATERIAL = [('certificate = "../../run/pair-pki/half-a.pem"', ""), ('key = "../../run/pair-pki/half-a.key"', ""),
                   ('ca = "../../run/pair-pki/link-ca.pem"', "")]


def test_the_constrained_profile_loads_and_stretches_the_link_timers_to_the_bearer(tree):  # noqa: F811
    """Every key is read; ack, keepalive and open timers become at least a few round trips plus the handshake bytes."""
    config = load_half_config(variant(tree, [], CONSTRAINED))
    leg = config.link.leg
    assert (leg.profile.security, leg.profile.compression, leg.profile.rate, leg.profile.presence) == \
        ("tls", "dictionary", 1200, "available")
    transfer = OPEN_BYTES * 8 / 1200
    assert leg.settings.ack_interval == 2.0
    assert leg.settings.ack_timeout == pytest.approx(max(30, 12 + transfer))
    assert leg.settings.keepalive == 60
    assert leg.open_timeout == pytest.approx(max(30, 8 + transfer))
    assert leg.settings.down_deadline == 600  # stretched to max_wait: stanzas wait across outages that long
    assert not leg.without_tls


def test_a_slow_round_trip_stretches_every_timer(tree):  # noqa: F811
    """A 10 s round trip: ack_interval 10 s, ack_timeout 60 s + handshake time, keepalive 100 s, open 40 s + it."""
    config = load_half_config(variant(tree, [], CONSTRAINED.replace("round_trip = 2.0", "round_trip = 10.0")))
    settings, transfer = config.link.leg.settings, OPEN_BYTES * 8 / 1200
    assert (settings.ack_interval, settings.keepalive) == (10.0, 100.0)
    assert settings.ack_timeout == pytest.approx(60 + transfer)
    assert config.link.leg.open_timeout == pytest.approx(40 + transfer)


def test_the_standard_profile_is_the_default_and_leaves_the_link_as_it_was(tree):  # noqa: F811
    """No profile key: no constrained profile, today's timers."""
    config = load_half_config(variant(tree, []))
    assert config.link.leg.profile is None and config.link.leg.settings.ack_interval == 1.0


def test_security_bearer_needs_no_certificate_and_refuses_one(tree):  # noqa: F811
    """Plain TCP: the file says security = "bearer", has no TLS material, and the leg is without TLS."""
    bearer = CONSTRAINED.replace('security = "tls"', 'security = "bearer"')
    config = load_half_config(variant(tree, NO_TLS_MATERIAL, bearer))
    assert config.link.leg.without_tls and config.link.leg.certificate is None
    with pytest.raises(ConfigError, match='link.certificate: is not used with .*security = "bearer"'):
        load_half_config(variant(tree, [], bearer))


@pytest.mark.parametrize("old, new, key", [
    ('compression = "dictionary"', 'compression = "gzip"', "link.constrained.compression"),
    ('security = "tls"', 'security = "none"', "link.constrained.security"),
    ("rate = 1200", "rate = 0", "link.constrained.rate"),
    ("rate = 1200", "rate = 1200.5", "link.constrained.rate"),
    ("round_trip = 2.0", "round_trip = -1", "link.constrained.round_trip"),
    ('presence = "available"', 'presence = "some"', "link.constrained.presence"),
    ("groupchat_merge = 0.25", "groupchat_merge = -0.1", "link.constrained.groupchat_merge"),
    ("iq_deadline = 60", "iq_deadline = 0", "link.constrained.iq_deadline"),
    ("max_wait = 600", "max_wait = 'long'", "link.constrained.max_wait"),
    ("max_wait = 600", "max_wait = 600\nmodem = 'x'", "link.constrained.modem"),
    ('profile = "constrained"', 'profile = "narrow"', "link.profile"),
])
def test_a_bad_constrained_value_names_the_file_and_the_key(tree, old, new, key):  # noqa: F811
    """Each broken [link.constrained] value is refused with the file and the key."""
    path = variant(tree, [], CONSTRAINED.replace(old, new))
    with pytest.raises(ConfigError) as raised:
        load_half_config(path)
    assert str(raised.value).startswith(f"{path}: {key}: ")


def test_a_constrained_table_without_the_profile_is_refused(tree):  # noqa: F811
    """[link.constrained] on a standard link would be silently ignored: it is refused instead."""
    path = variant(tree, [], CONSTRAINED.replace('profile = "constrained"', ""))
    with pytest.raises(ConfigError, match="link.constrained: is only read with profile"):
        load_half_config(path)


def test_the_half_checker_prints_the_profile_its_security_and_its_compression(tree, capsys):  # noqa: F811
    """`python -m guard.app.half --config X --check` says which profile, security and compression the link uses."""
    from guard.app.half import main

    bearer = CONSTRAINED.replace('security = "tls"', 'security = "bearer"').replace('"dictionary"', '"zlib"')
    path = variant(tree, NO_TLS_MATERIAL, bearer)
    assert main(["--config", path, "--check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: OK (side red: 2 domains; link half-a <-> half-b, profile constrained: "
                          "security bearer, compression zlib, 1200 bit/s")
    broken = variant(tree, NO_TLS_MATERIAL, bearer.replace("rate = 1200", "rate = -5"))
    assert main(["--config", broken, "--check"]) == 1
    assert "link.constrained.rate" in capsys.readouterr().err


def test_a_half_with_security_bearer_builds_and_warns_at_start(tree):  # noqa: F811
    """The service builds a bearer half (no TLS material); starting it logs the missing encryption as a WARNING."""
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import globalLogPublisher

    from guard.app.half import HalfService
    from guard.edges.link.profile import BEARER_WARNING

    bearer = CONSTRAINED.replace('security = "tls"', 'security = "bearer"')
    service = HalfService(load_half_config(variant(tree, NO_TLS_MATERIAL, bearer)), MemoryReactorClock())
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        service.leg.start()
    finally:
        globalLogPublisher.removeObserver(seen.append)
        service.leg.stop()
        service.audit.close()
    assert any(event.get("warning") == BEARER_WARNING and event["log_level"].name == "warn" for event in seen)
    assert service.leg.describe()["own_fingerprint"] is None
    assert service.leg.describe()["profile"].startswith("profile constrained: security bearer")
