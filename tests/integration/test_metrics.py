"""
/metrics of a running guard between two real Prosody servers: after a
message crosses, the scrape counts it with its direction, kind and verdict,
the bytes grew on both sides, and a stream is open on each side; every
metric the alert rules and the dashboard name is in the scrape.
"""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from guard.lab.clients import ClientLoop

from ..unit.test_metrics import exported_names, monitored_names
from .policylab import PolicyLab, wait_for
from .test_reload import PASS_ALL
from .labs import started


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    port = free_port()
    laboratory = PolicyLab(tmp_path_factory.mktemp("metrics-lab"), PASS_ALL, PASS_ALL,
                           extra_config=f'[metrics]\nlisten = "tcp:{port}:interface=127.0.0.1"\n')
    laboratory.metrics_url = f"http://127.0.0.1:{port}/metrics"
    yield started(laboratory)
    laboratory.stop()


def scrape_text(lab) -> str:
    with urllib.request.urlopen(lab.metrics_url, timeout=5) as response:
        return response.read().decode()


def scrape(lab) -> dict:
    """{(name, sorted labels): value} from the guard's /metrics."""
    text = scrape_text(lab)
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_message_that_crosses_is_counted_with_bytes_and_open_streams(lab):
    """romeo's message reaches juliet; the scrape then counts one passed red->blue message, bytes grew on both
    sides, and an authenticated stream is open on each side."""
    before = scrape(lab)
    with ClientLoop() as loop, lab.client(loop, "romeo@red.example") as romeo, \
            lab.client(loop, "juliet@blue.example") as juliet:
        romeo.send_message("juliet@blue.example", "counted")
        juliet.wait_for_body("romeo@red.example", "counted", timeout=20)
        passed = dict(direction="red->blue", kind="message", verdict="passed")
        assert wait_for(lambda: value(scrape(lab), "xmpp_guard_stanzas_total", **passed)
                        > value(before, "xmpp_guard_stanzas_total", **passed), timeout=10)
        after = scrape(lab)
    assert value(after, "xmpp_guard_stanzas_total", **passed) >= 1
    assert value(after, "xmpp_guard_rule_decisions_total", direction="red->blue", rule="pass-everything",
                 verdict="passed") >= 1
    assert value(after, "xmpp_guard_books_delivered_total") >= 1
    assert value(after, "xmpp_guard_delivery_latency_seconds_count", direction="red->blue") >= 1
    for side in ("red", "blue"):
        assert value(after, "xmpp_guard_received_bytes_total", side=side) > value(
            before, "xmpp_guard_received_bytes_total", side=side), side
        assert value(after, "xmpp_guard_sent_bytes_total", side=side) > value(
            before, "xmpp_guard_sent_bytes_total", side=side), side
        open_streams = sum(count for (name, labels), count in after.items()
                           if name == "xmpp_guard_streams_open" and dict(labels)["side"] == side
                           and dict(labels)["authentication"] == "certificate")
        assert open_streams >= 1, side
    balance = (value(after, "xmpp_guard_books_accepted_total") - value(after, "xmpp_guard_books_delivered_total")
               - value(after, "xmpp_guard_books_bounced_total") - value(after, "xmpp_guard_books_dropped_total")
               - value(after, "xmpp_guard_stanzas_in_flight"))
    assert balance == 0


def test_the_alerts_and_the_dashboard_name_only_metrics_the_running_guard_exports(lab):
    """Every xmpp_guard_ name in the alert rules and the dashboard is a sample family of this guard's scrape
    (the pair-link names of a half excepted: this guard is standalone)."""
    missing = {name for name in monitored_names() - exported_names(scrape_text(lab))
               if not name.startswith(("xmpp_guard_link_", "xmpp_guard_release_"))}
    assert not missing, sorted(missing)
