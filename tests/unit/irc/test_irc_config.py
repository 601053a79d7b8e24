"""irc.toml is checked at load time; every error names the file, the line and the key."""

import re
import shutil
from pathlib import Path

import pytest

from guard.app.config import ConfigError
from guard.app.irc_config import (DEFAULT_FLOT_TEMPLATE, IrcLimits, SourcePlaces, load_irc_config)
from guard.core.policy.labels import SecurityLabel

POLICIES = Path(__file__).resolve().parents[3] / "policies"

CONFIG = """\
[gateway]
log_level = "info"
audit = "audit.jsonl"

[xmpp]
component = "irc.red.example"
connect = "tcp:host=127.0.0.1:port=5347"
secret = "s3cret"
room_service = "conference.red.example"

[networks.lab]
host = "127.0.5.1"
port = 6697
ca = "ca.pem"
nick = "redgw"

[[bridges]]
room = "ops@conference.red.example"
network = "lab"
channel = "#ops"
policy = "irc-bridge.toml"
map_markings = { "RESTRICTED" = { policy = "red-national", classification = "RESTRICTED" } }
"""


@pytest.fixture
def folder(tmp_path):
    shutil.copy(POLICIES / "irc-bridge.toml", tmp_path / "irc-bridge.toml")
    (tmp_path / "ca.pem").write_text("a CA\n")
    return tmp_path


def load(folder, text):
    path = folder / "irc.toml"
    path.write_text(text)
    return load_irc_config(str(path))


def refused(folder, text):
    with pytest.raises(ConfigError) as caught:
        load(folder, text)
    return str(caught.value)


def line_of(text, fragment):
    """The 1-based line of the first line holding ``fragment``."""
    return next(n for n, line in enumerate(text.splitlines(), start=1) if fragment in line)


def test_a_complete_configuration_loads_with_its_defaults(folder):
    """The sample loads: the component, one network with TLS on, one bridge with its policy, FLOT and every default."""
    config = load(folder, CONFIG)
    assert config.xmpp.component == "irc.red.example" and config.xmpp.secret == "s3cret"
    network = config.networks["lab"]
    assert (network.host, network.port, network.tls, network.tls_verify, network.sasl) == ("127.0.5.1", 6697, True,
                                                                                           True, "none")
    assert network.ca == str(folder / "ca.pem")
    assert (network.charset, network.max_connections, network.flood_burst, network.flood_interval) == (
        "latin-1", 64, None, None)
    assert network.server_name is None
    named = load(folder, CONFIG.replace('ca = "ca.pem"', 'ca = "ca.pem"\nserver_name = "irc.lab.example"'))
    assert named.networks["lab"].server_name == "irc.lab.example"
    (bridge,) = config.bridges
    assert (bridge.room, bridge.channel, bridge.irc_domain, bridge.room_nick) == (
        "ops@conference.red.example", "#ops", "lab.irc.invalid", "irc")
    assert (bridge.flot_template, bridge.flot_position) == (DEFAULT_FLOT_TEMPLATE, "line")
    assert bridge.map_markings == {"RESTRICTED": SecurityLabel("red-national", "RESTRICTED")}
    assert (bridge.max_occupant_connections, bridge.join_window) == (32, 0.5)
    assert bridge.policy.name == "irc-bridge"
    assert config.limits == IrcLimits(queue_bytes=262144, queue_lines=1024, total_connections=256,
                                      nick_book_entries=10000, joined_message_bytes=16384)
    assert config.topology.side_of("conference.red.example") == "xmpp"
    assert config.topology.side_of("lab.irc.invalid") == config.topology.side_of("irc.red.example") == "irc"


def test_every_limit_can_be_set_within_its_bounds(folder):
    """Each [limits] key is read, and each refuses a value past its lowest or highest bound, naming the key."""
    for name, (lowest, highest) in IrcLimits.BOUNDS.items():
        config = load(folder, CONFIG + f"\n[limits]\n{name} = {max(lowest, 300)}\n")
        assert getattr(config.limits, name) == max(lowest, 300)
        for wrong in (lowest - 1, highest + 1):
            text = CONFIG + f"\n[limits]\n{name} = {wrong}\n"
            message = refused(folder, text)
            assert message == (f"{folder / 'irc.toml'}:{line_of(text, name + ' =')}: limits.{name}: "
                               f"must be from {lowest} to {highest}")


