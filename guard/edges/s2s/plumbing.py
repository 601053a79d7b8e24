"""
What both S2S stream protocols need around their Automat machine: inputs
that fail closed, named timers on the injected clock, and closing.
"""

from __future__ import annotations

from automat import NoTransition
from twisted.logger import Logger

log = Logger()


class MachinePlumbing:
    """Mixed into InboundStream and OutboundStream; they provide ``clock``, ``_timers`` and the inputs named here."""

    def _input(self, method, *args):
        """Feed the machine; an input the state does not expect, or any fault in an output, closes the stream."""
        try:
            method(*args)
        except NoTransition as problem:
            log.info("{stream}: unexpected {problem}", stream=self._describe(), problem=problem)
            try:
                self._refuse_unexpected(f"not expected now: {method.__name__}")
            except NoTransition:
                self._close_transport()
        except Exception:  # noqa: BLE001 - a fault in the guard closes the stream: fail closed
            log.failure("{stream}: internal fault on {input}", stream=self._describe(), input=method.__name__)
            self._close_transport()

    def _start_timer(self, name, seconds, text):
        """After ``seconds``, the machine gets timed_out(connection-timeout, text)."""
        self._start_timer_call(name, seconds, self._input, self.timed_out, "connection-timeout", text)

    def _start_timer_call(self, name, seconds, function, *args):
        self._cancel_timer(name)
        self._timers[name] = self.clock.callLater(seconds, function, *args)

    def _cancel_timer(self, name):
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _cancel_all_timers(self):
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def _register_producer(self, producer):
        """Hear from the transport when the peer stops reading what we write (and when it drains)."""
        self.transport.registerProducer(producer, True)
        self._producer_registered = True

    def _close_transport(self):
        self._closing = True
        if self.transport is None:
            return
        if getattr(self, "_producer_registered", False):
            # TLS does not close while a producer is registered: unregister first.
            self._producer_registered = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()
