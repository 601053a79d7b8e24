"""
The half that the configuration names dials the link, and dials it again
whenever it is lost, backing off with jitter so that two halves (or many
guards behind one firewall) do not retry in step.

    idle --start--> connecting --connected--> connected --lost--> waiting
    connecting --failed--> waiting --timer fires--> connecting
    any state --stop--> stopped

The clock and the random source are injected; the delay before attempt
n+1 after n failures in a row is
``min(max_delay, initial_delay * factor**(n-1)) * (1 - jitter + 2 * jitter * random())``.
A connection that reached the open link stream resets the count.
"""

from __future__ import annotations

from dataclasses import dataclass

from automat import MethodicalMachine
from twisted.logger import Logger

log = Logger()


@dataclass(frozen=True)
class Backoff:
    initial_delay: float = 0.5
    max_delay: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5  # fraction of the delay added or taken away at random

    def delay(self, failures: int, random) -> float:
        """Seconds to wait after ``failures`` failed attempts in a row (failures >= 1)."""
        base = min(self.max_delay, self.initial_delay * self.factor ** max(0, failures - 1))
        spread = 1.0 - self.jitter + 2.0 * self.jitter * random()
        return max(0.0, base * spread)


class LinkDialler:
    """Keeps one outgoing link connection, reconnecting after each loss."""

    _machine = MethodicalMachine()

    def __init__(self, connect, clock, random, backoff: Backoff = Backoff(), dialled: str = "link"):
        """``connect()`` returns a Deferred firing with the connected ``LinkStream``; ``dialled`` names what is
        dialled in the log ("link", "irc", "component")."""
        self._connect = connect
        self.dialled = dialled
        self.clock = clock
        self.random = random
        self.backoff = backoff
        self.failures = 0
        self.attempts = 0
        self.stream = None
        self.last_delay: float | None = None
        self._pending = None
        self._timer = None

    # -- verbs ----------------------------------------------------------------

    def start(self) -> None:
        self._begin()

    def stop(self) -> None:
        self._halt()

    # -- states ---------------------------------------------------------------

    @_machine.state(initial=True)
    def idle(self):
        "Not started."

    @_machine.state()
    def connecting(self):
        "A connection attempt is under way."

    @_machine.state()
    def connected(self):
        "A connection is up (its stream proves the peer or closes)."

    @_machine.state()
    def waiting(self):
        "The last attempt failed or the connection was lost; a timer will try again."

    @_machine.state()
    def stopped(self):
        "Stopped; nothing more is attempted."

    # -- inputs ---------------------------------------------------------------

    @_machine.input()
    def _begin(self):
        "Start dialling."

    @_machine.input()
    def _connected(self, stream):
        "The attempt produced a connection."

    @_machine.input()
    def _failed(self, reason):
        "The attempt failed."

    @_machine.input()
    def _lost(self, stream):
        "The connection is gone."

    @_machine.input()
    def _timer_fired(self):
        "The backoff delay is over."

    @_machine.input()
    def _halt(self):
        "Stop dialling and drop the connection."

    # -- outputs --------------------------------------------------------------

    @_machine.output()
    def _dial(self):
        self._timer = None
        self.attempts += 1
        pending = self._pending = self._connect()
        pending.addCallbacks(self._on_connected, self._on_failed, callbackArgs=(pending,), errbackArgs=(pending,))

    @_machine.output()
    def _remember(self, stream):
        self._pending = None
        self.stream = stream
        stream.when_lost.append(self._on_lost)

    @_machine.output()
    def _count_failure(self, reason):
        self._pending = None
        self.failures += 1
        log.info("{dialled}: dial attempt {n} failed: {reason}", dialled=self.dialled, n=self.attempts,
                 reason=getattr(reason, "getErrorMessage", lambda: str(reason))())

    @_machine.output()
    def _count_loss(self, stream):
        self.stream = None
        if stream.reached_open:
            self.failures = 0
        self.failures += 1

    @_machine.output()
    def _schedule_after_failure(self, reason):
        self._schedule()

    @_machine.output()
    def _schedule_after_loss(self, stream):
        self._schedule()

    def _schedule(self):
        self.last_delay = self.backoff.delay(self.failures, self.random)
        self._timer = self.clock.callLater(self.last_delay, self._timer_fired)

    @_machine.output()
    def _cancel_attempt(self):
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    @_machine.output()
    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @_machine.output()
    def _drop_connection(self):
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close("system-shutdown", "the half is stopping")

    # -- callbacks ------------------------------------------------------------

    def _on_connected(self, stream, pending):
        if pending is self._pending:
            self._connected(stream)
        else:
            stream.close("system-shutdown", "the dialler stopped")

    def _on_failed(self, reason, pending):
        if pending is self._pending:
            self._failed(reason)

    def _on_lost(self, stream):
        if stream is self.stream:
            self._lost(stream)

    # -- transitions ----------------------------------------------------------

    idle.upon(_begin, enter=connecting, outputs=[_dial])
    idle.upon(_halt, enter=stopped, outputs=[])
    connecting.upon(_connected, enter=connected, outputs=[_remember])
    connecting.upon(_failed, enter=waiting, outputs=[_count_failure, _schedule_after_failure])
    connecting.upon(_halt, enter=stopped, outputs=[_cancel_attempt])
    connected.upon(_lost, enter=waiting, outputs=[_count_loss, _schedule_after_loss])
    connected.upon(_halt, enter=stopped, outputs=[_drop_connection])
    waiting.upon(_timer_fired, enter=connecting, outputs=[_dial])
    waiting.upon(_halt, enter=stopped, outputs=[_cancel_timer])
    for _state in (connecting, connected, waiting, stopped):
        _state.upon(_begin, enter=_state, outputs=[])
    stopped.upon(_halt, enter=stopped, outputs=[])
    stopped.upon(_timer_fired, enter=stopped, outputs=[])
    del _state