@pytest.mark.parametrize("change, key, message", [
    (lambda t: t.replace('log_level = "info"', 'log_level = "info"\ncolour = 1'), "gateway.colour", "unknown key"),
    (lambda t: t.replace('port = 6697', 'port = 70000'), "networks.lab.port", "must be from 1 to 65535"),
    (lambda t: t.replace('port = 6697', 'port = "6697"'), "networks.lab.port", "must be a whole number"),
    (lambda t: t.replace('channel = "#ops"', 'channel = "ops"'), "bridges[0].channel", "must start with one of"),
    (lambda t: t.replace('channel = "#ops"', 'channel = "#o ps"'), "bridges[0].channel", "must start with one of"),
    (lambda t: t.replace('network = "lab"', 'network = "elsewhere"'), "bridges[0].network", "not a configured network"),
    (lambda t: t.replace('room = "ops@conference.red.example"', 'room = "ops@muc.elsewhere.example"'),
     "bridges[0].room", "must be a room of xmpp.room_service"),
    (lambda t: t.replace('room = "ops@conference.red.example"', 'room = "ops@conference.red.example/me"'),
     "bridges[0].room", "must be a bare room JID"),
    (lambda t: t.replace('secret = "s3cret"', ''), "xmpp.secret", "exactly one of secret and secret_file"),
    (lambda t: t.replace('host=127.0.0.1', 'host=192.0.2.7'), "xmpp.tls", "not a loopback address"),
    (lambda t: t.replace('connect = "tcp:host=127.0.0.1:port=5347"', 'connect = "tcp:nonsense"'), "xmpp.connect",
     "not a Twisted client endpoint string"),
    (lambda t: t.replace('component = "irc.red.example"', 'component = "irc..red"'), "xmpp.component",
     "not a valid domain name"),
    (lambda t: t.replace('nick = "redgw"', 'nick = "red gw"'), "networks.lab.nick", "must not hold a space"),
    (lambda t: t.replace('nick = "redgw"', 'sasl = "plain"'), "networks.lab.sasl",
     "plain needs sasl_user and sasl_password_file"),
    (lambda t: t.replace('nick = "redgw"', 'sasl = "external"'), "networks.lab.sasl",
     "external needs client_certificate and client_key"),
    (lambda t: t.replace('nick = "redgw"', 'charset = "klingon"'), "networks.lab.charset", "not an ASCII-compatible character set"),
    (lambda t: t.replace('nick = "redgw"', 'flood_burst = 0'), "networks.lab.flood_burst", "must be from 1 to 100"),
    (lambda t: t.replace('nick = "redgw"', 'flood_interval = 120'), "networks.lab.flood_interval",
     "must be from 0.01 to 60.0"),
    (lambda t: t.replace('nick = "redgw"', 'max_connections = 0'), "networks.lab.max_connections",
     "must be from 1 to 256"),
    (lambda t: t.replace('channel = "#ops"', 'channel = "#ops"\nflot_template = "Marking"'),
     "bridges[0].flot_template", "must hold {marking} exactly once"),
    (lambda t: t.replace('channel = "#ops"', 'channel = "#ops"\nflot_template = "{marking} {other}"'),
     "bridges[0].flot_template", "must hold {marking} exactly once"),
    (lambda t: t.replace('channel = "#ops"', 'channel = "#ops"\nflot_position = "footer"'),
     "bridges[0].flot_position", "must be one of line, prefix"),
    (lambda t: t.replace('channel = "#ops"', 'channel = "#ops"\nmax_occupant_connections = 1000'),
     "bridges[0].max_occupant_connections", "must be from 0 to 256"),
    (lambda t: t.replace('channel = "#ops"', 'channel = "#ops"\njoin_window = 11'), "bridges[0].join_window",
     "must be from 0.0 to 10.0"),
    (lambda t: t.replace('classification = "RESTRICTED" }', 'classification = "SECRET" }'),
     "bridges[0].map_markings.RESTRICTED", "above the IRC side's clearance"),
    (lambda t: t.replace('classification = "RESTRICTED" }', 'classification = "SEKRET" }'),
     "bridges[0].map_markings.RESTRICTED.classification", "has no classification 'SEKRET'"),
    (lambda t: t.replace('policy = "irc-bridge.toml"', 'policy = "missing.toml"'), "bridges[0].policy",
     "no such file"),
    (lambda t: t.replace('channel = "#ops"', 'channel = "#' + "o" * 50 + '"'), "bridges[0].channel",
     "be at most 50 bytes"),
    (lambda t: t.replace('channel = "#ops"', 'channel = "#ops"\nflot_template = "' + "x" * 200 + '{marking}"'),
     "bridges[0].flot_template", "must be one line of at most 200 bytes"),
    (lambda t: t.replace('{ "RESTRICTED"', '{ "' + "R" * 129 + '"'), "bridges[0].map_markings." + "R" * 129,
     "a marking is one line of at most 128 bytes"),
    (lambda t: t.replace('nick = "redgw"', 'nick = "' + "n" * 65 + '"'), "networks.lab.nick",
     "must be at most 64 bytes"),
    (lambda t: t.replace('ca = "ca.pem"', 'ca = "ca.pem"\ntls = false'), "networks.lab.ca", "needs tls = true"),
    (lambda t: t.replace('ca = "ca.pem"', 'ca = "ca.pem"\nserver_name = "not a name"'), "networks.lab.server_name",
     "must be a DNS name or an IP address"),
    (lambda t: t.replace("[networks.lab]", "[networks.Lab_1]").replace('network = "lab"', 'network = "Lab_1"'),
     "networks.Lab_1", "a network's name is a DNS label"),
    (lambda t: t + "\n[limits]\ntotal_connections = 1\n", "limits.total_connections",
     "must be more than the number of networks"),
])
def test_each_error_names_the_file_the_line_and_the_key(folder, change, key, message):
    """A wrong value is refused with "file:line: key: why", the line being where the key (or its table) is written."""
    text = change(CONFIG)
    found = refused(folder, text)
    assert re.match(rf"{re.escape(str(folder / 'irc.toml'))}:\d+: {re.escape(key)}: ", found), found
    assert message in found


