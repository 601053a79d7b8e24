"""The configuration is checked at load time and every error names the file and the key."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from guard.app.config import ConfigError, load_config
from guard.lab.topology import render_guard_config

from .streams.sides import pki

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config_text():
    return render_guard_config(pki(), "certificate", log_level="info")


def write(tmp_path, text):
    path = tmp_path / "guard.toml"
    path.write_text(text)
    return path


def test_lab_configuration_loads(tmp_path, config_text):
    """A complete configuration loads into two sides with their domains, routes and authentication."""
    config = load_config(str(write(tmp_path, config_text)))
    assert sorted(config.sides) == ["blue", "red"]
    assert config.sides["red"].domains["red.example"] == ("127.0.1.1", 5269)
    assert config.sides["blue"].authentication == "certificate"
    assert config.topology.fronted_on("red") == {"blue.example", "conference.blue.example"}
    assert config.limits.stanza_bytes == 524288


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace("[sides.red]\n", "[sides.red]\ncolour = 'red'\n"), "sides.red.colour: unknown key"),
    (lambda t: t.replace("authentication = \"certificate\"", "authentication = \"trust-me\"", 1),
     "sides.red.authentication: must be one of certificate, dialback"),
    (lambda t: t.replace("listen = \"tcp:5269:interface=127.0.3.1\"", "listen = \"carrier-pigeon:5269\""),
     "sides.red.listen: not a Twisted server endpoint string"),
    (lambda t: t.replace("red-ca.pem", "missing-ca.pem"), "sides.red.ca: no such file"),
    (lambda t: t.replace("\"red.example\" = \"127.0.1.1:5269\"", "\"red.example\" = \"127.0.1.1\""),
     "sides.red.domains.red.example: must be \"host:port\""),
    (lambda t: t.replace("domains = [\"blue.example\", \"conference.blue.example\"]", "domains = [\"blue.example\"]"),
     "sides.red.certificates: no certificate for conference.blue.example"),
    (lambda t: t.replace("domains = [\"blue.example\", \"conference.blue.example\"]",
                         "domains = [\"blue.example\", \"conference.blue.example\", \"green.example\"]"),
     "sides.red.certificates[0].domains: green.example is not a domain of the other side"),
    (lambda t: t.replace("stanza_bytes = 524288", "stanza_bytes = -1"), "limits.stanza_bytes: must be greater than zero"),
    (lambda t: t.replace("stanza_bytes = 524288", "stanza_bytes = 'big'"), "limits.stanza_bytes: must be a number"),
    (lambda t: t.replace("[limits]\n", "[limits]\nstanzas_bytes = 1\n"), "limits.stanzas_bytes: unknown key"),
    (lambda t: t + "\n[sides.green]\nlisten = \"tcp:5269\"\n", "sides: needs exactly two sides, found 3"),
    (lambda t: t.replace("\"blue.example\" = \"127.0.2.1:5269\"", "\"red.example\" = \"127.0.2.1:5269\""),
     "sides: domains on both sides: ['red.example']"),
    (lambda t: t.replace("[guard]", "[guard\n"), "not valid TOML"),
])
def test_errors_name_the_file_and_the_key(tmp_path, config_text, change, message):
    """Each kind of mistake is refused with a message that names the file and the offending key."""
    path = write(tmp_path, change(config_text))
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)


def test_check_config_command_reports_ok_and_problems(tmp_path, config_text):
    """`guard check-config` exits 0 on a good file and 1, with the message on stderr, on a bad one."""
    good = write(tmp_path, config_text)
    result = subprocess.run([sys.executable, "-m", "guard", "check-config", str(good)],
                            capture_output=True, text=True, cwd=PROJECT, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, f"{good}: OK (red: 2 domains, blue: 2 domains)")
    bad = tmp_path / "bad.toml"
    bad.write_text(config_text.replace("red-ca.pem", "nowhere.pem"))
    result = subprocess.run([sys.executable, "-m", "guard", "check-config", str(bad)],
                            capture_output=True, text=True, cwd=PROJECT, timeout=60)
    assert result.returncode == 1
    assert "sides.red.ca: no such file" in result.stderr


def test_a_key_that_does_not_match_its_certificate_is_refused(tmp_path, config_text):
    """check-config loads the certificates too: a key from another certificate is refused, naming the entry."""
    material = pki()
    text = config_text.replace(str(material.guard_facing("red").key), str(material.red_server.key))
    result = subprocess.run([sys.executable, "-m", "guard", "check-config", str(write(tmp_path, text))],
                            capture_output=True, text=True, cwd=PROJECT, timeout=60)
    assert result.returncode == 1
    assert "sides.red.certificates[0]: cannot use" in result.stderr


def test_separate_client_certificate_loads_and_goes_with_its_key(tmp_path, config_text):
    """An optional client certificate for outbound connections is accepted with its key, refused without it."""
    material = pki()
    facing = material.guard_facing("red")
    with_client = config_text.replace(
        f"key = \"{facing.key}\"\n",
        f"key = \"{facing.key}\"\nclient_certificate = \"{facing.certificate}\"\nclient_key = \"{facing.key}\"\n", 1)
    config = load_config(str(write(tmp_path, with_client)))
    assert config.sides["red"].certificates[0].client_certificate == str(facing.certificate)
    half = config_text.replace(f"key = \"{facing.key}\"\n",
                               f"key = \"{facing.key}\"\nclient_certificate = \"{facing.certificate}\"\n", 1)
    with pytest.raises(ConfigError) as raised:
        load_config(str(write(tmp_path, half)))
    assert "sides.red.certificates[0].client_key: client_certificate and client_key go together" in str(raised.value)


def check_config(*paths):
    """`guard check-config` on ``paths``, in a process of its own: (exit status, stdout, stderr)."""
    result = subprocess.run([sys.executable, "-m", "guard", "check-config", *map(str, paths)],
                            capture_output=True, text=True, cwd=PROJECT, timeout=60)
    return result.returncode, result.stdout.strip(), result.stderr.strip()


def with_guard_options(**options):
    return render_guard_config(pki(), "certificate", log_level="info", guard_options=options)


def test_check_config_builds_no_service_and_creates_no_file(tmp_path):
    """check-config checks a configuration naming an audit trail and a status file without creating either (it opened the audit trail before)."""
    audit, status = tmp_path / "trail" / "audit.jsonl", tmp_path / "trail" / "status.json"
    audit.parent.mkdir()
    path = write(tmp_path, with_guard_options(audit=str(audit), status=str(status)))
    assert check_config(path) == (0, f"{path}: OK (red: 2 domains, blue: 2 domains)", "")
    assert list(audit.parent.iterdir()) == []


def test_check_config_names_an_audit_trail_in_a_folder_that_does_not_exist_and_creates_nothing(tmp_path):
    """An audit trail in a missing folder is a problem naming the file and guard.audit; the folder is not made."""
    audit = tmp_path / "missing" / "audit.jsonl"
    path = write(tmp_path, with_guard_options(audit=str(audit)))
    status, out, err = check_config(path)
    assert (status, out) == (1, "")
    assert err == f"{path}: guard.audit: no such folder: {audit.parent}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guard.toml"]


def test_check_config_names_an_audit_trail_that_is_not_a_file(tmp_path):
    """An audit path that is a folder is refused, naming guard.audit, without opening it."""
    audit = tmp_path / "audit.jsonl"
    audit.mkdir()
    path = write(tmp_path, with_guard_options(audit=str(audit)))
    assert check_config(path) == (1, "", f"{path}: guard.audit: not a regular file: {audit}")


def test_check_config_names_an_audit_trail_in_a_folder_it_may_not_write(tmp_path, monkeypatch, capsys):
    """An audit trail (or status file) in a folder the guard may not write is a problem naming the file and the key; nothing is created.

    The operating system's answer is simulated for that one folder: these tests run as root, whom access() never refuses."""
    from guard.app import cli

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda where, mode: (False if str(where) == str(locked) and mode & os.W_OK
                                                           else real_access(where, mode)))
    for key, options in (("guard.audit", {"audit": str(locked / "audit.jsonl")}),
                         ("guard.status", {"status": str(locked / "status.json")})):
        path = write(tmp_path, with_guard_options(**options))
        assert cli.main(["check-config", str(path)]) == 1
        captured = capsys.readouterr()
        written = options.get("audit") or options.get("status")
        assert (captured.out, captured.err) == ("", f"{path}: {key}: cannot create files in {locked} (for {written})\n")
    assert list(locked.iterdir()) == []


def test_check_config_runs_the_test_cases_beside_a_policy(tmp_path):
    """A policy whose own test cases fail is a problem naming the policy's key, the cases file and the case."""
    policy = tmp_path / "policy.toml"
    policy.write_text((PROJECT / "policies" / "allow-all.toml").read_text())
    (tmp_path / "policy.tests.toml").write_text(
        "[[cases]]\nname = 'chat is dropped'\n"
        "stanza = \"<message from='alice@red.example' to='bob@blue.example' type='chat'><body>hi</body></message>\"\n"
        "verdict = 'drop'\n")
    path = write(tmp_path, render_guard_config(pki(), "certificate", policy=policy, log_level="info"))
    status, out, err = check_config(path)
    assert (status, out) == (1, "")
    assert err.startswith(f"{path}: sides.red.policy: {tmp_path / 'policy.tests.toml'}: case 'chat is dropped': ")
