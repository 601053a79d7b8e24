"""
The demo: bring up the lab with the guard between red and blue (certificate
authentication), let Romeo and Juliet exchange a message each way, say what
happened, and stop everything.

    python -m guard.lab.demo [--mode guard|relay|direct]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import Sequence, TextIO

from guard.lab.clients import ClientLoop
from guard.lab.topology import Lab, Mode

ROMEO = "romeo@red.example"
JULIET = "juliet@blue.example"

_THROUGH = {
    Mode.GUARD: "through the guard",
    Mode.RELAY: "through the dumb TCP relay",
    Mode.DIRECT: "directly (no guard)",
}


def _exchange(sender, receiver, body: str, out: TextIO, through: str) -> None:
    started = time.perf_counter()
    sender.send_xml(f"<message to='{receiver.jid.bare}' type='chat'><body>{body}</body></message>")
    received = receiver.wait_for_body(str(sender.jid.bare), body, timeout=20)
    milliseconds = (received.received_at - started) * 1000
    print(
        f"  {sender.jid.bare} -> {receiver.jid.bare}: {body!r} delivered {through} in {milliseconds:.0f} ms",
        file=out,
        flush=True,
    )


def run_demo(out: TextIO = sys.stdout, mode: Mode | str = Mode.GUARD) -> int:
    """Run the demo; 0 when both messages crossed, 1 otherwise (with every log's tail)."""
    mode = Mode(mode)
    through = _THROUGH[mode]
    lab = Lab(mode, "certificate", prosody_log_level="info", guard_log_level="info")
    print(f"xmpp-guard demo: red.example <-> blue.example {through}", file=out, flush=True)
    print(f"  lab folder: {lab.folder}", file=out, flush=True)
    succeeded = False
    started = time.perf_counter()
    try:
        with ClientLoop() as loop:
            print("  starting DNS, two Prosody servers" + ("" if mode is Mode.DIRECT else f" and the {mode.value}"),
                  file=out, flush=True)  # fmt: skip
            lab.start()
            print(f"  lab up in {time.perf_counter() - started:.1f} s", file=out, flush=True)
            with lab.client(loop, ROMEO) as romeo, lab.client(loop, JULIET) as juliet:
                print(f"  {ROMEO} and {JULIET} are online", file=out, flush=True)
                _exchange(romeo, juliet, "But soft, what light through yonder window breaks?", out, through)
                _exchange(juliet, romeo, "Wherefore art thou Romeo?", out, through)
        succeeded = True
    except Exception as error:
        print(f"  FAILED: {error}", file=out, flush=True)
        print(lab.log_tails(), file=out, flush=True)
    finally:
        lab.stop()
        print("  stopped everything the demo started", file=out, flush=True)
    if succeeded:
        shutil.rmtree(lab.folder, ignore_errors=True)
        print("demo succeeded", file=out, flush=True)
        return 0
    print(f"demo failed; logs kept in {lab.folder}", file=out, flush=True)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guard.lab.demo")
    parser.add_argument("--mode", choices=[mode.value for mode in Mode], default=Mode.GUARD.value)
    arguments = parser.parse_args(argv)
    return run_demo(sys.stdout, arguments.mode)


if __name__ == "__main__":
    sys.exit(main())