def test_the_line_named_is_the_line_of_the_key(folder):
    """The line in the message is the line the offending key is written on, in the table it belongs to."""
    text = CONFIG.replace('port = 6697', 'port = 0')
    assert refused(folder, text).startswith(f"{folder / 'irc.toml'}:{line_of(text, 'port = 0')}: networks.lab.port:")
    text = CONFIG + '\n[[bridges]]\nroom = "dev@conference.red.example"\nnetwork = "lab"\nchannel = "#ops"\n' \
                    'policy = "irc-bridge.toml"\n'
    lines = text.splitlines()
    second_channel = max(n for n, line in enumerate(lines, start=1) if line.startswith("channel"))
    assert refused(folder, text) == (f"{folder / 'irc.toml'}:{second_channel}: bridges[1].channel: #ops on lab is "
                                     f"already bridged (bridges[0])")


def test_a_policy_the_checker_refuses_is_named_with_its_own_problems(folder):
    """A bridge policy that does not compile is refused, quoting the policy checker's file:line message."""
    (folder / "irc-bridge.toml").write_text((POLICIES / "irc-bridge.toml").read_text()
                                            .replace('verdict = "drop"', 'verdict = "dorp"', 1))
    found = refused(folder, CONFIG)
    assert found.startswith(f"{folder / 'irc.toml'}:{line_of(CONFIG, 'policy =')}: bridges[0].policy: the policy is "
                            f"refused:")
    assert "irc-bridge.toml:" in found and "dorp" in found


def test_a_policy_without_the_irc_sides_clearance_or_default_label_is_refused(folder):
    """The bridge's IRC side needs a clearance and a default label in the policy, under its pseudo-domain."""
    text = CONFIG.replace('channel = "#ops"', 'channel = "#ops"\nirc_domain = "irc.lab.example"')
    assert "no clearance for the IRC side" in refused(folder, text)
    policy = (POLICIES / "irc-bridge.toml").read_text()
    (folder / "irc-bridge.toml").write_text(policy.replace(
        'default_label = { policy = "red-national", classification = "UNCLASSIFIED" }\n\n# --- rules', '\n# --- rules'))
    assert "no default label for the IRC side" in refused(folder, CONFIG)


