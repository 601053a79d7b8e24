"""
1 worker against N workers ([guard] workers, issue 11 goal 3) in the firehose
(bench/bench_firehose.py): the same blaster, sink and guard configuration,
the guard's configuration given ``workers = N`` for the second, rounds
interleaved.  The guard's CPU is the supervisor's plus its workers'; its RSS
the sum of theirs.  Prints each run as bench_firehose does, then medians.

    .venv/bin/python bench/bench_workers.py --pairs 4 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_firehose as firehose  # noqa: E402

measure_one_process = firehose.cpu_seconds
resident_one_process = firehose.resident_kib
plain_render = firehose.render_guard_config


def descendants(pid: int) -> list[int]:
    """``pid``'s children (the workers of a supervisor; none for a single guard), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            if int(text.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and of its live children."""
    return measure_one_process(pid) + sum(measure_one_process(child) for child in descendants(pid))


def process_tree_rss(pid: int) -> int:
    """Resident KiB of ``pid`` and of its live children."""
    return resident_one_process(pid) + sum(resident_one_process(child) for child in descendants(pid))


plain_start = firehose.start_guard


def start_guard_and_its_workers(count: int):
    """firehose.start_guard, returning only once each of the ``count`` workers accepts on both sides: a blaster
    that connected earlier would wait in the backlog and go to whichever worker came up first."""

    def start(pki, policy, folder, limits, audit=False):
        firehose.render_guard_config = with_workers(count, Path(folder) / "status.json")
        process = plain_start(pki, policy, folder, limits, audit)
        if count > 1:  # each worker writes its status file once it accepts on both sides
            deadline = time.monotonic() + 60
            while len(list(Path(folder).glob("status.worker-*.json"))) < count:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the workers did not all start: {Path(folder) / 'guard.log'}")
                time.sleep(0.1)
        return process
    return start


def with_workers(count: int, status: Path):
    """render_guard_config, the configuration it writes given ``workers = count`` and a status file."""
    def render(*args, **kwargs):
        text = plain_render(*args, **kwargs)
        if count == 1:
            return text
        return text.replace("[guard]\n", f"[guard]\nworkers = {count}\nstatus = \"{status}\"\n", 1)
    return render


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench_workers.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="workers of the second guard (default 2)")
    parser.add_argument("--mode", default="allow-all", choices=("allow-all", "high-to-low"))
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--warm-up", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=90.0)
    arguments = parser.parse_args()
    if not 2 <= arguments.workers <= 8 or not 1 <= arguments.rounds <= 10 or not 1 <= arguments.messages <= 200_000:
        parser.error("--workers 2..8, --rounds 1..10, --messages 1..200000")
    firehose.cpu_seconds = process_tree_cpu
    firehose.resident_kib = process_tree_rss
    results: dict[int, list] = {1: [], arguments.workers: []}
    print(f"workers: 1 against {arguments.workers}, {arguments.mode}, {arguments.pairs} pairs, "
          f"{arguments.messages} messages, {arguments.rounds} rounds interleaved")
    for _ in range(arguments.rounds):
        for count in results:
            firehose.start_guard = start_guard_and_its_workers(count)
            run = firehose.run_once(arguments.mode, arguments.messages, arguments.warm_up, arguments.timeout, False,
                                    arguments.pairs)
            print(f"-- {count} worker(s)")
            firehose.report(run)
            results[count].append(run)
    print("== medians (min..max) ==")
    for count, runs in results.items():
        rates = [run.rate for run in runs]
        cpu = {name: [run.per_stanza_us(name) for run in runs] for name in ("guard", "blaster", "sink")}
        print(f"  {count} worker(s): {statistics.median(rates):,.0f} msg/s ({min(rates):,.0f}..{max(rates):,.0f}); "
              + "; ".join(f"{name} {statistics.median(values):.1f} us/stanza ({min(values):.1f}..{max(values):.1f})"
                          for name, values in cpu.items())
              + f"; guard rss {statistics.median(run.guard_rss_kib for run in runs) / 1024:.1f} MiB")
    return 0 if all(not run.problems for runs in results.values() for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
