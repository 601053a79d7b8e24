"""guard-irc reloads its bridges' policies (SIGHUP, the management page) all or none, bytes in and bytes out."""

import os
import signal
import subprocess
import sys
import time

from twisted.logger import Logger

import guard.app.irc as irc_app
from tests.unit.irc.test_irc_app import (POLICY, PROJECT, alice_joins, audit_records, open_lab, room_message,
                                         write_config, written)

NOON_RULE = '''
[[rules]]
id = "no-noon"
rev = 1
why = "Meeting times stay in the room."
kind = "message"
body_matches = ["noon"]
verdict = "bounce"
condition = "policy-violation"
text = "Meeting times are not bridged."
'''
BROKEN_RULE = '''
[[rules]]
id = "broken-rule"
rev = 1
why = "A pattern RE2 refuses."
kind = "message"
body_matches = ["(unclosed"]
verdict = "drop"
'''


def with_rule(rule: str) -> str:
    """The bridge policy with ``rule`` placed before its first rule (first match wins)."""
    text = POLICY.read_text()
    first = text.index("[[rules]]")
    return text[:first] + rule.lstrip("\n") + "\n" + text[first:]


def bridged_to(tmp_path, policy_text):
    """A configuration whose bridge policy is a copy holding ``policy_text``."""
    policy = tmp_path / "bridge.toml"
    policy.write_text(policy_text)
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace(str(POLICY), str(policy)))
    return config, policy


def said_noon(lab_parts, stanza_id):
    """alice says "meet at noon": the IRC lines the bot wrote and the bytes written to the component."""
    gateway, clock, stream, irc, bot, _ = lab_parts
    bot.transport.clear()
    written(stream)
    room_message(stream, "meet at noon", stanza_id=stanza_id)
    clock.advance(5)
    return bot.transport.value().decode(), written(stream).decode()


def test_a_reload_swaps_the_bridge_policy_in_and_the_next_message_is_judged_by_it(tmp_path):
    """Before: "meet at noon" reaches IRC; the file gains a rule; after the reload it bounces with the rule's error."""
    config, policy = bridged_to(tmp_path, POLICY.read_text())
    parts = open_lab(tmp_path, config)
    gateway, _, stream, _, _, folder = parts
    alice_joins(stream)
    irc_lines, _ = said_noon(parts, "n1")
    assert "PRIVMSG #ops :<alice> meet at noon" in irc_lines
    policy.write_text(with_rule(NOON_RULE))
    assert gateway.reload_policies() is True
    irc_lines, reply = said_noon(parts, "n2")
    assert "noon" not in irc_lines
    assert reply.startswith('<message type="error" from="irc.red.example/ops" to="alice@red.example/phone" id="n2">')
    assert "Meeting times are not bridged." in reply and "<policy-violation " in reply
    assert [r["rule"] for r in audit_records(folder) if r["event"] in ("policy-reload", "bounce")] == [
        "guard:policy-reload", "no-noon"]
    assert gateway.describe()["service"]["policy_reloads"] == 1


def test_a_policy_that_does_not_load_keeps_the_old_one_and_logs_file_line_and_rule(tmp_path, monkeypatch):
    """A rule RE2 refuses: the reload is refused, the log names the policy file, its line and the rule, and the
    policy in force still passes what it passed."""
    config, policy = bridged_to(tmp_path, POLICY.read_text())
    parts = open_lab(tmp_path, config)
    gateway, _, stream, _, _, _ = parts
    alice_joins(stream)
    events = []
    monkeypatch.setattr(irc_app, "log", Logger(observer=events.append))
    policy.write_text(with_rule(NOON_RULE + BROKEN_RULE))
    assert gateway.reload_policies() is False
    (refusal,) = [e for e in events if "reload refused" in e["log_format"]]
    line = with_rule(NOON_RULE + BROKEN_RULE).splitlines().index('body_matches = ["(unclosed"]') + 1
    assert f"{policy}:{line}: rule broken-rule: body_matches" in refusal["problem"]
    irc_lines, _ = said_noon(parts, "n3")
    assert "PRIVMSG #ops :<alice> meet at noon" in irc_lines
    assert gateway.describe()["service"]["policy_reloads"] == 0


def test_a_reload_that_drops_a_running_bridge_is_refused(tmp_path):
    """Bridges change at a start only: a file that no longer bridges the running room leaves every policy in force."""
    config, _ = bridged_to(tmp_path, POLICY.read_text())
    parts = open_lab(tmp_path, config)
    gateway = parts[0]
    before = gateway.bridges[0].labels
    config.write_text(config.read_text().replace('channel = "#ops"', 'channel = "#other"'))
    assert gateway.reload_policies() is False
    assert gateway.bridges[0].labels is before


def test_sighup_makes_a_running_guard_irc_reload_and_a_broken_policy_is_refused(tmp_path):
    """A real guard-irc process (peers absent: it keeps dialling loopback) logs a refused reload naming the rule on
    one SIGHUP and a swapped-in policy on the next."""
    config, policy = bridged_to(tmp_path, POLICY.read_text())
    log_path = tmp_path / "out.log"
    environment = dict(os.environ, PYTHONPATH=str(PROJECT))
    with open(log_path, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "guard.app.irc", "--config", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT, env=environment, cwd=str(tmp_path))
    try:
        def wait_for(text, seconds=20.0):
            """Whether ``text`` ("": anything) appears in the process's log within ``seconds``."""
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                logged = log_path.read_text()
                if logged and text in logged:
                    return True
                if process.poll() is not None:
                    return False
                time.sleep(0.1)
            return False

        assert wait_for(""), log_path.read_text()  # it logs once its reactor runs: the handlers are in place
        policy.write_text(with_rule(BROKEN_RULE))
        process.send_signal(signal.SIGHUP)
        assert wait_for("rule broken-rule"), log_path.read_text()
        policy.write_text(with_rule(NOON_RULE))
        process.send_signal(signal.SIGHUP)
        assert wait_for("policies reloaded"), log_path.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    assert [r["rule"] for r in audit_records(tmp_path) if r["event"] == "policy-reload"] == ["guard:policy-reload"]


def test_the_management_pages_reload_checks_then_swaps_the_policies_in(tmp_path):
    """With allow_reload the page's reload runs --check's loading, then the swap; a broken policy is refused with the
    checker's words and nothing is swapped."""
    config, policy = bridged_to(tmp_path, POLICY.read_text())
    gateway = open_lab(tmp_path, config)[0]
    assert irc_app.reload_action(gateway)() == (True, "checked and reloaded (1 bridge policies)")
    policy.write_text(with_rule(BROKEN_RULE))
    done, why = irc_app.reload_action(gateway)()
    assert not done and "rule broken-rule: body_matches" in why
    assert gateway.policy_reloads == 1