def test_a_policy_for_other_sides_is_refused(folder):
    """A guard policy (for red->blue) cannot be a bridge policy: the sides must be xmpp->irc."""
    shutil.copy(POLICIES / "high-to-low.toml", folder / "irc-bridge.toml")
    assert "a bridge policy names from_side" in refused(folder, CONFIG)


@pytest.mark.parametrize("change, key", [
    ('host = "irc.example.net"\ntls = false', "networks.lab.tls"),
    ('host = "192.0.2.7"\ntls_verify = false', "networks.lab.tls_verify"),
])
def test_an_irc_network_off_loopback_needs_verified_tls(folder, change, key):
    """Plain TCP or an unverified certificate toward an IRC server off loopback is refused at load, as for Prosody."""
    found = refused(folder, CONFIG.replace('host = "127.0.5.1"', change).replace('ca = "ca.pem"\n', ""))
    assert f": {key}: must be true: " in found and "is not a loopback address" in found
    assert load(folder, CONFIG.replace('host = "127.0.5.1"', 'host = "127.0.5.1"\ntls_verify = false')).networks[
        "lab"].tls_verify is False


def test_secret_file_and_tls_toward_prosody(folder):
    """The secret may come from a file; a non-loopback Prosody needs TLS with a CA."""
    (folder / "secret").write_text("from-a-file\n")
    text = CONFIG.replace('secret = "s3cret"', 'secret_file = "secret"')
    assert load(folder, text).xmpp.secret == "from-a-file"
    text = CONFIG.replace("host=127.0.0.1", "host=192.0.2.7").replace('secret = "s3cret"',
                                                                       'secret = "s"\ntls = true\nca = "ca.pem"')
    assert load(folder, text).xmpp.tls is True
    text = CONFIG.replace('secret = "s3cret"', 'secret = "s"\ntls = true')
    assert "xmpp.ca: is required with xmpp.tls" in refused(folder, text)


def test_sasl_plain_needs_tls_and_a_password_file(folder):
    """SASL PLAIN is read with its user and password file, and refused over plain TCP."""
    (folder / "password").write_text("pw\n")
    text = CONFIG.replace('nick = "redgw"', 'sasl = "plain"\nsasl_user = "gw"\nsasl_password_file = "password"')
    network = load(folder, text).networks["lab"]
    assert (network.sasl, network.sasl_user, network.sasl_password_file) == ("plain", "gw", str(folder / "password"))
    assert "plain needs tls = true" in refused(folder, text.replace('ca = "ca.pem"', "tls = false"))


def test_a_typed_marking_is_normalised_and_more_than_one_may_be_mapped(folder):
    """Markings are matched with their white space folded; a map entry under the clearance loads as its label."""
    text = CONFIG.replace('map_markings = { "RESTRICTED"', 'map_markings = { "UNCLASSIFIED" = { policy = '
                          '"red-national", classification = "UNCLASSIFIED" }, "RESTRICTED "')
    assert load(folder, text).bridges[0].map_markings == {
        "UNCLASSIFIED": SecurityLabel("red-national", "UNCLASSIFIED"),
        "RESTRICTED": SecurityLabel("red-national", "RESTRICTED")}


def test_places_follow_tables_arrays_and_quoted_names():
    """SourcePlaces finds keys under [a.b], the n-th [[array]] and quoted table names; unknown keys fall back."""
    places = SourcePlaces('top = 1\n[networks."my-net"]\nhost = "h"\n[[bridges]]\nroom = 1\n[[bridges]]\nroom = 2\n')
    assert places.line_of("top") == 1
    assert places.line_of("networks.my-net.host") == 3
    assert places.line_of("networks.my-net.port") == 2
    assert places.line_of("bridges[1].room") == 7
    assert places.line_of("bridges[0].room") == 5
    assert places.line_of("nowhere.at.all") is None
