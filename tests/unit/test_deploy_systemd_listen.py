"""A guard behind systemd socket units: `systemd:` listen strings are checked for their form, and a socket that was not passed stops the start."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from guard.app.config import ConfigError, load_config
from guard.lab.topology import render_guard_config

from .streams.sides import pki

PROJECT = Path(__file__).resolve().parents[2]
RED_TCP = 'listen = "tcp:5269:interface=127.0.3.1"'
BLUE_TCP = 'listen = "tcp:5269:interface=127.0.3.2"'


def systemd_config(tmp_path, red='systemd:domain=INET:name=red', blue='systemd:domain=INET:name=blue'):
    """The lab configuration with both sides listening on sockets passed by systemd; its path."""
    text = render_guard_config(pki(), "certificate", log_level="info",
                               guard_options={"audit": str(tmp_path / "audit.jsonl")})
    assert RED_TCP in text and BLUE_TCP in text
    path = tmp_path / "guard.toml"
    path.write_text(text.replace(RED_TCP, f'listen = "{red}"').replace(BLUE_TCP, f'listen = "{blue}"'))
    return path


def environment_without_systemd():
    """This process's environment without any socket passed by systemd."""
    return {key: value for key, value in os.environ.items() if not key.startswith("LISTEN_")} | {
        "PYTHONPATH": str(PROJECT)}


def test_check_config_accepts_systemd_listen_strings_without_the_sockets(tmp_path):
    """check-config accepts a listen string naming a socket unit's FileDescriptorName even though no socket was passed to it."""
    path = systemd_config(tmp_path)
    result = subprocess.run([sys.executable, "-m", "guard", "check-config", str(path)], capture_output=True,
                            text=True, cwd=PROJECT, env=environment_without_systemd(), timeout=60)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (
        0, f"{path}: OK (red: 2 domains, blue: 2 domains)", "")


def test_an_index_is_accepted_as_well_as_a_name(tmp_path):
    """A socket may be named by its position in LISTEN_FDS (index=) instead of its name."""
    config = load_config(str(systemd_config(tmp_path, red="systemd:domain=INET6:index=0")))
    assert config.sides["red"].listen == "systemd:domain=INET6:index=0"


@pytest.mark.parametrize("listen, message", [
    ("systemd:domain=INET", "give exactly one of index and name"),
    ("systemd:domain=INET:index=0:name=red", "give exactly one of index and name"),
    ("systemd:name=red", "domain must be INET, INET6 or UNIX, not None"),
    ("systemd:domain=PIGEON:name=red", "domain must be INET, INET6 or UNIX, not 'PIGEON'"),
    ("systemd:domain=INET:index=first", "index must be a whole number, not 'first'"),
    ("systemd:domain=INET:name=", "name must not be empty"),
    ("systemd:domain=INET:name=red:backlog=5", "unknown: ['backlog']"),
    ("systemd:INET:name=red", "unknown: ['INET']"),
])
def test_a_malformed_systemd_listen_string_is_refused(tmp_path, listen, message):
    """Each malformed systemd listen string is refused naming the key, before any socket is looked for."""
    path = systemd_config(tmp_path, red=listen)
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    assert str(raised.value).startswith(f"{path}: sides.red.listen: ")
    assert message in str(raised.value)


def test_run_refuses_to_start_when_systemd_passed_no_such_socket(tmp_path):
    """`guard run` on a systemd listen string whose socket was not passed exits 1 naming the key and the socket, and listens on nothing."""
    path = systemd_config(tmp_path)
    result = subprocess.run([sys.executable, "-m", "guard", "run", "--config", str(path)], capture_output=True,
                            text=True, cwd=PROJECT, env=environment_without_systemd(), timeout=60)
    assert result.returncode == 1
    assert (f"guard: cannot start: {path}: sides.red.listen: systemd:domain=INET:name=red: "
            "no such socket was passed by systemd (LISTEN_FDNAMES='')") in result.stderr
