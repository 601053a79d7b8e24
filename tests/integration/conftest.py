"""
Fixtures for the integration tests: one lab per configuration for the whole
session, and freshly connected clients (romeo@red.example,
juliet@blue.example) for every test.

Every scenario runs in each lab configuration; select them by mark:

    pytest tests/integration -m direct     # no guard: validates the lab itself
    pytest tests/integration -m relay      # dumb TCP relay where the guard would be
    pytest tests/integration -m guard      # the guard, certificate and dialback

When a test fails, the tail of every lab log is attached to its report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from guard.lab.clients import ClientLoop  # noqa: E402
from guard.lab.topology import Lab, Mode  # noqa: E402
from .labs import started

LAB_CONFIGURATIONS = [
    pytest.param((Mode.DIRECT, "certificate"), marks=pytest.mark.direct, id="direct-certificate"),
    pytest.param((Mode.DIRECT, "dialback"), marks=pytest.mark.direct, id="direct-dialback"),
    pytest.param((Mode.RELAY, "certificate"), marks=pytest.mark.relay, id="relay-certificate"),
    pytest.param((Mode.RELAY, "dialback"), marks=pytest.mark.relay, id="relay-dialback"),
    pytest.param((Mode.GUARD, "certificate"), marks=pytest.mark.guard, id="guard-certificate"),
    pytest.param((Mode.GUARD, "dialback"), marks=pytest.mark.guard, id="guard-dialback"),
]


def pytest_configure(config):
    config.addinivalue_line("markers", "direct: integration scenario with red and blue connected directly")
    config.addinivalue_line("markers", "relay: integration scenario through the dumb TCP relay")
    config.addinivalue_line("markers", "guard: integration scenario through the guard process")


# Module scope: a module's lab is stopped when the module ends, so that the
# modules that bring up labs of their own (attacks, faults, policies) never
# wait for one of ours (there is one lab at a time: the addresses are fixed).
@pytest.fixture(scope="module", params=LAB_CONFIGURATIONS)
def lab(request, tmp_path_factory):
    """A running lab (DNS, both Prosodies, and the relay or guard) for one configuration."""
    # (mode, authentication) or, for hostile tests parametrizing ``lab``
    # indirectly, (mode, authentication, ((side, LabPki attribute), ...)).
    mode, authentication, *swapped = request.param
    certificates = dict(swapped[0]) if swapped else {}
    folder = tmp_path_factory.mktemp(f"lab-{mode.value}-{authentication}")
    laboratory = Lab(mode, authentication, folder=folder, server_certificates=certificates)
    yield started(laboratory, f"the lab ({mode.value}, {authentication})")
    laboratory.stop()


@pytest.fixture(scope="session")
def client_loop():
    """The asyncio loop (in a thread) shared by every lab client of the session."""
    loop = ClientLoop()
    yield loop
    loop.close()


@pytest.fixture
def romeo(lab, client_loop):
    """romeo@red.example, connected to the red Prosody."""
    client = lab.client(client_loop, "romeo@red.example").connect()
    yield client
    client.disconnect()


@pytest.fixture
def juliet(lab, client_loop):
    """juliet@blue.example, connected to the blue Prosody."""
    client = lab.client(client_loop, "juliet@blue.example").connect()
    yield client
    client.disconnect()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        # Every lab the test used (a Lab, a PolicyLab, a PairLab...) adds the tails of its logs to the report.
        for name, laboratory in getattr(item, "funcargs", {}).items():
            if callable(getattr(laboratory, "log_tails", None)):
                report.sections.append((f"{name} logs", laboratory.log_tails()))


def pytest_collection_modifyitems(config, items):
    """A test marked hag_only runs only with the pair lab that has the HAG in its path: for the other pair labs it
    is deselected at collection, not collected and then skipped."""
    kept, deselected = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        with_hag = params.get("pair", (True,))[0]
        (deselected if item.get_closest_marker("hag_only") and not with_hag else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
