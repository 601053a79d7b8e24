"""``guard check-policy``: each policy once, its cases run, and a non-zero exit on any problem."""

import io
import shutil
from pathlib import Path

import pytest

from guard.app.policy_commands import check_policy_main

POLICIES = Path(__file__).resolve().parents[3] / "policies"

POLICY = """
[policy]
name = "small"
[[rules]]
id = "messages"
rev = 1
why = "messages pass"
kind = "message"
verdict = "pass"
"""

CASES = """
[[cases]]
name = "a message passes"
stanza = "<message from='a@red.example' to='b@blue.example'><body>x</body></message>"
verdict = "pass"
rule = "messages"

[[cases]]
name = "presence is dropped by default"
stanza = "<presence from='a@red.example' to='b@blue.example'/>"
verdict = "drop"
rule = "default"
"""


def check(*files):
    """Exit status, standard output and standard error of check-policy on ``files``."""
    out, err = io.StringIO(), io.StringIO()
    status = check_policy_main([str(f) for f in files], out=out, err=err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def small(tmp_path):
    """A small policy with its cases file beside it."""
    (tmp_path / "small.toml").write_text(POLICY)
    (tmp_path / "small.tests.toml").write_text(CASES)
    return tmp_path


def test_a_glob_that_includes_the_cases_files_checks_each_policy_once(small):
    """``policies/*.toml`` also matches ``*.tests.toml``; they stand for their policy, which is checked once."""
    status, out, err = check(*sorted(small.glob("*.toml")))
    assert (status, err) == (0, "")
    assert out == f"{small / 'small.toml'}: 1 rules, 2/2 cases pass\n"


def test_a_cases_file_alone_checks_its_policy(small):
    """Naming only ``x.tests.toml`` checks ``x.toml`` with those cases."""
    status, out, _ = check(small / "small.tests.toml")
    assert status == 0 and "2/2 cases pass" in out


def test_a_failing_case_fails_the_check(small):
    """A case whose verdict differs makes the exit status non-zero and names the case and what differed."""
    (small / "small.tests.toml").write_text(CASES.replace('verdict = "drop"', 'verdict = "pass"'))
    status, out, err = check(small / "small.toml")
    assert status == 1
    assert "case 'presence is dropped by default': verdict drop, expected pass" in err
    assert "1/2 cases pass" in out


def test_a_policy_without_cases_fails_the_check(small):
    """Every policy ships with its cases: a missing cases file is a failure."""
    (small / "small.tests.toml").unlink()
    status, _, err = check(small / "small.toml")
    assert status == 1 and "no test cases" in err


def test_a_cases_file_without_its_policy_fails_the_check(small):
    """A cases file whose policy is missing is a failure, not silently skipped."""
    (small / "small.toml").unlink()
    status, _, err = check(small / "small.tests.toml")
    assert status == 1 and "cannot read" in err


def test_an_invalid_policy_fails_the_check_and_the_others_are_still_checked(small):
    """One bad file does not hide the results of the others; the exit status is non-zero."""
    (small / "bad.toml").write_text(POLICY.replace('kind = "message"', 'kind = "mail"'))
    status, out, err = check(small / "bad.toml", small / "small.toml")
    assert status == 1
    assert "bad.toml:8: rule messages: unknown kind 'mail'" in err
    assert "small.toml: 1 rules, 2/2 cases pass" in out


def test_unknown_keys_in_a_cases_file_fail_the_check(small):
    """A misspelt key in a case is reported, never ignored."""
    (small / "small.tests.toml").write_text(CASES.replace('rule = "messages"', 'rules = "messages"'))
    status, _, err = check(small / "small.toml")
    assert status == 1 and "unknown key 'rules'" in err


def test_the_shipped_policies_pass_their_own_cases(tmp_path):
    """Every policy in policies/ validates and passes the cases beside it, as ``make test`` checks."""
    for path in POLICIES.glob("*.toml"):
        shutil.copy(path, tmp_path / path.name)
    status, out, err = check(*sorted(tmp_path.glob("*.toml")))
    assert (status, err) == (0, "")
    assert len(out.splitlines()) == len([p for p in POLICIES.glob("*.toml") if not p.name.endswith(".tests.toml")])


@pytest.mark.parametrize("line, message", [
    ('output_contains = "x"', "output_contains is a list of non-empty strings"),
    ('text_contains = [""]', "text_contains is a list of non-empty strings"),
    ('direction = "red to blue"', 'direction is "source->destination"'),
    ("rule = 3", "rule is a string"),
])
def test_badly_written_cases_fail_the_check(small, line, message):
    """A case field of the wrong shape is reported rather than checked loosely (a string is not a list of fragments)."""
    (small / "small.tests.toml").write_text(CASES.replace('rule = "messages"', line))
    status, _, err = check(small / "small.toml")
    assert status == 1 and message in err
