"""
Pair benchmark: the same client-to-client message blast (romeo@red.example ->
juliet@blue.example) through a standalone guard, through a back-to-back pair
(half A -> link -> half B) and through a pair with the reference HAG in the
link's path, in one run, with real Prosody servers on the pair lab's own
loopback addresses (tests/integration/pair_lab.py).

For each it prints messages/s, median and p95 latency and CPU seconds per
process during the blast.

    .venv/bin/python bench/bench_pair.py [--messages 5000] [--window 50] [--setups standalone,pair,pair-with-hag]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from guard.lab.clients import BlastResult, ClientLoop, blast  # noqa: E402
from pair_lab import PairLab  # noqa: E402

WARM_UP_MESSAGES = 50
SETUPS = {
    "standalone": {"standalone": True, "with_hag": False},
    "pair": {"standalone": False, "with_hag": False},
    "pair-with-hag": {"standalone": False, "with_hag": True},
}


def run_once(setup: str, messages: int, window: int, timeout: float) -> tuple[BlastResult, dict[str, float]]:
    lab = PairLab(None, prosody_log_level="warn", guard_log_level="warn", down_deadline=120.0, link_relay=False,
                  **SETUPS[setup])
    succeeded = False
    try:
        with ClientLoop() as loop:
            lab.start()
            with lab.client(loop, "romeo@red.example") as romeo, lab.client(loop, "juliet@blue.example") as juliet:
                warm = blast(romeo, juliet, WARM_UP_MESSAGES, window, timeout=30)
                if warm.received != WARM_UP_MESSAGES:
                    raise RuntimeError(f"warm-up: {warm.received}/{WARM_UP_MESSAGES} messages arrived")
                before = lab.cpu_seconds()
                result = blast(romeo, juliet, messages, window, timeout=timeout)
                after = lab.cpu_seconds()
        cpu = {name: after[name] - before[name] for name in after if name in before}
        succeeded = True
        return result, cpu
    except Exception:
        print(lab.log_tails(30), file=sys.stderr)
        raise
    finally:
        lab.stop()
        if succeeded:
            shutil.rmtree(lab.folder, ignore_errors=True)


def report(setup: str, result: BlastResult, cpu: dict[str, float]) -> None:
    print(f"== through the {setup} ==")
    print(f"  messages received   {result.received}/{result.sent} in {result.elapsed:.2f} s")
    print(f"  throughput          {result.messages_per_second:.0f} messages/s")
    print(f"  latency median      {result.median_latency * 1000:.1f} ms")
    print(f"  latency p95         {result.p95_latency * 1000:.1f} ms")
    count = max(result.received, 1)
    for name in sorted(cpu):
        print(f"  cpu {name:<24}{cpu[name]:.2f} s   ({cpu[name] / count * 1e6:.0f} us/message)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_pair.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per blast (default 5000)")
    parser.add_argument("--window", type=int, default=50, help="messages outstanding at most (default 50)")
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated: {', '.join(SETUPS)}")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per blast (default scales with N)")
    arguments = parser.parse_args(argv)
    if arguments.messages < 1 or arguments.window < 1:
        parser.error("--messages and --window must be positive")
    setups = [name.strip() for name in arguments.setups.split(",") if name.strip()]
    unknown = [name for name in setups if name not in SETUPS]
    if unknown:
        parser.error(f"unknown setup {unknown[0]!r} (known: {', '.join(SETUPS)})")
    timeout = arguments.timeout or max(60.0, arguments.messages / 50)

    print(f"blast: {arguments.messages} messages romeo@red.example -> juliet@blue.example, window {arguments.window}")
    throughput: dict[str, float] = {}
    failures = 0
    for setup in setups:
        started = time.perf_counter()
        try:
            result, cpu = run_once(setup, arguments.messages, arguments.window, timeout)
        except Exception as error:
            failures += 1
            print(f"== through the {setup} ==\n  FAILED after {time.perf_counter() - started:.1f} s: {error}")
            continue
        report(setup, result, cpu)
        if result.received < result.sent:
            failures += 1
            print(f"  INCOMPLETE: {result.sent - result.received} messages did not arrive before the timeout")
        throughput[setup] = result.messages_per_second
    if "standalone" in throughput and throughput["standalone"] > 0:
        for setup in ("pair", "pair-with-hag"):
            if setup in throughput:
                print(f"{setup}/standalone throughput ratio: {throughput[setup] / throughput['standalone']:.2f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
