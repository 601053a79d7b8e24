"""
Pairs pinned to workers (issue 11, goal 3), as processes on the lab's
addresses without Prosody: the firehose's raw S2S blasters (one connection
per domain pair) into a guard with [guard] workers = 2 and its raw sink
behind.  The kernel gives each connection to either worker; a pair pinned to
the other one is handed over there.  Every pair arrives on one stream, in
order, and the books of both workers add up.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from guard.edges.handover import pinned_worker

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_firehose as firehose  # noqa: E402
import bench_workers  # noqa: E402

pytestmark = pytest.mark.guard

PAIRS = 4
WARM_UP = 50
MESSAGES = 2000


def test_each_pair_arrives_in_order_on_one_stream_and_what_was_handed_over_is_settled_where_accepted(monkeypatch):
    """Four pairs through two workers: in order per pair, one stream each; every handover confirmed; books add up."""
    statuses = []
    plain_stop = firehose.stop_process
    started = {}

    def start(pki, policy, folder, limits, audit=False):
        started["status"] = Path(folder) / "status.json"
        return bench_workers.start_guard_and_its_workers(2)(pki, policy, folder, limits, audit)

    def stop_after_reading_the_status(process, *args, **kwargs):
        path = started["status"]
        before = path.stat().st_mtime_ns if path.exists() else 0
        process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (path.exists() and path.stat().st_mtime_ns != before):
            time.sleep(0.1)
        statuses.append(json.loads(path.read_text()))
        plain_stop(process, *args, **kwargs)

    monkeypatch.setattr(firehose, "start_guard", start)
    monkeypatch.setattr(firehose, "stop_process", stop_after_reading_the_status)
    run = firehose.run_once("allow-all", MESSAGES, WARM_UP, 90.0, False, PAIRS)
    assert run.problems == [] and run.received == MESSAGES

    (status,) = statuses
    books = status["books"]
    per_pair = WARM_UP + MESSAGES // PAIRS
    assert (books["accepted"], books["delivered"], books["in_flight"], status["in_doubt"]) == (
        PAIRS * per_pair, PAIRS * per_pair, 0, 0)
    handed_over = []
    for worker in status["workers"]:
        for name, link in worker["links"].items():
            if link.get("state") == "handed over":
                sender, receiver = name.split(":", 1)[1].split("->")
                assert pinned_worker((sender, receiver), 2) != worker["worker"]
                handed_over.append((worker["worker"], link["channel"]))
    for index in {index for index, _ in handed_over}:
        lanes = sum(1 for worker, _ in handed_over if worker == index)
        channel = next(channel for worker, channel in handed_over if worker == index)
        assert (channel["carried"], channel["delivered"], channel["in_doubt"]) == (
            lanes * per_pair, lanes * per_pair, 0)
