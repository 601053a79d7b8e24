"""deploy/constrained: the sample gateways load with the constrained profile, and red's export policy passes its cases."""

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from guard.app.half_config import load_half_config
from guard.app.policy_commands import check_policy_main

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of deploy/ and policies/ beside a run/ folder holding the PKIs the guide's commands write."""
    root = tmp_path_factory.mktemp("constrained-config")
    shutil.copytree(PROJECT / "deploy", root / "deploy")
    shutil.copytree(PROJECT / "policies", root / "policies")
    environment = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(PROJECT)}
    for command in (["deploy/make-test-pki", "run/pki"], ["deploy/pair/make-pair-pki", "run/pair-pki"]):
        subprocess.run([str(PROJECT / command[0]), str(root / command[1])], check=True, capture_output=True,
                       env=environment, timeout=60)
    return root


def test_the_sample_gateways_load_as_mirrors_of_each_other(tree):
    """gw-a.toml and gw-b.toml pass the checker with the constrained profile and agree on every bearer setting."""
    a = load_half_config(str(tree / "deploy" / "constrained" / "gw-a.toml"))
    b = load_half_config(str(tree / "deploy" / "constrained" / "gw-b.toml"))
    assert a.link.leg.dial == "tcp:host=127.0.4.3:port=5301" and b.link.leg.listen == "tcp:5300:interface=127.0.4.2"
    assert a.link.far_domains == frozenset(b.side.domains) and b.link.far_domains == frozenset(a.side.domains)
    profile_a, profile_b = a.link.leg.profile, b.link.leg.profile
    assert profile_a == profile_b
    assert (profile_a.security, profile_a.compression, profile_a.rate) == ("tls", "dictionary", 1200)
    assert a.link.leg.settings.buffer_bytes == 1024 * 1024


def test_red_export_policy_passes_its_cases_and_keeps_secret_at_home(tree):
    """guard check-policy runs red-export.tests.toml: SECRET bounces, releasable and unlabelled traffic crosses."""
    out, err = io.StringIO(), io.StringIO()
    status = check_policy_main([str(tree / "deploy" / "constrained" / "red-export.toml")], out=out, err=err)
    assert status == 0, out.getvalue() + err.getvalue()
    assert "5/5 cases pass" in out.getvalue()
