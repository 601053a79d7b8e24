"""The systemd units in deploy/systemd: socket activation wired by name, and the hardening `systemd-analyze security` measures."""

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
# The committed exposure of each service (systemd-analyze security --offline, systemd 252): a change that
# raises one fails here; lower the figure when the hardening improves.  The goal is "OK", <= 2.0.
EXPOSURE = {"xmpp-guard.service": 1.1, "xmpp-guard-half@.service": 1.1}
SIDES = ("red", "blue")


def requires(tool: str, package: str) -> str:
    """The path of ``tool``; skip (naming the Debian package `make test` installs) when it is missing."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not found: install the Debian package {package} (make test does)")
    return path


def unit(name: str) -> configparser.ConfigParser:
    """A unit file read as sections of keys (a repeated key keeps its last value)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(UNITS / name)
    return parser


def exposure(path: Path) -> tuple[float, str]:
    """The overall exposure and its rating ("OK", "MEDIUM", ...) that systemd-analyze security gives the unit at ``path``."""
    analyze = requires("systemd-analyze", "systemd")
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", result.stdout)
    assert found, result.stdout
    return float(found.group(1)), found.group(2)


@pytest.mark.parametrize("name", sorted(EXPOSURE))
def test_exposure_is_ok_and_no_higher_than_committed(name):
    """systemd-analyze security rates each service "OK" and no more exposed than the committed figure (goal <= 2.0)."""
    level, rating = exposure(UNITS / name)
    assert (rating, level <= EXPOSURE[name], EXPOSURE[name] <= 2.0) == ("OK", True, True), level


def test_dropping_hardening_raises_the_exposure_above_the_committed_figure(tmp_path):
    """The exposure check catches a regression: the service without its capability and privilege limits rates worse."""
    text = (UNITS / "xmpp-guard.service").read_text()
    weakened = re.sub(r"^(CapabilityBoundingSet=|NoNewPrivileges=yes|ProtectSystem=strict|PrivateUsers=yes)\n",
                      "", text, flags=re.MULTILINE)
    assert weakened.count("\n") == text.count("\n") - 4
    (tmp_path / "xmpp-guard.service").write_text(weakened)
    level, _ = exposure(tmp_path / "xmpp-guard.service")
    assert level > EXPOSURE["xmpp-guard.service"]


def test_each_side_has_a_socket_unit_passing_its_socket_by_the_sides_name():
    """One socket unit per side names its socket after the side and hands it to xmpp-guard.service, which requires it."""
    service = unit("xmpp-guard.service")
    for side in SIDES:
        socket = unit(f"xmpp-guard-{side}.socket")
        assert (socket["Socket"]["FileDescriptorName"], socket["Socket"]["Service"]) == (side, "xmpp-guard.service")
        assert re.fullmatch(r"127\.0\.3\.\d:5269", socket["Socket"]["ListenStream"])
        assert f"xmpp-guard-{side}.socket" in service["Unit"]["Requires"].split()


def test_the_socket_activated_service_runs_unprivileged_and_confined():
    """The service the sockets are passed to has an empty capability set and the confinement the issue names."""
    service = unit("xmpp-guard.service")["Service"]
    expected = {
        "User": "xmpp-guard", "CapabilityBoundingSet": "", "AmbientCapabilities": "", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "LogsDirectory": "xmpp-guard",
        "RuntimeDirectory": "xmpp-guard",
    }
    assert {key: service.get(key) for key in expected} == expected
    filters = [line for line in (UNITS / "xmpp-guard.service").read_text().splitlines()
               if line.startswith("SystemCallFilter=")]
    assert filters == ["SystemCallFilter=@system-service", "SystemCallFilter=~@privileged @resources"]
    assert service["ExecStart"].startswith("/opt/xmpp-guard/bin/guard run --config /etc/xmpp-guard/guard.toml")


def test_the_half_template_runs_the_configuration_named_by_its_instance_without_privilege():
    """xmpp-guard-half@a.service runs /etc/xmpp-guard/half-a.toml, with an empty capability set (its ports are above 1023)."""
    service = unit("xmpp-guard-half@.service")["Service"]
    assert service["ExecStart"].startswith("/opt/xmpp-guard/bin/guard run --config /etc/xmpp-guard/half-%i.toml")
    assert (service["CapabilityBoundingSet"], service["AmbientCapabilities"], service["NoNewPrivileges"]) == (
        "", "", "yes")
