"""The half's configuration loader: the sample files load, and every mistake names the file and the key."""

import shutil
from pathlib import Path

import pytest

from guard.app.config import ConfigError
from guard.app.half_config import is_half_config, load_half_config
from guard.lab.pki import CertificateAuthority, write_lab_pki

PROJECT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of deploy/pair and policies/ beside a run/ folder holding both PKIs."""
    root = tmp_path_factory.mktemp("pair-config")
    shutil.copytree(PROJECT / "deploy" / "pair", root / "deploy" / "pair")
    shutil.copytree(PROJECT / "policies", root / "policies")
    write_lab_pki(root / "run" / "pki")
    link = root / "run" / "pair-pki"
    link.mkdir(parents=True)
    authority = CertificateAuthority.create("link-ca")
    authority.write(link)
    for name in ("half-a", "half-b", "hag"):
        authority.write_leaf(link, name, [name])
    return root


def variant(tree, replace, add=""):
    source = (tree / "deploy" / "pair" / "half-a.toml").read_text()
    for old, new in replace:
        assert old in source, old
        source = source.replace(old, new)
    path = tree / "deploy" / "pair" / "variant.toml"
    path.write_text(source + add)
    return str(path)


def test_the_sample_halves_load(tree):
    """Both sample halves, direct and through the HAG, pass the checker."""
    for name in ("half-a", "half-b", "half-a.hag", "half-b.hag"):
        config = load_half_config(str(tree / "deploy" / "pair" / f"{name}.toml"))
        assert config.link.leg.own_name in ("half-a", "half-b")
    config = load_half_config(str(tree / "deploy" / "pair" / "half-a.toml"))
    assert config.topology.far_side("red") == "blue"
    assert config.link.leg.dial == "tcp:host=127.0.4.2:port=5299" and config.link.leg.listen is None
    assert is_half_config(str(tree / "deploy" / "pair" / "half-a.toml"))
    assert config.link.leg.settings.buffer_bytes == 64 * 1024 * 1024


@pytest.mark.parametrize("replace, add, key", [
    ([('dial = "tcp:host=127.0.4.2:port=5299"', 'dial = "tcp:host=127.0.4.2:port=5299"\nlisten = "tcp:1"')], "",
     "link: needs exactly one of listen and dial"),
    ([('ca = "../../run/pair-pki/link-ca.pem"', "")], "", "link: needs pins or ca"),
    ([('# pins = ["ab:cd:..."]', 'pins = ["ab:cd"]')], "", "link.pins[0]"),
    ([('peer = "half-b"', 'peer = "half-a"')], "", "link.peer"),
    ([('far_side = "blue"', 'far_side = "red"')], "", "link.far_side"),
    ([('far_domains = ["blue.example", "conference.blue.example"]', 'far_domains = ["blue.example"]')], "",
     "sides.red.certificates[0].domains"),
    ([('far_domains = ["blue.example", "conference.blue.example"]',
       'far_domains = ["blue.example", "conference.blue.example", "red.example"]')], "", "link.far_domains[2]"),
    ([("down_deadline = 120 ", "down_deadline = -1 ")], "", "link.down_deadline"),
    ([("backoff_jitter = 0.5", "backoff_jitter = 2")], "", "link.backoff_jitter"),
    ([("buffer_stanzas = 10000", "buffer_stanzas = 1.5")], "", "link.buffer_stanzas"),
    ([("buffer_bytes = 67108864", "buffer_bytes = 0")], "", "link.buffer_bytes"),
    ([("buffer_bytes = 67108864", "buffer_bytes = 1.5")], "", "link.buffer_bytes"),
    ([("buffer_bytes = 67108864", "buffer_bytes = 1000")], "", "link.buffer_bytes"),
    ([], "colour = 'red'\n", "link.colour"),
    ([('dial = "tcp:host=127.0.4.2:port=5299"', 'dial = "carrier-pigeon:x"')], "", "link.dial"),
    ([('key = "../../run/pair-pki/half-a.key"', 'key = "../../run/pair-pki/half-b.key"')], "", "link.certificate"),
    ([('import_policy = "../../policies/allow-all.toml"', 'import_policy = "missing.toml"')], "",
     "link.import_policy"),
    ([('ca = "../../run/pair-pki/link-ca.pem"', 'ca = "../../run/pair-pki/half-a.key"')], "", "link.ca: cannot use"),
])
def test_mistakes_name_the_file_and_the_key(tree, replace, add, key):
    """Each broken variant of half-a.toml is refused with a message naming the file and the key."""
    path = variant(tree, replace, add)
    with pytest.raises(ConfigError) as raised:
        load_half_config(path)
    assert str(raised.value).startswith(f"{path}: ") and key in str(raised.value)


def test_a_half_has_exactly_one_side(tree):
    """A second [sides.*] table belongs in a standalone guard, not a half."""
    path = variant(tree, [], "\n[sides.blue]\nlisten = 'tcp:5269'\n")
    with pytest.raises(ConfigError, match="a half has exactly one side"):
        load_half_config(path)


def test_a_reload_judges_the_stanzas_waiting_on_the_link_again(tree):
    """HalfService.reload_policies swaps the policies and then has the relay judge the link's waiting stanzas;
    a reload that is refused changes nothing and judges nothing again."""
    from twisted.internet.testing import MemoryReactorClock

    from guard.app.half import HalfService

    path = variant(tree, [])
    service = HalfService(load_half_config(path), MemoryReactorClock())
    calls = []
    service.relay.rejudge_link_buffer = lambda: calls.append("rejudged")
    assert service.reload_policies() is True and calls == ["rejudged"]
    policy = tree / "policies" / "allow-all.toml"
    saved = policy.read_text()
    try:
        policy.write_text("this is not a policy [")
        assert service.reload_policies() is False and calls == ["rejudged"]
    finally:
        policy.write_text(saved)
    service.audit.close()


def test_check_config_checks_a_half_without_building_it(tree, capsys):
    """`guard check-config` on a half loads its certificates, CA and policies and creates neither its audit trail nor its status file."""
    from guard.app import cli

    path = tree / "deploy" / "pair" / "half-a.toml"
    written = [tree / "run" / "half-a-audit.jsonl", tree / "run" / "half-a-status.json"]
    for left_by_another_test in written:
        left_by_another_test.unlink(missing_ok=True)
    assert cli.main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: OK (red: 2 domains; half of a pair, link fingerprint ")
    assert [file for file in written if file.exists()] == []
